/**
 * A user's settings checked together and made ready to render: what each spec cannot check alone
 * (a password needs its user, Wi-Fi needs its passphrase and country), and the files they name
 * read (the password hashed, the passphrase turned into the PSK, the keys split into lines).
 * The settings stage renders the result in the image (settings/in-image.ts), flash on a card's
 * boot partition (settings/first-boot.ts). Each bad value is one line naming the flag and the fix.
 */
import { pbkdf2Sync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { execa } from 'execa';
import { ConfigError } from '../engine/errors.ts';
import type { PiSettings } from './options.ts';
import { oversized } from './rules.ts';

export interface Settings {
  hostname?: string;
  /** The first user (uid 1000) is renamed to this one (or made), with this crypt(3) hash as its password. */
  user?: { name: string; passwordHash?: string };
  /** Public keys that may log in as the first user; SSH on, password logins off. */
  sshKeys?: string[];
  /** SSH on with password logins. */
  sshPasswordAuth?: boolean;
  /** The SSH server started at boot, or not (on with keys or password logins unless told). */
  ssh?: 'on' | 'off';
  /** The PSK as 64 hex digits (derived from the passphrase and the SSID, as Imager does). */
  wifi?: { ssid: string; psk: string; country: string; hidden: boolean };
  timezone?: string;
  locale?: string;
  keymap?: string;
  packages: string[];
  enable: string[];
  disable: string[];
}

/** A file a flag names, or one line naming the flag, the file and why it cannot be read. */
function readInput(flag: string, path: string): string {
  let big: string | undefined;
  try {
    big = oversized(path);
    if (!big) return readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`--${flag} ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
  throw new ConfigError(`--${flag} ${path}: ${big}, too large for a file of one secret (at most 1 MiB)`);
}

/** The longest line `openssl passwd -6 -stdin` hashes in full (OpenSSL 3: a longer one is cut). */
const OPENSSL_PASSWD_MAX = 256;

const firstLine = (flag: string, path: string) => readInput(flag, path).split(/\r?\n/)[0]!;

/** The units that are the SSH server, which --ssh switches. */
const SSH_UNITS = ['ssh.service', 'sshd.service', 'ssh.socket'];

/** The settings (each already through its spec's rule) checked together, with the files they name read. */
export async function readSettings(values: PiSettings): Promise<Settings> {
  const s: Settings = { packages: values.packages, enable: values.enable, disable: values.disable };
  if (values.hostname !== undefined) s.hostname = values.hostname;

  let passwordHash = values['password-hash'];
  const passwordFile = values['password-file'];
  if (passwordHash !== undefined && passwordFile !== undefined) throw new ConfigError('--password-hash and --password-file: give one or the other');
  if (passwordFile !== undefined) {
    const password = firstLine('password-file', passwordFile);
    if (password === '') throw new ConfigError(`--password-file ${passwordFile}: its first line is empty`);
    // `openssl passwd -stdin` silently hashes only the first 256 bytes of a line: refuse more than it takes.
    if (Buffer.byteLength(password) > OPENSSL_PASSWD_MAX)
      throw new ConfigError(
        `--password-file ${passwordFile}: its first line is longer than the ${OPENSSL_PASSWD_MAX} bytes openssl passwd hashes; use a shorter password, or give --password-hash (mkpasswd -m sha-512)`,
      );
    passwordHash = (await execa('openssl', ['passwd', '-6', '-stdin'], { input: password })).stdout.trim();
  }
  if (values.user !== undefined) s.user = { name: values.user, ...(passwordHash !== undefined ? { passwordHash } : {}) };
  else if (passwordHash !== undefined) throw new ConfigError('--password-hash/--password-file: give --user NAME too (the user whose password it is)');

  for (const file of values['ssh-key']) {
    const keys = readInput('ssh-key', file)
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    s.sshKeys = [...(s.sshKeys ?? []), ...keys];
  }
  if (values['ssh-password-auth']) s.sshPasswordAuth = true;
  if (values.ssh === 'off' && values['ssh-password-auth']) throw new ConfigError('--ssh off and --ssh-password-auth: give one or the other');
  if (values.ssh) s.ssh = values.ssh;
  else if (s.sshKeys || s.sshPasswordAuth) s.ssh = 'on';
  // The SSH server switched one way by --ssh (or the keys), the other by --enable/--disable: which is meant?
  const sshOn = values.ssh === 'on' ? '--ssh on' : s.sshKeys ? '--ssh-key' : s.sshPasswordAuth ? '--ssh-password-auth' : undefined;
  const disabled = values.disable.find((unit) => SSH_UNITS.includes(unit));
  if (sshOn && disabled) throw new ConfigError(`${sshOn} and --disable ${disabled}: SSH on and off, give one or the other`);
  const enabled = values.enable.find((unit) => SSH_UNITS.includes(unit));
  if (values.ssh === 'off' && enabled) throw new ConfigError(`--ssh off and --enable ${enabled}: SSH off and on, give one or the other`);

  const { 'wifi-ssid': ssid, 'wifi-psk-file': pskFile, 'wifi-country': country } = values;
  if (ssid !== undefined) {
    if (pskFile === undefined) throw new ConfigError('--wifi-ssid: give --wifi-psk-file FILE too (open networks are not supported)');
    if (country === undefined) throw new ConfigError('--wifi-ssid: give --wifi-country CC too (the radio may not transmit without it)');
    const secret = firstLine('wifi-psk-file', pskFile);
    let psk: string;
    if (/^[0-9a-fA-F]{64}$/.test(secret)) psk = secret.toLowerCase();
    else if (/^[\x20-\x7e]{8,63}$/.test(secret)) psk = pbkdf2Sync(secret, ssid, 4096, 32, 'sha1').toString('hex');
    else throw new ConfigError(`--wifi-psk-file ${pskFile}: a passphrase is 8 to 63 printable ASCII characters, or a PSK is 64 hex digits`);
    s.wifi = { ssid, psk, country, hidden: values['wifi-hidden'] };
  } else if (pskFile !== undefined || values['wifi-hidden']) {
    throw new ConfigError('--wifi-psk-file/--wifi-hidden: give --wifi-ssid SSID too');
  } else if (country !== undefined) {
    throw new ConfigError('--wifi-country: give --wifi-ssid SSID too');
  }

  if (values.timezone !== undefined) s.timezone = values.timezone;
  if (values.locale !== undefined) s.locale = values.locale;
  if (values.keymap !== undefined) s.keymap = values.keymap;
  const both = values.enable.find((unit) => values.disable.includes(unit));
  if (both) throw new ConfigError(`--enable and --disable ${both}: give one or the other`);
  return s;
}

/** Whether any setting is there to apply. */
export function anySettings(s: Settings): boolean {
  return Object.entries(s).some(([, value]) => (Array.isArray(value) ? value.length > 0 : value !== undefined));
}
