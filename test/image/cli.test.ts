/**
 * The build-image command as a user runs it on a tiny image served over HTTP: customize end to end,
 * Ctrl-C, a full work disk, a work directory of the user's files, two builds in one work directory,
 * a build killed with SIGKILL.
 */

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { scratch, smallDisk } from '../helpers/build.ts';
import { startServer } from '../helpers/http-server.ts';
import { loopsOn, loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const run = (args: string[], options: { cwd?: string } = {}) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' }, ...options });

/** A tiny base image served over HTTP, as an .img.xz with its sidecar. */
async function served(dir: string, payloadMiB = 8) {
  mkdirSync(join(dir, 'www'));
  const img = join(dir, 'www', 'base.img');
  await makeTinyImage(img, { payloadMiB });
  await execa('xz', ['-T0', '-1', '-k', img]);
  writeFileSync(`${img}.xz.sha256`, `${(await execa('sha256sum', [`${img}.xz`])).stdout.split(' ')[0]}  base.img.xz\n`);
  return startServer(join(dir, 'www'));
}

test('customize end to end: base over HTTP, an overlay, shrunk, xz and zip with sidecars, bmap and manifest', async (t) => {
  const dir = scratch();
  const server = await served(dir);
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  mkdirSync(join(dir, 'site/rootfs/etc'), { recursive: true });
  mkdirSync(join(dir, 'site/boot'), { recursive: true });
  writeFileSync(join(dir, 'site/rootfs/etc/motd'), 'customized\n');
  writeFileSync(join(dir, 'site/boot/ssh'), '');
  const args = [
    'customize',
    '--base',
    server.url('base.img.xz'),
    '--overlay',
    join(dir, 'site'),
    '--compress',
    'xz,zip',
    '--name',
    'site',
    '--work',
    join(dir, 'work'),
    '--cache',
    join(dir, 'cache'),
    '--out',
    join(dir, 'out'),
  ];
  const result = await run(args);
  t.is(result.exitCode, 0, result.stderr);
  t.regex(result.stderr, /\[\d\d:\d\d:\d\d\] fetch: started/);
  t.regex(result.stderr, /\[\d\d:\d\d:\d\d\] compress: done in/);
  t.regex(result.stderr, /total\s+\d+\.\d s/);
  const out = readdirSync(join(dir, 'out')).sort();
  t.deepEqual(out, [
    'os-list.json',
    'site.cdx.json',
    'site.img.bmap',
    'site.img.xz',
    'site.img.xz.sha256',
    'site.manifest.json',
    'site.zip',
    'site.zip.sha256',
  ]);
  const check = await execa('sha256sum', ['-c', 'site.img.xz.sha256', 'site.zip.sha256'], { cwd: join(dir, 'out') });
  t.regex(check.stdout, /site\.img\.xz: OK\nsite\.zip: OK/);
  const manifest = JSON.parse(readFileSync(join(dir, 'out', 'site.manifest.json'), 'utf8')) as Record<string, unknown>;
  t.like(manifest, { arch: 'arm64', release: 'bookworm' });
  t.deepEqual(await loopsOn(join(dir, 'work', 'image.img')), []);
  t.deepEqual(mountsUnder(dir), []);

  // A second run downloads nothing: the image comes from the cache.
  const gets = server.gets('/base.img.xz').length;
  t.is((await run(args)).exitCode, 0);
  t.is(server.gets('/base.img.xz').length, gets);
});

for (const stage of ['attach', 'shrink'] as const) {
  test(`Ctrl-C during ${stage}: exit 130, no loop device, mount or partial output left`, async (t) => {
    const dir = scratch();
    const server = await served(dir);
    t.teardown(async () => {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    });
    const child = execa(
      'node',
      [cli, 'customize', '--base', server.url('base.img.xz'), '--work', join(dir, 'work'), '--cache', join(dir, 'cache'), '--out', join(dir, 'out')],
      { reject: false, env: { CI: 'true' }, all: true },
    );
    let seen = '';
    await new Promise<void>((resolve) => {
      child.stderr!.on('data', (chunk: Buffer) => {
        seen += chunk;
        if (seen.includes(`${stage}: started`)) resolve();
      });
      void child.then(() => resolve());
    });
    child.kill('SIGINT');
    const result = await child;
    t.is(result.exitCode, 130, result.all);
    t.regex(result.all ?? '', /error: interrupted by SIGINT/);
    t.deepEqual(await loopsOn(join(dir, 'work', 'image.img')), []);
    t.deepEqual(mountsUnder(dir), []);
    t.false(existsSync(join(dir, 'out')) && readdirSync(join(dir, 'out')).length > 0, 'no output');
  });
}

test('a work directory that runs out of space: one line, nothing left behind, the input untouched', async (t) => {
  const dir = scratch();
  const server = await served(dir, 48);
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const small = await smallDisk(t, dir, 40);
  const before = (await execa('sha256sum', [join(dir, 'www', 'base.img.xz')])).stdout;
  const result = await run([
    'customize',
    '--base',
    server.url('base.img.xz'),
    '--work',
    join(small, 'work'),
    '--cache',
    join(dir, 'cache'),
    '--out',
    join(dir, 'out'),
    '--grow',
    '64M',
  ]);
  t.is(result.exitCode, 1);
  const errors = result.stderr.split('\n').filter((l) => l.startsWith('error:'));
  t.is(errors.length, 1);
  t.regex(errors[0]!, /no space left on device/i);
  t.deepEqual(mountsUnder(join(small, 'work')), []);
  t.deepEqual(await loopsOn(join(small, 'work', 'image.img')), []);
  t.is((await execa('sha256sum', [join(dir, 'www', 'base.img.xz')])).stdout, before);
});

test("--work on a directory of the user's files is refused before anything runs, every file kept", async (t) => {
  const dir = scratch();
  const server = await served(dir);
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const mine = join(dir, 'mine');
  mkdirSync(join(mine, 'boot'), { recursive: true });
  writeFileSync(join(mine, 'boot', 'keep.txt'), 'mine\n');
  const result = await run(['customize', '--base', server.url('base.img.xz'), '--work', mine, '--cache', join(dir, 'cache'), '--out', join(dir, 'out')]);
  t.is(result.exitCode, 2, result.stderr);
  t.deepEqual(
    result.stderr.split('\n').filter((l) => l.startsWith('error:')),
    [
      `error: --work ${mine}: holds files build-image did not make (no .build-image-work); pass a new or empty directory, the build deletes what it makes there`,
    ],
  );
  t.deepEqual(readdirSync(mine), ['boot']);
  t.is(readFileSync(join(mine, 'boot', 'keep.txt'), 'utf8'), 'mine\n');
  t.is(server.gets('/base.img.xz').length, 0, 'nothing downloaded');
});

/** A customize run in the background, resolved once its stderr shows `text` (or it ends). */
function startBuild(args: string[], text: string) {
  const child = execa('node', [cli, ...args], { reject: false, env: { CI: 'true' }, all: true });
  let seen = '';
  const state = { ended: false };
  const reached = new Promise<void>((resolve) => {
    child.stderr!.on('data', (chunk: Buffer) => {
      seen += chunk;
      if (seen.includes(text)) resolve();
    });
    void child.then(() => {
      state.ended = true;
      resolve();
    });
  });
  return { child, reached, state };
}

test('two builds in one work directory: the second names the first and exits 2, the first finishes', async (t) => {
  const dir = scratch();
  const server = await served(dir);
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const args = (out: string) => [
    'customize',
    '--base',
    server.url('base.img.xz'),
    '--work',
    join(dir, 'work'),
    '--cache',
    join(dir, 'cache'),
    '--out',
    join(dir, out),
  ];
  const first = startBuild(args('out1'), 'attach: started');
  await first.reached;
  const second = await run(args('out2'));
  t.is(second.exitCode, 2, second.stderr);
  t.deepEqual(
    second.stderr.split('\n').filter((l) => l.startsWith('error:')),
    [`error: --work ${join(dir, 'work')}: another build (pid ${first.child.pid}) is using it; wait for it to end or pass another --work`],
  );
  const result = await first.child;
  t.is(result.exitCode, 0, result.all);
  t.false(existsSync(join(dir, 'out2')));
  t.deepEqual(
    readdirSync(join(dir, 'work')).filter((f) => f.startsWith('.build-image-lock')),
    [],
    'the lock is gone with its build',
  );
});

test('a build killed with SIGKILL: doctor names its mounts and loop devices, the next build undoes them and succeeds', async (t) => {
  const dir = scratch();
  const server = await served(dir);
  t.teardown(async () => {
    await server.close();
    for (const target of mountsUnder(dir).reverse()) await execa('umount', [target], { reject: false });
    for (const device of await loopsUnder(dir)) await execa('losetup', ['-d', device], { reject: false });
    rmSync(dir, { recursive: true, force: true });
  });
  const work = join(dir, 'work');
  const args = ['customize', '--base', server.url('base.img.xz'), '--work', work, '--cache', join(dir, 'cache'), '--out', join(dir, 'out')];
  const killed = startBuild(args, 'attach: started');
  await killed.reached;
  while (mountsUnder(work).length === 0 && !killed.state.ended) await new Promise((resolve) => setTimeout(resolve, 20));
  killed.child.kill('SIGKILL');
  await killed.child;
  const left = mountsUnder(work);
  t.true(left.length > 0, 'the killed build left its mounts');
  t.true((await loopsUnder(work)).length > 0, 'and its loop devices');

  const doctor = await run(['doctor', '--work', work]);
  const line = doctor.stdout.split('\n').find((l) => l.includes('work dir')) ?? '';
  t.regex(line, /^warn\s+work dir\s+\d+ mounts and \d+ loop devices under .* left by a killed build/);
  for (const target of left) t.true(line.includes(`umount ${target}`), `doctor gives the command for ${target}`);

  const next = await run(args);
  t.is(next.exitCode, 0, next.stderr);
  t.regex(next.stderr, /undid \d+ mounts? and \d+ loop devices? left by a build that was killed \(pid \d+\)/);
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
  t.true(existsSync(join(dir, 'out')) && readdirSync(join(dir, 'out')).some((f) => f.endsWith('.img.xz')));
});
