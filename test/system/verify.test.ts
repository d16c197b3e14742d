/**
 * `build-image verify` end to end: the pimaster built from the fixture (served over HTTP) booted
 * in QEMU and checked; an image that never comes up; Ctrl-C while the guest boots. Each run must
 * leave no QEMU process, loop device, mount or copy behind, and the input image untouched.
 */

import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { execa } from 'execa';
import { debianImage, TEST_CACHE } from '../fixtures/debian-image.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { scratch } from '../helpers/build.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';
import { pimasterBuild } from '../helpers/pimaster-build.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const verify = (args: string[]) => execa('node', [cli, 'verify', ...args], { reject: false, env: { CI: 'true' } });

/** Processes whose command line mentions `dir` (QEMU runs the copy from there). */
function processesNaming(dir: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmdline.includes(dir) && !cmdline.includes(cli)) found.push(`${pid}: ${cmdline.slice(0, 80)}`);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function assertNothingLeft(t: import('ava').ExecutionContext, dir: string): Promise<void> {
  t.deepEqual(processesNaming(dir), [], 'no QEMU outlives verify');
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), [], 'no loop device on the copy');
  t.false(existsSync(join(dir, 'work', 'verify', 'guest.img')), 'the throw-away copy is gone');
}

async function keyPair(dir: string): Promise<string> {
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'key')]);
  return join(dir, 'key');
}

test('verify refuses bad arguments with one line and exit code 2', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'x.img');
  writeFileSync(image, '');
  const cases: Array<[string[], RegExp]> = [
    [[image], /--ssh-key FILE is needed/],
    [[join(dir, 'nope.img'), '--ssh-key', image], /nope\.img: no such file/],
    [[image, '--ssh-key', join(dir, 'nokey')], /--ssh-key .*nokey: no such file/],
    [[image, '--ssh-key', image, '--timeout', 'soon'], /--timeout soon: expected a whole number of seconds/],
    [[image, image, '--ssh-key', image], /verify takes one IMAGE/],
    [[image, '--ssh-key', image, '--bogus'], /Unknown option '--bogus'/],
    [[image, '--ssh-key', image, '--card-size', 'big'], /--card-size big: expected a size such as 512M, 2G/],
  ];
  for (const [args, message] of cases) {
    const r = await verify([...args, '--work', join(dir, 'work')]);
    t.is(r.exitCode, 2, args.join(' '));
    t.regex(r.stderr, message);
    t.is(r.stderr.trim().split('\n').length, 1, 'one line');
  }
});

/** Debian's kernel verify boots each arch with (the fixture carries none). */
const KERNEL = { arm64: 'cloud-arm64', armhf: 'armmp-lpae' } as const;

