/**
 * Settings for one card, written to its boot partition in the release's own first-boot format,
 * the one Raspberry Pi Imager writes for that image (os-list.json's init_format):
 *
 * - `systemd` (bookworm and before): firstrun.sh, run once by `systemd.run=` on the kernel command
 *   line, which calls Raspberry Pi OS's imager_custom and userconf (and does their work itself on
 *   an image without them), then removes itself and the command-line arguments;
 * - `cloudinit-rpi` (trixie): a cloud-init NoCloud seed (user-data, network-config, meta-data)
 *   with a fresh instance id, named on the command line.
 *
 * Validated before anything is written: each bad value is one line naming the flag and the fix.
 */
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { execa } from 'execa';
import { ConfigError } from '../engine/errors.ts';
import { CRYPT_HASH, isCountry, isTimezone, KEYMAP, USER_NAME } from './rules.ts';

export type InitFormat = 'systemd' | 'cloudinit-rpi';

export interface CardSettings {
  hostname?: string;
  /** The first user (uid 1000) is renamed to this one, with this crypt(3) hash as its password. */
  user?: { name: string; passwordHash?: string };
  /** Public keys that may log in as the user; SSH is switched on (password logins off). */
  sshKeys?: string[];
  /** SSH on with password logins (when there is no key). */
  sshPasswordAuth?: boolean;
  /** The PSK as 64 hex digits (derived from the passphrase and the SSID, as Imager does). */
  wifi?: { ssid: string; psk: string; country: string; hidden: boolean };
  timezone?: string;
  keymap?: string;
}

/** The flags flash takes for them (and the keys of --settings FILE). */
export const SETTINGS_FLAGS = {
  hostname: { type: 'string', placeholder: 'NAME', help: 'the card\'s host name' },
  user: { type: 'string', placeholder: 'NAME', help: 'the first user\'s name (the image\'s uid-1000 user is renamed)' },
  'password-hash': { type: 'string', placeholder: 'HASH', help: 'its password as a crypt(3) hash (openssl passwd -6)' },
  'password-file': { type: 'string', placeholder: 'FILE', help: 'its password, the first line of FILE (hashed here; never on the command line)' },
  'ssh-key': { type: 'string', placeholder: 'FILE', help: 'public keys that log in as the user; switches SSH on, password logins off' },
  'ssh-password-auth': { type: 'boolean', help: 'switch SSH on with password logins' },
  'wifi-ssid': { type: 'string', placeholder: 'SSID', help: 'a Wi-Fi network to join' },
  'wifi-psk-file': { type: 'string', placeholder: 'FILE', help: 'its passphrase (8 to 63 characters) or 64-hex PSK, the first line of FILE' },
  'wifi-country': { type: 'string', placeholder: 'CC', help: 'the Wi-Fi country, ISO 3166 (FR, GB, US...)' },
  'wifi-hidden': { type: 'boolean', help: 'the network does not broadcast its SSID' },
  timezone: { type: 'string', placeholder: 'ZONE', help: 'the time zone (Europe/Paris)' },
  keymap: { type: 'string', placeholder: 'LAYOUT', help: 'the keyboard layout (gb, fr, us...)' },
  settings: { type: 'string', placeholder: 'FILE', help: 'the settings above as JSON ({"hostname": "pi-07", ...}); flags win' },
} as const;

/** Flag values; --ssh-key may name several files (customize's is repeatable). */
type Values = Record<string, string | string[] | boolean | undefined>;

const HOSTNAME = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;
const SSH_KEY = /^(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: .*)?$/;

