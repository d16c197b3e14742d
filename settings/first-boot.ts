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
 * Flash takes the settings a first boot can apply, with customize's specs (settings/options.ts):
 * the same flags, rules and messages. They are checked before anything is written.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../engine/errors.ts';
import { quote as q } from '../engine/exec.ts';
import { engineSchema, resolveOptions, type Schema } from '../engine/options.ts';
import { plainBootMount } from '../lib/image/system.ts';
import { anySettings, readSettings, type Settings } from './model.ts';
import { type PiSettings, SETTING_KEYS, settingsSchema } from './options.ts';
import { oversized } from './rules.ts';
import { authorizedKeys, FIRST_USER, indent, localeLines, nmSsid, renameFirstUser, WIFI_UNBLOCKED, wpaSupplicantConf } from './shell.ts';

export type InitFormat = 'systemd' | 'cloudinit-rpi';

/** What needs a build: a card's first boot does not switch SSH by itself, install packages or switch units. */
const BUILD_ONLY = ['ssh', 'packages', 'enable', 'disable'] as const;
type FirstBootKey = Exclude<keyof PiSettings, (typeof BUILD_ONLY)[number]>;

/** The settings a card takes at its first boot: every setting but those that need a build. */
export const FIRST_BOOT_KEYS = SETTING_KEYS.filter((key): key is FirstBootKey => !(BUILD_ONLY as readonly string[]).includes(key));

/** A flag in node:util's terms, with its --help line. */
interface Flag {
  type: 'string' | 'boolean';
  /** Repeatable (--ssh-key A --ssh-key B). */
  multiple?: boolean;
  placeholder?: string;
  help: string;
}

const flagOf = (spec: Schema<PiSettings>[keyof PiSettings]): Flag => ({
  type: spec.kind === 'switch' ? 'boolean' : 'string',
  ...(spec.kind === 'list' ? { multiple: true } : {}),
  ...(spec.placeholder ? { placeholder: spec.placeholder } : {}),
  help: spec.help,
});

/** The flags flash takes for them, made from their specs, and --settings FILE. */
export const FIRST_BOOT_FLAGS: Record<FirstBootKey | 'settings', Flag> = {
  ...(Object.fromEntries(FIRST_BOOT_KEYS.map((key) => [key, flagOf(settingsSchema[key])])) as Record<FirstBootKey, Flag>),
  settings: { type: 'string', placeholder: 'FILE', help: 'the settings above as JSON ({"hostname": "pi-07", ...}); flags win' },
};

/** The keys of --settings FILE as JSON.parse gives them. */
function settingsFile(path: string): Record<string, unknown> {
  let values: unknown;
  let big: string | undefined;
  try {
    big = oversized(path);
  } catch {
    // Unreadable: JSON.parse's turn says so.
  }
  if (big) throw new ConfigError(`--settings ${path}: ${big}, too large for a JSON object of settings (at most 1 MiB)`);
  try {
    values = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ConfigError(`--settings ${path}: not a readable JSON object (${(error as Error).message.split('\n')[0]})`);
  }
  if (typeof values !== 'object' || values === null || Array.isArray(values)) throw new ConfigError(`--settings ${path}: not a JSON object`);
  for (const key of Object.keys(values)) {
    if (!(FIRST_BOOT_KEYS as readonly string[]).includes(key))
      throw new ConfigError(`--settings ${path}: unknown key "${key}" (keys: ${FIRST_BOOT_KEYS.join(', ')})`);
  }
  return values as Record<string, unknown>;
}

/**
 * firstrun.sh hands the keys to imager_custom as arguments, and Linux refuses to run a program with
 * one argument over MAX_ARG_STRLEN (128 KiB) or all of them over ARG_MAX (a quarter of the stack
 * limit): the first boot would fail. All the keys together stay under the first, so under both.
 */
const ARG_LIMIT = 131072;

/**
 * The flags (and --settings FILE's keys, which the flags override) through the settings' specs,
 * then checked together: the card's settings, or undefined when none is given.
 */
