import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { ConfigError } from './errors.ts';

/**
 * Options are data. Each is declared once, by the part of the toolkit that reads it (the engine's
 * below, the stages' in lib/build-options.ts, a user's settings in settings/, a pipeline's own with
 * it), as a spec that gives its default, its rule, its --help line and how --plan and the manifest
 * show it. A key is the same in a JSON config file and on the command line (`"base-sha256": "..."`
 * and `--base-sha256 ...`); flags win over the file.
 */
export interface Spec<T> {
  /** How the flag is written on the command line: `--key VALUE`, a switch, or repeatable. */
  kind: 'value' | 'switch' | 'list';
  placeholder?: string;
  help: string;
  default: T | (() => T);
  /** Turns a raw value into the option; throws a string saying what is allowed. */
  parse?: (raw: string) => unknown;
  /** Never shown as it is: not by --plan, not in the manifest. */
  secret?: boolean;
  /** Its value may be a path on the build machine: a published manifest keeps only its last part. */
  hostPath?: boolean;
  /** Where the build ran, nothing the image depends on: left out of a published manifest. */
  hostOnly?: boolean;
  /** How a build runs or what it writes at the end: nothing the image holds before shrink depends on it. */
  outputOnly?: boolean;
  /** A number of bytes: --plan shows it as 64.0 MiB. */
  bytes?: boolean;
}

export type Schema<T> = { [K in keyof T]-?: Spec<T[K]> };

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

export function parseSize(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(raw.trim());
  if (!m) throw 'a size such as 512M, 2G or 1073741824';
  return Math.round(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!);
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

export const oneOf = (values: readonly string[]) => (raw: string) => {
  if (!values.includes(raw)) throw `one of ${values.join(', ')}`;
  return raw;
};

export function existingFile(raw: string): string {
  const path = resolve(raw);
  if (!existsSync(path) || !statSync(path).isFile()) throw 'an existing file';
  return path;
}

/** The options of the engine itself: where a run works and writes, its stage cache, its output. */
export interface EngineOptions {
  work: string;
  cache: string;
  'no-cache': boolean;
  'cache-size': number;
  'snapshot-after': number;
  out: string;
  verbose: boolean;
  quiet: boolean;
}

export const engineSchema: Schema<EngineOptions> = {
  work: {
    kind: 'value',
    placeholder: 'DIR',
    help: 'work directory (the working image and the logs)',
    default: './work',
    outputOnly: true,
    hostOnly: true,
  },
  cache: {
    kind: 'value',
    placeholder: 'DIR',
    help: 'cache directory (downloads, apt packages, snapshots of the stage cache)',
    default: () => join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'build-image'),
    outputOnly: true,
    hostOnly: true,
  },
  'no-cache': {
    kind: 'switch',
    help: 'neither start from nor save snapshots of the stage cache (downloads are still cached)',
    default: false,
    outputOnly: true,
  },
  'cache-size': {
    kind: 'value',
    placeholder: 'SIZE',
    help: 'disk space the stage cache may use; the least recently used snapshots go first',
    default: 20 * 2 ** 30,
    parse: parseSize,
    outputOnly: true,
    bytes: true,
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
    outputOnly: true,
  },
  out: {
    kind: 'value',
    placeholder: 'DIR',
    help: 'where the finished image files are written',
    default: './deploy',
    outputOnly: true,
    hostOnly: true,
  },
  verbose: { kind: 'switch', help: 'stream the output of every command', default: false, outputOnly: true },
  quiet: { kind: 'switch', help: 'print only errors and the result', default: false, outputOnly: true },
};

/** The keys every command accepts, whatever its stages. */
export const COMMON_KEYS = ['work', 'cache', 'out', 'verbose', 'quiet'] as const;
/** The keys of a pipeline that uses the stage cache. */
export const CACHE_KEYS = ['no-cache', 'cache-size', 'snapshot-after'] as const;

/**
 * The options the customizing stages may read (templates, scripts' BUILD_* variables): all but
 * how the build runs and what it writes at the end, so that changing those reuses the stage cache.
 */
export function imageInputs<T extends object>(schema: Schema<T>, options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([key]) => !(schema as Record<string, Spec<unknown>>)[key]?.outputOnly)) as Partial<T>;
}

/** Every option at its default. */
export function optionDefaults<T>(schema: Schema<T>): T {
  return Object.fromEntries(
    Object.entries(schema as Record<string, Spec<unknown>>).map(([key, spec]) => [
      key,
      typeof spec.default === 'function' ? (spec.default as () => unknown)() : spec.default,
    ]),
  ) as T;
}

/** Validate one raw value (a string from the command line, or a JSON value from the file). */
function convert(spec: Spec<unknown>, raw: unknown, source: string): unknown {
  // A secret's value is never printed, not even a malformed one: it may be the password itself.
  const bad = (allowed: string, value: unknown = raw) =>
    new ConfigError(`${source} ${spec.secret ? '(its value not shown)' : JSON.stringify(value)} is invalid: expected ${allowed}`);
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
 * Resolve a command's options: defaults, then the file, then flags. Any key the command does not
 * know, or a value its spec refuses, is a ConfigError naming the key, the value and what is allowed.
 */
export function resolveOptions<T extends EngineOptions>(
  schema: Schema<T>,
  allowed: readonly (keyof T)[],
  sources: ConfigSources,
  command: string,
  defaults: Partial<T> = {},
): T {
  const specs = schema as Record<string, Spec<unknown>>;
  const keys = new Set<string>([...COMMON_KEYS, ...(allowed as string[])]);
  const options = { ...optionDefaults(schema), ...defaults } as Record<string, unknown>;
  const apply = (values: Record<string, unknown>, sourceOf: (key: string) => string) => {
    for (const [key, raw] of Object.entries(values)) {
      if (raw === undefined) continue;
      if (!keys.has(key)) {
        // Own keys only: `in` also finds __proto__, constructor, toString... on every object.
        const known = Object.hasOwn(specs, key) ? `not an option of \`${command}\`` : 'unknown option';
        throw new ConfigError(`${sourceOf(key)}: ${known} (see \`build-image ${command === 'build' ? '' : `${command} `}--help\`)`);
      }
      options[key] = convert(specs[key]!, raw, sourceOf(key));
    }
  };
  if (sources.file) apply(sources.file.values, (key) => `${sources.file!.path}: "${key}"`);
  apply(sources.flags, (key) => `--${key}`);
  for (const key of ['work', 'cache', 'out'] as const) options[key] = resolve(options[key] as string);
  return options as T;
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
export function formatValue(spec: Spec<unknown>, value: unknown): string {
  if (value === undefined) return '(unset)';
  if (spec.secret) return '(a password hash)';
  if (Array.isArray(value)) return value.length ? value.join(', ') : '(none)';
  if (typeof value === 'number' && spec.bytes) return formatBytes(value);
  return String(value);
}
