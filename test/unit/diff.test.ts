/**
 * `build-image diff`'s pure part: tables and entries compared, the first differing line of a text,
 * the text and JSON the command prints, mdir's lines read. No image, no root.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import {
  compareEntries,
  compareTables,
  type DiffResult,
  type Entry,
  firstDifferingLine,
  formatText,
  isIdentical,
  type Table,
  TEXT_LIMIT,
  wantsFirstLine,
} from '../../lib/image/diff.ts';
import { hashRange, isoNs, parseMdirLine, showBytes, walkTree } from '../../lib/image/inventory.ts';

const table = (over: Partial<Table> = {}): Table => ({
  label: 'dos',
  id: '0x6c3f1b2a',
  partitions: [
    { number: 1, start: 8192, size: 81920, type: 'c' },
    { number: 2, start: 90112, size: 131072, type: '83' },
  ],
  ...over,
});

const file = (path: string, over: Partial<Entry> = {}): Entry => ({
  path,
  type: 'file',
  mode: 0o644,
  uid: 0,
  gid: 0,
  size: 6,
  sha256: 'a'.repeat(64),
  mtime: '2024-01-01T00:00:00.000000000Z',
  ...over,
});

test('the same table has no difference', (t) => {
  t.deepEqual(compareTables(table(), table()), []);
});

test('a table difference names the field and the partition', (t) => {
  const b = table({ id: '0x11111111' });
  b.partitions[1] = { ...b.partitions[1]!, size: 133120 };
  b.partitions.push({ number: 3, start: 300000, size: 2048, type: '82' });
  t.deepEqual(compareTables(table(), b), [
    { field: 'id', a: '0x6c3f1b2a', b: '0x11111111' },
    { partition: 2, field: 'size', a: 131072, b: 133120 },
    { partition: 3, field: 'present', a: 'no', b: 'yes' },
  ]);
  t.deepEqual(compareTables(table(), table({ label: 'gpt' })), [{ field: 'label', a: 'dos', b: 'gpt' }]);
});

test('entries: added, removed and changed, each by path, with the fields that changed', (t) => {
  const a = [file('/etc/b'), file('/etc/a'), file('/old'), { path: '/bin', type: 'symlink', target: 'usr/bin' } as Entry];
  const b = [
    file('/etc/a', { mode: 0o600, sha256: 'b'.repeat(64) }),
    file('/etc/b'),
    file('/new'),
    file('/etc/0'),
    { path: '/bin', type: 'symlink', target: 'usr/sbin' } as Entry,
  ];
  const d = compareEntries(a, b, false);
  t.deepEqual(
    d.added.map((e) => e.path),
    ['/etc/0', '/new'],
  );
  t.deepEqual(
    d.removed.map((e) => e.path),
    ['/old'],
  );
  t.deepEqual(d.changed, [
    { path: '/bin', fields: [{ field: 'target', a: 'usr/bin', b: 'usr/sbin' }] },
    {
      path: '/etc/a',
      fields: [
        { field: 'mode', a: 0o644, b: 0o600 },
        { field: 'sha256', a: 'a'.repeat(64), b: 'b'.repeat(64) },
      ],
    },
  ]);
});

test('a hard link: the number of links differs', (t) => {
  t.deepEqual(compareEntries([file('/a', { links: 2 })], [file('/a')], false).changed, [{ path: '/a', fields: [{ field: 'links', a: 2, b: null }] }]);
});

test('times are compared unless ignored', (t) => {
  const a = [file('/x')];
  const b = [file('/x', { mtime: '2025-01-01T00:00:00.000000000Z' })];
  t.deepEqual(compareEntries(a, b, false).changed[0]!.fields, [{ field: 'mtime', a: '2024-01-01T00:00:00.000000000Z', b: '2025-01-01T00:00:00.000000000Z' }]);
  t.deepEqual(compareEntries(a, b, true).changed, []);
});

test('the first differing line of two texts', (t) => {
  const enc = (s: string) => Buffer.from(s);
  t.deepEqual(firstDifferingLine(enc('a\nb\nc\n'), enc('a\nB\nc\n')), { line: 2, a: 'b', b: 'B' });
  t.deepEqual(firstDifferingLine(enc('a\n'), enc('a\nb\n')), { line: 2, a: '', b: 'b' });
  t.deepEqual(firstDifferingLine(enc('a\n'), enc('a')), { line: 2, a: '', b: null });
  t.is(firstDifferingLine(enc('same'), enc('same')), undefined);
  t.is(firstDifferingLine(Buffer.from([0xff, 0x0a]), enc('x\n')), undefined, 'not UTF-8');
  t.is(firstDifferingLine(Buffer.from('a\0b'), enc('x')), undefined, 'a NUL byte: binary');
  t.is(firstDifferingLine(Buffer.alloc(TEXT_LIMIT + 1, 0x61), enc('x')), undefined, 'too large');
});

test('only a changed small regular file is read for its first line', (t) => {
  const sha = { path: '/x', fields: [{ field: 'sha256', a: 'a', b: 'b' }] };
  t.true(wantsFirstLine(sha, file('/x'), file('/x')));
  t.false(wantsFirstLine(sha, file('/x', { size: TEXT_LIMIT + 1 }), file('/x')));
  t.false(wantsFirstLine({ path: '/x', fields: [{ field: 'mode', a: 1, b: 2 }] }, file('/x'), file('/x')));
});

function result(over: Partial<DiffResult>): DiffResult {
  const r: DiffResult = {
    a: 'a.img',
    b: 'b.img',
    identical: false,
    ignoreTimes: false,
    table: [],
    partitions: [
      { number: 1, fs: { a: 'vfat', b: 'vfat' }, compared: true, entries: { a: 3, b: 3 }, added: [], removed: [], changed: [] },
      { number: 2, fs: { a: 'ext4', b: 'ext4' }, compared: true, entries: { a: 10, b: 10 }, added: [], removed: [], changed: [] },
    ],
    ...over,
  };
  r.identical = isIdentical(r);
  return r;
}

test('identical images: one line saying so', (t) => {
  const r = result({});
  t.true(r.identical);
  t.is(formatText(r), '--- a.img\n+++ b.img\nidentical: same partition table, 13 entries in 2 partitions');
});

test('the text: table first, then each partition by path, then a summary', (t) => {
  const r = result({ table: [{ partition: 2, field: 'size', a: 131072, b: 133120 }] });
  r.partitions[1]!.added = [file('/etc/new', { size: 1 })];
  r.partitions[1]!.removed = [file('/a/old')];
  r.partitions[1]!.changed = [
    {
      path: '/etc/motd',
      fields: [{ field: 'sha256', a: '1'.repeat(64), b: '2'.repeat(64) }],
      firstLine: { line: 2, a: 'world', b: 'World' },
    },
    { path: '/usr/bin/sh', fields: [{ field: 'target', a: 'dash', b: 'bash' }] },
    { path: '/etc/shadow', fields: [{ field: 'mode', a: 0o640, b: 0o644 }] },
  ];
  r.identical = isIdentical(r);
  t.false(r.identical);
  t.is(
    formatText(r),
    [
      '--- a.img',
      '+++ b.img',
      'partition table:',
      '  partition 2 size: 131072 sectors -> 133120 sectors',
      'partition 2 (ext4):',
      '  - /a/old  file 0644 0:0 6 bytes sha256 aaaaaaaaaaaaaaaa',
      '  ~ /etc/motd  sha256 1111111111111111 -> 2222222222222222',
      '      line 2: "world" -> "World"',
      '  + /etc/new  file 0644 0:0 1 bytes sha256 aaaaaaaaaaaaaaaa',
      '  ~ /etc/shadow  mode 0640 -> 0644',
      '  ~ /usr/bin/sh  target dash -> bash',
      'differ: 1 partition table field, 1 added, 1 removed, 3 changed',
    ].join('\n'),
  );
});

test('a partition not compared makes the images differ and says why', (t) => {
  const r = result({});
  r.partitions[1] = { ...r.partitions[1]!, fs: { a: 'ext4', b: 'other' }, compared: false, note: 'the filesystems differ (ext4 in A, other in B)' };
  r.identical = isIdentical(r);
  t.false(r.identical);
  t.regex(formatText(r), /partition 2 \(ext4 -> other\):\n {2}not compared: the filesystems differ/);
});

test('names from an image: controls escaped in text, other bytes as \\xNN', (t) => {
  t.is(showBytes(Buffer.from('/etc/motd')), '/etc/motd');
  t.is(showBytes(Buffer.from([0x2f, 0x61, 0xff])), '/a\\xff');
  const r = result({});
  r.partitions[1]!.added = [file('/evil\nname')];
  r.identical = isIdentical(r);
  t.regex(formatText(r), /\+ "\/evil\\nname"/);
});

test('times to the nanosecond', (t) => {
  t.is(isoNs(1700000000123456789n), '2023-11-14T22:13:20.123456789Z');
  t.is(isoNs(0n), '1970-01-01T00:00:00.000000000Z');
});

test("mdir's lines: short names, long names, directories; the rest skipped", (t) => {
  t.deepEqual(parseMdirLine('a        txt         3 2024-01-02   3:04 '), { name: 'a.txt', dir: false, size: 3, mtime: '2024-01-02T03:04' });
  t.deepEqual(parseMdirLine('LONGNA~1 TXT         2 2026-12-07   7:18  Long Name File.txt'), {
    name: 'Long Name File.txt',
    dir: false,
    size: 2,
    mtime: '2026-12-07T07:18',
  });
  t.deepEqual(parseMdirLine('overlays     <DIR>     2026-12-07  17:18 '), { name: 'overlays', dir: true, size: undefined, mtime: '2026-12-07T17:18' });
  t.is(parseMdirLine('.            <DIR>     2026-12-07   7:18 '), undefined);
  t.is(parseMdirLine('        3 files                   2 bytes'), undefined);
  t.is(parseMdirLine(' Volume in drive : has no label'), undefined);
});

test('a tree walked: every entry by path, links read and not followed, a FIFO not opened, names as bytes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'walk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'etc'));
  writeFileSync(join(dir, 'etc', 'motd'), 'hello\n', { mode: 0o640 });
  symlinkSync('/etc/shadow', join(dir, 'etc', 'away')); // names a host path: never followed
  await execa('mkfifo', [join(dir, 'pipe')]);
  writeFileSync(Buffer.concat([Buffer.from(`${dir}/`), Buffer.from([0x6e, 0xff])]), '');
  utimesSync(join(dir, 'etc', 'motd'), 1700000000, 1700000000);
  const entries = await walkTree(dir, new AbortController().signal);
  t.deepEqual(
    entries.map((e) => [e.path, e.type]),
    [
      ['/', 'dir'],
      ['/etc', 'dir'],
      ['/etc/away', 'symlink'],
      ['/etc/motd', 'file'],
      ['/n\\xff', 'file'],
      ['/pipe', 'fifo'],
    ],
  );
  const motd = entries.find((e) => e.path === '/etc/motd')!;
  t.like(motd, { mode: 0o640, size: 6, sha256: createHash('sha256').update('hello\n').digest('hex'), mtime: '2023-11-14T22:13:20.000000000Z' });
  t.is(entries.find((e) => e.path === '/etc/away')!.target, '/etc/shadow');
  t.is(entries.find((e) => e.path === '/pipe')!.sha256, undefined);
  t.is(motd.links, undefined, 'one link: not shown');
});

test('a partition of another filesystem: the sha256 of its bytes, an empty one included', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'range-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'disk');
  writeFileSync(file, Buffer.concat([Buffer.alloc(512, 1), Buffer.from('swap'), Buffer.alloc(508, 2)]));
  const signal = new AbortController().signal;
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  t.like(await hashRange(file, 512, 512, signal), { size: 512, sha256: sha(Buffer.concat([Buffer.from('swap'), Buffer.alloc(508, 2)])) });
  t.like(await hashRange(file, 512, 0, signal), { size: 0, sha256: sha(Buffer.alloc(0)) });
});
