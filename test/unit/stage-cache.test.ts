/**
 * The stage cache: its keys, its store (atomic snapshots, least-recently-used pruning), and real
 * rebuilds of the Debian fixture by the CLI that start from its snapshots.
 */
import test from 'ava';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, symlinkSync, chmodSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { QuietReporter } from '../../engine/report.ts';
import { runPipeline } from '../../engine/runner.ts';
import type { BuildState, Pipeline, Stage } from '../../engine/stage.ts';
import { treeDigest } from '../../engine/digest.ts';
import { chainKeys, StageCache } from '../../engine/stage-cache.ts';
import { scriptEnv } from '../../lib/chroot/scripts.ts';
import { debianImage } from '../fixtures/debian-image.ts';
import { sha256File } from '../helpers/base-images.ts';
import { scratch, testConfig } from '../helpers/build.ts';
import { ImageReader } from '../helpers/image-reader.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';
import { defaultConfig } from '../../pipelines/pimaster/options.ts';
import { engineSchema } from '../../engine/options.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const run = (args: string[]) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' }, all: true });

const steps = (inputs: string[]) => inputs.map((input, i) => ({ stage: i < 2 ? 'overlay' : 'chroot', step: i, label: `step ${i}`, input }));

test('each checkpoint key hashes the one before it: a changed step changes its key and every later one', (t) => {
  const a = chainKeys('v1', steps(['o', 's1', 's2', 's3']));
  const b = chainKeys('v1', steps(['o', 's1', 's2 changed', 's3']));
  t.deepEqual(a.slice(0, 2), b.slice(0, 2));
  for (const i of [2, 3]) t.not(a[i]!.key, b[i]!.key);
  t.notDeepEqual(chainKeys('v2', steps(['o'])), chainKeys('v1', steps(['o'])), 'another toolkit version shares nothing');
  t.is(new Set(a.map((c) => c.key)).size, 4);
});

test('a tree digest follows names, contents, exec bits and link targets; skipped paths do not count', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'tree/etc'), { recursive: true });
  writeFileSync(join(dir, 'tree/etc/motd'), 'one\n');
  symlinkSync('motd', join(dir, 'tree/etc/link'));
  const digest = () => treeDigest(join(dir, 'tree'), (rel) => rel === 'etc/.git');
  const first = await digest();
  t.is(await digest(), first);
  mkdirSync(join(dir, 'tree/etc/.git'));
  writeFileSync(join(dir, 'tree/etc/.git/index'), 'changes with every checkout');
  t.is(await digest(), first, '.git is skipped');
  writeFileSync(join(dir, 'tree/etc/motd'), 'two\n');
  const changed = await digest();
  t.not(changed, first);
  chmodSync(join(dir, 'tree/etc/motd'), 0o755);
  t.not(await digest(), changed, 'the exec bit counts');
  rmSync(join(dir, 'tree/etc/link'));
  symlinkSync('other', join(dir, 'tree/etc/link'));
  t.not(await digest(), changed);
  t.not(await treeDigest(join(dir, 'missing')), await treeDigest(join(dir, 'tree')));
});

const save = (store: StageCache, key: string, bytes: number) =>
  store.save({ key, pipeline: 'p', label: `l ${key.slice(0, 4)}`, state: {} }, async (dir) => {
    writeFileSync(join(dir, 'image.img'), Buffer.alloc(bytes, 1));
    return ['image.img'];
  });
const key = (c: string) => c.repeat(64);

test('a snapshot is trusted only when complete; a failed save leaves nothing; the latest valid one wins', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const store = new StageCache(join(dir, 'snapshots'));
  await t.throwsAsync(
    store.save({ key: key('a'), pipeline: 'p', label: 'l', state: {} }, async (d) => {
      writeFileSync(join(d, 'image.img'), 'half');
      throw new Error('disk full');
    }),
    { message: 'disk full' },
  );
  t.deepEqual(readdirSync(store.dir), [], 'no temporary directory left');
  await save(store, key('a'), 4096);
  await save(store, key('b'), 4096);
  const checkpoints = [key('a'), key('b'), key('c')].map((k, i) => ({ stage: 's', step: i, label: '', key: k }));
  t.is(store.latest(checkpoints)?.index, 1);
  // A snapshot whose file is not the size its meta.json says (cut short on a full disk) is not one.
  writeFileSync(join(store.dir, key('b'), 'image.img'), 'short');
  t.is(store.latest(checkpoints)?.index, 0);
  t.deepEqual(store.list().map((e) => e.meta.key), [key('a')]);
});

