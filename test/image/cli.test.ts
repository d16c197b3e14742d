/** The build-image command as a user runs it: help, plan, doctor, bad input, customize end to end. */
import test from 'ava';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { scratch, smallDisk } from '../helpers/build.ts';
import { startServer } from '../helpers/http-server.ts';
import { loopsOn, loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const run = (args: string[], options: { cwd?: string } = {}) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' }, ...options });

test('--help lists the commands; --help build and customize list their options with defaults', async (t) => {
  const top = await run(['--help']);
  t.is(top.exitCode, 0);
  t.regex(top.stdout, /build-image customize \[options\]/);
  t.regex(top.stdout, /build-image doctor/);
  const build = await run(['--help', 'build']);
  t.regex(build.stdout, /--arch ARCH\s+architecture of the image: arm64 or armhf \(default: arm64\)/);
  t.regex(build.stdout, /--ip ADDR\/PREFIX\s+.*\(default: 48\.48\.0\.254\/24\)/);
  t.regex(build.stdout, /Stages: fetch -> files -> extract -> grow -> attach -> overlay -> chroot -> user-overlay -> settings -> user-chroot -> finalize -> shrink -> compress/);
  t.regex(build.stdout, /--no-cache\s+neither start from nor save snapshots/);
  const cache = await run(['--help', 'cache']);
  t.regex(cache.stdout, /^build-image cache ls \[--cache DIR\]/);
  const customize = await run(['customize', '--help']);
  t.regex(customize.stdout, /--overlay DIR \.\.\./);
  t.regex(customize.stdout, /--hostname NAME +the image's host name \(default: \(unset\)\)/, 'a customized image keeps its host name unless told');
  t.regex(build.stdout, /--hostname NAME +the image's host name \(default: pimaster\)/);
  t.regex(build.stdout, /--wifi-ssid SSID +a Wi-Fi network to join/, 'the pimaster takes the settings that make sense on it');
  t.notRegex(build.stdout, /--user |--password-|--ssh /, 'but not a first user: it has none');
});

test('--version prints the version', async (t) => {
  const result = await run(['--version']);
  t.is(result.stdout.trim(), version);
});

test('--plan prints every stage with its resolved options and touches nothing', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'site.json'), JSON.stringify({ arch: 'armhf', hostname: 'from-file', compress: ['xz', 'zstd'] }));
  const result = await run(['--plan', '--config', join(dir, 'site.json'), '--hostname', 'from-flag', '--work', join(dir, 'work')]);
  t.is(result.exitCode, 0, result.stderr);
  t.regex(result.stdout, /^pimaster: 13 of 13 stages/);
  t.regex(result.stdout, / 1\. fetch +download the newest Raspberry Pi OS Lite bookworm \(armhf\)/);
  t.regex(result.stdout, /\n +arch = armhf\n/);
  t.regex(result.stdout, /\n +hostname = from-flag\n/, 'flags win over the file');
  t.regex(result.stdout, /\n +compress = xz, zstd\n/);
  t.regex(result.stdout, /\n +shrink-margin = 64\.0 MiB\n/);
  t.false(existsSync(join(dir, 'work')), 'nothing was touched');
});

test('--plan --from shows the part of the pipeline that would run', async (t) => {
  const result = await run(['customize', '--plan', '--from', 'overlay', '--until', 'finalize']);
  t.is(result.exitCode, 0, result.stderr);
  t.deepEqual([...result.stdout.matchAll(/^ *\d+\. (\S+)/gm)].map((m) => m[1]), ['attach', 'overlay', 'settings', 'chroot', 'finalize']);
});

