/**
 * Checks of values users type: each returns the normalised value or throws a string that says
 * what is allowed (the config schema turns it into an error naming the key and the value).
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { formatBytes } from '../engine/options.ts';

/** One DNS label (RFC 1123): letters, digits and inner hyphens, 1 to 63 of them. */
const HOST_LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/**
 * The host name a Pi is given: one label, lower-cased. Raspberry Pi OS, raspi-config and
 * Raspberry Pi Imager give a Pi a single label, systemd's hostname(5) advises one, avahi
 * publishes only the first label (as NAME.local), and cloud-init (a trixie card's first boot)
 * writes only the first label of a dotted `hostname:` to /etc/hostname: a dotted name would
 * give a card another /etc/hostname than a built image. The domain belongs to DNS or DHCP.
 */
export function parseHostLabel(raw: string): string {
  if (/^-|-$/.test(raw)) throw "an RFC 1123 host name of one label, which cannot start or end with '-' (pi-07)";
  if (!HOST_LABEL.test(raw)) throw 'an RFC 1123 host name of one label: 1 to 63 letters, digits and inner hyphens, no dots (pi-07)';
  return raw.toLowerCase();
}

const KEY_TYPES = [
  'ssh-ed25519',
  'ssh-rsa',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
];

/**
 * One OpenSSH public key line: a key type, then a base64 blob that itself starts with that type,
 * optionally after options (which may quote spaces) and before a comment (which may be one word).
 */
export function isPublicKey(line: string): boolean {
  const words = line.trim().split(/\s+/);
  return words.some((type, i) => KEY_TYPES.includes(type) && blobType(words[i + 1]) === type);
}

function blobType(word: string | undefined): string | undefined {
  if (!word || !/^[A-Za-z0-9+/]+={0,2}$/.test(word)) return undefined;
  const blob = Buffer.from(word, 'base64');
  if (blob.length < 4) return undefined;
  return blob.subarray(4, 4 + blob.readUInt32BE(0)).toString('latin1');
}

/**
 * The most a file a setting names may hold (keys, a password, a passphrase, --settings' JSON): read
 * whole, a larger one (a disk image given by mistake) would take the memory or pass V8's longest string.
 */
export const INPUT_MAX = 2 ** 20;

/** The size of a file larger than INPUT_MAX, as 600.0 MiB; undefined for one that is not. */
export function oversized(path: string): string | undefined {
  const { size } = statSync(path);
  return size > INPUT_MAX ? formatBytes(size) : undefined;
}

/** A file of OpenSSH public keys (authorized_keys format); returns its absolute path. */
export function parsePublicKeyFile(raw: string): string {
  const path = resolve(raw);
  if (!existsSync(path) || !statSync(path).isFile()) throw 'an existing file holding OpenSSH public keys (such as ~/.ssh/id_ed25519.pub)';
  const big = oversized(path);
  if (big) throw `a file of OpenSSH public keys, at most 1 MiB: this one is ${big}`;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw `a file of OpenSSH public keys: cannot read it (${(error as NodeJS.ErrnoException).code ?? 'error'})`;
  }
  if (/PRIVATE KEY-----/.test(text)) throw 'a public key file: this is a private key, give the matching .pub file';
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  if (lines.length === 0 || !lines.every(isPublicKey)) throw `OpenSSH public keys, one a line (${KEY_TYPES.slice(0, 3).join(', ')}, ...)`;
  return path;
}

/** A user name the image's tools accept (useradd's default rule), not root. */
export const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
export function parseUserName(raw: string): string {
  if (!USER_NAME.test(raw) || raw === 'root') throw 'a user name: lower case letters, digits, _ and -, at most 32, starting with a letter or _, not root';
  return raw;
}

/** A crypt(3) password hash: what /etc/shadow holds. */
export const CRYPT_HASH = /^\$(?:1|5|6|y|gy|7|2[aby])\$[./A-Za-z0-9$=,]+$/;
export function parseCryptHash(raw: string): string {
  if (!CRYPT_HASH.test(raw)) throw 'a crypt(3) hash (make one with: openssl passwd -6)';
  return raw;
}

/**
 * An SSID: 1 to 32 bytes. An apostrophe is fine (the shell's quote, the files' bytes or hex);
 * double quotes, backslashes and control characters are refused, as imager_custom's files would not hold them.
 */
