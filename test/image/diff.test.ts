/**
 * `build-image diff A B` as a user runs it, on tiny images made here from fixed trees (every time
 * set to one instant, so that two images made from one tree are the same): identical images, a
 * changed byte, mode, link target and an added file, a partition grown, a FAT file changed,
 * --ignore-times, --json, an .img.xz against its raw original, and bad input. After each run, no
 * loop device on either image, no mount and no temporary file in the work directory.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  createReadStream,
  existsSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { assembleDisk } from '../fixtures/tiny-image.ts';
import { scratch } from '../helpers/build.ts';
import { loopsOn, loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const WHEN = new Date('2024-03-01T12:00:00Z');

type Node = string | Buffer | { content: string; mode: number } | { link: string };

const BOOT: Record<string, string> = {
  'cmdline.txt': 'console=tty1 root=PARTUUID=6c3f1b2a-02 rootfstype=ext4 rootwait\n',
  'config.txt': '# fixture\narm_64bit=1\ndtparam=audio=on\n',
  'start4.elf': 'not really firmware\n',
};
const ROOT: Record<string, Node> = {
  'etc/motd': 'hello\nworld\n',
  'etc/hosts': '127.0.0.1\tlocalhost\n',
  'etc/hostname': 'raspberrypi\n',
  'usr/bin/dash': { content: '#!/bin/true\n', mode: 0o755 },
  'usr/bin/sh': { link: 'dash' },
  bin: { link: 'usr/bin' },
};

/** Every path under `dir`, deepest first, set to WHEN (links themselves, not what they name). */
function settle(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) settle(path);
    lutimesSync(path, WHEN, WHEN);
  }
  lutimesSync(dir, WHEN, WHEN);
}

function writeTree(dir: string, nodes: Record<string, Node>): void {
  mkdirSync(dir, { recursive: true });
  for (const [rel, node] of Object.entries(nodes)) {
    const path = join(dir, rel);
    mkdirSync(dirname(path), { recursive: true });
    if (typeof node === 'string' || Buffer.isBuffer(node)) writeFileSync(path, node);
    else if ('link' in node) symlinkSync(node.link, path);
    else {
      writeFileSync(path, node.content);
      chmodSync(path, node.mode);
    }
  }
  settle(dir);
}

/** An MBR image with a FAT boot (files at its root only: mcopy dates the directories it makes) and an ext4 root. */
async function image(
  dir: string,
  name: string,
  opts: { boot?: Record<string, string>; root?: Record<string, Node>; rootMiB?: number; label?: 'dos' | 'gpt' } = {},
): Promise<string> {
  const src = join(dir, `${name}.src`);
  writeTree(join(src, 'boot'), opts.boot ?? BOOT);
  writeTree(join(src, 'root'), opts.root ?? ROOT);
  const path = join(dir, `${name}.img`);
  await assembleDisk(path, { label: opts.label ?? 'dos', bootMiB: 40, rootMiB: opts.rootMiB ?? 16, bootDir: join(src, 'boot'), rootDir: join(src, 'root') });
  rmSync(src, { recursive: true, force: true });
  return path;
}

