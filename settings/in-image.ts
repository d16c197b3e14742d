/**
 * A user's settings applied in the image at build time, the way the image's release does it,
 * detected from what the image holds (the settings stage runs it; settings/first-boot.ts renders
 * the same settings for a card's first boot):
 *
 * - the first user (uid 1000) is renamed with userconf-pi's `userconf` where the image has it (it
 *   also cancels the rename dialog at first boot, as pi-gen does), else with usermod; made with
 *   useradd where the image has none;
 * - Wi-Fi is a NetworkManager profile (bookworm and later) with the country as the kernel's
 *   regulatory domain on cmdline.txt (as raspi-config sets it), else wpa_supplicant.conf;
 * - SSH host keys a package made here are removed: they are made at first boot.
 *
 * The stage cache keys the settings and the content of the files they name; a password file is
 * hashed again at each build (a fresh salt).
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { ConfigError } from '../engine/errors.ts';
import { quote as q } from '../engine/exec.ts';
import { inRoot, readInRoot } from '../lib/image/in-root.ts';
import type { Settings } from './model.ts';
import { given, type PiSettings } from './options.ts';
import { isZoneFile } from './rules.ts';
import { authorizedKeys, FIRST_USER, indent, localeLines, nmSsid, renameFirstUser, WIFI_UNBLOCKED, wpaSupplicantConf } from './shell.ts';

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** What the image depends on: the settings, and the files they name by content, not by path. */
export function settingsKey(config: PiSettings): string {
  const files = (paths: readonly (string | undefined)[]) => paths.filter((p): p is string => p !== undefined).map(sha256);
  const values = Object.fromEntries(given(config).map((key) => [key, config[key]]));
  return JSON.stringify({
    ...values,
    'ssh-key': files(config['ssh-key']),
    'password-file': files([config['password-file']]),
    'wifi-psk-file': files([config['wifi-psk-file']]),
  });
}

/** What the image holds that the script depends on. */
export interface ImageFacts {
  wifi?: 'networkmanager' | 'wpa_supplicant';
  /** Where the system mounts the boot partition. */
  bootMount: string;
}

/** How the image takes the settings; a setting it lacks the means of is one line, before anything is changed. */
export function checkAgainstImage(root: string, s: Settings): Omit<ImageFacts, 'bootMount'> {
  const has = (path: string) => existsSync(inRoot(root, path));
  if (s.timezone && !isZoneFile(inRoot(root, `usr/share/zoneinfo/${s.timezone}`)))
    throw new ConfigError(`--timezone ${s.timezone}: the image has no such zone in /usr/share/zoneinfo (is tzdata installed? add --packages tzdata)`);
  if (s.locale) {
    if (!has('usr/share/i18n/SUPPORTED')) throw new ConfigError(`--locale ${s.locale}: the image has no locales package (add --packages locales)`);
    const line = readInRoot(root, 'usr/share/i18n/SUPPORTED')
      .split('\n')
      .find((l) => l.split(' ')[0] === s.locale);
    if (!line) throw new ConfigError(`--locale ${s.locale}: not one of the image's supported locales (/usr/share/i18n/SUPPORTED, e.g. en_GB.UTF-8)`);
  }
  if (s.keymap && has('usr/share/X11/xkb/symbols') && !has(`usr/share/X11/xkb/symbols/${s.keymap}`)) {
    throw new ConfigError(`--keymap ${s.keymap}: the image's keyboard data has no such layout (/usr/share/X11/xkb/symbols)`);
  }
  const unitDirs = ['etc/systemd/system', 'usr/lib/systemd/system', 'lib/systemd/system'];
  for (const [flag, units] of [
    ['enable', s.enable],
    ['disable', s.disable],
  ] as const) {
    for (const unit of units) {
      // An instance (getty@tty2.service) has no file of its own: its template (getty@.service) is the unit file.
      const file = unit.replace(/@[^@]*(\.[a-z]+)$/, '@$1');
      if (!unitDirs.some((dir) => has(`${dir}/${unit}`) || has(`${dir}/${file}`)))
        throw new ConfigError(`--${flag} ${unit}: the image has no such unit (add its package with --packages)`);
    }
  }
  let wifi: 'networkmanager' | 'wpa_supplicant' | undefined;
  if (s.wifi) {
    const sbin = (name: string) => has(`usr/sbin/${name}`) || has(`sbin/${name}`);
    wifi = sbin('NetworkManager') ? 'networkmanager' : sbin('wpa_supplicant') ? 'wpa_supplicant' : undefined;
    if (!wifi) throw new ConfigError('--wifi-ssid: the image has neither NetworkManager nor wpa_supplicant (add --packages network-manager)');
  }
  if (
    s.sshKeys &&
    !s.user &&
    !readInRoot(root, 'etc/passwd')
      .split('\n')
      .some((l) => l.split(':')[2] === '1000')
  ) {
    throw new ConfigError('--ssh-key: the image has no first user (uid 1000) to log in as; give --user NAME');
  }
  return { wifi };
}

