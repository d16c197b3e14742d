/**
 * One model of a user's settings: the same values reach `build-image customize --plan` and
 * `build-image flash IMAGE DEVICE` as a user types them, and get the same verdict from both, with
 * the same line for a refused one. Flash checks its settings before it looks at the image or the
 * device, so a good value there ends at the missing image. No root, no device, no network.
 *
 * Every value goes through the CLI's main() in this process, with the error line and exit code
 * commands/cli.ts makes of what it throws; the cases marked `spawn` also run `build-image` itself
 * (each process loads the whole CLI, about a quarter of a second of CPU), which must say the same.
 */

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { main } from '../../commands/main.ts';
import { describeError, exitCodeOf } from '../../engine/errors.ts';
import { quote } from '../../engine/exec.ts';
import { firstrunScript } from '../../settings/first-boot.ts';
import { settingsScript } from '../../settings/in-image.ts';
import type { Settings } from '../../settings/model.ts';
import { renameFirstUser } from '../../settings/shell.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'build-image-settings-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const image = join(dir, 'no-such.img.xz');
const device = join(dir, 'no-such-device');
/** What flash says once the settings pass: the image is the next thing it checks. */
const NO_IMAGE = `error: ${image}: no such file (the image to write)`;

const file = (name: string, text: string) => {
  writeFileSync(join(dir, name), text);
  return join(dir, name);
};
const keygen = (name: string, comment: string) => execa('ssh-keygen', ['-t', 'ed25519', '-N', '', '-C', comment, '-f', join(dir, name), '-q']);
/** Real key pairs, made once: a one-word comment, an empty one, one to prefix with options. */
const keys = Promise.all([keygen('laptop', 'laptop'), keygen('bare', ''), keygen('me', 'me')]).then(() => {
  const pub = (name: string) => readFileSync(join(dir, `${name}.pub`), 'utf8').trim();
  const blob = pub('laptop').split(' ')[1]!;
  return {
    laptop: join(dir, 'laptop.pub'),
    bare: join(dir, 'bare.pub'),
    options: file('options.pub', `from="10.0.0.0/8" ${pub('me')}\n`),
    two: file('two.pub', `# two keys\n${pub('laptop')}\n\n${pub('me')}\n`),
    private: join(dir, 'laptop'),
    notKey: file('not-a-key.pub', 'hello world\n'),
    mismatch: file('mismatch.pub', `ssh-rsa ${blob} laptop\n`),
    truncated: file('truncated.pub', 'ssh-ed25519 AAAA laptop\n'),
    empty: file('empty.pub', ''),
  };
});
const psk = file('psk', 'correct horse battery\n');
const shortPsk = file('short-psk', 'short\n');
const password = file('password', 'a-password-of-alice\n');
const wifi = (ssid: string, country = 'FR') => ['--wifi-ssid', ssid, '--wifi-psk-file', psk, '--wifi-country', country];

type Keys = Awaited<typeof keys>;
interface Case {
  name: string;
  /** The flag the case is about: a refusal names it. */
  flag: string;
  args: (k: Keys) => string[];
  ok: boolean;
  /** Run `build-image` itself too. */
  spawn?: boolean;
}

/** Good values, several a run (one of each setting): a refusal of any names it. */
const GOOD: Case[] = [
  {
    name: 'a label, a one-word key comment, an SSID with a space',
    flag: 'hostname',
    args: (k) => [
      '--hostname',
      'pi-07',
      '--user',
      'alice',
      '--ssh-key',
      k.laptop,
      ...wifi('lab net'),
      '--timezone',
      'Europe/Paris',
      '--locale',
      'fr_FR.UTF-8',
      '--keymap',
      'fr',
    ],
    ok: true,
  },
  {
    name: 'upper case, a key with options, a lower-case country',
    flag: 'hostname',
    spawn: true,
    args: (k) => [
      '--hostname',
      'Pi-07',
      '--user',
      '_svc',
      '--password-hash',
      '$6$salt$hash',
      '--ssh-key',
      k.options,
      ...wifi('lab', 'fr'),
      '--timezone',
      'UTC',
      '--locale',
      'en_GB.UTF-8',
      '--keymap',
      'gb',
    ],
    ok: true,
  },
  {
    name: 'the longest label, user name and SSID; a key without a comment',
    flag: 'hostname',
    args: (k) => [
      '--hostname',
      'a'.repeat(63),
      '--user',
      'a'.repeat(32),
      '--ssh-key',
      k.bare,
      ...wifi('x'.repeat(32), 'GB'),
      '--timezone',
      'America/Argentina/Buenos_Aires',
      '--locale',
      'sr_RS@latin',
      '--keymap',
      'de',
    ],
    ok: true,
  },
  {
    name: 'a label starting with a digit, a password file, a file of two keys, a UTF-8 SSID, a hidden network',
    flag: 'hostname',
    args: (k) => [
      '--hostname',
      '7pi',
      '--user',
      'bob',
      '--password-file',
      password,
      '--ssh-key',
      k.two,
      ...wifi('café', 'US'),
      '--wifi-hidden',
      '--ssh-password-auth',
    ],
    ok: true,
  },
];