/** A file a flag names, or one line naming the flag, the file and why it cannot be read. */
function readInput(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`--${flag} ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
}

const firstLine = (flag: string, path: string) => readInput(flag, path).split(/\r?\n/)[0]!;

/** The flags (or --settings FILE's keys, which the flags override) checked and turned into settings. */
export async function parseCardSettings(flags: Values): Promise<CardSettings | undefined> {
  let values: Values = {};
  if (typeof flags.settings === 'string') {
    try {
      values = JSON.parse(readFileSync(flags.settings, 'utf8')) as Values;
    } catch (error) {
      throw new ConfigError(`--settings ${flags.settings}: not a readable JSON object (${(error as Error).message.split('\n')[0]})`);
    }
    if (typeof values !== 'object' || values === null || Array.isArray(values)) throw new ConfigError(`--settings ${flags.settings}: not a JSON object`);
    for (const [key, value] of Object.entries(values)) {
      const flag = SETTINGS_FLAGS[key as keyof typeof SETTINGS_FLAGS];
      if (!flag || key === 'settings') throw new ConfigError(`--settings ${flags.settings}: unknown key "${key}" (keys: ${Object.keys(SETTINGS_FLAGS).filter((k) => k !== 'settings').join(', ')})`);
      if (typeof value !== flag.type) throw new ConfigError(`--settings ${flags.settings}: "${key}" must be a ${flag.type}`);
    }
  }
  for (const key of Object.keys(SETTINGS_FLAGS)) if (flags[key] !== undefined) values[key] = flags[key];
  const str = (key: string) => (typeof values[key] === 'string' ? (values[key] as string) : undefined);
  const settings: CardSettings = {};

  const hostname = str('hostname');
  if (hostname !== undefined) {
    if (!HOSTNAME.test(hostname)) throw new ConfigError(`--hostname "${hostname}": not a host name (1 to 63 letters, digits and inner hyphens, e.g. pi-07)`);
    settings.hostname = hostname;
  }

  const name = str('user');
  let passwordHash = str('password-hash');
  if (passwordHash !== undefined && str('password-file') !== undefined) throw new ConfigError('--password-hash and --password-file: give one or the other');
  if (passwordHash !== undefined && !CRYPT_HASH.test(passwordHash)) throw new ConfigError('--password-hash: not a crypt(3) hash (make one with: openssl passwd -6)');
  const passwordFile = str('password-file');
  if (passwordFile !== undefined) {
    const password = firstLine('password-file', passwordFile);
    if (password === '') throw new ConfigError(`--password-file ${passwordFile}: its first line is empty`);
    passwordHash = (await execa('openssl', ['passwd', '-6', '-stdin'], { input: password })).stdout.trim();
  }
  if (name !== undefined) {
    if (!USER_NAME.test(name) || name === 'root') throw new ConfigError(`--user "${name}": not a user name for the image (lower case letters, digits, _ and -, at most 32, not root)`);
    settings.user = { name, ...(passwordHash !== undefined ? { passwordHash } : {}) };
  } else if (passwordHash !== undefined) {
    throw new ConfigError('--password-hash/--password-file: give --user NAME too (the user whose password it is)');
  }

  for (const keyFile of [values['ssh-key'] ?? []].flat().filter((v) => typeof v === 'string')) {
    const keys = readInput('ssh-key', keyFile)
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    const bad = keys.find((k) => !SSH_KEY.test(k) || /['"\\]/.test(k));
    if (keys.length === 0 || bad !== undefined) throw new ConfigError(`--ssh-key ${keyFile}: ${bad === undefined ? 'holds no key' : `"${bad.slice(0, 40)}..." is not an OpenSSH public key`} (give the .pub file)`);
    settings.sshKeys = [...(settings.sshKeys ?? []), ...keys];
  }
  if (values['ssh-password-auth'] === true) settings.sshPasswordAuth = true;

  const ssid = str('wifi-ssid');
  const pskFile = str('wifi-psk-file');
  const country = str('wifi-country');
  if (ssid !== undefined) {
    if (Buffer.byteLength(ssid) < 1 || Buffer.byteLength(ssid) > 32 || /['"\\\n\r\0]/.test(ssid)) throw new ConfigError(`--wifi-ssid "${ssid}": an SSID is 1 to 32 bytes, here without quotes or backslashes`);
    if (pskFile === undefined) throw new ConfigError('--wifi-ssid: give --wifi-psk-file FILE too (open networks are not supported)');
    if (country === undefined) throw new ConfigError('--wifi-ssid: give --wifi-country CC too (the radio may not transmit without it)');
    const secret = firstLine('wifi-psk-file', pskFile);
    let psk: string;
    if (/^[0-9a-fA-F]{64}$/.test(secret)) psk = secret.toLowerCase();
    else if (/^[\x20-\x7e]{8,63}$/.test(secret)) psk = pbkdf2Sync(secret, ssid, 4096, 32, 'sha1').toString('hex');
    else throw new ConfigError(`--wifi-psk-file ${pskFile}: a passphrase is 8 to 63 printable ASCII characters, or a PSK is 64 hex digits`);
    settings.wifi = { ssid, psk, country: country.toUpperCase(), hidden: values['wifi-hidden'] === true };
  } else if (pskFile !== undefined || values['wifi-hidden'] === true) {
    throw new ConfigError('--wifi-psk-file/--wifi-hidden: give --wifi-ssid SSID too');
  }
  if (country !== undefined && !isCountry(country.toUpperCase())) throw new ConfigError(`--wifi-country "${country}": not an ISO 3166 country code (FR, GB, US...)`);
  if (country !== undefined && ssid === undefined) throw new ConfigError('--wifi-country: give --wifi-ssid SSID too');

  const timezone = str('timezone');
  if (timezone !== undefined) {
    if (!isTimezone(timezone)) throw new ConfigError(`--timezone "${timezone}": not a time zone (Area/City, e.g. Europe/Paris)`);
    settings.timezone = timezone;
  }
  const keymap = str('keymap');
  if (keymap !== undefined) {
    if (!KEYMAP.test(keymap)) throw new ConfigError(`--keymap "${keymap}": not a keyboard layout (gb, fr, us, de...)`);
    settings.keymap = keymap;
  }
  return Object.keys(settings).length ? settings : undefined;
}

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

const CUSTOM = '/usr/lib/raspberrypi-sys-mods/imager_custom';
const USERCONF = '/usr/lib/userconf-pi/userconf';

/** firstrun.sh for init_format `systemd`: what it does, in the order Imager's does it. */
export function firstrunScript(s: CardSettings, bootMount: string): string {
  const out = ['#!/bin/sh', '# First-boot settings written by build-image flash (Raspberry Pi Imager\'s format): run once, then removed.', '', 'set +e', ''];
  if (s.hostname) {
    out.push(
      'CURRENT_HOSTNAME=$(cat /etc/hostname | tr -d " \\t\\n\\r")',
      `if [ -f ${CUSTOM} ]; then`,
      `   ${CUSTOM} set_hostname ${s.hostname}`,
      'else',
      `   echo ${s.hostname} >/etc/hostname`,
      `   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t${s.hostname}/g" /etc/hosts`,
      'fi',
    );
  }
  out.push('FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)', 'FIRSTUSERHOME=$(getent passwd 1000 | cut -d: -f6)');
  if (s.sshKeys) {
    out.push(
      `if [ -f ${CUSTOM} ]; then`,
      `   ${CUSTOM} enable_ssh -k ${s.sshKeys.map(q).join(' ')}`,
      'else',
      '   install -o "$FIRSTUSER" -m 700 -d "$FIRSTUSERHOME/.ssh"',
      `   printf '%s\\n' ${s.sshKeys.map(q).join(' ')} >"$FIRSTUSERHOME/.ssh/authorized_keys"`,
      '   chown "$FIRSTUSER:$FIRSTUSER" "$FIRSTUSERHOME/.ssh/authorized_keys"',
      '   chmod 600 "$FIRSTUSERHOME/.ssh/authorized_keys"',
      "   echo 'PasswordAuthentication no' >>/etc/ssh/sshd_config",
      '   systemctl enable ssh',
      'fi',
    );
  } else if (s.sshPasswordAuth) {
    out.push(`if [ -f ${CUSTOM} ]; then`, `   ${CUSTOM} enable_ssh`, 'else', '   systemctl enable ssh', 'fi');
  }
  if (s.user || s.sshKeys) {
    const name = s.user?.name ?? 'pi';
    const hash = s.user?.passwordHash ?? '';
    out.push(`if [ -f ${USERCONF} ]; then`, `   ${USERCONF} ${q(name)} ${q(hash)}`, 'else');
    if (hash) out.push(`   echo "$FIRSTUSER":${q(hash)} | chpasswd -e`);
    out.push(
      `   if [ "$FIRSTUSER" != ${q(name)} ]; then`,
      `      usermod -l ${q(name)} "$FIRSTUSER"`,
      `      usermod -m -d ${q(`/home/${name}`)} ${q(name)}`,
      `      groupmod -n ${q(name)} "$FIRSTUSER"`,
      `      if [ -f /etc/sudoers.d/010_pi-nopasswd ]; then sed -i "s/^$FIRSTUSER /${name} /" /etc/sudoers.d/010_pi-nopasswd; fi`,
      '   fi',
      'fi',
    );
  }
  if (s.wifi) {
    const w = s.wifi;
    out.push(
      `if [ -f ${CUSTOM} ]; then`,
      `   ${CUSTOM} set_wlan ${w.hidden ? '-h ' : ''}${q(w.ssid)} ${q(w.psk)} ${q(w.country)}`,
      'else',
      "cat >/etc/wpa_supplicant/wpa_supplicant.conf <<'WPAEOF'",
      `country=${w.country}`,
      'ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev',
      'ap_scan=1',
      '',
      'update_config=1',
      'network={',
      ...(w.hidden ? ['\tscan_ssid=1'] : []),
      `\tssid="${w.ssid}"`,
      `\tpsk=${w.psk}`,
      '}',
      'WPAEOF',
      '   chmod 600 /etc/wpa_supplicant/wpa_supplicant.conf',
      '   rfkill unblock wifi',
      '   for filename in /var/lib/systemd/rfkill/*:wlan ; do echo 0 > $filename; done',
      'fi',
    );
  }
  if (s.keymap || s.timezone) {
    out.push(`if [ -f ${CUSTOM} ]; then`);
    if (s.keymap) out.push(`   ${CUSTOM} set_keymap ${q(s.keymap)}`);
    if (s.timezone) out.push(`   ${CUSTOM} set_timezone ${q(s.timezone)}`);
    out.push('else');
    if (s.timezone) out.push('   rm -f /etc/localtime', `   echo ${q(s.timezone)} >/etc/timezone`, '   dpkg-reconfigure -f noninteractive tzdata');
    if (s.keymap) {
      out.push(`   printf 'XKBMODEL="pc105"\\nXKBLAYOUT="%s"\\nXKBVARIANT=""\\nXKBOPTIONS=""\\n' ${q(s.keymap)} >/etc/default/keyboard`, '   dpkg-reconfigure -f noninteractive keyboard-configuration');
    }
    out.push('fi');
  }
  out.push(`rm -f ${bootMount}/firstrun.sh`, `sed -i 's| systemd\\.run.*||g' ${bootMount}/cmdline.txt`, 'exit 0', '');
  return out.join('\n');
}