test('prune removes the least recently used first, never the one to keep, and what dead builds left', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const store = new StageCache(join(dir, 'snapshots'));
  for (const [i, c] of ['a', 'b', 'c', 'd'].entries()) {
    const entry = await save(store, key(c), 64 * 1024);
    const when = new Date(Date.UTC(2026, 0, 1 + i));
    utimesSync(join(entry.dir, 'meta.json'), when, when);
  }
  store.touch(store.list().find((e) => e.meta.key === key('a'))!); // a used just now
  const dead = join(store.dir, `${key('e')}.tmp-999999999`);
  const live = join(store.dir, `${key('f')}.tmp-${process.pid}`);
  mkdirSync(dead);
  mkdirSync(live);
  const size = store.list()[0]!.diskBytes;
  const removed = store.prune(2 * size, key('b'));
  t.deepEqual(removed.map((e) => e.meta.key), [key('c'), key('d')], 'oldest first, b kept though older');
  t.deepEqual(store.list().map((e) => e.meta.key).sort(), [key('a'), key('b')]);
  t.false(existsSync(dead), "a dead build's half-written snapshot is removed");
  t.true(existsSync(live), "a running build's is not");
  rmSync(live, { recursive: true });
  t.is(store.prune(0).length, 2);
  t.deepEqual(store.list(), []);
});

test('settings that change only the outputs are not in the scripts environment, so they keep the cache', (t) => {
  const a = scriptEnv(defaultConfig({ compress: ['xz'], name: 'a', 'cache-size': 1 }), { state: {}, pipeline: 'customize' });
  const b = scriptEnv(defaultConfig({ compress: ['zstd'], name: 'b', 'cache-size': 2, 'no-cache': true }), { state: {}, pipeline: 'customize' });
  t.deepEqual(a, b);
  t.false('BUILD_COMPRESS' in a);
  t.is(a.BUILD_ARCH, 'arm64');
  t.not(scriptEnv(defaultConfig({ 'apt-mirror': 'http://127.0.0.1:1' }), { state: {}, pipeline: 'customize' }).BUILD_APT_MIRROR, undefined);
});

/**
 * The runner's side on stages that only record that they ran: the image is their list of runs.
 * `inputs` are what the stages' keys hash (by stage, or by stage and step: "b1"); stage "c" always
 * keeps a snapshot at its end.
 */
function recorder(inputs: Record<string, string>): Pipeline {
  type Runs = BuildState & { runs?: string[] };
  const record = (ctx: { state: Runs }, what: string) => (ctx.state.runs = [...(ctx.state.runs ?? []), what]);
  const stage = (name: string, steps: number, extra: Partial<Stage> = {}): Stage => ({
    name,
    options: [],
    describe: () => name,
    key: async () => Array.from({ length: steps }, (_, i) => ({ label: `step ${i}`, input: `${inputs[`${name}${i}`] ?? inputs[name]} ${i}` })),
    async run(ctx) {
      for (let i = ctx.stepsDone; i < steps; i++) {
        record(ctx, `${name}${i}`);
        if (steps > 1) await ctx.stepDone();
      }
    },
    ...extra,
  });
  return {
    name: 'recorder',
    summary: '',
    schema: engineSchema,
    stages: [stage('a', 1), stage('b', 2), stage('c', 1, { snapshotAtEnd: true }), { ...stage('d', 1), key: undefined }],
    snapshots: {
      async save(ctx, dir) {
        writeFileSync(join(dir, 'image.img'), JSON.stringify((ctx.state as Runs).runs));
        return ['image.img'];
      },
      async restore(ctx, entry) {
        ctx.state = { ...entry.meta.state, ...ctx.state };
      },
    },
  };
}

