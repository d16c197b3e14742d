/**
 * `build-image customize` with settings (--hostname, --user, --ssh-key, --wifi-..., --timezone,
 * --locale, --keymap, --packages, --enable, --disable): for each release the fixtures cover (plain
 * Debian bookworm with dhcpcd and wpa_supplicant, the bookworm Lite look-alike, the trixie Lite
 * look-alike), an image customized with every setting boots in `verify` and a check of each setting
 * passes inside it. Bad values and --plan: test/unit/settings-flags.test.ts.
 */

import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { debianImage, TEST_CACHE } from '../fixtures/debian-image.ts';
import { raspiosLite } from '../fixtures/raspios-image.ts';
import { scratch } from '../helpers/build.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const run = (args: string[]) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' } });

/** What a user has at hand: a key pair, a password (hashed and in a file), a Wi-Fi passphrase. */
async function inputs(dir: string) {
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'alice@laptop', '-f', join(dir, 'alice')]);
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'root-key')]);
  writeFileSync(join(dir, 'password'), 'a-password-of-alice\n');
  writeFileSync(join(dir, 'psk'), 'correct horse battery\n');
  const hash = (await execa('openssl', ['passwd', '-6', 'a-password-of-alice'])).stdout.trim();
  return { key: join(dir, 'alice'), pub: join(dir, 'alice.pub'), rootKey: join(dir, 'root-key'), password: join(dir, 'password'), psk: join(dir, 'psk'), hash };
}

/** A test overlay: a unit for --enable, and alice's private key for the check that logs in as her. */
function overlay(dir: string, key: string): string {
  const site = join(dir, 'site');
  mkdirSync(join(site, 'rootfs/etc/systemd/system'), { recursive: true });
  mkdirSync(join(site, 'rootfs/root'), { recursive: true });
  writeFileSync(
    join(site, 'rootfs/etc/systemd/system/hello.service'),
    '[Unit]\nDescription=A unit of the overlay, enabled by --enable\n\n[Service]\nType=oneshot\nExecStart=/bin/touch /run/hello\n\n[Install]\nWantedBy=multi-user.target\n',
  );
  writeFileSync(join(site, 'rootfs/root/alice-test-key'), readFileSync(key));
  writeFileSync(join(site, 'modes.txt'), 'rootfs/root/alice-test-key 0600\n');
  return site;
}

interface Release {
  base: () => Promise<string>;
  /** How the release keeps Wi-Fi: a NetworkManager profile, or wpa_supplicant.conf (Debian with dhcpcd). */
  wifi: 'networkmanager' | 'wpa_supplicant';
  /** The image has userconf-pi's rename dialog, which the build cancels. */
  renameDialog: boolean;
  /** The packages the settings need beyond those the release has (locales for --locale, a Wi-Fi daemon). */
  packages: string;
}

const RELEASES: Record<string, Release> = {
  'plain Debian bookworm (dhcpcd)': { base: () => debianImage('arm64'), wifi: 'wpa_supplicant', renameDialog: false, packages: 'tree,locales,wpasupplicant' },
  'bookworm Lite look-alike': { base: () => raspiosLite('bookworm', 'arm64'), wifi: 'networkmanager', renameDialog: true, packages: 'tree,locales' },
  'trixie Lite look-alike': { base: () => raspiosLite('trixie', 'arm64'), wifi: 'networkmanager', renameDialog: true, packages: 'tree,locales' },
};

/** One check per setting, run inside the booted image as root. */
function settingChecks(release: Release, hash: string): string {
  const wifi =
    release.wifi === 'networkmanager'
      ? [
          'f=/etc/NetworkManager/system-connections/preconfigured.nmconnection; test "$(stat -c %a $f)" = 600 && grep -qx \'ssid=108;97;98;45;117;112;108;105;110;107;\' $f && grep -qx hidden=true $f',
          'grep -qw cfg80211.ieee80211_regdom=FR /proc/cmdline',
        ]
      : [
          "f=/etc/wpa_supplicant/wpa_supplicant.conf; test \"$(stat -c %a $f)\" = 600 && grep -qx country=FR $f && grep -qx '\tssid=6c61622d75706c696e6b' $f && grep -qx '\tscan_ssid=1' $f",
        ];
  return [
    'ssh -i /root/alice-test-key -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null alice@127.0.0.1 id -un | grep -qx alice',
    'test "$(getent passwd 1000 | cut -d: -f1)" = alice && id -nG alice | grep -qw sudo && test -d /home/alice',
    `test "$(getent shadow alice | cut -d: -f2)" = '${hash}'`,
    "grep -q '^127\\.0\\.1\\.1[[:space:]]pi-07$' /etc/hosts",
    "systemctl is-enabled ssh.service | grep -qx enabled && sshd -T | grep -qix 'passwordauthentication no'",
    ...wifi,
    'readlink /etc/localtime | grep -q Europe/Paris$ && date +%Z | grep -qE "^CES?T$"',
    'locale -a | grep -qx fr_FR.utf8 && grep -qx LANG=fr_FR.UTF-8 /etc/default/locale',
    'grep -qx \'XKBLAYOUT="fr"\' /etc/default/keyboard',
    'dpkg-query -W -f=\'${Status}\' tree | grep -qx "install ok installed" && tree -L 1 /',
    'test -e /run/hello && systemctl is-enabled hello.service | grep -qx enabled',
    'systemctl is-enabled apt-daily.timer | grep -qx disabled',
    ...(release.renameDialog ? ['! systemctl is-enabled userconfig.service && ! test -e /etc/ssh/sshd_config.d/rename_user.conf'] : []),
    '',
  ].join('\n');
}

