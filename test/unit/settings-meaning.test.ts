/**
 * Issue 30, settings that mean what they say: a value is taken as the user meant it, or refused
 * in one line naming the flag, what is wrong and the fix, before anything is changed; a refusal
 * never prints a secret or a file's content. Everything runs through the CLI's main() in this
 * process (customize --plan, or flash up to its missing image), or renders a script: no root needed.
 */

import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { main } from '../../commands/main.ts';
import { describeError, exitCodeOf } from '../../engine/errors.ts';
import { cloudInitSeed, firstrunScript } from '../../settings/first-boot.ts';
import { checkAgainstImage, settingsScript } from '../../settings/in-image.ts';
import type { Settings } from '../../settings/model.ts';
import { wpaSupplicantConf } from '../../settings/shell.ts';

const dir = mkdtempSync(join(tmpdir(), 'build-image-meaning-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text);
  return join(dir, name);
};

// customize --plan prints its plan: not in the test's output.
const write = process.stdout.write;
test.before(() => {
  process.stdout.write = () => true;
});
test.after.always(() => {
  process.stdout.write = write;
});

const psk = file('psk', 'correct horse battery\n');
const sshKey = file('laptop.pub', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBTvJ1Zp2E1IrD3Tq9eA3q0ypXUS8u1mlHG9LpC9U4yO laptop\n');

/** What `build-image ARGS` says: its exit code and its error line. */
async function cli(args: string[]): Promise<{ exitCode: number; said: string }> {
  try {
    return { exitCode: await main(args), said: '' };
  } catch (error) {
    return { exitCode: exitCodeOf(error), said: describeError(error) };
  }
}
const customize = (...args: string[]) => cli(['customize', '--plan', '--work', join(dir, 'work'), '--cache', join(dir, 'cache'), ...args]);
const image = join(dir, 'no-such.img.xz');
const flash = (...args: string[]) => cli(['flash', image, join(dir, 'no-such-device'), '--work', join(dir, 'work'), ...args]);
/** What flash says once the settings pass: the image is the next thing it checks. */
const NO_IMAGE = `error: ${image}: no such file (the image to write)`;

/** Refused by customize and flash alike, in one line naming the flag; returns the line. */
async function refused(t: import('ava').ExecutionContext, flag: string, args: string[], forFlash = true): Promise<string> {
  const c = await customize(...args);
  t.is(c.exitCode, 2, `customize ${args.join(' ')}: ${c.said}`);
  t.regex(c.said, new RegExp(`^error: [^\\n]*--${flag}\\b[^\\n]*$`), 'one line naming the flag');
  if (forFlash) {
    const f = await flash(...args);
    t.is(f.said, c.said, `flash ${args.join(' ')}: the same line`);
    t.not(f.said, NO_IMAGE);
  }
  return c.said;
}

test('1. a malformed --password-hash is refused without printing it', async (t) => {
  const hash = '$6$salt$not a hash: my-Secret-Passw0rd';
  const line = await refused(t, 'password-hash', ['--user', 'alice', '--password-hash', hash]);
  t.false(line.includes('Secret-Passw0rd'), line);
  t.regex(line, /openssl passwd -6/, 'says how to make one');
  const settings = file('hash.json', JSON.stringify({ user: 'alice', 'password-hash': hash }));
  const f = await flash('--settings', settings);
  t.is(f.exitCode, 2);
  t.false(f.said.includes('Secret-Passw0rd'), f.said);
});

test('1. a bad --ssh-key file, or /etc/shadow named in --settings, is named, its content never printed', async (t) => {
  const key = file('bad.pub', 'ssh-ed25519 AAAASECRETSECRETSECRETSECRETSECRET laptop\n');
  const line = await refused(t, 'ssh-key', ['--ssh-key', key]);
  t.false(line.includes('SECRET'), line);
  t.true(line.includes(key), 'names the file');
  const shadow = file('shadow.pub', 'root:$6$SECRETHASH:19000:0:99999:7:::\n');
  const settings = file('shadow.json', JSON.stringify({ 'ssh-key': [shadow, '/etc/shadow'] }));
  const f = await flash('--settings', settings);
  t.is(f.exitCode, 2);
  t.regex(f.said, /^error: --settings [^\n]*"ssh-key"[^\n]*$/);
  t.false(/SECRETHASH|root:/.test(f.said), f.said);
});

test('2. a --password-file longer than openssl passwd hashes is refused, not cut', async (t) => {
  const long = file('long-password', `${'correct horse battery staple '.repeat(10)}\n`);
  const line = await refused(t, 'password-file', ['--user', 'alice', '--password-file', long]);
  t.regex(line, /256/, 'says the limit');
  t.false(line.includes('horse'), line);
  const longest = file('longest-password', `${'x'.repeat(256)}\n`);
  t.is((await customize('--user', 'alice', '--password-file', longest)).exitCode, 0, '256 bytes are hashed in full');
});

/** Taken by customize and flash alike. */
async function taken(t: import('ava').ExecutionContext, args: string[], forFlash = true): Promise<void> {
  const c = await customize(...args);
  t.is(c.exitCode, 0, `customize ${args.join(' ')}: ${c.said}`);
  if (forFlash) t.is((await flash(...args)).said, NO_IMAGE, `flash ${args.join(' ')}`);
}

test("3. --timezone takes a zone, not a folder of zones nor the tz database's other files", async (t) => {
  for (const zone of [
    'Europe',
    'America/Argentina',
    'Etc',
    'right',
    'posix',
    'localtime',
    'leapseconds',
    'posixrules',
    'zone.tab',
    'right/Europe/Paris',
    'posix/UTC',
  ]) {
    const line = await refused(t, 'timezone', ['--timezone', zone]);
    t.regex(line, /Area\/City/, `${zone}: says what is expected`);
  }
  for (const zone of ['Europe/Paris', 'UTC', 'Etc/UTC', 'America/Argentina/Buenos_Aires', 'GMT']) await taken(t, ['--timezone', zone]);
});

test('3. --timezone against the image: a zone file there, not a folder', (t) => {
  const root = join(dir, 'root-tz');
  mkdirSync(join(root, 'usr/share/zoneinfo/Europe/Paris'), { recursive: true });
  const settings = { timezone: 'Europe/Paris', packages: [], enable: [], disable: [] };
  t.throws(() => checkAgainstImage(root, settings), { message: /^--timezone Europe\/Paris: the image has no such zone/ });
  rmSync(join(root, 'usr/share/zoneinfo/Europe/Paris'), { recursive: true });
  writeFileSync(join(root, 'usr/share/zoneinfo/Europe/Paris'), 'TZif2...');
  t.notThrows(() => checkAgainstImage(root, settings));
});

test('4. the cloud-init seed quotes every string it writes: 0777, no and null stay names', (t) => {
  const s: Settings = {
    hostname: '0777',
    user: { name: 'null', passwordHash: '$6$salt$hash' },
    sshKeys: ['ssh-ed25519 AAAAC3 me'],
    wifi: { ssid: 'yes', psk: '0'.repeat(64), country: 'NO', hidden: false },
    timezone: 'UTC',
    locale: 'en_GB.UTF-8',
    keymap: 'no',
    packages: [],
    enable: [],
    disable: [],
  };
  const seed = cloudInitSeed(s, 'build-image-1-abcd');
  t.regex(seed['user-data']!, /^hostname: "0777"$/m);
  t.regex(seed['user-data']!, /^ {2}name: "null"$/m);
  // What is not a string is meant: switches, a version, sudo's null (the default user's groups kept).
  const meant =
    /^(manage_etc_hosts|lock_passwd|ssh_pwauth|dhcp4|dhcp6|optional|hidden|version|sudo|network|ethernets|eth0|wifis|wlan0|access-points|user|keyboard|ssh_authorized_keys|runcmd)$/;
  for (const [name, text] of Object.entries(seed)) {
    for (const line of text.split('\n')) {
      const scalar = /^\s*(?:- )?([^:"]+|"[^"]*"): (.*)$/.exec(line);
      if (scalar && !meant.test(scalar[1]!.trim())) t.regex(scalar[2]!, /^"([^"\\]|\\.)*"$/, `${name}: ${line}`);
      const item = /^\s*- (.*)$/.exec(line);
      if (item) t.regex(item[1]!, /^"([^"\\]|\\.)*"$|^\[( "[^"]*",?)+ \]$/, `${name}: ${line}`);
    }
  }
});

