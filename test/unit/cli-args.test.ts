/** The build-image command's arguments as a user gives them: help, version, --plan, bad input. Nothing is built. */

import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { scratch } from '../helpers/build.ts';

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
  t.regex(
    build.stdout,
    /Stages: fetch -> files -> extract -> grow -> attach -> overlay -> chroot -> user-overlay -> settings -> user-chroot -> finalize -> shrink -> compress/,
  );
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

test('--version prints the version and the commit', async (t) => {
  const result = await run(['--version']);
  const head = (await execa('git', ['rev-parse', 'HEAD'], { cwd: new URL('../..', import.meta.url) })).stdout;
  t.regex(result.stdout.trim(), new RegExp(`^${version.replace(/\./g, '\\.')} \\(commit ${head}(-dirty)?\\)$`));
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
  t.deepEqual(
    [...result.stdout.matchAll(/^ *\d+\. (\S+)/gm)].map((m) => m[1]),
    ['attach', 'overlay', 'settings', 'chroot', 'finalize'],
  );
});

for (const [args, message] of [
  [['--arch', 'x86'], /^error: --arch "x86" is invalid: expected one of arm64, armhf$/],
  [['--ip', '48.48.0.300/24'], /^error: --ip "48\.48\.0\.300\/24" is invalid: expected an IPv4 address with a prefix length/],
  [['--ip', '48.48.0.0/24'], /^error: --ip "48\.48\.0\.0\/24" is invalid: expected a host address, not the network or broadcast address of \/24$/],
  [['--hostname', 'pi_master'], /^error: --hostname "pi_master" is invalid: expected an RFC 1123 host name/],
  [['--interface', 'eth0/1'], /^error: --interface "eth0\/1" is invalid: expected a network interface name/],
  [['--ssh-key', '/nonexistent.pub'], /^error: --ssh-key "\/nonexistent\.pub" is invalid: expected an existing file holding OpenSSH public keys/],
  [
    ['--piseduce-webui', 'https://example.invalid/x.git#bad..ref'],
    /^error: --piseduce-webui ".*" is invalid: expected a git URL or directory followed by a valid ref/,
  ],
  [['--environment', 'no-equals-sign'], /^error: --environment "no-equals-sign" is invalid: expected NAME=SOURCE/],
  [['--colour', 'blue'], /^error: --colour: unknown option \(see build-image --help build\)$/],
  [['customize', '--ip', '10.0.0.1/24'], /^error: --ip: not an option of `customize` \(see build-image --help customize\)$/],
  [['--user', 'alice'], /^error: --user: not an option of `build` \(see build-image --help build\)$/],
  [
    ['--from', 'shrnk'],
    /^error: --from "shrnk": no such stage in the pimaster pipeline \(stages: fetch, files, extract, grow, attach, overlay, chroot, user-overlay, settings, user-chroot, finalize, shrink, compress\)$/,
  ],
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