function setup(t: ExecutionContext): string {
  const dir = scratch('diff-test-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A file's sha256 and modification time. */
async function fingerprint(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return `${hash.digest('hex')} ${statSync(path).mtimeMs}`;
}

/** Runs `build-image diff`, then checks that it left nothing behind and changed neither input. */
async function diff(t: ExecutionContext, dir: string, args: string[]) {
  const work = join(dir, 'work');
  const inputs = args.filter((a) => a.startsWith('/') && existsSync(a));
  const before = await Promise.all(inputs.map(fingerprint));
  const r = await execa('node', [cli, 'diff', ...args, '--work', work, '--quiet'], { reject: false, env: { CI: 'true' } });
  t.deepEqual(await Promise.all(inputs.map(fingerprint)), before, 'an input was modified');
  for (const input of inputs) t.deepEqual(await loopsOn(input), [], `a loop device left on ${input}`);
  t.deepEqual(await loopsUnder(dir), [], 'a loop device left on a temporary file');
  t.deepEqual(mountsUnder(dir), [], 'a mount left');
  const inDiff = existsSync(join(work, 'diff')) ? readdirSync(join(work, 'diff')) : [];
  t.deepEqual(
    inDiff.filter((f) => f.startsWith('tmp-')),
    [],
    'a temporary directory left',
  );
  return r;
}

test('two images made from the same trees are identical: exit 0, nothing listed', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const b = await image(dir, 'b');
  const r = await diff(t, dir, [a, b]);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, /^identical: same partition table, \d+ entries in 2 partitions$/m);
  t.notRegex(r.stdout, /^ {2}[-+~] /m);
  const j = await diff(t, dir, [a, b, '--json']);
  t.is(j.exitCode, 0, j.stderr);
  const doc = JSON.parse(j.stdout);
  t.true(doc.identical);
  t.deepEqual(doc.table, []);
  t.deepEqual(
    doc.partitions.map((p: { number: number; fs: unknown; added: unknown[]; removed: unknown[]; changed: unknown[] }) => [
      p.number,
      p.fs,
      p.added,
      p.removed,
      p.changed,
    ]),
    [
      [1, { a: 'vfat', b: 'vfat' }, [], [], []],
      [2, { a: 'ext4', b: 'ext4' }, [], [], []],
    ],
  );
});

test('a byte, a mode, a link target and an added file: each listed, exit 1, text and --json', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const b = await image(dir, 'b', {
    root: {
      ...ROOT,
      'etc/motd': 'hello\nworlD\n',
      'etc/hosts': { content: '127.0.0.1\tlocalhost\n', mode: 0o600 },
      'usr/bin/sh': { link: 'bash' },
      'etc/new': 'added\n',
    },
  });
  const r = await diff(t, dir, [a, b]);
  t.is(r.exitCode, 1, r.stderr);
  const lines = r.stdout.split('\n');
  t.deepEqual(lines.slice(0, 3), [`--- ${a}`, `+++ ${b}`, 'partition 2 (ext4):']);
  t.regex(r.stdout, /^ {2}~ \/etc\/hosts {2}mode 0644 -> 0600$/m);
  t.regex(r.stdout, /^ {2}~ \/etc\/motd {2}sha256 [0-9a-f]{16} -> [0-9a-f]{16}\n {6}line 2: "world" -> "worlD"$/m);
  t.regex(r.stdout, /^ {2}\+ \/etc\/new {2}file 0644 0:0 6 bytes sha256 [0-9a-f]{16}$/m);
  t.regex(r.stdout, /^ {2}~ \/usr\/bin\/sh {2}target dash -> bash$/m);
  t.is(lines.at(-1), 'differ: 0 partition table fields, 1 added, 0 removed, 3 changed');

  const j = await diff(t, dir, [a, b, '--json']);
  t.is(j.exitCode, 1, j.stderr);
  const doc = JSON.parse(j.stdout);
  t.deepEqual(Object.keys(doc), ['a', 'b', 'identical', 'ignoreTimes', 'table', 'partitions']);
  t.false(doc.identical);
  const root = doc.partitions[1];
  t.deepEqual(Object.keys(root), ['number', 'fs', 'compared', 'entries', 'added', 'removed', 'changed']);
  t.deepEqual(root.added, [
    {
      path: '/etc/new',
      type: 'file',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtime: '2024-03-01T12:00:00.000000000Z',
      size: 6,
      sha256: createHash('sha256').update('added\n').digest('hex'),
    },
  ]);
  const motd = root.changed.find((c: { path: string }) => c.path === '/etc/motd');
  t.deepEqual(
    motd.fields.map((f: { field: string }) => f.field),
    ['sha256'],
  );
  t.deepEqual(motd.firstLine, { line: 2, a: 'world', b: 'worlD' });
  t.deepEqual(root.changed.find((c: { path: string }) => c.path === '/usr/bin/sh').fields, [{ field: 'target', a: 'dash', b: 'bash' }]);
  t.deepEqual(root.changed.find((c: { path: string }) => c.path === '/etc/hosts').fields, [{ field: 'mode', a: 0o644, b: 0o600 }]);
});