test('5. an SSID with spaces at its ends is written as its bytes, where NetworkManager and wpa_supplicant read it whole', (t) => {
  const wifi = { ssid: ' lab net ', psk: 'a'.repeat(64), country: 'FR', hidden: false };
  const s: Settings = { wifi, packages: [], enable: [], disable: [] };
  const bytes = `${[...Buffer.from(wifi.ssid)].join(';')};`;
  t.is(bytes, '32;108;97;98;32;110;101;116;32;');
  // NetworkManager's keyfile reader takes a list of decimal bytes as they are; a string it trims.
  const nm = settingsScript(s, { wifi: 'networkmanager', bootMount: '/boot/firmware' });
  t.regex(nm, new RegExp(`^ssid=${bytes}$`, 'm'));
  t.notRegex(nm, /^ssid= /m);
  // wpa_supplicant reads an unquoted ssid as hex.
  const wpa = settingsScript(s, { wifi: 'wpa_supplicant', bootMount: '/boot/firmware' });
  t.regex(wpa, new RegExp(`^\\tssid=${Buffer.from(wifi.ssid).toString('hex')}$`, 'm'));
  t.regex(wpaSupplicantConf(wifi).join('\n'), /^\tssid=206c6162206e657420$/m, 'firstrun.sh without imager_custom too');
});