const bad = (flag: string, name: string, args: (k: Keys) => string[], spawn = false): Case => ({ name, flag, args, ok: false, spawn });
const BAD: Case[] = [
  bad('hostname', 'a dotted host name', () => ['--hostname', 'pi.lab'], true),
  bad('hostname', 'a fully qualified host name', () => ['--hostname', 'pimaster.lab.example']),
  bad('hostname', 'an underscore', () => ['--hostname', 'pi_07']),
  bad('hostname', 'a leading hyphen', () => ['--hostname=-pi']),
  bad('hostname', '64 characters', () => ['--hostname', 'a'.repeat(64)]),
  bad('hostname', 'empty', () => ['--hostname=']),
  bad('ssh-key', 'a private key', (k) => ['--ssh-key', k.private], true),
  bad('ssh-key', 'not a key', (k) => ['--ssh-key', k.notKey]),
  bad('ssh-key', 'a blob of another type', (k) => ['--ssh-key', k.mismatch]),
  bad('ssh-key', 'a truncated blob', (k) => ['--ssh-key', k.truncated]),
  bad('ssh-key', 'an empty file', (k) => ['--ssh-key', k.empty]),
  bad('ssh-key', 'no such file', () => ['--ssh-key', join(dir, 'no-such.pub')]),
  bad('wifi-ssid', 'a tab', () => wifi('lab\tnet'), true),
  bad('wifi-ssid', 'double quotes', () => wifi('say "hi"')),
  bad('wifi-ssid', 'a backslash', () => wifi('back\\slash')),
  bad('wifi-ssid', '33 bytes', () => wifi('x'.repeat(33))),
  bad('wifi-ssid', 'no passphrase', () => ['--wifi-ssid', 'lab', '--wifi-country', 'FR']),
  bad('wifi-psk-file', 'a passphrase too short', () => ['--wifi-ssid', 'lab', '--wifi-psk-file', shortPsk, '--wifi-country', 'FR']),
  bad('wifi-country', 'no such country', () => wifi('lab', 'XX'), true),
  bad('wifi-country', 'three letters', () => wifi('lab', 'FRA')),
  bad('wifi-country', 'without a network', () => ['--wifi-country', 'FR']),
  bad('timezone', 'no such zone', () => ['--timezone', 'Europe/Atlantis']),
  bad('timezone', 'a path', () => ['--timezone', '../../etc/passwd']),
  bad('user', 'upper case', () => ['--user', 'Alice']),
  bad('user', 'root', () => ['--user', 'root']),
  bad('user', 'a leading digit', () => ['--user', '1alice']),
  bad('user', '33 characters', () => ['--user', 'a'.repeat(33)]),
  bad('password-hash', 'not a hash', () => ['--user', 'alice', '--password-hash', 'plain-text']),
  bad('password-hash', 'without a user', () => ['--password-hash', '$6$salt$hash']),
  bad('locale', 'a language name', () => ['--locale', 'french']),
  bad('locale', 'a command after it', () => ['--locale', 'fr_FR.UTF-8;reboot']),
  bad('locale', 'the parts swapped', () => ['--locale', 'FR_fr']),
  bad('keymap', 'a command after it', () => ['--keymap', 'fr; reboot']),
];

interface Verdict {
  exitCode: number;
  stderr: string;
}