export async function firstBootSettings(flags: Record<string, string | boolean | string[] | undefined>): Promise<Settings | undefined> {
  const file = typeof flags.settings === 'string' ? { path: `--settings ${flags.settings}`, values: settingsFile(flags.settings) } : undefined;
  const given = Object.fromEntries(FIRST_BOOT_KEYS.filter((key) => flags[key] !== undefined).map((key) => [key, flags[key]]));
  const values = resolveOptions({ ...engineSchema, ...settingsSchema }, FIRST_BOOT_KEYS, { file, flags: given }, 'flash');
  const settings = await readSettings(values);
  const keyBytes = (settings.sshKeys ?? []).reduce((n, key) => n + Buffer.byteLength(key) + 1, 0);
  if (keyBytes > ARG_LIMIT) {
    throw new ConfigError(
      `--ssh-key: the keys come to ${keyBytes} bytes, over the ${ARG_LIMIT} bytes (Linux's MAX_ARG_STRLEN) firstrun.sh may pass to imager_custom as arguments: give fewer keys`,
    );
  }
  return anySettings(settings) ? settings : undefined;
}

/** One flag's value through its spec, as firstBootSettings would check it: throws the spec's line. */
export function checkFirstBootValue(name: string, value: string): void {
  if ((FIRST_BOOT_KEYS as readonly string[]).includes(name))
    resolveOptions({ ...engineSchema, ...settingsSchema }, FIRST_BOOT_KEYS, { flags: { [name]: value } }, 'flash');
}

const CUSTOM = '/usr/lib/raspberrypi-sys-mods/imager_custom';
/** The NetworkManager profile imager_custom set_wlan writes. */
const NM_PROFILE = '/etc/NetworkManager/system-connections/preconfigured.nmconnection';

/** firstrun.sh for init_format `systemd`: what it does, in the order Imager's does it. */
export function firstrunScript(s: Settings, mount: string): string {
  const bootMount = plainBootMount(mount); // the card's fstab: it goes into shell lines unquoted
  const out = ['#!/bin/sh', "# First-boot settings written by build-image flash (Raspberry Pi Imager's format): run once, then removed.", '', 'set +e', ''];
  if (s.hostname) {
    out.push(
      'CURRENT_HOSTNAME=$(cat /etc/hostname | tr -d " \\t\\n\\r")',
      `if [ -f ${CUSTOM} ]; then`,
      `  ${CUSTOM} set_hostname ${s.hostname}`,
      'else',
      `  echo ${s.hostname} >/etc/hostname`,
      `  sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t${s.hostname}/g" /etc/hosts`,
      'fi',
    );
  }
  if (s.sshKeys) {
    out.push(
      `if [ -f ${CUSTOM} ]; then`,
      `  ${CUSTOM} enable_ssh -k ${s.sshKeys.map(q).join(' ')}`,
      'else',
      ...indent(authorizedKeys(s.sshKeys)),
      "  echo 'PasswordAuthentication no' >>/etc/ssh/sshd_config",
      '  systemctl enable ssh',
      'fi',
    );
  } else if (s.sshPasswordAuth) {
    out.push(`if [ -f ${CUSTOM} ]; then`, `  ${CUSTOM} enable_ssh`, 'else', '  systemctl enable ssh', 'fi');
  }
  // Keys without a user: the first user is named pi, as Imager does (which also ends the rename wizard).
  if (s.user || s.sshKeys) out.push(FIRST_USER, ...renameFirstUser(s.user?.name ?? 'pi', s.user?.passwordHash));
  if (s.wifi) {
    const w = s.wifi;
    // Not indented: a here-document's lines are the file's.
    out.push(
      `if [ -f ${CUSTOM} ]; then`,
      `  ${CUSTOM} set_wlan ${w.hidden ? '-h ' : ''}${q(w.ssid)} ${q(w.psk)} ${q(w.country)}`,
      // imager_custom writes ssid= as a string, which NetworkManager reads trimmed: spaces at the ends need the bytes.
      ...(w.ssid !== w.ssid.trim() ? [`  f=${NM_PROFILE}; if [ -f "$f" ]; then sed -i 's/^ssid=.*/ssid=${nmSsid(w.ssid)}/' "$f"; fi`] : []),
      'else',
      ...wpaSupplicantConf(w),
      '  rfkill unblock wifi',
      `  ${WIFI_UNBLOCKED}`,
      'fi',
    );
  }
  if (s.locale) out.push(...localeLines(s.locale));
  if (s.keymap || s.timezone) {
    out.push(`if [ -f ${CUSTOM} ]; then`);
    if (s.keymap) out.push(`  ${CUSTOM} set_keymap ${q(s.keymap)}`);
    if (s.timezone) out.push(`  ${CUSTOM} set_timezone ${q(s.timezone)}`);
    out.push('else');
    if (s.timezone) out.push('  rm -f /etc/localtime', `  echo ${q(s.timezone)} >/etc/timezone`, '  dpkg-reconfigure -f noninteractive tzdata');
    if (s.keymap) {
      out.push(
        `  printf 'XKBMODEL="pc105"\\nXKBLAYOUT="%s"\\nXKBVARIANT=""\\nXKBOPTIONS=""\\n' ${q(s.keymap)} >/etc/default/keyboard`,
        '  dpkg-reconfigure -f noninteractive keyboard-configuration',
      );
    }
    out.push('fi');
  }
  out.push(`rm -f ${bootMount}/firstrun.sh`, `sed -i 's| systemd\\.run.*||g' ${bootMount}/cmdline.txt`, 'exit 0', '');
  return out.join('\n');
}