test('6. --wifi-country takes ISO 3166-1 alpha-2 country codes only', async (t) => {
  for (const code of ['ZZ', 'EU', 'UN', 'QO', 'XK', 'UK', 'AA'])
    await refused(t, 'wifi-country', ['--wifi-ssid', 'lab', '--wifi-psk-file', psk, '--wifi-country', code]);
  for (const code of ['FR', 'gb', 'US', 'AX', 'SS', 'TW']) await taken(t, ['--wifi-ssid', 'lab', '--wifi-psk-file', psk, '--wifi-country', code]);
});

test('7. a host name longer than one label (systemd refuses more than 64 at boot) is refused', async (t) => {
  await refused(t, 'hostname', ['--hostname', 'a'.repeat(93)]);
  await refused(t, 'hostname', ['--hostname', 'a'.repeat(64)]);
  await taken(t, ['--hostname', 'a'.repeat(63)]);
});

test('7. --keymap fr-oss, a layout and its variant, is refused, naming the layout to give', async (t) => {
  for (const [keymap, layout] of [
    ['fr-oss', 'fr'],
    ['de_nodeadkeys', 'de'],
  ] as const) {
    const line = await refused(t, 'keymap', ['--keymap', keymap]);
    t.true(line.includes(`--keymap ${layout}`), line);
  }
  for (const keymap of ['fr', 'gb', 'us', 'latam']) await taken(t, ['--keymap', keymap]);
});

test('7. --enable and --disable take unit names, never a word systemctl reads as an option', async (t) => {
  for (const value of ['-h', '--now', '-.mount', 'ssh,-q']) {
    await refused(t, 'enable', [`--enable=${value}`], false);
    await refused(t, 'disable', [`--disable=${value}`], false);
  }
});

test('7. --ssh and the units given contradict each other: refused', async (t) => {
  for (const args of [
    ['--ssh', 'off', '--enable', 'ssh'],
    ['--ssh', 'on', '--disable', 'ssh.service'],
    ['--ssh', 'off', '--enable', 'sshd'],
  ]) {
    const line = await refused(t, 'ssh', args, false);
    t.regex(line, /give one or the other/, line);
  }
  const keys = await refused(t, 'disable', ['--ssh-key', sshKey, '--disable', 'ssh'], false);
  t.regex(keys, /--ssh-key/, keys);
  await taken(t, ['--ssh', 'on', '--enable', 'ssh'], false);
});

test('8. valid values once refused: C.UTF-8, an SSID with an apostrophe, keys with options or an apostrophe', async (t) => {
  await taken(t, ['--locale', 'C.UTF-8']);
  await taken(t, ['--wifi-ssid', "Bob's iPhone", '--wifi-psk-file', psk, '--wifi-country', 'GB']);
  const blob = 'AAAAC3NzaC1lZDI1NTE5AAAAIBTvJ1Zp2E1IrD3Tq9eA3q0ypXUS8u1mlHG9LpC9U4yO';
  const keys = file(
    'options.pub',
    `from="10.0.0.0/8,192.168.1.*",command="/usr/bin/rsync --server -e.LsfxC . /srv",no-pty ssh-ed25519 ${blob} backup\nssh-ed25519 ${blob} Bob's laptop\n`,
  );
  await taken(t, ['--user', 'bob', '--ssh-key', keys]);
});

