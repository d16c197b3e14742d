/** Scripts inside real arm64 and armhf images under qemu-user, with real apt against the Debian mirror. */

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { execa } from 'execa';
import { processesIn } from '../../lib/chroot/environment.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { attachStage } from '../../stages/attach.ts';
import { chrootStage } from '../../stages/chroot.ts';
import { finalizeStage } from '../../stages/finalize.ts';
import { growStage } from '../../stages/grow.ts';
import { DEBIAN_MIRROR, debianImage, type FixtureArch, TEST_CACHE } from '../fixtures/debian-image.ts';
import { raspiosLite } from '../fixtures/raspios-image.ts';
import { startAptRelay } from '../helpers/apt-relay.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { loopsOn, mountsUnder } from '../helpers/leaks.ts';

/**
 * arm64: the plain fixture. armhf: the Raspbian look-alike, whose own archive cannot be reached
 * from here: --apt-mirror points it at the Debian mirror.
 */
const FIXTURES = {
  arm64: { image: () => debianImage('arm64'), mirror: undefined, preload: '/usr/lib/libarmmem-fixture.so' },
  armhf: { image: () => raspiosLite('bookworm', 'armhf'), mirror: DEBIAN_MIRROR, preload: '/usr/lib/arm-linux-gnueabihf/libarmmem-${PLATFORM}.so' },
};

/** A private, sparse copy of the cached fixture. */
async function fixtureCopy(dir: string, arch: FixtureArch): Promise<string> {
  const image = join(dir, 'image.img');
  await execa('cp', ['--sparse=always', await FIXTURES[arch].image(), image]);
  return image;
}

function script(dir: string, name: string, body: string): string {
  const path = join(dir, name);
  writeFileSync(path, `#!/bin/bash\n${body}\n`);
  return path;
}

/** debugfs requests on the image's root (read-only unless `write`). */
async function rootFile(image: string, request: string, write = false): Promise<string> {
  const { stdout } = await execa('sfdisk', ['--json', image]);
  const root = (JSON.parse(stdout) as { partitiontable: { partitions: Array<{ start: number; size: number }> } }).partitiontable.partitions[1]!;
  const { stdout: dev } = await execa('losetup', [
    '--find',
    '--show',
    ...(write ? [] : ['--read-only']),
    '--offset',
    String(root.start * 512),
    '--sizelimit',
    String(root.size * 512),
    image,
  ]);
  try {
    const r = await execa('debugfs', [...(write ? ['-w', '-f', '-'] : ['-R', request]), dev.trim()], { reject: false, input: write ? request : undefined });
    return `${r.stdout}\n${r.stderr.replace(/^debugfs [\d.]+ \(.*\)$/m, '')}`;
  } finally {
    await execa('losetup', ['-d', dev.trim()]);
  }
}

const logsOf = (config: PimasterConfig) =>
  readdirSync(join(config.work, 'logs'))
    .filter((f) => f.startsWith('chroot-'))
    .map((f) => readFileSync(join(config.work, 'logs', f), 'utf8'))
    .join('\n');

const INSTALL =
  'apt-get update -q\napt-get install -y -q --no-install-recommends hello\nhello\ncat /etc/resolv.conf | grep -c nameserver\necho "arch=$(dpkg --print-architecture) codename=$BUILD_CODENAME"';

for (const arch of ['arm64', 'armhf'] as const) {
  test.serial(`${arch}: apt-get install inside the image; the image's own files are as before afterwards`, async (t) => {
    const dir = scratch();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const image = await fixtureCopy(dir, arch);
    // resolv.conf as systemd-resolved leaves it (Ubuntu-like): the chroot must put the link back.
    await rootFile(image, 'rm /etc/resolv.conf\nsymlink /etc/resolv.conf ../run/systemd/resolve/stub-resolv.conf\n', true);
    const config = testConfig(dir, { arch, cache: TEST_CACHE, script: [script(dir, '10-hello.sh', INSTALL)], 'apt-mirror': FIXTURES[arch].mirror });
    await runStages([growStage, attachStage, chrootStage(), finalizeStage], config, { image });
    const log = logsOf(config);
    t.regex(log, /Hello, world!/);
    t.regex(log, new RegExp(`arch=${arch} codename=bookworm`));
    t.notRegex(log, /ld\.so: object .* cannot be preloaded/, 'ld.so.preload was set aside');
    t.deepEqual(await loopsOn(image), []);
    t.deepEqual(mountsUnder(dir), []);

    t.regex(await rootFile(image, 'stat /usr/bin/hello'), /Type: regular/);
    t.regex(await rootFile(image, 'stat /etc/resolv.conf'), /Type: symlink[\s\S]*Fast link dest: "..\/run\/systemd\/resolve\/stub-resolv.conf"/);
    t.is((await rootFile(image, 'cat /etc/ld.so.preload')).trim(), FIXTURES[arch].preload);
    for (const gone of ['/usr/sbin/policy-rc.d', '/etc/dpkg/dpkg.cfg.d/zz-build-image', '/etc/apt/apt.conf.d/zz-build-image', '/run/build-image']) {
      t.regex(await rootFile(image, `stat ${gone}`), /File not found/, `${gone} is gone`);
    }
    t.notRegex(await rootFile(image, 'ls /var/cache/apt/archives'), /\.deb/, 'no package stays in the image');
    const caches = readdirSync(join(TEST_CACHE, 'apt')).filter((d) => d.startsWith(`bookworm-${arch}-`));
    t.true(
      caches.some((d) => readdirSync(join(TEST_CACHE, 'apt', d)).some((f) => /^hello_.*\.deb$/.test(f))),
      'the package is in the host cache, under its archive',
    );
  });
}

