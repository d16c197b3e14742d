import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { ConfigError } from './errors.ts';
import {
  parseCountry, parseCryptHash, parseEnvironment, parseExistingFile, parseGitSource, parseHostname, parseInterface, parseIpv4Cidr, parseKeymap, parseLocale,
  parsePackages, parsePublicKeyFile, parseSsid, parseTimezone, parseUnits, parseUserName,
} from '../settings/rules.ts';

/**
 * The one schema of every setting: defaults, validation, the `--help` text and the `--plan`
 * output all come from here. A key is the same in a JSON config file and on the command line
 * (`"base-sha256": "..."` and `--base-sha256 ...`); flags win over the file.
 */
export interface Config {
  arch: 'arm64' | 'armhf';
  base: string;
  'base-sha256': string | undefined;
  'os-list': string;
  'insecure-no-verify': boolean;
  grow: number | 'auto';
  overlay: string[];
  'expand-on-boot': boolean;
  script: string[];
  'apt-proxy': string | undefined;
  'apt-mirror': string | undefined;
  'shell-on-error': boolean;
  'shrink-margin': number;
  compress: Compression[];
  name: string | undefined;
  'release-url': string | undefined;
  // The image's settings (customize; the host name and keys also the pimaster's).
  hostname: string | undefined;
  user: string | undefined;
  'password-hash': string | undefined;
  'password-file': string | undefined;
  ssh: 'on' | 'off' | undefined;
  'ssh-password-auth': boolean;
  'wifi-ssid': string | undefined;
  'wifi-psk-file': string | undefined;
  'wifi-country': string | undefined;
  'wifi-hidden': boolean;
  timezone: string | undefined;
  locale: string | undefined;
  keymap: string | undefined;
  packages: string[];
  enable: string[];
  disable: string[];
  // The pimaster's settings.
  ip: string;
  interface: string;
  uplink: string;
  'ssh-key': string[];
  bootcode: string | undefined;
  'piseduce-webui': string;
  'piseduce-agent': string;
  environment: string[];
  work: string;
  cache: string;
  'no-cache': boolean;
  'cache-size': number;
  'snapshot-after': number;
  out: string;
  verbose: boolean;
  quiet: boolean;
}

export const COMPRESSIONS = ['xz', 'zstd', 'gz', 'zip', 'tar.gz', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];
export const RELEASES = ['latest', 'trixie', 'bookworm', 'bullseye', 'buster'] as const;

interface Spec<T> {
  /** How the flag is written on the command line: `--key VALUE`, a switch, or repeatable. */
  kind: 'value' | 'switch' | 'list';
  placeholder?: string;
  help: string;
  default: T | (() => T);
  /** Turns a raw value into the setting; throws a string saying what is allowed. */
  parse?: (raw: string) => unknown;
  /** Never shown as it is: not by --plan, not in the manifest. */
  secret?: boolean;
}

type Schema = { [K in keyof Config]: Spec<Config[K]> };

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export function parseSize(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(raw.trim());
  if (!m) throw 'a size such as 512M, 2G or 1073741824';
  return Math.round(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!);
}

/**
 * An http(s) URL, as the parser reads it: it goes into apt's configuration and sources, where a
 * quote, a space or a line break would add options or sources of the user's value's choosing.
 */