test('a grown root partition is a partition table difference; the files are the same', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const b = await image(dir, 'b', { rootMiB: 20 });
  const r = await diff(t, dir, [a, b, '--json']);
  t.is(r.exitCode, 1, r.stderr);
  const doc = JSON.parse(r.stdout);
  t.deepEqual(doc.table, [{ partition: 2, field: 'size', a: 16 * 2048, b: 20 * 2048 }]);
  for (const p of doc.partitions) t.deepEqual([p.added, p.removed, p.changed], [[], [], []]);
  const text = await diff(t, dir, [a, b]);
  t.regex(text.stdout, /^partition table:\n {2}partition 2 size: 32768 sectors -> 40960 sectors$/m);
});

test('an MBR and a GPT image of the same trees: label, id, types and UUIDs differ; the files do not', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const b = await image(dir, 'b', { label: 'gpt' });
  const r = await diff(t, dir, [a, b, '--json']);
  t.is(r.exitCode, 1, r.stderr);
  const doc = JSON.parse(r.stdout);
  t.deepEqual(
    doc.table.map((c: { partition?: number; field: string }) => `${c.partition ?? ''}${c.field}`),
    ['label', 'id', '1type', '1uuid', '2type', '2uuid'],
  );
  t.deepEqual(doc.table[0], { field: 'label', a: 'dos', b: 'gpt' });
  for (const p of doc.partitions) t.deepEqual([p.added, p.removed, p.changed], [[], [], []]);
});

test('a FAT file changed: its sha256 and first differing line', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const b = await image(dir, 'b', { boot: { ...BOOT, 'config.txt': '# fixture\narm_64bit=0\ndtparam=audio=on\n' } });
  const r = await diff(t, dir, [a, b]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stdout, /^partition 1 \(vfat\):\n {2}~ \/config\.txt {2}sha256 [0-9a-f]{16} -> [0-9a-f]{16}\n {6}line 2: "arm_64bit=1" -> "arm_64bit=0"$/m);
  t.notRegex(r.stdout, /^partition 2/m);
});

test('times are compared, and left out with --ignore-times', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const b = await image(dir, 'b');
  // Touch one file of B's root in place: its inode's mtime, through debugfs on the image's copy of the root.
  const { stdout } = await execa('sfdisk', ['--json', b]);
  const root = JSON.parse(stdout).partitiontable.partitions[1];
  const fs = join(dir, 'root.fs');
  await execa('dd', [`if=${b}`, `of=${fs}`, 'bs=512', `skip=${root.start}`, `count=${root.size}`, 'status=none']);
  await execa('debugfs', ['-w', '-R', 'set_inode_field /etc/hostname mtime 20250101000000', fs]);
  await execa('dd', [`if=${fs}`, `of=${b}`, 'bs=512', `seek=${root.start}`, 'conv=notrunc', 'status=none']);
  const r = await diff(t, dir, [a, b]);
  t.is(r.exitCode, 1, r.stderr);
  t.regex(r.stdout, /^ {2}~ \/etc\/hostname {2}mtime 2024-03-01T12:00:00\.000000000Z -> 2025-01-01T00:00:00\.000000000Z$/m);
  const ignored = await diff(t, dir, [a, b, '--ignore-times']);
  t.is(ignored.exitCode, 0, ignored.stdout);
  t.regex(ignored.stdout, /^identical: .*, times ignored$/m);
});

test('an .img.xz equals its raw original, decompressed into a temporary file that is removed', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  await execa('xz', ['-T0', '-1', '-k', a]);
  const r = await diff(t, dir, [`${a}.xz`, a]);
  t.is(r.exitCode, 0, r.stderr + r.stdout);
  t.regex(r.stdout, /^identical/m);
});

