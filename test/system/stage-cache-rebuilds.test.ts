/**
 * The stage cache in real rebuilds of the Debian fixture by the CLI (scripts under qemu-user), each
 * starting from its snapshots; a build killed while it writes one.
 */

import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { execa } from 'execa';
import { debianImage } from '../fixtures/debian-image.ts';
import { sha256File } from '../helpers/base-images.ts';
import { scratch } from '../helpers/build.ts';
import { ImageReader } from '../helpers/image-reader.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const run = (args: string[]) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' }, all: true });

interface Site {
  dir: string;
  args: (...extra: string[]) => string[];
  cache: string;
}

async function site(): Promise<Site> {
  const base = await debianImage('arm64');
  const sha = await sha256File(base);
  const dir = scratch();
  mkdirSync(join(dir, 'site/rootfs/etc'), { recursive: true });
  mkdirSync(join(dir, 'site/boot'), { recursive: true });
  writeFileSync(join(dir, 'site/rootfs/etc/site'), 'site v1\n');
  writeFileSync(join(dir, 'site/boot/site.txt'), 'on the boot partition');
  writeFileSync(join(dir, '10-one.sh'), 'echo one >> /root/runs\n');
  writeFileSync(join(dir, '20-two.sh'), 'echo "two v1" > /root/two\n');
  const cache = join(dir, 'cache');
  const args = (...extra: string[]) => [
    'customize',
    '--base',
    base,
    '--base-sha256',
    sha,
    '--overlay',
    join(dir, 'site'),
    '--script',
    join(dir, '10-one.sh'),
    '--script',
    join(dir, '20-two.sh'),
    '--snapshot-after',
    '0',
    '--compress',
    'none',
    '--name',
    'site',
    '--work',
    join(dir, 'work'),
    '--cache',
    cache,
    '--out',
    join(dir, 'out'),
    ...extra,
  ];
  return { dir, args, cache };
}

/** The stages a build's log says came from the cache, wholly or in part. */
const fromCache = (log: string) => Object.fromEntries([...log.matchAll(/\] (\S+): done in [\d.]+ s \(([^)]*from cache)\)/g)].map((m) => [m[1], m[2]]));

async function inImage(image: string, read: (reader: ImageReader) => Promise<unknown>): Promise<unknown> {
  const reader = await ImageReader.open(image);
  try {
    return await read(reader);
  } finally {
    await reader.close();
  }
}