function httpUrl(raw: string): string {
  const bad = 'an http(s) URL such as http://127.0.0.1:3142 (no quotes, spaces or control characters)';
  if (/["'`\\\s\x00-\x1f\x7f]/.test(raw)) throw bad;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw bad;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw bad;
  return url.href.replace(/\/+$/, '');
}

const oneOf = (values: readonly string[]) => (raw: string) => {
  if (!values.includes(raw)) throw `one of ${values.join(', ')}`;
  return raw;
};

export const schema: Schema = {
  arch: {
    kind: 'value',
    placeholder: 'ARCH',
    help: 'architecture of the image: arm64 or armhf',
    default: 'arm64',
    parse: oneOf(['arm64', 'armhf']),
  },
  base: {
    kind: 'value',
    placeholder: 'SOURCE',
    help: `base image: an http(s) or file URL, a local path, or a release (${RELEASES.join(', ')})`,
    default: 'bookworm',
    parse: (raw) => {
      if (raw.trim() === '') throw 'a URL, a path or a release name';
      return raw;
    },
  },
  'base-sha256': {
    kind: 'value',
    placeholder: 'HEX',
    help: 'sha256 of the base download (else the .sha256 sidecar, else the OS list)',
    default: undefined,
    parse: (raw) => {
      if (!/^[0-9a-f]{64}$/i.test(raw)) throw '64 hexadecimal digits';
      return raw.toLowerCase();
    },
  },
  'os-list': {
    kind: 'value',
    placeholder: 'URL',
    help: "Raspberry Pi Imager's OS list, used to resolve release names",
    default: 'https://downloads.raspberrypi.com/os_list_imagingutility_v4.json',
    parse: (raw) => {
      if (!/^(https?|file):\/\//.test(raw)) throw 'an http(s) or file URL';
      return raw;
    },
  },
  'insecure-no-verify': {
    kind: 'switch',
    help: 'accept a base image that has no checksum anywhere (never the default)',
    default: false,
  },
  grow: {
    kind: 'value',
    placeholder: 'SIZE|auto',
    help: 'room added to the root filesystem before customizing (auto: computed from what is added)',
    default: 'auto',
    parse: (raw) => (raw === 'auto' ? 'auto' : parseSize(raw)),
  },
  overlay: {
    kind: 'list',
    placeholder: 'DIR',
    help: 'a directory with boot/ and/or rootfs/ trees to copy into the image (repeatable)',
    default: () => [],
  },
  'expand-on-boot': {
    kind: 'switch',
    help: "re-arm the release's own first-boot expansion of the root filesystem",
    default: false,
  },
  script: {
    kind: 'list',
    placeholder: 'FILE',
    help: 'a shell script to run inside the image (bash -e, under qemu-user), after the pipeline\'s own (repeatable)',
    default: () => [],
  },
  'apt-proxy': {
    kind: 'value',
    placeholder: 'URL',
    help: 'HTTP proxy for apt inside the image while building (e.g. an apt-cacher-ng)',
    default: undefined,
    parse: httpUrl,
  },
  'apt-mirror': {
    kind: 'value',
    placeholder: 'URL',
    help: "Debian mirror used instead of the image's own while building (its sources are restored after)",
    default: undefined,
    parse: httpUrl,
  },
  'shell-on-error': {
    kind: 'switch',
    help: 'when a script fails, open a shell inside the image before cleaning up (terminal only)',
    default: false,
  },
  'shrink-margin': {
    kind: 'value',
    placeholder: 'SIZE',
    help: 'free space left in the root filesystem after shrinking',
    default: 64 * 2 ** 20,
    parse: parseSize,
  },
  compress: {
    kind: 'list',
    placeholder: 'LIST',
    help: `output formats, comma-separated: ${COMPRESSIONS.join(', ')}`,
    default: () => ['xz'],
    parse: (raw) => {
      const formats = raw.split(',').map((s) => s.trim());
      for (const f of formats) if (!(COMPRESSIONS as readonly string[]).includes(f)) throw `a comma-separated list of ${COMPRESSIONS.join(', ')}`;
      return formats;
    },
  },
  'release-url': {
    kind: 'value',
    placeholder: 'URL',
    help: "where the outputs will be published (a URL ending in /): the url fields of os-list.json, Raspberry Pi Imager's list (default: the bare file names)",
    default: undefined,
    parse: (raw) => {
      if (!/^(https?|file):\/\/\S+\/$/.test(raw)) throw 'an http(s):// or file:// URL ending in /';
      return raw;
    },
  },
  name: {
    kind: 'value',
    placeholder: 'NAME',
    help: 'base name of the output files (default: <pipeline>-<release>-<arch>)',
    default: undefined,
    parse: (raw) => {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(raw)) throw 'letters, digits, dot, dash and underscore';
      return raw;
    },
  },
  hostname: {
    kind: 'value',
    placeholder: 'NAME',
    help: "the image's host name",
    default: undefined,
    parse: parseHostname,
  },
  user: {
    kind: 'value',
    placeholder: 'NAME',
    help: "the first user (uid 1000): the image's is renamed, or made; its rename at first boot is cancelled",
    default: undefined,
    parse: parseUserName,
  },
  'password-hash': {
    kind: 'value',
    placeholder: 'HASH',
    help: "the user's password as a crypt(3) hash (openssl passwd -6)",
    default: undefined,
    parse: parseCryptHash,
    secret: true,
  },
  'password-file': {
    kind: 'value',
    placeholder: 'FILE',
    help: "the user's password, the first line of FILE (hashed at each build; never on the command line)",
    default: undefined,
    parse: parseExistingFile,
  },
  ssh: {
    kind: 'value',
    placeholder: 'on|off',
    help: 'start the SSH server at boot, or not (unset: as the image has it, or on with --ssh-key or --ssh-password-auth)',
    default: undefined,
    parse: oneOf(['on', 'off']),
  },
  'ssh-password-auth': {
    kind: 'switch',
    help: 'SSH accepts passwords (else, with --ssh-key, keys only)',
    default: false,
  },
  'wifi-ssid': {
    kind: 'value',
    placeholder: 'SSID',
    help: 'a Wi-Fi network to join (with --wifi-psk-file and --wifi-country)',
    default: undefined,
    parse: parseSsid,
  },
  'wifi-psk-file': {
    kind: 'value',
    placeholder: 'FILE',
    help: 'its passphrase (8 to 63 characters) or 64-hex PSK, the first line of FILE',
    default: undefined,
    parse: parseExistingFile,
  },
  'wifi-country': {
    kind: 'value',
    placeholder: 'CC',
    help: 'the Wi-Fi country, ISO 3166 (FR, GB, US...)',
    default: undefined,
    parse: parseCountry,
  },
  'wifi-hidden': {
    kind: 'switch',
    help: 'the network does not broadcast its SSID',
    default: false,
  },
  timezone: {
    kind: 'value',
    placeholder: 'ZONE',
    help: "the time zone (Europe/Paris), checked against the image's zoneinfo",
    default: undefined,
    parse: parseTimezone,
  },
  locale: {
    kind: 'value',
    placeholder: 'LOCALE',
    help: "the system locale (fr_FR.UTF-8), generated; checked against the image's supported locales",
    default: undefined,
    parse: parseLocale,
  },
  keymap: {
    kind: 'value',
    placeholder: 'LAYOUT',
    help: 'the keyboard layout (gb, fr, us...)',
    default: undefined,
    parse: parseKeymap,
  },
  packages: {
    kind: 'list',
    placeholder: 'LIST',
    help: "apt packages to install, comma-separated (through --apt-proxy/--apt-mirror and the apt cache)",
    default: () => [],
    parse: parsePackages,
  },
  enable: {
    kind: 'list',
    placeholder: 'UNIT',
    help: 'a systemd unit to enable (ssh, foo.timer; repeatable or comma-separated)',
    default: () => [],
    parse: parseUnits,
  },
  disable: {
    kind: 'list',
    placeholder: 'UNIT',
    help: 'a systemd unit to disable (repeatable or comma-separated)',
    default: () => [],
    parse: parseUnits,
  },
  ip: {
    kind: 'value',
    placeholder: 'ADDR/PREFIX',
    help: "the pimaster's static address on the cluster network",
    default: '48.48.0.254/24',
    parse: (raw) => {
      parseIpv4Cidr(raw);
      return raw.trim();
    },
  },
  interface: {
    kind: 'value',
    placeholder: 'IFACE',
    help: 'the interface on the cluster network (DHCP, TFTP, NFS)',
    default: 'eth0',
    parse: parseInterface,
  },
  uplink: {
    kind: 'value',
    placeholder: 'IFACE',
    help: 'the interface to the outside world, NATed for the cluster',
    default: 'wlan0',
    parse: parseInterface,
  },
  'ssh-key': {
    kind: 'list',
    placeholder: 'FILE',
    help: 'a file of OpenSSH public keys allowed to log in: as root on the pimaster, as the first user in customize (repeatable)',
    default: () => [],
    parse: parsePublicKeyFile,
  },
  bootcode: {
    kind: 'value',
    placeholder: 'FILE',
    help: "the network-boot bootcode.bin served over TFTP (default: the base image's own)",
    default: undefined,
    parse: parseExistingFile,
  },
  'piseduce-webui': {
    kind: 'value',
    placeholder: 'URL_OR_DIR[#REF]',
    help: 'the PiSeduce web UI sources: a git URL or directory, and the ref to check out',
    default: 'https://github.com/SeduceProject/piseduce_webui.git#d6fb097d7d904a1d6d6d725a882f407d1c819293',
    parse: parseGitSource,
  },
  'piseduce-agent': {
    kind: 'value',
    placeholder: 'URL_OR_DIR[#REF]',
    help: 'the PiSeduce agent sources: a git URL or directory, and the ref to check out',
    default: 'https://github.com/SeduceProject/piseduce_agent.git#12353c159837469eefd25e52903a6aa20fc8ec4c',
    parse: parseGitSource,
  },
  environment: {
    kind: 'list',
    placeholder: 'NAME=SOURCE',
    help: 'an image the cluster nodes can deploy, as for --base (repeatable)',
    default: () => [],
    parse: parseEnvironment,
  },
  work: {
    kind: 'value',
    placeholder: 'DIR',
    help: 'work directory (the working image and the logs)',
    default: './work',
  },
  cache: {
    kind: 'value',
    placeholder: 'DIR',
    help: 'cache directory (downloads, apt packages, snapshots of the stage cache)',
    default: () => join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'build-image'),
  },
  'no-cache': {
    kind: 'switch',
    help: 'neither start from nor save snapshots of the stage cache (downloads are still cached)',
    default: false,
  },
  'cache-size': {
    kind: 'value',
    placeholder: 'SIZE',
    help: 'disk space the stage cache may use; the least recently used snapshots go first',
    default: 20 * 2 ** 30,
    parse: parseSize,
  },
  'snapshot-after': {
    kind: 'value',
    placeholder: 'SECONDS',
    help: 'snapshot the image when the work since the last snapshot took this long (0: after every step)',
    default: 15,
    parse: (raw) => {
      if (!/^\d+(\.\d+)?$/.test(raw.trim())) throw 'a number of seconds, such as 15 or 0';
      return Number(raw);
    },
  },
  out: {
    kind: 'value',
    placeholder: 'DIR',
    help: 'where the finished image files are written',
    default: './deploy',
  },
  verbose: { kind: 'switch', help: 'stream the output of every command', default: false },
  quiet: { kind: 'switch', help: 'print only errors and the result', default: false },
};

export type ConfigKey = keyof Config;

/** The keys every command accepts, whatever its stages. */
export const COMMON_KEYS: readonly ConfigKey[] = ['work', 'cache', 'out', 'verbose', 'quiet'];
/** The keys of a pipeline that uses the stage cache. */
export const CACHE_KEYS: readonly ConfigKey[] = ['no-cache', 'cache-size', 'snapshot-after'];

/** How a build runs and what it writes at the end: nothing the image holds before shrink depends on these. */
const NOT_IN_IMAGE: ReadonlySet<string> = new Set<ConfigKey>([
  ...COMMON_KEYS, ...CACHE_KEYS, 'shell-on-error', 'shrink-margin', 'expand-on-boot', 'compress', 'name', 'release-url',
]);

/**
 * The settings the customizing stages may read (templates, scripts' BUILD_* variables): all but
 * how the build runs and what it writes at the end, so that changing those reuses the stage cache.
 */
export function imageSettings(config: Config): Partial<Config> {
  return Object.fromEntries(Object.entries(config).filter(([key]) => !NOT_IN_IMAGE.has(key))) as Partial<Config>;
}

function defaultOf<K extends ConfigKey>(key: K): Config[K] {
  const d = schema[key].default;
  return (typeof d === 'function' ? (d as () => Config[K])() : d) as Config[K];
}

/** Validate one raw value (a string from the command line, or a JSON value from the file). */
function convert(key: ConfigKey, raw: unknown, source: string): unknown {
  const spec = schema[key] as Spec<unknown>;
  const bad = (allowed: string, value: unknown = raw) =>
    new ConfigError(`${source} ${JSON.stringify(value)} is invalid: expected ${allowed}`);
  if (spec.kind === 'switch') {
    if (typeof raw === 'boolean') return raw;
    throw bad('true or false');
  }
  const one = (value: unknown) => {
    if (typeof value === 'number' && spec.parse) value = String(value);
    if (typeof value !== 'string') throw bad(spec.kind === 'list' ? 'a list of strings' : 'a string');
    try {
      return spec.parse ? spec.parse(value) : value;
    } catch (allowed) {
      if (typeof allowed === 'string') throw bad(allowed, value);
      throw allowed;
    }
  };
  if (spec.kind === 'list') {
    const values = Array.isArray(raw) ? raw : [raw];
    return values.flatMap((v) => {
      const parsed = one(v);
      return Array.isArray(parsed) ? parsed : [parsed];
    });
  }
  return one(raw);
}

export interface ConfigSources {
  /** Parsed JSON of --config FILE, if given. */
  file?: { path: string; values: Record<string, unknown> };
  /** Values from the command line: strings, booleans, or string arrays for lists. */
  flags: Partial<Record<string, unknown>>;
}

/**
 * Resolve a command's configuration: defaults, then the file, then flags. Any key the command does
 * not know, or a value the schema refuses, is a ConfigError naming the key, the value and what is
 * allowed.
 */
export function resolveConfig(allowed: readonly ConfigKey[], sources: ConfigSources, command: string, defaults: Partial<Config> = {}): Config {
  const keys = new Set<string>([...COMMON_KEYS, ...allowed]);
  const config = Object.fromEntries(Object.keys(schema).map((k) => [k, defaultOf(k as ConfigKey)])) as Record<string, unknown>;
  Object.assign(config, defaults);
  const apply = (values: Record<string, unknown>, sourceOf: (key: string) => string) => {
    for (const [key, raw] of Object.entries(values)) {
      if (raw === undefined) continue;
      if (!keys.has(key)) {
        const known = key in schema ? `not an option of \`${command}\`` : 'unknown option';
        throw new ConfigError(`${sourceOf(key)}: ${known} (see \`build-image ${command === 'build' ? '' : command + ' '}--help\`)`);
      }
      config[key] = convert(key as ConfigKey, raw, sourceOf(key));
    }
  };
  if (sources.file) apply(sources.file.values, (key) => `${sources.file!.path}: "${key}"`);
  apply(sources.flags, (key) => `--${key}`);
  for (const key of ['work', 'cache', 'out'] as const) config[key] = resolve(config[key] as string);
  return config as unknown as Config;
}

export function readConfigFile(path: string): { path: string; values: Record<string, unknown> } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`--config ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
  let values: unknown;
  try {
    values = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`--config ${path}: not valid JSON (${(error as Error).message})`);
  }
  if (typeof values !== 'object' || values === null || Array.isArray(values)) {
    throw new ConfigError(`--config ${path}: expected a JSON object of settings, e.g. {"arch": "armhf"}`);
  }
  return { path, values: values as Record<string, unknown> };
}

/** How a value reads in --plan and the manifest. */
export function formatValue(key: ConfigKey, value: unknown): string {
  if (value === undefined) return '(unset)';
  if (schema[key].secret) return '(a password hash)';
  if (Array.isArray(value)) return value.length ? value.join(', ') : '(none)';
  if (typeof value === 'number' && schema[key].parse === parseSize) return formatBytes(value);
  if (key === 'grow' && typeof value === 'number') return formatBytes(value);
  return String(value);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** The pimaster's defaults that differ from the schema's (a customized image keeps its host name). */
export const PIMASTER_DEFAULTS: Partial<Config> = { hostname: 'pimaster' };

/** Every setting at the pimaster's default: the base of tests and of `--plan` for a bare command. */
export function defaultConfig(overrides: Partial<Config> = {}): Config {
  const all = Object.keys(schema) as ConfigKey[];
  return { ...resolveConfig(all, { flags: {} }, 'build', PIMASTER_DEFAULTS), ...overrides };
}

/** Values derived from settings, for templates and scripts (ip-address, ip-prefix, ...). */
export function derivedValues(config: Config): Record<string, string> {
  const ip = parseIpv4Cidr(config.ip);
  return { 'ip-address': ip.address, 'ip-prefix': String(ip.prefix), 'ip-network': ip.network, 'ip-netmask': ip.netmask };
}