export function parseSsid(raw: string): string {
  if (Buffer.byteLength(raw) < 1 || Buffer.byteLength(raw) > 32 || /["\\\x00-\x1f\x7f]/.test(raw))
    throw 'an SSID of 1 to 32 bytes without double quotes, backslashes or control characters';
  return raw;
}

/**
 * The ISO 3166-1 alpha-2 codes, the 249 officially assigned (tzdata's iso3166.tab): the radio's
 * regulatory domain is one of them. Not the other regions a locale knows (EU, UN, ZZ, QO...), nor
 * the reserved UK or the user-assigned XK. Here rather than read from the host, which may lack tzdata.
 */
const COUNTRIES = new Set(
  [
    'AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD ',
    'CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF ',
    'GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN ',
    'KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA ',
    'NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI ',
    'SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI ',
    'VN VU WF WS YE YT ZA ZM ZW',
  ]
    .join('')
    .split(' '),
);

export function isCountry(code: string): boolean {
  return COUNTRIES.has(code);
}
export function parseCountry(raw: string): string {
  const code = raw.toUpperCase();
  if (!isCountry(code)) throw 'an ISO 3166 country code (FR, GB, US...): two letters naming a country, not a region (EU)';
  return code;
}

/**
 * A time zone name the tz database knows (the ICU data Node carries, or a zone file of the host's).
 * Zone names start each part with a capital (Europe/Paris, UTC, Etc/GMT+1); what else is in
 * /usr/share/zoneinfo is not one: its folders (Europe), the right/ and posix/ copies, localtime,
 * posixrules, leapseconds, the .tab files. A zone file starts with the magic "TZif".
 */
export function isTimezone(zone: string): boolean {
  if (!/^[A-Z][A-Za-z0-9_+-]*(?:\/[A-Z][A-Za-z0-9_+-]*)*$/.test(zone)) return false;
  return Intl.supportedValuesOf('timeZone').includes(zone) || zone === 'UTC' || isZoneFile(`/usr/share/zoneinfo/${zone}`);
}

/** A TZif file (a link to one followed), not a folder or another file. */
export function isZoneFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    const fd = openSync(path, 'r');
    try {
      const magic = Buffer.alloc(4);
      readSync(fd, magic, 0, 4, 0);
      return magic.toString('latin1') === 'TZif';
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}
export function parseTimezone(raw: string): string {
  if (!isTimezone(raw)) throw 'a time zone: Area/City, e.g. Europe/Paris, or UTC (a zone, not a folder such as Europe, nor right/..., posix/..., localtime)';
  return raw;
}

/** `fr_FR.UTF-8`: a glibc locale name (its charset after the dot, a modifier after @), or C.UTF-8. */
export function parseLocale(raw: string): string {
  if (raw !== 'C.UTF-8' && !/^[a-z]{2,3}_[A-Z]{2}(?:\.[A-Za-z0-9-]+)?(?:@[a-z]+)?$/.test(raw)) throw 'a locale such as fr_FR.UTF-8, en_GB.UTF-8 or C.UTF-8';
  return raw;
}

/**
 * An XKB layout name (fr, gb, latam). A layout and its variant (fr-oss, de_nodeadkeys) is refused:
 * each writer sets the layout alone (XKBLAYOUT, imager_custom set_keymap, cloud-init's layout), so
 * the variant would be lost, or the whole read as a layout no keyboard data has.
 */
export const KEYMAP = /^[a-z]{2,5}$/;
export function parseKeymap(raw: string): string {
  const variant = /^([a-z]{2,5})[_-][a-z0-9]+$/.exec(raw);
  if (variant) throw `a keyboard layout alone: ${raw} is the layout ${variant[1]} with a variant, which is not set; give --keymap ${variant[1]}`;
  if (!KEYMAP.test(raw)) throw 'a keyboard layout (gb, fr, us, de...)';
  return raw;
}

/**
 * `a,b,c`: Debian package names (policy 5.6.7) and nothing of apt's own syntax: apt reads a trailing
 * `-` as "remove" and `+` as "install", `=`, `/` and `:` as a version, release and architecture.
 */
export function parsePackages(raw: string): string[] {
  const names = raw
    .split(',')
    .map((n) => n.trim())
    .filter(Boolean);
  const expected = 'Debian package names, comma-separated (tree,htop)';
  if (names.length === 0) throw expected;
  for (const name of names) {
    if (/[-+]$/.test(name)) throw `${expected}: "${name}" ends in ${name.at(-1)}, which apt reads as remove or install (drop it)`;
    if (!/^[a-z0-9][a-z0-9+.-]+$/.test(name)) throw `${expected}: "${name}" is not one (lower-case letters, digits, + - .; no version, release or :arch)`;
  }
  return names;
}

const UNIT_TYPES = ['service', 'socket', 'timer', 'target', 'path', 'mount', 'automount', 'swap', 'slice'];
/** `ssh,foo.timer`: systemd unit names, `.service` added where no type is given. */
export function parseUnits(raw: string): string[] {
  const units = raw
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  // A leading - would be read by systemctl as an option (--enable=-h prints its usage, enables nothing).
  if (units.length === 0 || !units.every((u) => /^[A-Za-z0-9:_.\\@-]+$/.test(u) && !/^[-.]/.test(u)))
    throw 'systemd unit names, comma-separated (ssh, apt-daily.timer), none starting with - or .';
  return units.map((u) => (UNIT_TYPES.some((type) => u.endsWith(`.${type}`)) ? u : `${u}.service`));
}