for (const [args, message] of [
  [['--arch', 'x86'], /^error: --arch "x86" is invalid: expected one of arm64, armhf$/],
  [['--ip', '48.48.0.300/24'], /^error: --ip "48\.48\.0\.300\/24" is invalid: expected an IPv4 address with a prefix length/],
  [['--ip', '48.48.0.0/24'], /^error: --ip "48\.48\.0\.0\/24" is invalid: expected a host address, not the network or broadcast address of \/24$/],
  [['--hostname', 'pi_master'], /^error: --hostname "pi_master" is invalid: expected an RFC 1123 host name/],
  [['--interface', 'eth0/1'], /^error: --interface "eth0\/1" is invalid: expected a network interface name/],
  [['--ssh-key', '/nonexistent.pub'], /^error: --ssh-key "\/nonexistent\.pub" is invalid: expected an existing file holding OpenSSH public keys/],
  [['--piseduce-webui', 'https://example.invalid/x.git#bad..ref'], /^error: --piseduce-webui ".*" is invalid: expected a git URL or directory followed by a valid ref/],
  [['--environment', 'no-equals-sign'], /^error: --environment "no-equals-sign" is invalid: expected NAME=SOURCE/],
  [['--colour', 'blue'], /^error: --colour: unknown option \(see build-image --help build\)$/],
  [['customize', '--ip', '10.0.0.1/24'], /^error: --ip: not an option of `customize` \(see build-image --help customize\)$/],
  [['--user', 'alice'], /^error: --user: not an option of `build` \(see build-image --help build\)$/],
  [['--from', 'shrnk'], /^error: --from "shrnk": no such stage in the pimaster pipeline \(stages: fetch, files, extract, grow, attach, overlay, chroot, user-overlay, settings, user-chroot, finalize, shrink, compress\)$/],
  [['--arch'], /^error: --arch: needs a value/],
] as const) {
  test(`bad input: ${args.join(' ')} -> one line, exit code 2`, async (t) => {
    const result = await run(args[0] === 'customize' ? ['customize', '--plan', ...args.slice(1)] : ['--plan', ...args]);
    t.is(result.exitCode, 2);
    t.regex(result.stderr.trim(), message);
    t.is(result.stderr.trim().split('\n').length, 1);
  });
}

test('a private key given as --ssh-key is refused, naming the fix', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'key')]);
  const bad = await run(['--plan', '--ssh-key', join(dir, 'key')]);
  t.regex(bad.stderr, /this is a private key, give the matching \.pub file/);
  const good = await run(['--plan', '--ssh-key', join(dir, 'key.pub')]);
  t.is(good.exitCode, 0, good.stderr);
});

test('doctor checks the host, one line per check with its fix', async (t) => {
  const result = await run(['doctor']);
  t.is(result.exitCode, 0, result.stdout);
  for (const name of ['root', 'node', 'loop devices', 'binfmt arm64', 'binfmt armhf', 'sfdisk', 'mcopy', 'resize2fs', 'zerofree', 'bmaptool', 'disk']) {
    t.regex(result.stdout, new RegExp(`^ok\\s+${name}\\s`, 'm'));
  }
});

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
  const args = ['customize', '--base', server.url('base.img.xz'), '--overlay', join(dir, 'site'), '--compress', 'xz,zip', '--name', 'site', '--work', join(dir, 'work'), '--cache', join(dir, 'cache'), '--out', join(dir, 'out')];
  const result = await run(args);
  t.is(result.exitCode, 0, result.stderr);
  t.regex(result.stderr, /\[\d\d:\d\d:\d\d\] fetch: started/);
  t.regex(result.stderr, /\[\d\d:\d\d:\d\d\] compress: done in/);
  t.regex(result.stderr, /total\s+\d+\.\d s/);
  const out = readdirSync(join(dir, 'out')).sort();
  t.deepEqual(out, ['os-list.json', 'site.cdx.json', 'site.img.bmap', 'site.img.xz', 'site.img.xz.sha256', 'site.manifest.json', 'site.zip', 'site.zip.sha256']);
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
    const child = execa('node', [cli, 'customize', '--base', server.url('base.img.xz'), '--work', join(dir, 'work'), '--cache', join(dir, 'cache'), '--out', join(dir, 'out')], { reject: false, env: { CI: 'true' }, all: true });
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
  const result = await run(['customize', '--base', server.url('base.img.xz'), '--work', join(small, 'work'), '--cache', join(dir, 'cache'), '--out', join(dir, 'out'), '--grow', '64M']);
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
  t.deepEqual(result.stderr.split('\n').filter((l) => l.startsWith('error:')), [`error: --work ${mine}: holds files build-image did not make (no .build-image-work); pass a new or empty directory, the build deletes what it makes there`]);
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
  const args = (out: string) => ['customize', '--base', server.url('base.img.xz'), '--work', join(dir, 'work'), '--cache', join(dir, 'cache'), '--out', join(dir, out)];
  const first = startBuild(args('out1'), 'attach: started');
  await first.reached;
  const second = await run(args('out2'));
  t.is(second.exitCode, 2, second.stderr);
  t.deepEqual(second.stderr.split('\n').filter((l) => l.startsWith('error:')), [`error: --work ${join(dir, 'work')}: another build (pid ${first.child.pid}) is using it; wait for it to end or pass another --work`]);
  const result = await first.child;
  t.is(result.exitCode, 0, result.all);
  t.false(existsSync(join(dir, 'out2')));
  t.deepEqual(readdirSync(join(dir, 'work')).filter((f) => f.startsWith('.build-image-lock')), [], 'the lock is gone with its build');
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