/** The shell script (bash -e, inside the image) that applies the settings. */
export function settingsScript(s: Settings, facts: ImageFacts): string {
  const out = ['# Written by build-image: the settings of this build, applied inside the image.', 'set -eu', ''];
  if (s.user) {
    const { name, passwordHash = '' } = s.user;
    out.push(
      '# The first user: renamed (its rename at first boot cancelled), or made.',
      FIRST_USER,
      'if [ -n "$first" ]; then',
      ...indent(renameFirstUser(name, passwordHash)),
      'else',
      '  groups=$(for g in adm dialout cdrom audio video plugdev users netdev sudo input render gpio i2c spi; do getent group "$g" >/dev/null && printf "%s," "$g"; done)',
      `  useradd -m -u 1000 -s /bin/bash -G "\${groups%,}" ${q(name)}`,
      ...(passwordHash ? [`  echo ${q(`${name}:${passwordHash}`)} | chpasswd -e`] : []),
      'fi',
      '',
    );
  }
  if (s.hostname) {
    out.push(
      `echo ${s.hostname} >/etc/hostname`,
      `if grep -q '^127\\.0\\.1\\.1' /etc/hosts; then sed -i 's/^127\\.0\\.1\\.1.*/127.0.1.1\\t${s.hostname}/' /etc/hosts; else printf '127.0.1.1\\t%s\\n' ${s.hostname} >>/etc/hosts; fi`,
      '',
    );
  }
  if (s.sshKeys) out.push(...authorizedKeys(s.sshKeys), '');
  if (s.sshKeys || s.sshPasswordAuth) {
    out.push(
      `printf '# build-image --ssh-key/--ssh-password-auth\\nPasswordAuthentication %s\\n' ${s.sshPasswordAuth ? 'yes' : 'no'} >/etc/ssh/sshd_config.d/50-build-image.conf`,
      '',
    );
  }
  if (s.ssh) out.push(`systemctl ${s.ssh === 'on' ? 'enable' : 'disable'} ssh.service`, '');
  if (s.wifi) {
    const w = s.wifi;
    if (facts.wifi === 'networkmanager') {
      out.push(
        "# Wi-Fi: a NetworkManager profile; the country is the kernel's regulatory domain (as raspi-config sets it).",
        "cat >/etc/NetworkManager/system-connections/preconfigured.nmconnection <<'EOF'",
        '[connection]',
        'id=preconfigured',
        'type=wifi',
        '',
        '[wifi]',
        'mode=infrastructure',
        `ssid=${nmSsid(w.ssid)}`,
        `hidden=${w.hidden}`,
        '',
        '[wifi-security]',
        'key-mgmt=wpa-psk',
        `psk=${w.psk}`,
        '',
        '[ipv4]',
        'method=auto',
        '',
        '[ipv6]',
        'addr-gen-mode=default',
        'method=auto',
        'EOF',
        'chmod 600 /etc/NetworkManager/system-connections/preconfigured.nmconnection',
        `cmdline=${facts.bootMount}/cmdline.txt`,
        `sed -i -e 's/ *cfg80211\\.ieee80211_regdom=[A-Z]*//' -e '1s/$/ cfg80211.ieee80211_regdom=${w.country}/' "$cmdline"`,
        '# pi-gen turns the radio off until a country is set.',
        'if [ -f /var/lib/NetworkManager/NetworkManager.state ]; then sed -i "s/^WirelessEnabled=.*/WirelessEnabled=true/" /var/lib/NetworkManager/NetworkManager.state; fi',
      );
    } else {
      out.push(...wpaSupplicantConf(w));
    }
    out.push(WIFI_UNBLOCKED, '');
  }
  if (s.timezone) out.push(`ln -sf ${q(`/usr/share/zoneinfo/${s.timezone}`)} /etc/localtime`, `echo ${q(s.timezone)} >/etc/timezone`, '');
  if (s.locale) out.push(...localeLines(s.locale), '');
  if (s.keymap) {
    out.push(
      `if [ -f /etc/default/keyboard ] && grep -q '^XKBLAYOUT=' /etc/default/keyboard; then sed -i 's/^XKBLAYOUT=.*/XKBLAYOUT="${s.keymap}"/' /etc/default/keyboard`,
      `else printf 'XKBMODEL="pc105"\\nXKBLAYOUT="%s"\\nXKBVARIANT=""\\nXKBOPTIONS=""\\nBACKSPACE="guess"\\n' ${q(s.keymap)} >/etc/default/keyboard; fi`,
      '',
    );
  }
  if (s.enable.length) out.push(`systemctl enable -- ${s.enable.map(q).join(' ')}`);
  if (s.disable.length) out.push(`systemctl disable -- ${s.disable.map(q).join(' ')}`);
  return `${out.join('\n')}\n`;
}

/** The package indexes `apt-get update` fetched into the image. */
export function aptIndexes(root: string): string[] {
  const dir = inRoot(root, 'var/lib/apt/lists');
  return existsSync(dir)
    ? readdirSync(dir, { withFileTypes: true })
        .filter((e) => e.isFile() && e.name !== 'lock')
        .map((e) => e.name)
    : [];
}

/** The SSH host keys in the image's /etc/ssh. */
export function hostKeys(root: string): string[] {
  const dir = inRoot(root, 'etc/ssh');
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith('ssh_host_')) : [];
}

/** Makes the host keys at first boot, on an image whose SSH server came from --packages. */
export const HOST_KEYS_UNIT = `[Unit]
Description=SSH host keys of this device (build-image: made at first boot, never in the image)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
`;

/**
 * `apt-get install` of exact package names: after `--`, so none is an option; Pattern-Only so a
 * name is never widened to a glob or a regular expression (apt's fallback when no package has it);
 * --no-remove so apt stops rather than remove a package to make room for another.
 */
export function aptInstallArgs(names: readonly string[]): string[] {
  return ['apt-get', 'install', '-y', '-q', '--no-remove', '-o', 'APT::Cmd::Pattern-Only=true', '--', ...names];
}
