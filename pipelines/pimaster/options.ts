import { existingFile, resolveOptions, type Schema } from '../../engine/options.ts';
import { type BuildConfig, buildConfigSchema } from '../../lib/build-options.ts';
import { parseInterface, parseIpv4Cidr } from '../../lib/net.ts';
import { parseGitSource } from '../../lib/sources/git-source.ts';
import { type PiSettings, settingsSchema } from '../../settings/options.ts';

/** The pimaster's own options: its cluster link, its uplink, the PiSeduce sources, environments. */
export interface PimasterOptions {
  ip: string;
  interface: string;
  uplink: string;
  bootcode: string | undefined;
  'piseduce-webui': string;
  'piseduce-agent': string;
  environment: string[];
}

/** `NAME=SOURCE`: an environment name (as the agent lists it) and an image source as for --base. */
export function parseEnvironment(raw: string): string {
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)$/.exec(raw);
  if (!m) throw 'NAME=SOURCE, such as raspbian_bookworm_64bit=https://.../image.img.xz (NAME: letters, digits, ".", "-", "_")';
  return raw;
}

export const pimasterSchema: Schema<PimasterOptions> = {
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
  bootcode: {
    kind: 'value',
    placeholder: 'FILE',
    help: "the network-boot bootcode.bin served over TFTP (default: the base image's own)",
    default: undefined,
    parse: existingFile,
    hostPath: true,
  },
  'piseduce-webui': {
    kind: 'value',
    placeholder: 'URL_OR_DIR[#REF]',
    help: 'the PiSeduce web UI sources: a git URL or directory, and the ref to check out',
    default: 'https://github.com/SeduceProject/piseduce_webui.git#d6fb097d7d904a1d6d6d725a882f407d1c819293',
    parse: parseGitSource,
    hostPath: true,
  },
  'piseduce-agent': {
    kind: 'value',
    placeholder: 'URL_OR_DIR[#REF]',
    help: 'the PiSeduce agent sources: a git URL or directory, and the ref to check out',
    default: 'https://github.com/SeduceProject/piseduce_agent.git#12353c159837469eefd25e52903a6aa20fc8ec4c',
    parse: parseGitSource,
    hostPath: true,
  },
  environment: {
    kind: 'list',
    placeholder: 'NAME=SOURCE',
    help: 'an image the cluster nodes can deploy, as for --base (repeatable)',
    default: () => [],
    parse: parseEnvironment,
    hostPath: true,
  },
};

/** Every option of the pimaster's build: the superset of what any command reads. */
export type PimasterConfig = BuildConfig & PiSettings & PimasterOptions;
export const pimasterConfigSchema: Schema<PimasterConfig> = { ...buildConfigSchema, ...settingsSchema, ...pimasterSchema };

/** The pimaster's defaults that differ from the schema's (a customized image keeps its host name). */
export const PIMASTER_DEFAULTS: Partial<PimasterConfig> = { hostname: 'pimaster' };

/** Values derived from the options, for templates and scripts (ip-address, ip-prefix, ...). */
export function derivedValues(config: PimasterOptions): Record<string, string> {
  const ip = parseIpv4Cidr(config.ip);
  return { 'ip-address': ip.address, 'ip-prefix': String(ip.prefix), 'ip-network': ip.network, 'ip-netmask': ip.netmask };
}

/** Every option at the pimaster's defaults: the base of tests, benchmarks and --plan for a bare command. */
export function defaultConfig(overrides: Partial<PimasterConfig> = {}): PimasterConfig {
  return { ...resolveOptions(pimasterConfigSchema, [], { flags: {} }, 'build', PIMASTER_DEFAULTS), ...overrides };
}