test('rebuilds start from the latest snapshot whose steps did not change, and make the same image', async (t) => {
  const { dir, args, cache } = await site();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'out/site.img');
  const ls = async () => (await run(['cache', 'ls', '--cache', cache])).stdout;
  const contents = (reader: ImageReader) =>
    Promise.all([
      reader.cat('/root/runs'),
      reader.cat('/root/two'),
      reader.cat('/etc/site'),
      reader.bootFile('site.txt'),
      reader.exists('/usr/sbin/policy-rc.d'),
      reader.cat('/etc/resolv.conf'),
    ]);

  const first = await run(args());
  t.is(first.exitCode, 0, first.all);
  t.deepEqual(fromCache(first.all), {});
  const [runs, two, siteFile, bootFile, policy, resolv] = (await inImage(image, contents)) as [string, string, string, string, boolean, string];
  t.deepEqual([runs, two, siteFile, bootFile, policy], ['one\n', 'two v1\n', 'site v1\n', 'on the boot partition', false]);
  const listing = await ls();
  for (const label of ['extract: base image extracted', 'overlay: 1 overlay directory copied', 'chroot: after 10-one.sh', 'chroot: after 20-two.sh'])
    t.regex(listing, new RegExp(label));
  t.regex(listing, /^6 snapshots, [\d.]+ [KMG]iB in /m);

  // A late script changed: the first script's work comes from the snapshot taken after it.
  writeFileSync(join(dir, '20-two.sh'), 'echo "two v2" > /root/two\n');
  const late = await run(args());
  t.is(late.exitCode, 0, late.all);
  t.deepEqual(fromCache(late.all), { extract: 'from cache', grow: 'from cache', overlay: 'from cache', settings: 'from cache', chroot: '1 step from cache' });
  t.deepEqual(
    await inImage(image, contents),
    ['one\n', 'two v2\n', 'site v1\n', 'on the boot partition', false, resolv],
    "the chroot left no trace in the snapshot: policy-rc.d gone, resolv.conf the image's own",
  );

  // An overlay file changed: everything from the overlay on is redone on the image before it.
  writeFileSync(join(dir, 'site/rootfs/etc/site'), 'site v2\n');
  const overlay = await run(args());
  t.is(overlay.exitCode, 0, overlay.all);
  t.deepEqual(fromCache(overlay.all), { extract: 'from cache', grow: 'from cache' });
  t.deepEqual(await inImage(image, contents), ['one\n', 'two v2\n', 'site v2\n', 'on the boot partition', false, resolv]);

  // Only the output format changed: every customizing step comes from the cache.
  const formats = await run(args('--compress', 'zstd'));
  t.is(formats.exitCode, 0, formats.all);
  t.deepEqual(fromCache(formats.all), { extract: 'from cache', grow: 'from cache', overlay: 'from cache', settings: 'from cache', chroot: 'from cache' });
  t.true(existsSync(join(dir, 'out/site.img.zst')));

  // --no-cache neither reads nor writes the cache.
  const snapshots = () =>
    readdirSync(join(cache, 'snapshots'))
      .sort()
      .map((name) => `${name} ${statSync(join(cache, 'snapshots', name, 'meta.json')).mtimeMs}`);
  const before = snapshots();
  const uncached = await run(args('--no-cache'));
  t.is(uncached.exitCode, 0, uncached.all);
  t.deepEqual(fromCache(uncached.all), {});
  t.deepEqual(snapshots(), before);

  // Pruning keeps the most recently used: the four the last cached build used or made.
  const pruned = await run(['cache', 'prune', '--cache', cache, '--cache-size', '1G']);
  t.is(pruned.exitCode, 0, pruned.all);
  t.regex(pruned.stdout, /^removed \d+ snapshots? \([\d.]+ \w+\); \d+ left in /);
  t.regex(await ls(), /chroot: after 20-two\.sh/, 'the latest snapshot is kept');
  t.is((await run(['cache', 'prune', '--cache', cache, '--all'])).exitCode, 0);
  t.regex(await ls(), /^no snapshots in /);
  t.deepEqual(await loopsUnder(dir), []);
  t.deepEqual(mountsUnder(dir), []);
});

test('a build killed while writing a snapshot leaves none that a later build trusts', async (t) => {
  const { dir, args, cache } = await site();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const snapshots = join(cache, 'snapshots');
  const build = execa('node', [cli, ...args('--until', 'extract')], { reject: false, detached: true, env: { CI: 'true' } });
  // Registered last, so run first: a build still running when the test fails is ended before its files go.
  let ended = false;
  void build.finally(() => (ended = true));
  t.teardown(async () => {
    if (!ended) process.kill(-build.pid!, 'SIGKILL');
    await build;
  });
  let partial: string | undefined;
  for (let i = 0; i < 3000 && !partial && !ended; i++) {
    partial = existsSync(snapshots) ? readdirSync(snapshots).find((name) => name.includes('.tmp-')) : undefined;
    if (!partial) await sleep(10);
  }
  if (!partial) return t.fail('the build never started a snapshot');
  process.kill(-build.pid!, 'SIGKILL');
  await build;
  // cp, in a process group of its own, may still be writing: wait until the file stops growing.
  const file = join(snapshots, partial, 'image.img');
  for (let last = -1, size = 0; size !== last; await sleep(500)) [last, size] = [size, existsSync(file) ? statSync(file).blocks : 0];
  t.false(existsSync(join(snapshots, partial, 'meta.json')), 'killed before it was complete');
  t.regex((await run(['cache', 'ls', '--cache', cache])).stdout, /^no snapshots in /);

  const again = await run(args('--until', 'extract'));
  t.is(again.exitCode, 0, again.all);
  t.deepEqual(fromCache(again.all), {}, 'extracted again, not taken from the half-written snapshot');
  t.false(existsSync(join(snapshots, partial)), 'what the killed build left is removed');
  t.regex((await run(['cache', 'ls', '--cache', cache])).stdout, /extract: base image extracted/);
  t.deepEqual(await loopsUnder(dir), []);
});