test('bad input: one line, exit 2, nothing left behind', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const missing = await diff(t, dir, [a, join(dir, 'nope.img')]);
  t.is(missing.exitCode, 2);
  t.is(missing.stderr.trim(), `error: ${join(dir, 'nope.img')}: no such file (the second image): check the path`);
  const text = join(dir, 'notes.txt');
  writeFileSync(text, 'not an image\n'.repeat(100));
  const notImage = await diff(t, dir, [text, a]);
  t.is(notImage.exitCode, 2);
  t.is(notImage.stderr.trim().split('\n').length, 1, notImage.stderr);
  t.regex(notImage.stderr, /notes\.txt is neither a disk image .* check the first IMAGE/);
  const broken = join(dir, 'broken.img.xz');
  writeFileSync(broken, Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), Buffer.alloc(600, 1)]));
  const corrupt = await diff(t, dir, [a, broken]);
  t.is(corrupt.exitCode, 2);
  t.regex(corrupt.stderr, /^error: image broken\.img\.xz is truncated or corrupt/);
  const fat = join(dir, 'boot.fat');
  await execa('mkfs.vfat', ['-C', fat, '8192']);
  const bare = await diff(t, dir, [fat, a]);
  t.is(bare.exitCode, 2);
  t.is(
    bare.stderr.trim(),
    `error: ${fat}: its partition table lists no partition (a filesystem rather than a disk image?): the first IMAGE must be a whole disk image`,
  );
  const usage = await diff(t, dir, [a]);
  t.is(usage.exitCode, 2);
  t.regex(usage.stderr, /diff takes two images/);
});

test('a failure with A mounted (B root unreadable): exit 2, every loop device and mount undone', async (t) => {
  const dir = setup(t);
  const a = await image(dir, 'a');
  const b = await image(dir, 'b');
  // Keep the ext4 magic, break the group descriptors: detected as ext4, refused by mount.
  const { stdout } = await execa('sfdisk', ['--json', b]);
  const root = JSON.parse(stdout).partitiontable.partitions[1];
  const fd = openSync(b, 'r+');
  writeSync(fd, Buffer.alloc(64 * 1024, 0xff), 0, 64 * 1024, root.start * 512 + 2048);
  closeSync(fd);
  const r = await diff(t, dir, [a, b]);
  t.is(r.exitCode, 2, r.stdout);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, /^error: .*b\.img: partition 2 holds an ext4 filesystem the kernel refuses to mount read-only \(.+\): the image is damaged/);
});

test('Ctrl-C while both roots are mounted: exit 130, no loop device, mount or temporary file left', async (t) => {
  const dir = setup(t);
  const root = { ...ROOT, 'opt/payload.bin': randomBytes(96 * 2 ** 20) };
  const a = await image(dir, 'a', { root, rootMiB: 128 });
  await execa('zstd', ['-q', '-1', '--rm', a]);
  const b = await image(dir, 'b', { root, rootMiB: 128 });
  const work = join(dir, 'work');
  const child = execa('node', [cli, 'diff', `${a}.zst`, b, '--work', work], { reject: false, env: { CI: 'true' } });
  let [mounted, ended] = [false, false];
  void child.then(() => (ended = true));
  for (let i = 0; i < 3000 && !ended; i++) {
    if (mountsUnder(work).length === 2) {
      mounted = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  child.kill('SIGINT');
  const r = await child;
  t.true(mounted, 'both roots were mounted when Ctrl-C came');
  t.is(r.exitCode, 130, r.stderr);
  t.regex(r.stderr, /error: interrupted by SIGINT/);
  t.deepEqual(await loopsOn(b), []);
  t.deepEqual(await loopsUnder(dir), []);
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(
    readdirSync(join(work, 'diff')).filter((f) => f.startsWith('tmp-')),
    [],
  );
});

test('build-image diff --help and build-image --help diff say that times are compared', async (t) => {
  for (const args of [
    ['diff', '--help'],
    ['--help', 'diff'],
  ]) {
    const r = await execa('node', [cli, ...args]);
    t.regex(r.stdout, /Times are compared unless --ignore-times/);
    t.regex(r.stdout, /--json/);
  }
  t.regex((await execa('node', [cli, '--help'])).stdout, /build-image diff A B/);
});
