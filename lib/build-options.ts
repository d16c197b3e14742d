import { type EngineOptions, engineSchema, oneOf, parseSize, type Schema } from '../engine/options.ts';
import { parseSourceDate, sourceDateFromEnv } from './source-date.ts';

/** The options the image-building stages read: the base image, the room, overlays, scripts, outputs. */
export interface BuildOptions {
  arch: 'arm64' | 'armhf';
  base: string;
  'base-sha256': string | undefined;
  'os-list': string;
  'insecure-no-verify': boolean;
  grow: number | 'auto';
  overlay: string[];
  'expand-on-boot': boolean;
  'fixed-size': boolean;
  script: string[];
  'apt-proxy': string | undefined;
  'apt-mirror': string | undefined;
  'shell-on-error': boolean;
  'shrink-margin': number;
  /** Seconds since 1970: the one time the whole build writes (SOURCE_DATE_EPOCH). */
  'source-date': number | undefined;
  compress: Compression[];
  'release-url': string | undefined;
  name: string | undefined;
}

export const COMPRESSIONS = ['xz', 'zstd', 'gz', 'zip', 'tar.gz', 'none'] as const;
export type Compression = (typeof COMPRESSIONS)[number];
export const RELEASES = ['latest', 'trixie', 'bookworm', 'bullseye', 'buster'] as const;

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

export const buildSchema: Schema<BuildOptions> = {
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
    hostPath: true,
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
    hostPath: true,
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
    bytes: true,
  },
  overlay: {
    kind: 'list',
    placeholder: 'DIR',
    help: 'a directory with boot/ and/or rootfs/ trees to copy into the image (repeatable)',
    default: () => [],
    hostPath: true,
  },
  'expand-on-boot': {
    kind: 'switch',
    help: "re-arm the release's own first-boot expansion of the root filesystem (a pimaster's default)",
    default: false,
    outputOnly: true,
  },
  'fixed-size': {
    kind: 'switch',
    help: "keep the root at its built size on the card: disarm the release's first-boot expansion",
    default: false,
    outputOnly: true,
  },
  script: {
    kind: 'list',
    placeholder: 'FILE',
    help: "a shell script to run inside the image (bash -e, in a sandbox: natively on a host of its arch, else under qemu-user), after the pipeline's own (repeatable)",
    default: () => [],
    hostPath: true,
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
    outputOnly: true,
  },
  'shrink-margin': {
    kind: 'value',
    placeholder: 'SIZE',
    help: 'free space left in the root filesystem after shrinking',
    default: 64 * 2 ** 20,
    parse: parseSize,
    outputOnly: true,
    bytes: true,
  },
  'source-date': {
    kind: 'value',
    placeholder: 'TIME',
    help: "the build's one time, for reproducible images: seconds since 1970 or an ISO 8601 date (default: $SOURCE_DATE_EPOCH, else the newest file time of the base image's root filesystem)",
    default: () => sourceDateFromEnv(),
    parse: parseSourceDate,
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
    outputOnly: true,
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
    outputOnly: true,
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
    outputOnly: true,
  },
};

/** What every image-building stage may read. */
export type BuildConfig = EngineOptions & BuildOptions;
export const buildConfigSchema: Schema<BuildConfig> = { ...engineSchema, ...buildSchema };
