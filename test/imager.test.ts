/**
 * Raspberry Pi Imager's customisation on a pimaster, booted by `build-image verify`: the files
 * Imager writes to the boot partition of the card (firstrun.sh for bookworm's init_format
 * `systemd`, a cloud-init seed for trixie's `cloudinit-rpi`) are written to a copy of the built
 * image, as Imager does, and the booted pimaster must keep its static address and services while
 * honouring Imager's user, SSH key and Wi-Fi.
 */
import test from 'ava';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { TEST_CACHE } from './fixtures/debian-image.ts';
import { scratch } from './helpers/build.ts';
import { pimasterBuild, type PimasterBuild } from './helpers/pimaster-build.ts';

const cli = new URL('../pipeline/cli.ts', import.meta.url).pathname;
const mtools = { env: { MTOOLS_SKIP_CHECK: '1' } };
const BOOT = `@@${16384 * 512}`;

interface ImagerSeed {
  /** Boot partition files, and what to append to cmdline.txt (as Imager does). */
  files: Record<string, string>;
  cmdline: string;
}

/** A copy of the build's image with Imager's files on its boot partition. */
async function customisedCopy(dir: string, build: PimasterBuild, seed: ImagerSeed): Promise<string> {
  const image = join(dir, 'card.img');
  await execa('cp', ['--sparse=always', build.image, image]);
  for (const [name, content] of Object.entries(seed.files)) {
    writeFileSync(join(dir, name), content);
    await execa('mcopy', ['-o', '-i', `${image}${BOOT}`, join(dir, name), `::/${name}`], mtools);
  }
  const cmdline = (await execa('mtype', ['-i', `${image}${BOOT}`, '::/cmdline.txt'], mtools)).stdout.trim();
  writeFileSync(join(dir, 'cmdline.txt'), `${cmdline}${seed.cmdline}\n`);
  await execa('mcopy', ['-o', '-i', `${image}${BOOT}`, join(dir, 'cmdline.txt'), '::/cmdline.txt'], mtools);
  return image;
}

/** The user Imager sets up: a key pair and a password hash, as Imager's dialog makes them. */
async function imagerUser(dir: string): Promise<{ key: string; pub: string; hash: string }> {
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'alice@laptop', '-f', join(dir, 'alice')]);
  const hash = (await execa('openssl', ['passwd', '-6', 'imager-password'])).stdout.trim();
  return { key: join(dir, 'alice'), pub: readFileSync(join(dir, 'alice.pub'), 'utf8').trim(), hash };
}

/**
 * Checks run on the guest besides verify's own: Imager's user logs in over SSH with Imager's key
 * (from the guest to itself: the test put the private half on the copy's boot partition, see
 * customisedCopy), Imager's Wi-Fi profile exists, the time zone is set.
 */
function userChecks(): string {
  return [
    'install -m 600 /boot/firmware/alice-test-key /run/k && ssh -i /run/k -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null alice@127.0.0.1 id -un | grep -qx alice',
    'id -nG alice | grep -qw sudo',
    'grep -rlsq "^ssid=lab-uplink$" /etc/NetworkManager/system-connections/ /run/NetworkManager/system-connections/',
    'readlink /etc/localtime | grep -q Europe/Paris',
    '! id imager-user',
    '',
  ].join('\n');
}

async function verifyCard(t: import('ava').ExecutionContext, dir: string, image: string, build: PimasterBuild, checks: string) {
  writeFileSync(join(dir, 'checks'), checks);
  const r = await execa('node', [cli, 'verify', image, '--ssh-key', build.sshKey, '--checks', join(dir, 'checks'), '--work', join(dir, 'work'), '--cache', TEST_CACHE], { reject: false, env: { CI: 'true' } });
  t.log(r.stdout);
  t.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /^PASS  eth0 has 48\.48\.0\.254\/24 /m, 'the static address wins');
  t.regex(r.stdout, /^PASS  dnsmasq active /m);
  t.regex(r.stdout, /^PASS  systemd: every unit started, none failed /m);
  return readFileSync(join(dir, 'work', 'verify', 'logs', '03-boot.log'), 'utf8');
}

test.serial("bookworm pimaster with Imager's firstrun.sh: user renamed from the one made for it, key, Wi-Fi; the static address and dnsmasq stay", async (t) => {
  const build = await pimasterBuild('bookworm-arm64');
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const alice = await imagerUser(dir);
  // What Imager writes for init_format "systemd" (its fallbacks where imager_custom is missing
  // left out), with the paths the Raspberry Pi initramfs' imager_fixup gives it on bookworm
  // (/boot/firmware): QEMU boots no Raspberry Pi initramfs.
  const firstrun = `#!/bin/sh

set +e

CURRENT_HOSTNAME=$(cat /etc/hostname | tr -d " \\t\\n\\r")
/usr/lib/raspberrypi-sys-mods/imager_custom set_hostname pimaster
FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)
FIRSTUSERHOME=$(getent passwd 1000 | cut -d: -f6)
/usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh -k '${alice.pub}'
/usr/lib/userconf-pi/userconf 'alice' '${alice.hash}'
/usr/lib/raspberrypi-sys-mods/imager_custom set_wlan 'lab-uplink' 'b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2' 'FR'
/usr/lib/raspberrypi-sys-mods/imager_custom set_keymap 'fr'
/usr/lib/raspberrypi-sys-mods/imager_custom set_timezone 'Europe/Paris'
rm -f /boot/firmware/firstrun.sh
sed -i 's| systemd\\.[^ ]*||g' /boot/firmware/cmdline.txt
exit 0
`;
  const image = await customisedCopy(dir, build, {
    files: { 'firstrun.sh': firstrun, 'alice-test-key': readFileSync(alice.key, 'utf8') },
    cmdline: ' systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target',
  });
  const boot = await verifyCard(t, dir, image, build, `${userChecks()}! test -e /boot/firmware/firstrun.sh\n! grep -q systemd.run /boot/firmware/cmdline.txt\n`);
  t.regex(boot, /the guest rebooted before SSH answered; boot 2 with: /, 'firstrun.sh ran in a boot of its own, then the Pi rebooted');
});

test.serial("trixie pimaster with Imager's cloud-init seed (eth0 DHCP, a user, a key, Wi-Fi): the static address wins, the user and key are honoured", async (t) => {
  const build = await pimasterBuild('trixie-arm64');
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const alice = await imagerUser(dir);
  // What Imager writes for init_format "cloudinit-rpi"; without its `packages: [avahi-daemon]`
  // (the test network reaches no archive at boot).
  const userData = `#cloud-config
hostname: pimaster
manage_etc_hosts: true
timezone: Europe/Paris
keyboard:
  model: pc105
  layout: "fr"
user:
  name: alice
  shell: /bin/bash
  lock_passwd: false
  passwd: "${alice.hash}"
  ssh_authorized_keys:
    - "${alice.pub}"
  sudo: null

ssh_pwauth: false
`;
  const networkConfig = `network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
      dhcp6: true
      optional: true
  wifis:
    wlan0:
      dhcp4: true
      regulatory-domain: "FR"
      access-points:
        "lab-uplink":
          password: "b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2"
`;
  const image = await customisedCopy(dir, build, {
    files: { 'user-data': userData, 'network-config': networkConfig, 'meta-data': 'instance_id: rpi-imager-1700000000\n', 'alice-test-key': readFileSync(alice.key, 'utf8') },
    cmdline: ' ds=nocloud;i=rpi-imager-1700000000',
  });
  await verifyCard(t, dir, image, build, `${userChecks()}cloud-init status --wait | grep -q "status: done"\n`);
});
