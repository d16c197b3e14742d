/**
 * Shell lines that apply a setting the same way in the image at build time (settings/in-image.ts)
 * and on a card at its first boot (firstrun.sh, settings/first-boot.ts). Each returns lines
 * without indentation; `indent` nests them. Values are quoted with the engine's `quote`.
 */
import { quote as q } from '../engine/exec.ts';

export const indent = (lines: readonly string[], by = '  ') => lines.map((line) => (line ? `${by}${line}` : line));

/** Raspberry Pi OS's own renaming of the first user (userconf-pi), which also cancels its rename at first boot. */
export const USERCONF = '/usr/lib/userconf-pi/userconf';

/** $first: the first user's name (uid 1000), empty on an image without one. */
export const FIRST_USER = 'first=$(getent passwd 1000 | cut -d: -f1 || true)';

/**
 * The first user (uid 1000, whose name is in $first, see FIRST_USER) renamed to `name`, with its home and group,
 * and given the password hash: by userconf-pi where the image has it, else as it does.
 */
export function renameFirstUser(name: string, passwordHash = ''): string[] {
  return [
    `if [ -x ${USERCONF} ]; then`,
    `  ${USERCONF} ${q(name)} ${q(passwordHash)}`,
    'else',
    `  if [ "$first" != ${q(name)} ]; then`,
    `    usermod -l ${q(name)} "$first"`,
    `    usermod -m -d ${q(`/home/${name}`)} ${q(name)}`,
    `    groupmod -n ${q(name)} "$(getent group 1000 | cut -d: -f1)"`,
    `    if [ -f /etc/sudoers.d/010_pi-nopasswd ]; then sed -i "s/^$first /${name} /" /etc/sudoers.d/010_pi-nopasswd; fi`,
    '  fi',
    ...(passwordHash ? [`  echo ${q(`${name}:${passwordHash}`)} | chpasswd -e`] : []),
    'fi',
  ];
}

/** The keys, and only them, allowed to log in as the first user. */
export function authorizedKeys(keys: readonly string[]): string[] {
  return [
    FIRST_USER,
    'home=$(getent passwd 1000 | cut -d: -f6)',
    'install -d -m 700 -o "$first" -g "$(id -gn "$first")" "$home/.ssh"',
    `printf '%s\\n' ${keys.map(q).join(' ')} >"$home/.ssh/authorized_keys"`,
    'chown "$first:$(id -gn "$first")" "$home/.ssh/authorized_keys"',
    'chmod 600 "$home/.ssh/authorized_keys"',
  ];
}

/**
 * The SSID as NetworkManager's keyfile `ssid=` reads it exactly: a list of its bytes (`98;111;98;`).
 * As a string, the keyfile reader drops spaces at its ends, and a quote or `;` may be read otherwise.
 */
export const nmSsid = (ssid: string) => `${[...Buffer.from(ssid)].join(';')};`;

/** wpa_supplicant's configuration for one network; the SSID in hex, which it reads byte for byte. */
export function wpaSupplicantConf(w: { ssid: string; psk: string; country: string; hidden: boolean }): string[] {
  return [
    "cat >/etc/wpa_supplicant/wpa_supplicant.conf <<'EOF'",
    `country=${w.country}`,
    'ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev',
    'ap_scan=1',
    'update_config=1',
    '',
    'network={',
    ...(w.hidden ? ['\tscan_ssid=1'] : []),
    `\tssid=${Buffer.from(w.ssid).toString('hex')}`,
    `\tpsk=${w.psk}`,
    '}',
    'EOF',
    'chmod 600 /etc/wpa_supplicant/wpa_supplicant.conf',
  ];
}

/** The radio on: systemd-rfkill restores the state it saved, blocked in a release's image. */
export const WIFI_UNBLOCKED = 'for file in /var/lib/systemd/rfkill/*:wlan; do if [ -f "$file" ]; then echo 0 >"$file"; fi; done';

/** The locale generated (with the charset the image supports it in) and made the system's. */
export function localeLines(locale: string): string[] {
  const pattern = locale.replaceAll('.', '\\.');
  return [
    `charset=$(awk -v l=${q(locale)} '$1 == l { print $2; exit }' /usr/share/i18n/SUPPORTED 2>/dev/null || true)`,
    'if [ -n "$charset" ]; then',
    `  if grep -qE "^# *${pattern} $charset\\$" /etc/locale.gen; then sed -i -E "s/^# *(${pattern} $charset)\\$/\\1/" /etc/locale.gen; fi`,
    `  grep -qx "${locale} $charset" /etc/locale.gen || echo "${locale} $charset" >>/etc/locale.gen`,
    '  locale-gen',
    `  printf 'LANG=%s\\n' ${q(locale)} >/etc/default/locale`,
    'fi',
  ];
}