/** What the kernel command line gets for each format. */
export function cmdlineArguments(format: InitFormat, bootMount: string, instanceId: string): string {
  return format === 'systemd'
    ? ` systemd.run=${plainBootMount(bootMount)}/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target`
    : ` ds=nocloud;i=${instanceId}`;
}

/**
 * A YAML double-quoted scalar (JSON's escaping is valid YAML). Every string the seed holds is one:
 * cloud-init's YAML 1.1 reads a bare 0777 as 511, no as false, null as nothing.
 */
const y = (s: string) => JSON.stringify(s);

/** The cloud-init seed for init_format `cloudinit-rpi`: user-data, network-config (only with Wi-Fi), meta-data. */
export function cloudInitSeed(s: Settings, instanceId: string): Record<string, string> {
  const user: string[] = ['#cloud-config', "# First-boot settings written by build-image flash (Raspberry Pi Imager's format)."];
  if (s.hostname) user.push(`hostname: ${y(s.hostname)}`, 'manage_etc_hosts: true');
  if (s.timezone) user.push(`timezone: ${y(s.timezone)}`);
  if (s.locale) user.push(`locale: ${y(s.locale)}`);
  if (s.keymap) user.push('keyboard:', '  model: "pc105"', `  layout: ${y(s.keymap)}`);
  if (s.user || s.sshKeys) {
    user.push('user:', `  name: ${y(s.user?.name ?? 'pi')}`, '  shell: "/bin/bash"');
    if (s.user?.passwordHash) user.push('  lock_passwd: false', `  passwd: ${y(s.user.passwordHash)}`);
    else user.push('  lock_passwd: true');
    if (s.sshKeys) user.push('  ssh_authorized_keys:', ...s.sshKeys.map((k) => `    - ${y(k)}`));
    user.push('  sudo: null');
  }
  const ssh = Boolean(s.sshKeys || s.sshPasswordAuth);
  if (ssh) user.push(`ssh_pwauth: ${s.sshKeys ? 'false' : 'true'}`, 'runcmd:', '  - [ "systemctl", "enable", "--now", "ssh" ]');
  const seed: Record<string, string> = { 'user-data': `${user.join('\n')}\n`, 'meta-data': `instance_id: ${y(instanceId)}\n` };
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