test('8. --enable getty@tty2: an instance of a template unit the image has', (t) => {
  const root = join(dir, 'root-units');
  mkdirSync(join(root, 'usr/lib/systemd/system'), { recursive: true });
  writeFileSync(join(root, 'usr/lib/systemd/system/getty@.service'), '[Unit]\n');
  const settings = (unit: string) => ({ enable: [unit], disable: [], packages: [] });
  t.notThrows(() => checkAgainstImage(root, settings('getty@tty2.service')));
  t.throws(() => checkAgainstImage(root, settings('serial-getty@ttyS0.service')), {
    message: /^--enable serial-getty@ttyS0\.service: the image has no such unit/,
  });
});

test('9. --hostname -lab: a host name cannot start with -, said the same way by customize and flash', async (t) => {
  const line = await refused(t, 'hostname', ['--hostname', '-lab']);
  t.regex(line, /cannot start or end with '-'/, line);
  t.is((await customize('--hostname=-lab')).said, line, 'the same line as --hostname=-lab');
  // A value its rule takes but the parser reads as a flag: how to give it.
  const ssid = await refused(t, 'wifi-ssid', ['--wifi-ssid', '-lab', '--wifi-psk-file', psk, '--wifi-country', 'FR']);
  t.regex(ssid, /--wifi-ssid=-lab/, ssid);
});

test('9. __proto__ and constructor in --config or --settings are unknown keys, nothing else', async (t) => {
  for (const key of ['__proto__', 'constructor', 'toString']) {
    const json = file(`${key}.json`, `{"${key}": "x"}`);
    const c = await customize('--config', json);
    t.is(c.exitCode, 2);
    t.is(c.said, `error: ${json}: "${key}": unknown option (see \`build-image customize --help\`)`);
    const f = await flash('--settings', json);
    t.is(f.exitCode, 2);
    t.regex(f.said, new RegExp(`^error: --settings ${json}: unknown key "${key}" \\(keys: hostname, `));
  }
});

test('9. --constructor, and constructor as a command, are unknown too', async (t) => {
  t.is((await cli(['customize', '--constructor', 'x'])).said, 'error: --constructor: unknown option (see build-image --help customize)');
  const r = await cli(['constructor', '--plan']);
  t.is(r.exitCode, 2);
  t.is(r.said, 'error: "constructor": unknown command (commands: build, customize, doctor)');
});

test('9. a file a setting names is read only up to 1 MiB: a larger one is refused in one line, unread', async (t) => {
  // Sparse: 600 MiB on no disk. Read whole, it made a string longer than V8 allows.
  const big = (name: string) => {
    const path = join(dir, name);
    writeFileSync(path, '');
    truncateSync(path, 600 * 2 ** 20);
    return path;
  };
  for (const [flag, args] of [
    ['ssh-key', ['--ssh-key', big('big.pub')]],
    ['password-file', ['--user', 'alice', '--password-file', big('big-password')]],
    ['wifi-psk-file', ['--wifi-ssid', 'lab', '--wifi-psk-file', big('big-psk'), '--wifi-country', 'FR']],
  ] as const) {
    const line = await refused(t, flag, [...args]);
    t.regex(line, /600\.0 MiB.*at most 1 MiB|at most 1 MiB.*600\.0 MiB/, line);
  }
  const f = await flash('--settings', big('big.json'));
  t.is(f.exitCode, 2);
  t.regex(f.said, /^error: --settings [^\n]*: 600\.0 MiB[^\n]*at most 1 MiB[^\n]*$/, f.said);
});

test('1. an --ssh-key file that cannot be read is named with the flag, nothing of it printed', async (t) => {
  // Readable by no one, root included: a read of /proc/self/mem at 0 fails with EIO (as /etc/shadow would, EACCES, for a user).
  const line = await refused(t, 'ssh-key', ['--ssh-key', '/proc/self/mem']);
  t.regex(line, /cannot read it \(EIO\)/, line);
});

test("5. firstrun.sh: an SSID with spaces at its ends gets imager_custom's profile rewritten as bytes", (t) => {
  const s = (ssid: string): Settings => ({ wifi: { ssid, psk: 'a'.repeat(64), country: 'FR', hidden: false }, packages: [], enable: [], disable: [] });
  const spaced = firstrunScript(s(' lab '), '/boot/firmware');
  t.regex(spaced, /sed -i 's\/\^ssid=\.\*\/ssid=32;108;97;98;32;\/' "\$f"/);
  // An ordinary SSID keeps the profile imager_custom writes, as Imager's cards have it.
  t.notRegex(firstrunScript(s('lab'), '/boot/firmware'), /\^ssid=/);
});
