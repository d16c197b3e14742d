/** The engine: clean-up stack, command runner, signals, configuration, stage selection. */

import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { execa } from 'execa';
import { CleanupStack, scoped } from '../../engine/cleanup.ts';
import { ConfigError } from '../../engine/errors.ts';
import { engineSchema, parseSize, resolveOptions } from '../../engine/options.ts';
import { selectStages, timingTable } from '../../engine/runner.ts';
import type { Pipeline, Stage } from '../../engine/stage.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { pimasterConfigSchema } from '../../pipelines/pimaster/options.ts';
import { scratch } from '../helpers/build.ts';

const child = new URL('../fixtures/signal-child.ts', import.meta.url).pathname;

test('the clean-up stack unwinds in reverse order, fully, even when a step fails', async (t) => {
  const done: string[] = [];
  const failures: string[] = [];
  const stack = new CleanupStack((label) => failures.push(label));
  stack.defer('a', () => done.push('a'));
  stack.defer('b', () => {
    throw new Error('b broke');
  });
  stack.defer('c', async (outcome) => done.push(`c:${outcome}`));
  const errors = await stack.unwind('failure');
  t.deepEqual(done, ['c:failure', 'a']);
  t.deepEqual(failures, ['b']);
  t.is(errors.length, 1);
  t.is(stack.size, 0);
});

test('a scope undoes only what it registered', async (t) => {
  const done: string[] = [];
  const stack = new CleanupStack();
  stack.defer('outer', () => done.push('outer'));
  await scoped(stack, new AbortController().signal, async () => {
    stack.defer('inner 1', () => done.push('inner 1'));
    stack.defer('inner 2', () => done.push('inner 2'));
  });
  t.deepEqual(done, ['inner 2', 'inner 1']);
  t.is(stack.size, 1);
});

function spawnChild(work: string, mode = 'wait') {
  return execa('node', [child, work, mode], { reject: false, all: true });
}