for (const base of ['bookworm-arm64', 'bookworm-armhf', 'trixie-arm64'] as const) {
  test.serial(`${base} pimaster: boots in QEMU as an 8 GB card and passes every built-in check; a failing check of the user's fails the run`, async (t) => {
    const build = await pimasterBuild(base);
    const arch = build.arch;
    const image = `${build.image}.zst`;
    const before = statSync(image);
    const dir = scratch();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const checks = join(dir, 'checks');
    writeFileSync(checks, '# the node root is there\ntest -d /nfs/raspi/root/fs_dir\n# and this one must fail\ntest -e /no/such/file\n');
    // As an 8 GB card: the pimaster grows to it at the first boot and starts its swap.
    const r = await verify([image, '--ssh-key', build.sshKey, '--card-size', '8G', '--checks', checks, '--work', join(dir, 'work'), '--cache', TEST_CACHE]);
    t.log(r.stdout);
    t.is(r.exitCode, 1, r.stderr);

    const lines = r.stdout.split('\n').filter((l) => /^(PASS|FAIL) /.test(l));
    const failed = lines.filter((l) => l.startsWith('FAIL'));
    t.deepEqual(
      failed.map((l) => `${l.replace(/\s+.*$/, '')} ${l.split(/\s{2,}/)[1]}`),
      ['FAIL test -e /no/such/file'],
      "only the user's failing check fails",
    );
    for (const name of [
      'systemd: every unit started, none failed',
      'hostname is pimaster',
      'the root filesystem has room left after the first boot',
      'eth0 has 48.48.0.254/24',
      'first-boot unit finished',
      'sshd: UsePAM no',
      'sshd: no first-boot rename banner',
      'no pi user',
      'dnsmasq active',
      'TFTP serves /bootcode.bin and rpiboot_uboot/',
      'nodes boot without an initramfs, NFS 4.1 root',
      'NFS exported to 48.48.0.0/24 only',
      'NFS root mountable (vers=4.1, tcp)',
      'NFS root is the image as shipped',
      'NFS root grows nothing, asks nothing, reads no cloud-init seed',
      'NFS root hostname is nfspi',
      'NFS root fstab is empty',
      "NFS root host keys differ from the pimaster's",
      "NFS root authorizes the pimaster's root key",
      'NFS root unmounts',
      'IPv4 forwarding on',
      'firewall: cluster services on eth0 only, nothing forwarded into the cluster',
      "the nodes' root key is accepted from 48.48.0.0/24 only",
      'web UI and agent start only after a successful first boot',
      'NFS and rpcbind answer on the cluster network',
      'NAT to wlan0',
      'web UI answers on 9000',
      'agent API answers on 8090',
      'web UI admin password is not the published one',
      'test -d /nfs/raspi/root/fs_dir',
      'the root grew to the end of its disk at the first boot',
      build.release === 'trixie' ? 'swap is on (zram-generator)' : 'swap is on (dphys-swapfile)',
      'room for a 1 GiB environment in /root/environments',
    ]) {
      t.true(
        lines.some((l) => l.startsWith(`PASS  ${name} `)),
        `PASS ${name}`,
      );
    }
    t.regex(r.stdout, /^PASS {2}TFTP .* bootcode\.bin \(\d+ B\) and rpiboot_uboot\/cmdline\.txt \(\d+ B\) from 48\.48\.0\.254, as on disk$/m);
    t.regex(r.stdout, /^PASS {2}web UI answers on 9000 +HTTP \d{3} /m);
    t.regex(
      r.stdout,
      new RegExp(
        `^${lines.length - 1} of ${lines.length} checks passed; SSH answered [\\d.]+ s after QEMU started; kernel: Debian's linux-image-6\\S+-${KERNEL[arch]}.*; QEMU: (KVM, host CPU|TCG \\(software CPU, cortex-a(72|15)\\))$`,
        'm',
      ),
    );
    t.regex(readFileSync(join(dir, 'work', 'verify', 'console.log'), 'utf8'), /pimaster-firstboot: done/, 'the console went to the log file');

    await assertNothingLeft(t, dir);
    const after = statSync(image);
    t.is(after.mtimeMs, before.mtimeMs, 'the input image is untouched');
    t.is(after.size, before.size);
  });
}

test.serial("an image that never comes up: exit 1 with the console's last lines, nothing left behind; offline, the cached kernel serves", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'no-init.img');
  await makeTinyImage(image, { arch: 'arm64' });
  const key = await keyPair(dir);
  const r = await verify([image, '--ssh-key', key, '--work', join(dir, 'work'), '--cache', TEST_CACHE, '--timeout', '300']);
  t.is(r.exitCode, 1);
  t.regex(r.stderr, /error: the guest stopped before SSH answered \(QEMU exit code 0\); its console's last lines:/);
  t.regex(r.stderr, /\| verify initrd: \/dev\/vda2 has no \/sbin\/init/);
  await assertNothingLeft(t, dir);

  // Offline, the kernel cached by the run above serves; with nothing cached, one clear line.
  const offline = 'http://127.0.0.1:9/debian';
  const again = await verify([image, '--ssh-key', key, '--work', join(dir, 'work'), '--cache', TEST_CACHE, '--debian-mirror', offline]);
  t.regex(again.stderr, /verify initrd: \/dev\/vda2 has no \/sbin\/init/);
  t.regex(readFileSync(join(dir, 'work', 'verify', 'logs', '02-prepare.log'), 'utf8'), /apt-get update failed: using the cached /);
  const cold = await verify([image, '--ssh-key', key, '--work', join(dir, 'work'), '--cache', join(dir, 'empty-cache'), '--debian-mirror', offline]);
  t.is(cold.exitCode, 1);
  t.regex(
    cold.stderr,
    /^error: cannot reach the Debian mirror http:\/\/127\.0\.0\.1:9\/debian for the kernel verify boots with \(Could not connect to 127\.0\.0\.1:9 .*\): check the network, or pass --debian-mirror$/m,
  );
  await assertNothingLeft(t, dir);
});

