/**
 * `build-image customize` with settings (--hostname, --user, --ssh-key, --wifi-..., --timezone,
 * --locale, --keymap, --packages, --enable, --disable) as flags: a bad value of each is one line and
 * exit 2 before any work; --plan shows what the settings stage applies. Nothing is built.
 */

import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { scratch } from '../helpers/build.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const run = (args: string[]) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' } });

const BAD: [string[], RegExp][] = [
  [['--hostname', 'pi_07'], /^error: --hostname "pi_07" is invalid: expected an RFC 1123 host name/],
  [['--user', 'root'], /^error: --user "root" is invalid: expected a user name/],
  [
    ['--user', 'alice', '--password-hash', 'plain-text'],
    /^error: --password-hash \(its value not shown\) is invalid: expected a crypt\(3\) hash \(make one with: openssl passwd -6\)$/,
  ],
  [['--user', 'alice', '--password-file', '/no/such/file'], /^error: --password-file "\/no\/such\/file" is invalid: expected an existing file$/],
  [['--password-hash', '$6$salt$hash'], /^error: --password-hash\/--password-file: give --user NAME too/],
  [['--ssh-key', '/etc/hostname'], /^error: --ssh-key "\/etc\/hostname" is invalid: expected OpenSSH public keys/],
  [['--ssh', 'yes'], /^error: --ssh "yes" is invalid: expected one of on, off$/],
  [['--ssh', 'off', '--ssh-password-auth'], /^error: --ssh off and --ssh-password-auth: give one or the other$/],
  [['--wifi-ssid', 'x'.repeat(33)], /^error: --wifi-ssid "x+" is invalid: expected an SSID of 1 to 32 bytes/],
  [['--wifi-ssid', 'lab', '--wifi-country', 'FR'], /^error: --wifi-ssid: give --wifi-psk-file FILE too/],
  [
    ['--wifi-ssid', 'lab', '--wifi-psk-file', '/etc/hostname', '--wifi-country', 'FR'],
    /^error: --wifi-psk-file \/etc\/hostname: a passphrase is 8 to 63 printable ASCII characters/,
  ],
  [['--wifi-country', 'XX'], /^error: --wifi-country "XX" is invalid: expected an ISO 3166 country code/],
  [['--timezone', 'Mars/Olympus_Mons'], /^error: --timezone "Mars\/Olympus_Mons" is invalid: expected a time zone/],
  [['--locale', 'french'], /^error: --locale "french" is invalid: expected a locale such as fr_FR\.UTF-8/],
  [['--keymap', 'FR!'], /^error: --keymap "FR!" is invalid: expected a keyboard layout/],
  [['--packages', 'tree,Bad Name'], /^error: --packages "tree,Bad Name" is invalid: expected Debian package names/],
  [['--enable', '../etc/passwd'], /^error: --enable "\.\.\/etc\/passwd" is invalid: expected systemd unit names/],
  [['--enable', 'ssh', '--disable', 'ssh.service'], /^error: --enable and --disable ssh\.service: give one or the other$/],
];

test('a bad value of each setting: one line, exit 2, before any work (nothing fetched, no work directory)', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [args, message] of BAD) {
    // The base is a port nothing listens on: a fetch would fail with another error.
    const r = await run(['customize', '--base', 'http://127.0.0.1:9/base.img.xz', ...args, '--work', join(dir, 'work'), '--cache', join(dir, 'cache')]);
    t.is(r.exitCode, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, message, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line`);
    t.false(existsSync(join(dir, 'work')), `${args.join(' ')}: no work started`);
  }
});

test('--plan shows the settings stage and what it applies, never the password hash', async (t) => {
  const hash = '$6$somesalt$ZmFrZWhhc2hmYWtlaGFzaGZha2VoYXNo';
  const r = await run(['customize', '--plan', '--hostname', 'pi-07', '--user', 'alice', '--password-hash', hash, '--packages', 'tree,htop', '--enable', 'ssh']);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, /^ 6\. settings +apply --hostname, --user, --password-hash, --packages, --enable \(chroot: (native|qemu-user) .+\)$/m);
  t.regex(r.stdout, /^ +packages = tree, htop$/m);
  t.regex(r.stdout, /^ +enable = ssh\.service$/m);
  t.regex(r.stdout, /^ +password-hash = \(a password hash\)$/m);
  t.false(r.stdout.includes(hash));
  const none = await run(['customize', '--plan']);
  t.regex(none.stdout, /^ 6\. settings +no settings \(--hostname, /m);
});