async function customizeAndBoot(t: ExecutionContext, name: string, release: Release): Promise<string[]> {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const base = await release.base();
  const baseSha = (await execa('sha256sum', [base])).stdout.split(' ')[0]!;
  const input = await inputs(dir);
  // The Debian one gets the password from a file (hashed by the build), the others a hash.
  const password = release.wifi === 'wpa_supplicant' ? ['--password-file', input.password] : ['--password-hash', input.hash];
  const args = [
    'customize',
    '--base',
    base,
    '--base-sha256',
    baseSha,
    '--overlay',
    overlay(dir, input.key),
    '--hostname',
    'pi-07',
    '--user',
    'alice',
    ...password,
    '--ssh-key',
    input.pub,
    '--wifi-ssid',
    'lab-uplink',
    '--wifi-psk-file',
    input.psk,
    '--wifi-country',
    'fr',
    '--wifi-hidden',
    '--timezone',
    'Europe/Paris',
    '--locale',
    'fr_FR.UTF-8',
    '--keymap',
    'fr',
    '--packages',
    release.packages,
    '--enable',
    'hello',
    '--disable',
    'apt-daily.timer',
    '--compress',
    'none',
    '--name',
    'custom',
    '--work',
    join(dir, 'work'),
    '--cache',
    join(dir, 'cache'),
    '--out',
    join(dir, 'out'),
  ];
  const r = await run(args);
  t.is(r.exitCode, 0, `${name}: ${r.stderr}`);
  t.log(
    r.stderr
      .split('\n')
      .filter((l) => /^\s+(settings|total) /.test(l))
      .join('\n'),
  );
  const image = join(dir, 'out', 'custom.img');
  t.is((await execa('sha256sum', [base])).stdout.split(' ')[0], baseSha, 'the base image is untouched');
  // With a password file, the hash is the build's: read from the image, checked on the host.
  const hash = release.wifi === 'wpa_supplicant' ? await builtHash(image) : input.hash;
  const salt = hash.split('$')[2]!;
  t.is((await execa('openssl', ['passwd', '-6', '-salt', salt, 'a-password-of-alice'])).stdout.trim(), hash, "the hash is of alice's password");
  writeFileSync(join(dir, 'checks'), settingChecks(release, hash));
  const v = await run([
    'verify',
    image,
    '--ssh-key',
    input.rootKey,
    '--authorize',
    '--checks',
    join(dir, 'checks'),
    '--work',
    join(dir, 'vwork'),
    '--cache',
    TEST_CACHE,
  ]);
  t.log(
    v.stdout
      .split('\n')
      .filter((l) => /^(PASS|FAIL)|checks passed/.test(l))
      .join('\n'),
  );
  t.is(v.exitCode, 0, `${v.stdout}\n${v.stderr}`);
  t.regex(v.stdout, /^PASS {2}hostname is pi-07 /m);
  t.regex(v.stdout, /^PASS {2}systemd: every unit started, none failed /m);
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
  return args;
}

/** The stages a build's log says came from the stage cache. */
const fromCache = (log: string) => [...log.matchAll(/\] (\S+): done in [\d.]+ s \(from cache\)/g)].map((m) => m[1]);

/** alice's password hash as the image holds it (read with debugfs from the root partition). */
async function builtHash(image: string): Promise<string> {
  const { stdout } = await execa('sfdisk', ['--json', image]);
  const root = (JSON.parse(stdout) as { partitiontable: { partitions: { start: number }[] } }).partitiontable.partitions[1]!;
  const device = (await execa('losetup', ['--find', '--show', '--read-only', '--offset', String(root.start * 512), image])).stdout.trim();
  try {
    const shadow = (await execa('debugfs', ['-R', 'cat /etc/shadow', device])).stdout;
    return shadow
      .split('\n')
      .find((l) => l.startsWith('alice:'))!
      .split(':')[1]!;
  } finally {
    await execa('losetup', ['-d', device]);
  }
}

for (const [name, release] of Object.entries(RELEASES)) {
  test.serial(`${name}: customized with every setting, boots in verify, and a check of each setting passes`, async (t) => {
    const args = await customizeAndBoot(t, name, release);
    if (release.wifi !== 'wpa_supplicant') return;
    // The stage cache keys the settings with the content of the files they name, not their paths.
    const again = await run(args);
    t.is(again.exitCode, 0, again.stderr);
    t.true(fromCache(again.stderr).includes('settings'), 'the same settings: from the cache');
    writeFileSync(args[args.indexOf('--wifi-psk-file') + 1]!, 'another passphrase\n');
    const changed = await run(args);
    t.is(changed.exitCode, 0, changed.stderr);
    t.false(fromCache(changed.stderr).includes('settings'), 'another passphrase in the same file: applied again');
  });
}