/** What the kernel command line gets for each format. */
export function cmdlineArguments(format: InitFormat, bootMount: string, instanceId: string): string {
  return format === 'systemd'
    ? ` systemd.run=${bootMount}/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target`
    : ` ds=nocloud;i=${instanceId}`;
}

/** A YAML double-quoted scalar (JSON's escaping is valid YAML). */
const y = (s: string) => JSON.stringify(s);

/** The cloud-init seed for init_format `cloudinit-rpi`: user-data, network-config (only with Wi-Fi), meta-data. */
export function cloudInitSeed(s: CardSettings, instanceId: string): Record<string, string> {
  const user: string[] = ['#cloud-config', '# First-boot settings written by build-image flash (Raspberry Pi Imager\'s format).'];
  if (s.hostname) user.push(`hostname: ${s.hostname}`, 'manage_etc_hosts: true');
  if (s.timezone) user.push(`timezone: ${s.timezone}`);
  if (s.keymap) user.push('keyboard:', '  model: pc105', `  layout: ${y(s.keymap)}`);
  if (s.user || s.sshKeys) {
    user.push('user:', `  name: ${s.user?.name ?? 'pi'}`, '  shell: /bin/bash');
    if (s.user?.passwordHash) user.push('  lock_passwd: false', `  passwd: ${y(s.user.passwordHash)}`);
    else user.push('  lock_passwd: true');
    if (s.sshKeys) user.push('  ssh_authorized_keys:', ...s.sshKeys.map((k) => `    - ${y(k)}`));
    user.push('  sudo: null');
  }
  const ssh = Boolean(s.sshKeys || s.sshPasswordAuth);
  if (ssh) user.push(`ssh_pwauth: ${s.sshKeys ? 'false' : 'true'}`, 'runcmd:', '  - [ systemctl, enable, --now, ssh ]');
  const seed: Record<string, string> = { 'user-data': `${user.join('\n')}\n`, 'meta-data': `instance_id: ${instanceId}\n` };
  if (s.wifi) {
    const w = s.wifi;
    // eth0 keeps DHCP: a network-config replaces the release's default for every interface.
    seed['network-config'] = [
      'network:',
      '  version: 2',
      '  ethernets:',
      '    eth0:',
      '      dhcp4: true',
      '      dhcp6: true',
      '      optional: true',
      '  wifis:',
      '    wlan0:',
      '      dhcp4: true',
      `      regulatory-domain: ${y(w.country)}`,
      '      access-points:',
      `        ${y(w.ssid)}:`,
      ...(w.hidden ? ['          hidden: true'] : []),
      `          password: ${y(w.psk)}`,
      '      optional: true',
      '',
    ].join('\n');
  }
  return seed;
}

/** A fresh instance id: cloud-init runs its per-instance modules again for each card. */
export function newInstanceId(): string {
  return `build-image-${Date.now()}-${randomBytes(4).toString('hex')}`;
}
