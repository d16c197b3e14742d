/**
 * The stage cache: its keys, its store (atomic snapshots, least-recently-used pruning), and when the
 * runner takes snapshots, on stages that only record that they ran.
 */

import { chmodSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { treeDigest } from '../../engine/digest.ts';
import { engineSchema } from '../../engine/options.ts';
import { QuietReporter } from '../../engine/report.ts';
import { runPipeline } from '../../engine/runner.ts';
import type { BuildState, Pipeline, Stage } from '../../engine/stage.ts';
import { chainKeys, StageCache } from '../../engine/stage-cache.ts';
import { scriptEnv } from '../../lib/chroot/scripts.ts';
import { defaultConfig } from '../../pipelines/pimaster/options.ts';
import { scratch, testConfig } from '../helpers/build.ts';

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
  t.deepEqual(
    store.list().map((e) => e.meta.key),
    [key('a')],
  );
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
  t.deepEqual(
    removed.map((e) => e.meta.key),
    [key('c'), key('d')],
    'oldest first, b kept though older',
  );
  t.deepEqual(
    store
      .list()
      .map((e) => e.meta.key)
      .sort(),
    [key('a'), key('b')],
  );
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
  t.deepEqual(
    store.list().map((e) => e.meta.label),
    ['c: step 0'],
    'quick steps: only the stage that asks for it',
  );
  t.deepEqual(await run(), { runs: ['a0', 'b0', 'b1', 'c0', 'd0'], notes: { a: 'from cache', b: 'from cache', c: 'from cache', d: '' } });

  // Every step snapshotted (a's was not taken before: it is redone after b changed).
  const eager = { ...config, 'snapshot-after': 0 };
  inputs.b = 'b changed';
  const fresh = await runPipeline(recorder(inputs), eager, {}, new QuietReporter());
  t.deepEqual(
    (fresh.state as { runs?: string[] }).runs,
    ['a0', 'b0', 'b1', 'c0', 'd0'],
    "b changed: no snapshot after it or later is valid; a's was never taken",
  );
  t.deepEqual(
    store
      .list()
      .map((e) => e.meta.label)
      .sort(),
    ['a: step 0', 'b: step 0', 'b: step 1', 'c: step 0', 'c: step 0'],
  );
  const { state, timings } = await runPipeline(recorder(inputs), { ...eager, 'no-cache': true }, {}, new QuietReporter());
  t.deepEqual((state as { runs?: string[] }).runs, ['a0', 'b0', 'b1', 'c0', 'd0']);
  t.true(
    timings.every((x) => !x.note),
    '--no-cache',
  );

  inputs.b1 = 'only the second step of b changed';
  t.deepEqual(await run(), { runs: ['a0', 'b0', 'b1', 'c0', 'd0'], notes: { a: 'from cache', b: '1 step from cache', c: '', d: '' } });
});

test('secrets at rest: the work and cache directories are 0700, even made before; snapshots are 0600 in 0700 directories', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = { ...testConfig(dir), 'snapshot-after': 0 };
  mkdirSync(config.cache, { mode: 0o755 });
  chmodSync(config.cache, 0o755);
  mkdirSync(config.work, { mode: 0o755 });
  chmodSync(config.work, 0o755);
  await runPipeline(recorder({ a: 'a', b: 'b', c: 'c', d: 'd' }), config, {}, new QuietReporter());
  const mode = (path: string) => statSync(path).mode & 0o777;
  t.is(mode(config.work), 0o700, 'work');
  t.is(mode(config.cache), 0o700, 'cache');
  const snapshots = join(config.cache, 'snapshots');
  t.is(mode(snapshots), 0o700);
  const entries = new StageCache(snapshots).list();
  t.true(entries.length > 0);
  for (const entry of entries) {
    t.is(mode(entry.dir), 0o700, entry.dir);
    t.is(mode(join(entry.dir, 'image.img')), 0o600, entry.dir);
  }
});