async function waitFor(predicate: () => boolean, what: string, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('SIGINT stops the running command and unwinds the whole stack in reverse order', async (t) => {
  const work = scratch();
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const build = spawnChild(work);
  let output = '';
  build.stdout!.on('data', (chunk: Buffer) => (output += chunk));
  // The pid file exists before the shell has written the pid into it: wait for the number.
  const pid = () => (existsSync(join(work, 'sleeper.pid')) ? Number(readFileSync(join(work, 'sleeper.pid'), 'utf8')) : 0);
  await waitFor(() => output.includes('ready') && pid() > 0, 'the child to start its command');
  const sleeper = pid();
  t.true(alive(sleeper));
  build.kill('SIGINT');
  const result = await build;
  t.is(result.exitCode, 130);
  t.deepEqual(readFileSync(join(work, 'journal'), 'utf8').trim().split('\n'), ['undo three', 'undo two started', 'undo two', 'undo one', 'exit 130']);
  t.false(alive(sleeper), 'the running command was ended');
  t.regex(result.all ?? '', /error: interrupted by SIGINT/);
});

test('a second SIGINT while cleaning up does not leave half the stack undone', async (t) => {
  const work = scratch();
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const build = spawnChild(work);
  await waitFor(() => existsSync(join(work, 'sleeper.pid')), 'the child to start its command');
  build.kill('SIGINT');
  const journal = join(work, 'journal');
  await waitFor(() => existsSync(journal) && readFileSync(journal, 'utf8').includes('undo two started'), 'the slow clean-up step');
  build.kill('SIGINT');
  build.kill('SIGTERM');
  const result = await build;
  t.is(result.exitCode, 130);
  t.deepEqual(readFileSync(journal, 'utf8').trim().split('\n'), ['undo three', 'undo two started', 'undo two', 'undo one', 'exit 130']);
  t.regex(result.all ?? '', /still cleaning up/);
});

test('SIGTERM is handled like SIGINT, with exit code 143', async (t) => {
  const work = scratch();
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const build = spawnChild(work);
  await waitFor(() => existsSync(join(work, 'sleeper.pid')), 'the child to start its command');
  build.kill('SIGTERM');
  const result = await build;
  t.is(result.exitCode, 143);
  t.deepEqual(readFileSync(join(work, 'journal'), 'utf8').trim().split('\n'), ['undo three', 'undo two started', 'undo two', 'undo one', 'exit 143']);
});

test('a failed command names the stage, the command, its exit code and its last lines; the stack unwinds', async (t) => {
  const work = scratch();
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const result = await spawnChild(work, 'fail');
  t.is(result.exitCode, 1);
  t.regex(result.all ?? '', /error: stage fail: `sh -c 'echo first; echo last words >&2; exit 3'` failed with exit code 3/);
  t.regex(result.all ?? '', /\| last words/);
  t.regex(result.all ?? '', /log: .*logs\/02-fail\.log/);
  t.deepEqual(readFileSync(join(work, 'journal'), 'utf8').trim().split('\n'), ['undo three', 'undo two started', 'undo two', 'undo one', 'exit 1']);
  const log = readFileSync(join(work, 'logs', '02-fail.log'), 'utf8');
  t.regex(log, /\$ sh -c .*\nfirst\nlast words\n.*exit 3 after \d+\.\d+ s/);
});

const keys: (keyof PimasterConfig)[] = ['arch', 'base', 'base-sha256', 'grow', 'overlay', 'compress', 'shrink-margin', 'expand-on-boot'];

test('configuration: defaults, then the file, then flags', (t) => {
  const config = resolveOptions(
    pimasterConfigSchema,
    keys,
    { file: { path: 'c.json', values: { arch: 'armhf', grow: '1G', compress: ['xz', 'zstd'] } }, flags: { grow: '512M', 'expand-on-boot': true } },
    'customize',
  );
  t.is(config.arch, 'armhf');
  t.is(config.grow, 512 * 2 ** 20);
  t.deepEqual(config.compress, ['xz', 'zstd']);
  t.true(config['expand-on-boot']);
  t.is(config.base, 'bookworm');
});

test('configuration errors name the key, the value and what is allowed', (t) => {
  const bad = (flags: Record<string, unknown>, file?: Record<string, unknown>) =>
    t.throws(() => resolveOptions(pimasterConfigSchema, keys, { flags, file: file && { path: 'site.json', values: file } }, 'customize'), {
      instanceOf: ConfigError,
    })!.message;
  t.is(bad({ arch: 'x86' }), '--arch "x86" is invalid: expected one of arm64, armhf');
  t.is(bad({ 'base-sha256': 'abc' }), '--base-sha256 "abc" is invalid: expected 64 hexadecimal digits');
  t.is(bad({ compress: ['xz,rar'] }), '--compress "xz,rar" is invalid: expected a comma-separated list of xz, zstd, gz, zip, tar.gz, none');
  t.is(bad({}, { grow: 'lots' }), 'site.json: "grow" "lots" is invalid: expected a size such as 512M, 2G or 1073741824');
  t.is(bad({}, { colour: 'blue' }), 'site.json: "colour": unknown option (see `build-image customize --help`)');
  t.is(bad({}, { hostnam: 'x', arch: 'arm64' }), 'site.json: "hostnam": unknown option (see `build-image customize --help`)');
  t.is(bad({}, { 'expand-on-boot': 'yes' }), 'site.json: "expand-on-boot" "yes" is invalid: expected true or false');
  t.is(bad({ name: 'x' }), '--name: not an option of `customize` (see `build-image customize --help`)');
});

test('--apt-proxy and --apt-mirror: the parsed URL, and no quote, space or line break that would add apt options or sources', (t) => {
  const apt: (keyof PimasterConfig)[] = ['apt-proxy', 'apt-mirror'];
  const resolve = (flags: Record<string, unknown>) => resolveOptions(pimasterConfigSchema, apt, { flags }, 'customize');
  t.is(resolve({ 'apt-mirror': 'HTTP://Mirror.Example/debian/' })['apt-mirror'], 'http://mirror.example/debian');
  t.is(resolve({ 'apt-proxy': 'http://127.0.0.1:3142' })['apt-proxy'], 'http://127.0.0.1:3142');
  for (const value of [
    'http://p:3142";\nAPT::Update::Pre-Invoke {"touch /tmp/owned";};//',
    'http://p:3142/ bookworm main\ndeb [trusted=yes] http://evil/ x',
    "http://p/'x",
    'http://p/a b',
    'http://p/\tx',
  ]) {
    const error = t.throws(() => resolve({ 'apt-proxy': value }), { instanceOf: ConfigError }, value)!;
    t.regex(
      error.message,
      /^--apt-proxy ".*" is invalid: expected an http\(s\) URL such as http:\/\/127\.0\.0\.1:3142 \(no quotes, spaces or control characters\)$/,
    );
  }
});

test('sizes', (t) => {
  t.is(parseSize('512M'), 512 * 2 ** 20);
  t.is(parseSize('1.5G'), 1.5 * 2 ** 30);
  t.is(parseSize('2GiB'), 2 * 2 ** 30);
  t.is(parseSize('4096'), 4096);
  t.throws(() => parseSize('-1G'), { any: true, is: 'a size such as 512M, 2G or 1073741824' as never });
});

const stage = (name: string, closedBy?: string): Stage => ({ name, closedBy, options: [], describe: () => name, run: async () => {} });
const pipeline: Pipeline = {
  name: 'p',
  summary: '',
  schema: engineSchema,
  stages: [stage('fetch'), stage('attach', 'finalize'), stage('overlay'), stage('finalize'), stage('shrink')],
};
const names = (stages: Stage[]) => stages.map((s) => s.name);

test('--from and --until select a part of the pipeline, reopening what the part needs', (t) => {
  t.deepEqual(names(selectStages(pipeline, {})), ['fetch', 'attach', 'overlay', 'finalize', 'shrink']);
  t.deepEqual(names(selectStages(pipeline, { from: 'overlay' })), ['attach', 'overlay', 'finalize', 'shrink']);
  t.deepEqual(names(selectStages(pipeline, { from: 'shrink' })), ['shrink']);
  t.deepEqual(names(selectStages(pipeline, { until: 'overlay' })), ['fetch', 'attach', 'overlay']);
  t.deepEqual(names(selectStages(pipeline, { from: 'finalize', until: 'finalize' })), ['attach', 'finalize']);
});

test('an unknown stage in --from is a clear error', (t) => {
  const error = t.throws(() => selectStages(pipeline, { from: 'shrnk' }), { instanceOf: ConfigError });
  t.is(error!.message, '--from "shrnk": no such stage in the p pipeline (stages: fetch, attach, overlay, finalize, shrink)');
  t.throws(() => selectStages(pipeline, { from: 'shrink', until: 'fetch' }), { message: /--from shrink comes after --until fetch/ });
});

test('the timing table adds up', (t) => {
  const table = timingTable([
    { stage: 'fetch', seconds: 1.25, commandSeconds: 1 },
    { stage: 'shrink', seconds: 2, commandSeconds: 1.5 },
  ]);
  t.regex(table, /fetch\s+1\.3 s\s+1\.0 s/);
  t.regex(table, /total\s+3\.3 s\s+2\.5 s/);
});