/** What `build-image ARGS` says, in this process: commands/cli.ts is main() and these lines. */
async function inProcess(args: string[]): Promise<Verdict> {
  try {
    return { exitCode: await main(args), stderr: '' };
  } catch (error) {
    return { exitCode: exitCodeOf(error), stderr: describeError(error) };
  }
}

/** `build-image ARGS` as a process; a few at a time. */
let slots = availableParallelism() + 1;
const waiting: (() => void)[] = [];
async function spawned(args: string[]) {
  if (slots === 0) await new Promise<void>((resolve) => waiting.push(resolve));
  else slots--;
  try {
    return await execa(process.execPath, [cli, ...args], { reject: false, env: { CI: 'true' } });
  } finally {
    const next = waiting.shift();
    if (next) next();
    else slots++;
  }
}

// customize --plan prints its plan: not in the test's output.
const write = process.stdout.write;
test.before(() => {
  process.stdout.write = () => true;
});
test.after.always(() => {
  process.stdout.write = write;
});

const customizeArgs = (args: string[]) => ['customize', '--plan', '--work', join(dir, 'work'), '--cache', join(dir, 'cache'), ...args];
const flashArgs = (args: string[]) => ['flash', image, device, '--work', join(dir, 'work'), ...args];
const said = (r: { stderr: string }) => r.stderr.trim();

for (const c of [...GOOD, ...BAD]) {
  test(`--${c.flag}: ${c.name} (${c.ok ? 'taken' : 'refused'} by both${c.spawn ? ', as processes too' : ''})`, async (t) => {
    const args = c.args(await keys);
    const [customize, flash] = await Promise.all([inProcess(customizeArgs(args)), inProcess(flashArgs(args))]);
    if (c.ok) {
      t.is(customize.exitCode, 0, `customize: ${said(customize)}`);
      t.is(said(flash), NO_IMAGE, 'flash: the settings passed, the image is looked at next');
    } else {
      t.is(customize.exitCode, 2, 'customize refuses it');
      t.is(flash.exitCode, 2, 'flash refuses it');
      t.is(said(flash), said(customize), 'the same line from both');
      t.regex(said(customize), new RegExp(`^error: [^\\n]*--${c.flag}\\b[^\\n]*$`), 'one line naming the flag');
      t.not(said(flash), NO_IMAGE);
    }
    if (!c.spawn) return;
    const [customizeCli, flashCli] = await Promise.all([spawned(customizeArgs(args)), spawned(flashArgs(args))]);
    t.deepEqual(
      { exitCode: customizeCli.exitCode, stderr: said(customizeCli) },
      { exitCode: customize.exitCode, stderr: said(customize) },
      'build-image customize',
    );
    t.deepEqual({ exitCode: flashCli.exitCode, stderr: said(flashCli) }, { exitCode: flash.exitCode, stderr: said(flash) }, 'build-image flash');
    if (c.ok) t.regex(customizeCli.stdout, /^ +hostname = pi-07$/m, 'the host name lower-cased');
  });
}

test('the first user is renamed by the same lines in the image and at first boot', (t) => {
  const hash = '$6$salt$hash';
  const s: Settings = { user: { name: 'alice', passwordHash: hash }, packages: [], enable: [], disable: [] };
  const lines = (script: string) => script.split('\n').map((l) => l.trim());
  const rename = renameFirstUser('alice', hash).map((l) => l.trim());
  for (const [where, script] of [
    ['in the image', settingsScript(s, { bootMount: '/boot/firmware' })],
    ['firstrun.sh', firstrunScript(s, '/boot/firmware')],
  ] as const) {
    const all = lines(script);
    const at = all.indexOf(rename[0]!);
    t.deepEqual(all.slice(at, at + rename.length), rename, where);
  }
});

test('keys with options, quotes and apostrophes come out of the shell as they went in', async (t) => {
  const lines = ['from="10.0.0.0/8",command="echo a b" ssh-ed25519 AAAAC3 me', "ssh-ed25519 AAAAC3 it's mine", 'ssh-ed25519 AAAAC3 $HOME `id` \\n'];
  const { stdout } = await execa('sh', ['-c', `printf '%s\\n' ${lines.map(quote).join(' ')}`]);
  t.deepEqual(stdout.split('\n'), lines);
});