test.serial('a second build downloads no package again: the apt archive cache is shared', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = await fixtureCopy(dir, 'arm64');
  const config = testConfig(dir, { cache: TEST_CACHE, script: [script(dir, '10-hello.sh', INSTALL)] });
  await runStages([growStage, attachStage, chrootStage(), finalizeStage], config, { image });
  const log = logsOf(config);
  t.regex(log, /Hello, world!/);
  t.notRegex(log, /^Get:\d+ \S+ bookworm\/main arm64 hello /m, 'hello was not downloaded');
  t.regex(log, /Need to get 0 B/);
});

test.serial("Python modules are compiled once, at the end, by the host's Python: the same .pyc bytes as the image's own compile", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = await fixtureCopy(dir, 'arm64');
  const pyc = '/usr/lib/python3/dist-packages/__pycache__/six.cpython-311.pyc';
  const install = script(
    dir,
    '10-six.sh',
    `apt-get update -q\napt-get install -y -q --no-install-recommends python3-six\ntest -e ${pyc} || echo "no six.pyc while the session lasts"`,
  );
  // The next stage is a new session: it sees what the end of the first one compiled.
  mkdirSync(join(dir, 'check'));
  script(
    join(dir, 'check'),
    '10-check.sh',
    [
      'set -e',
      `python3 -c "import py_compile; py_compile.compile('/usr/lib/python3/dist-packages/six.py', cfile='/tmp/six.pyc', doraise=True)"`,
      `cmp /tmp/six.pyc ${pyc} && echo "six.pyc: the same bytes as the image's own py_compile"`,
      `before=$(stat -c %Y ${pyc}); python3 -c 'import six'; [ "$(stat -c %Y ${pyc})" = "$before" ] && echo "six imports without compiling again"`,
      'ls /usr/share/python3/debpython/__pycache__/version.cpython-311.pyc && echo "python3-minimal\'s private modules compiled"',
    ].join('\n'),
  );
  const config = testConfig(dir, { cache: TEST_CACHE, script: [install] });
  await runStages([growStage, attachStage, chrootStage(), chrootStage({ name: 'check', scriptsDir: join(dir, 'check'), user: false }), finalizeStage], config, {
    image,
  });
  const log = logsOf(config);
  t.regex(log, /no six\.pyc while the session lasts/);
  t.regex(log, /python3\.11: \d+ modules of \d+ py3compile calls compiled by the host's Python 3\.11\.\d+/);
  t.regex(log, /six\.pyc: the same bytes as the image's own py_compile/);
  t.regex(log, /six imports without compiling again/);
  t.regex(log, /python3-minimal's private modules compiled/);
  t.regex(await rootFile(image, 'stat /run/build-image'), /File not found/);
});

test.serial("dpkg's unpacking helpers run natively in the host's busybox: the same files, and other packages go to the image's dpkg-deb", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = await fixtureCopy(dir, 'arm64');
  const listing = (d: string) => `cd ${d} && find . -printf '%p %m %u %g %s\\n' | sort && cat $(find . -type f | sort) | md5sum`;
  const install = script(
    dir,
    '10-native.sh',
    [
      'apt-get update -q',
      'apt-get install -y -q --no-install-recommends pv',
      'echo "dpkg-deb is $(command -v dpkg-deb)"',
      'dpkg --verify pv && echo "pv: every file matches its md5sum"',
      'deb=$(ls /var/cache/apt/archives/pv_*.deb)',
      '[ "$(dpkg-deb --fsys-tarfile $deb | md5sum)" = "$(/usr/bin/dpkg-deb --fsys-tarfile $deb | md5sum)" ] && echo "the same tar stream as the image\'s dpkg-deb"',
      'dpkg-deb --control $deb /tmp/native && /usr/bin/dpkg-deb --control $deb /tmp/emulated',
      `[ "$(${listing('/tmp/native')})" = "$(${listing('/tmp/emulated')})" ] && echo "the same control files, modes and owners"`,
      'dpkg-split -Qao /tmp/part $deb || echo "dpkg-split: exit $?"',
      // Not plain (gzip): the image's own dpkg-deb unpacks it.
      'mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/share/gz-fixture && echo hello > /tmp/pkg/usr/share/gz-fixture/file',
      "printf 'Package: gz-fixture\\nVersion: 1\\nArchitecture: all\\nMaintainer: t <t@example.org>\\nDescription: t\\n' > /tmp/pkg/DEBIAN/control",
      'dpkg-deb -Zgzip --root-owner-group -b /tmp/pkg /tmp/gz.deb >/dev/null && dpkg -i /tmp/gz.deb >/dev/null && echo "gzip package: $(cat /usr/share/gz-fixture/file)"',
      // Plain but cut short: refused, as the image's dpkg-deb refuses it.
      'head -c $(($(stat -c %s $deb) - 64)) $deb > /tmp/cut.deb',
      'dpkg-deb --fsys-tarfile /tmp/cut.deb > /dev/null || echo "a truncated package: dpkg-deb exit $?"',
      'dpkg -i /tmp/cut.deb || echo "a truncated package: dpkg exit $?"',
    ].join('\n'),
  );
  const config = testConfig(dir, { cache: TEST_CACHE, script: [install] });
  await runStages([growStage, attachStage, chrootStage(), finalizeStage], config, { image });
  const log = logsOf(config);
  t.notRegex(log, /native-unpack off/);
  t.regex(log, /dpkg-deb is \/run\/build-image\/stand-ins\/dpkg-deb/);
  t.regex(log, /pv: every file matches its md5sum/);
  t.regex(log, /the same tar stream as the image's dpkg-deb/);
  t.regex(log, /the same control files, modes and owners/);
  t.regex(log, /dpkg-split: exit 1/);
  t.regex(log, /gzip package: hello/);
  t.regex(log, /unxz: corrupted data\n(.*\n)?a truncated package: dpkg-deb exit [1-9]/); // refused by busybox, the native path
  t.regex(log, /a truncated package: dpkg exit [1-9]/);
});

test.serial('a failing script: its name, exit code and last lines; nothing left behind', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = await fixtureCopy(dir, 'arm64');
  const bad = script(dir, '20-broken.sh', 'echo preparing\necho "something went wrong" >&2\nfalse\necho never');
  const error = await t.throwsAsync(runStages([attachStage, chrootStage(), finalizeStage], testConfig(dir, { cache: TEST_CACHE, script: [bad] }), { image }));
  t.regex(error!.message, /^stage chroot: `script .*20-broken\.sh` failed with exit code 1$/);
  t.deepEqual((error as unknown as { tail: string[] }).tail.slice(-2), ['preparing', 'something went wrong']);
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test.serial('Ctrl-C in the middle of a script leaves no mount, loop device or process behind', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = await fixtureCopy(dir, 'arm64');
  // The background process holds a file under the apt archive mount, as apt stopped mid-download would.
  const slow = script(dir, '30-slow.sh', 'exec 3>/var/cache/apt/archives/partial/held\nsleep 600 &\necho started\nsleep 600');
  const child = execa('node', [new URL('../fixtures/chroot-child.ts', import.meta.url).pathname, dir, image, slow, 'arm64'], { reject: false, all: true });
  const logs = join(dir, 'work', 'logs');
  const started = () => existsSync(logs) && readdirSync(logs).some((f) => f.startsWith('chroot-') && readFileSync(join(logs, f), 'utf8').includes('started'));
  for (let i = 0; !started(); i++) {
    if (i > 600) throw new Error('the script never started');
    await sleep(100);
  }
  const root = join(dir, 'work', 'root');
  t.true(processesIn(root).length >= 2, 'the script and its background process run in the image');
  child.kill('SIGINT');
  const result = await child;
  t.is(result.exitCode, 130, result.all);
  t.deepEqual(processesIn(root), []);
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test.serial('--apt-mirror and --apt-proxy: apt goes through them while building; the sources are restored after', async (t) => {
  const relay = await startAptRelay();
  const dir = scratch();
  t.teardown(async () => {
    await relay.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const image = await fixtureCopy(dir, 'arm64');
  const before = await rootFile(image, 'cat /etc/apt/sources.list');
  const show = script(dir, '10-sources.sh', 'grep -h "^deb\\|^URIs" /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true\napt-get update -q');
  // Grown first, as every build is: the lists of two apt updates do not fit the fixture's free space.
  const mirror = testConfig(dir, { cache: TEST_CACHE, script: [show], 'apt-mirror': `${relay.origin}/debian` });
  await runStages([growStage, attachStage, chrootStage(), finalizeStage], mirror, { image });
  t.regex(logsOf(mirror), new RegExp(`deb ${relay.origin}/debian bookworm main`));
  t.true(
    relay.requests.some((r) => /^\/debian\/dists\/bookworm\/InRelease$/.test(r)),
    relay.requests.join('\n'),
  );
  t.is(await rootFile(image, 'cat /etc/apt/sources.list'), before, "the sources are the image's own again");

  relay.requests.length = 0;
  rmSync(join(dir, 'work'), { recursive: true, force: true });
  const proxy = testConfig(dir, { cache: TEST_CACHE, script: [show], 'apt-proxy': relay.origin });
  await runStages([attachStage, chrootStage(), finalizeStage], proxy, { image });
  t.true(
    relay.requests.some((r) => /^http:\/\/deb\.debian\.org\/debian\/dists\/bookworm\/InRelease$/.test(r)),
    relay.requests.join('\n'),
  );
  t.notRegex(await rootFile(image, 'ls /etc/apt/apt.conf.d'), /zz-build-image/, 'no proxy setting stays');
});

test.serial('--apt-mirror on an image whose sources name no Debian or Raspbian archive: one line, nothing left behind', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = await fixtureCopy(dir, 'arm64');
  await rootFile(image, 'cd /etc/apt\nrm sources.list\nwrite /dev/null sources.list\n', true);
  const config = testConfig(dir, { cache: TEST_CACHE, script: [script(dir, '10-true.sh', 'true')], 'apt-mirror': 'http://127.0.0.1:9/debian' });
  const error = await t.throwsAsync(runStages([attachStage, chrootStage(), finalizeStage], config, { image }));
  t.is(
    error!.message,
    "--apt-mirror http://127.0.0.1:9/debian: the image's apt sources name no Debian or Raspbian archive to replace (they name: none); leave --apt-mirror out, or use --apt-proxy",
  );
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test.serial('--shell-on-error opens a shell inside the image where a script failed (in a real terminal, tmux)', async (t) => {
  const dir = scratch();
  const session = `build-image-test-${process.pid}`;
  t.teardown(async () => {
    await execa('tmux', ['kill-session', '-t', session], { reject: false });
    rmSync(dir, { recursive: true, force: true });
  });
  const image = await fixtureCopy(dir, 'arm64');
  const bad = script(dir, '40-broken.sh', 'echo before the failure\nfalse');
  const child = new URL('../fixtures/chroot-child.ts', import.meta.url).pathname;
  await execa('tmux', [
    'new-session',
    '-d',
    '-s',
    session,
    '-x',
    '160',
    '-y',
    '40',
    `node ${child} ${dir} ${image} ${bad} arm64 --shell-on-error; echo $? > ${dir}/exit`,
  ]);
  const screen = async () => (await execa('tmux', ['capture-pane', '-p', '-t', session], { reject: false })).stdout;
  for (let i = 0; !(await screen()).includes('a shell inside the image follows'); i++) {
    if (i > 600) return t.fail(`no shell:\n${await screen()}`);
    await sleep(100);
  }
  await execa('tmux', [
    'send-keys',
    '-t',
    session,
    'echo "inside $BUILD_ARCH $(uname -m) $(ls /proc | grep -c \'^[0-9]\')" > /root/shell-was-here; exit',
    'Enter',
  ]);
  for (let i = 0; !existsSync(join(dir, 'exit')); i++) {
    if (i > 600) return t.fail(`the build did not end:\n${await screen()}`);
    await sleep(100);
  }
  t.is(readFileSync(join(dir, 'exit'), 'utf8').trim(), '1', 'the build still fails after the shell');
  const was = await rootFile(image, 'cat /root/shell-was-here');
  t.regex(was, /^inside arm64 aarch64 \d+$/m, 'the shell ran inside the image, under emulation');
  t.true(Number(/^inside arm64 aarch64 (\d+)$/m.exec(was)?.[1]) < 10, "in the sandbox: its own few processes, not the host's");
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});