test('snapshots are taken after work that took --snapshot-after seconds, and always where a stage asks', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const inputs: Record<string, string> = { a: 'a', b: 'b', c: 'c', d: 'd' };
  const config = testConfig(dir, { 'snapshot-after': 3600 });
  const store = new StageCache(join(config.cache, 'snapshots'));
  const run = async () => {
    const { state, timings } = await runPipeline(recorder(inputs), config, {}, new QuietReporter());
    return { runs: (state as { runs?: string[] }).runs, notes: Object.fromEntries(timings.map((x) => [x.stage, x.note ?? ''])) };
  };

  t.deepEqual((await run()).runs, ['a0', 'b0', 'b1', 'c0', 'd0']);
  t.deepEqual(store.list().map((e) => e.meta.label), ['c: step 0'], 'quick steps: only the stage that asks for it');
  t.deepEqual(await run(), { runs: ['a0', 'b0', 'b1', 'c0', 'd0'], notes: { a: 'from cache', b: 'from cache', c: 'from cache', d: '' } });

  // Every step snapshotted (a's was not taken before: it is redone after b changed).
  const eager = { ...config, 'snapshot-after': 0 };
  inputs.b = 'b changed';
  const fresh = await runPipeline(recorder(inputs), eager, {}, new QuietReporter());
  t.deepEqual((fresh.state as { runs?: string[] }).runs, ['a0', 'b0', 'b1', 'c0', 'd0'], 'b changed: no snapshot after it or later is valid; a\'s was never taken');
  t.deepEqual(store.list().map((e) => e.meta.label).sort(), ['a: step 0', 'b: step 0', 'b: step 1', 'c: step 0', 'c: step 0']);
  const { state, timings } = await runPipeline(recorder(inputs), { ...eager, 'no-cache': true }, {}, new QuietReporter());
  t.deepEqual((state as { runs?: string[] }).runs, ['a0', 'b0', 'b1', 'c0', 'd0']);
  t.true(timings.every((x) => !x.note), '--no-cache');

  inputs.b1 = 'only the second step of b changed';
  t.deepEqual(await run(), { runs: ['a0', 'b0', 'b1', 'c0', 'd0'], notes: { a: 'from cache', b: '1 step from cache', c: '', d: '' } });
});

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
    'customize', '--base', base, '--base-sha256', sha,
    '--overlay', join(dir, 'site'), '--script', join(dir, '10-one.sh'), '--script', join(dir, '20-two.sh'),
    '--snapshot-after', '0', '--compress', 'none', '--name', 'site',
    '--work', join(dir, 'work'), '--cache', cache, '--out', join(dir, 'out'), ...extra,
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
    Promise.all([reader.cat('/root/runs'), reader.cat('/root/two'), reader.cat('/etc/site'), reader.bootFile('site.txt'), reader.exists('/usr/sbin/policy-rc.d'), reader.cat('/etc/resolv.conf')]);

  const first = await run(args());
  t.is(first.exitCode, 0, first.all);
  t.deepEqual(fromCache(first.all), {});
  const [runs, two, siteFile, bootFile, policy, resolv] = (await inImage(image, contents)) as [string, string, string, string, boolean, string];
  t.deepEqual([runs, two, siteFile, bootFile, policy], ['one\n', 'two v1\n', 'site v1\n', 'on the boot partition', false]);
  const listing = await ls();
  for (const label of ['extract: base image extracted', 'overlay: 1 overlay directory copied', 'chroot: after 10-one.sh', 'chroot: after 20-two.sh']) t.regex(listing, new RegExp(label));
  t.regex(listing, /^6 snapshots, [\d.]+ [KMG]iB in /m);

  // A late script changed: the first script's work comes from the snapshot taken after it.
  writeFileSync(join(dir, '20-two.sh'), 'echo "two v2" > /root/two\n');
  const late = await run(args());
  t.is(late.exitCode, 0, late.all);
  t.deepEqual(fromCache(late.all), { extract: 'from cache', grow: 'from cache', overlay: 'from cache', settings: 'from cache', chroot: '1 step from cache' });
  t.deepEqual(await inImage(image, contents), ['one\n', 'two v2\n', 'site v1\n', 'on the boot partition', false, resolv], 'the chroot left no trace in the snapshot: policy-rc.d gone, resolv.conf the image\'s own');

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
  const snapshots = () => readdirSync(join(cache, 'snapshots')).sort().map((name) => `${name} ${statSync(join(cache, 'snapshots', name, 'meta.json')).mtimeMs}`);
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
