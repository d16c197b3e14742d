/**
 * A card flashed with first-boot settings (`build-image flash IMAGE DEVICE --hostname ... --user
 * ... --ssh-key ... --wifi-...`), then booted by `build-image verify`: flash writes the settings
 * to the card's boot partition in the format Raspberry Pi Imager writes for the image (firstrun.sh
 * for bookworm's init_format `systemd`, a cloud-init seed for trixie's `cloudinit-rpi`), and the
 * booted pimaster must keep its static address and services while honouring the user, the SSH
 * key, the Wi-Fi, the keymap and the time zone.
 */

import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { TEST_CACHE } from '../fixtures/debian-image.ts';
import { sha256File } from '../helpers/base-images.ts';
import { scratch } from '../helpers/build.ts';
import { type PimasterBuild, pimasterBuild } from '../helpers/pimaster-build.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const mtools = { env: { MTOOLS_SKIP_CHECK: '1' } };
const BOOT = `@@${16384 * 512}`;

/**
 * The built .img.zst flashed with these settings to a loop device over a file the image's size
 * (the card), plus the test's own key file on its boot partition (see userChecks); returns the
 * card's file, detached.
 */
async function flashedCard(t: import('ava').ExecutionContext, dir: string, build: PimasterBuild, settings: string[], alice: { key: string }): Promise<string> {
  const card = join(dir, 'card.img');
  await execa('truncate', ['-s', String(statSync(build.image).size), card]);
  const device = (await execa('losetup', ['--find', '--show', card])).stdout.trim();
  const image = `${build.image}.zst`;
  const before = await sha256File(image);
  try {
    const r = await execa('node', [cli, 'flash', image, device, '--force', ...settings, '--work', join(dir, 'flash-work')], {
      reject: false,
      env: { CI: 'true' },
    });
    t.log(r.stdout);
    t.is(r.exitCode, 0, r.stderr);
    await execa('mcopy', ['-o', '-i', `${device}${BOOT}`, alice.key, '::/alice-test-key'], mtools);
  } finally {
    await execa('losetup', ['-d', device]);
  }
  t.is(await sha256File(image), before, 'flash never changes the image file');
  return card;
}

/** The user's inputs, as a user of Imager would have them: a key pair, a password hash, a Wi-Fi PSK. */
async function imagerUser(dir: string): Promise<{ key: string; pub: string; hash: string; psk: string }> {
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'alice@laptop', '-f', join(dir, 'alice')]);
  const hash = (await execa('openssl', ['passwd', '-6', 'imager-password'])).stdout.trim();
  writeFileSync(join(dir, 'psk'), 'b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2\n');
  return { key: join(dir, 'alice'), pub: join(dir, 'alice.pub'), hash, psk: join(dir, 'psk') };
}

const settingsFor = (alice: { pub: string; hash: string; psk: string }) => [
  '--hostname',
  'pimaster',
  '--user',
  'alice',
  '--password-hash',
  alice.hash,
  '--ssh-key',
  alice.pub,
  '--wifi-ssid',
  'lab-uplink',
  '--wifi-psk-file',
  alice.psk,
  '--wifi-country',
  'FR',
  '--keymap',
  'fr',
  '--timezone',
  'Europe/Paris',
];

/**
 * Checks run on the guest besides verify's own: the user logs in over SSH with the key (from the
 * guest to itself: the test put the private half on the card's boot partition, see flashedCard),
 * the Wi-Fi profile exists, the time zone is set. (The keymap is checked on trixie only: the
 * bookworm look-alike has no keyboard-configuration, so no /etc/default/keyboard to set.)
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
  const r = await execa(
    'node',
    [cli, 'verify', image, '--ssh-key', build.sshKey, '--checks', join(dir, 'checks'), '--work', join(dir, 'work'), '--cache', TEST_CACHE],
    { reject: false, env: { CI: 'true' } },
  );
  t.log(r.stdout);
  t.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
  t.regex(r.stdout, /^PASS {2}eth0 has 48\.48\.0\.254\/24 /m, 'the static address wins');
  t.regex(r.stdout, /^PASS {2}dnsmasq active /m);
  t.regex(r.stdout, /^PASS {2}systemd: every unit started, none failed /m);
  return readFileSync(join(dir, 'work', 'verify', 'logs', '03-boot.log'), 'utf8');
}

test.serial(
  'bookworm pimaster flashed with settings (firstrun.sh): user renamed from the one made for it, key, Wi-Fi, keymap, time zone; the static address and dnsmasq stay',
  async (t) => {
    const build = await pimasterBuild('bookworm-arm64');
    const dir = scratch();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const alice = await imagerUser(dir);
    const card = await flashedCard(t, dir, build, settingsFor(alice), alice);
    const boot = await verifyCard(
      t,
      dir,
      card,
      build,
      `${userChecks()}! test -e /boot/firmware/firstrun.sh\n! grep -q systemd.run /boot/firmware/cmdline.txt\n`,
    );
    t.regex(boot, /the guest rebooted before SSH answered; boot 2 with: /, 'firstrun.sh ran in a boot of its own, then the Pi rebooted');
  },
);

test.serial(
  'trixie pimaster flashed with settings (a cloud-init seed): the static address wins over eth0 DHCP; the user, key, Wi-Fi, keymap and time zone are honoured',
  async (t) => {
    const build = await pimasterBuild('trixie-arm64');
    const dir = scratch();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const alice = await imagerUser(dir);
    const card = await flashedCard(t, dir, build, settingsFor(alice), alice);
    await verifyCard(t, dir, card, build, `${userChecks()}cloud-init status --wait | grep -q "status: done"\ngrep -q 'XKBLAYOUT=.*fr' /etc/default/keyboard\n`);
  },
);