test.serial('an image carrying a kernel that boots under virt (with its initrd and config) is booted with its own', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'own-kernel.img');
  await makeTinyImage(image, { arch: 'arm64', rootMiB: 64 });
  // Debian's kernel, as verify cached it for the tests above, installed the Debian way in /boot.
  const cached = (await execa('sh', ['-c', `ls -d ${TEST_CACHE}/verify/arm64/linux-image-*/*/ | head -1`])).stdout.trim();
  const version = readdirSync(join(cached, 'root/lib/modules'))[0]!;
  const initrd = readdirSync(cached).find((f) => /^initrd-.*\.img$/.test(f))!;
  const { stdout } = await execa('sfdisk', ['--json', image]);
  const root = (JSON.parse(stdout) as { partitiontable: { partitions: Array<{ start: number; size: number }> } }).partitiontable.partitions[1]!;
  const device = (
    await execa('losetup', ['--find', '--show', '--offset', String(root.start * 512), '--sizelimit', String(root.size * 512), image])
  ).stdout.trim();
  const mnt = join(dir, 'mnt');
  await execa('mkdir', ['-p', mnt]);
  await execa('mount', [device, mnt]);
  try {
    await execa('mkdir', ['-p', join(mnt, 'boot')]);
    await execa('cp', [join(cached, 'root/boot', `vmlinuz-${version}`), join(cached, 'root/boot', `config-${version}`), join(mnt, 'boot')]);
    await execa('cp', [join(cached, initrd), join(mnt, 'boot', `initrd.img-${version}`)]);
  } finally {
    await execa('umount', [mnt]);
    await execa('losetup', ['-d', device]);
  }
  const r = await verify([image, '--ssh-key', await keyPair(dir), '--work', join(dir, 'work'), '--cache', join(dir, 'no-kernels-here')]);
  t.is(r.exitCode, 1);
  t.regex(
    readFileSync(join(dir, 'work', 'verify', 'logs', '02-prepare.log'), 'utf8'),
    new RegExp(`kernel: the image's own ${version.replaceAll('.', '\\.')};`),
  );
  t.regex(r.stderr, /\| verify initrd: \/dev\/vda2 has no \/sbin\/init/, 'it booted as far as its initrd');
  await assertNothingLeft(t, dir);
});

test.serial('any image: --authorize lets the key in to a throw-away copy, and the system checks run', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const fixture = await debianImage('arm64');
  const key = await keyPair(dir);
  const refused = await verify([fixture, '--ssh-key', key, '--work', join(dir, 'work'), '--cache', TEST_CACHE, '--timeout', '150']);
  t.is(refused.exitCode, 1, 'the image authorizes no key of ours');
  t.regex(refused.stderr, /error: (the guest's sshd refuses root|SSH on the guest did not answer within 150 s \(Permission denied)/);
  // sshd stops for half a minute under the second check: it runs again once SSH answers again.
  const checks = join(dir, 'checks');
  writeFileSync(checks, 'systemd-run --no-block sh -c "sleep 2; systemctl stop ssh.service; sleep 30; systemctl start ssh.service" && sleep 8\nhostname\n');
  const r = await verify([fixture, '--ssh-key', key, '--authorize', '--checks', checks, '--work', join(dir, 'work'), '--cache', TEST_CACHE]);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(
    readFileSync(join(dir, 'work', 'verify', 'logs', '04-check.log'), 'utf8'),
    /SSH to the guest stopped answering during the check "hostname" and answered again \d+ s later: the check runs again/,
  );
  t.regex(r.stdout, /^PASS {2}hostname +raspberrypi$/m);
  t.regex(r.stdout, /^PASS {2}systemd: every unit started, none failed +running$/m);
  t.regex(r.stdout, /^PASS {2}hostname is raspberrypi +raspberrypi$/m);
  t.regex(
    r.stdout,
    /^PASS {2}the root filesystem has room left after the first boot +the first boot wrote -?\d+ MiB: \d+ MiB of the \d+ MiB the image ships free would be left on a card its size$/m,
  );
  t.regex(r.stdout, /^5 of 5 checks passed; /m);
  await assertNothingLeft(t, dir);
});

test.serial('Ctrl-C while the guest boots: QEMU is ended, the copy removed, exit code 130', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const fixture = await debianImage('arm64');
  const child = execa('node', [cli, 'verify', fixture, '--ssh-key', await keyPair(dir), '--work', join(dir, 'work'), '--cache', TEST_CACHE], {
    reject: false,
    env: { CI: 'true' },
  });
  const console = join(dir, 'work', 'verify', 'console.log');
  for (let i = 0; i < 600 && !(existsSync(console) && statSync(console).size > 0); i++) await sleep(500);
  t.true(existsSync(console), 'the guest started');
  t.not(processesNaming(dir).length, 0, 'QEMU runs');
  // Sandboxed: seccomp filtering (mode 2) and the user nobody, not root.
  for (const p of processesNaming(dir)) {
    const status = readFileSync(`/proc/${p.split(':')[0]}/status`, 'utf8');
    t.regex(status, /^Uid:\t65534\t65534\t65534\t65534$/m, p);
    t.regex(status, /^Seccomp:\t2$/m, p);
  }
  child.kill('SIGINT');
  const r = await child;
  t.is(r.exitCode, 130, r.stderr);
  await assertNothingLeft(t, dir);
});
