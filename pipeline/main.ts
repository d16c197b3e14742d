import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { formatBytes, formatValue, readConfigFile, resolveConfig, schema, type ConfigKey } from './config.ts';
import { formatChecks, runChecks } from './doctor.ts';
import { ConfigError, UserError } from './errors.ts';
import { PIPELINES, optionsOf, type PipelineCommand } from './pipelines.ts';
import { pickReporter } from './report.ts';
import { runPipeline, selectStages, timingTable } from './runner.ts';
import type { Pipeline } from './stage.ts';
import { formatResults, readChecksFile } from '../verify/checks.ts';
import { verifyPipeline } from '../verify/stages.ts';
import { bmapBeside } from '../flash/bmap.ts';
import { flashPipeline } from '../flash/stages.ts';
import { writeImagerList } from '../stages/imager-list.ts';

const version = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const RUN_FLAGS = {
  config: { help: 'read settings from a JSON file (same keys as the flags; flags win)', placeholder: 'FILE' },
  plan: { help: 'print the stages and their resolved options, then exit without touching anything' },
  from: { help: 'start at this stage, on the work directory of an earlier build', placeholder: 'STAGE' },
  until: { help: 'stop after this stage', placeholder: 'STAGE' },
} as const;

function usage(command: PipelineCommand | undefined): string {
  if (!command) {
    return [
      `build-image ${version}: build Raspberry Pi images (the PiSeduce pimaster by default)`,
      '',
      'Usage:',
      '  build-image [options]               build the pimaster image (see build-image --help build)',
      '  build-image customize [options]     customize any Raspberry Pi OS image with overlays',
      '  build-image verify IMAGE --ssh-key KEY [options]',
      '                                      boot an image in QEMU and check it (see build-image --help verify)',
      '  build-image flash IMAGE DEVICE [--force]',
      '                                      write an image to a disk, then read it back (see build-image --help flash)',
      '  build-image os-list DIR [--release-url URL]',
      "                                      write DIR/os-list.json, Raspberry Pi Imager's list of the images in DIR",
      '  build-image doctor [--work DIR]     check that this host can build images',
      '  build-image --help [COMMAND]        help on a command',
      '  build-image --version',
      '',
      ...Object.entries(PIPELINES).map(([name, p]) => `  ${name.padEnd(10)} ${p.summary}`),
      '',
      "Every option is also a key of a JSON --config file. Run 'build-image --help build' for the options.",
    ].join('\n');
  }
  const pipeline = PIPELINES[command];
  const keys = optionsOf(pipeline);
  const flag = (name: string, placeholder?: string) => `--${name}${placeholder ? ` ${placeholder}` : ''}`;
  const rows: Array<[string, string]> = keys.map((key) => {
    const spec = schema[key];
    const d = typeof spec.default === 'function' ? (spec.default as () => unknown)() : spec.default;
    const shown = spec.kind === 'switch' ? '' : ` (default: ${formatValue(key, d)})`;
    return [flag(key, spec.placeholder) + (spec.kind === 'list' ? ' ...' : ''), `${spec.help}${shown}`];
  });
  for (const [name, f] of Object.entries(RUN_FLAGS)) rows.push([flag(name, 'placeholder' in f ? f.placeholder : undefined), f.help]);
  const width = Math.max(...rows.map(([a]) => a.length));
  return [
    `build-image ${command === 'build' ? '' : `${command} `}[options]: ${pipeline.summary}`,
    '',
    `Stages: ${pipeline.stages.map((s) => s.name).join(' -> ')}`,
    '',
    'Options:',
    ...rows.map(([a, b]) => `  ${a.padEnd(width)}  ${b}`),
  ].join('\n');
}

/** Flags in node:util's format, from the schema. */
function parseOptions(keys: readonly ConfigKey[]): ParseArgsConfig['options'] {
  const options: NonNullable<ParseArgsConfig['options']> = {
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
    config: { type: 'string' },
    plan: { type: 'boolean' },
    from: { type: 'string' },
    until: { type: 'string' },
  };
  for (const key of keys) {
    const spec = schema[key];
    options[key] = spec.kind === 'switch' ? { type: 'boolean' } : { type: 'string', multiple: spec.kind === 'list' };
  }
  return options;
}

type Values = Record<string, string | boolean | Array<string | boolean> | undefined>;

function parse(argv: string[], keys: readonly ConfigKey[], command: string): { values: Values; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options: parseOptions(keys), allowPositionals: true, strict: true }) as { values: Values; positionals: string[] };
  } catch (error) {
    const message = (error as Error).message;
    const option = /'(-[^' ]+)/.exec(message)?.[1];
    if ((error as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const name = option?.replace(/^-+/, '');
      const known = name !== undefined && name in schema;
      throw new ConfigError(`${option}: ${known ? `not an option of \`${command}\`` : 'unknown option'} (see build-image --help ${command})`);
    }
    if ((error as { code?: string }).code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      throw new ConfigError(`${option ?? 'option'}: ${/argument missing/.test(message) ? 'needs a value' : 'takes no value'} (see build-image --help ${command})`);
    }
    throw new ConfigError(message);
  }
}

function printPlan(pipeline: Pipeline, config: ReturnType<typeof resolveConfig>, stages: readonly Pipeline['stages'][number][]): string {
  const lines = [`${pipeline.name}: ${stages.length} of ${pipeline.stages.length} stages, work ${config.work}, out ${config.out}`];
  for (const [i, stage] of stages.entries()) {
    lines.push(`${String(i + 1).padStart(2)}. ${stage.name.padEnd(10)} ${stage.describe(config)}`);
    for (const key of stage.options) lines.push(`      ${key} = ${formatValue(key, config[key])}`);
  }
  return lines.join('\n');
}

const VERIFY_FLAGS = {
  'ssh-key': { type: 'string', placeholder: 'FILE', help: 'the private key that logs in to the image (required)' },
  user: { type: 'string', placeholder: 'NAME', help: 'the user it logs in as', default: 'root' },
  authorize: { type: 'boolean', help: "authorize the key for the user in the throw-away copy (an image built without one, such as a release image)" },
  checks: { type: 'string', placeholder: 'FILE', help: 'more checks: one shell command a line, run on the guest, each must exit 0' },
  timeout: { type: 'string', placeholder: 'SECONDS', help: 'how long to wait for SSH after QEMU starts', default: '600' },
  memory: { type: 'string', placeholder: 'MIB', help: "the guest's memory", default: '2048' },
  'debian-mirror': { type: 'string', placeholder: 'URL', help: "the Debian mirror of the kernel booted when the image's own cannot boot under QEMU", default: 'http://deb.debian.org/debian' },
  work: { type: 'string', placeholder: 'DIR', help: 'working directory (the copy and the console log go to DIR/verify)', default: './work' },
  cache: { type: 'string', placeholder: 'DIR', help: 'cache directory (Debian kernels)', default: schema.cache.default as () => string },
  verbose: { type: 'boolean', help: 'echo every command and its output' },
  quiet: { type: 'boolean', help: 'print only the results and errors' },
  help: { type: 'boolean', help: 'this help' },
} as const;

function verifyUsage(): string {
  return [
    'build-image verify IMAGE --ssh-key FILE [options]: boot a throw-away copy of IMAGE (.img, .img.xz, .img.zst, .img.gz,',
    '.zip or .img.tar.gz) in QEMU, wait for SSH, run the checks (the built-in ones, more for a pimaster, and yours),',
    'print one PASS/FAIL line per check, power it off. Exits 1 if a check failed or the image never came up.',
    '',
    'Options:',
    ...flagRows(VERIFY_FLAGS),
  ].join('\n');
}

async function verify(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: Object.fromEntries(Object.entries(VERIFY_FLAGS).map(([k, f]) => [k, { type: f.type }])), allowPositionals: true, strict: true });
  } catch (error) {
    throw new ConfigError(`${(error as Error).message.split('\n')[0]} (see build-image --help verify)`);
  }
  const { values, positionals } = parsed as { values: Record<string, string | boolean | undefined>; positionals: string[] };
  if (values.help) {
    process.stdout.write(`${verifyUsage()}\n`);
    return 0;
  }
  if (positionals.length !== 1) throw new ConfigError('verify takes one IMAGE: build-image verify IMAGE --ssh-key FILE (see build-image --help verify)');
  const image = positionals[0]!;
  if (!existsSync(image)) throw new ConfigError(`${image}: no such file (the image to verify)`);
  if (typeof values['ssh-key'] !== 'string') throw new ConfigError('--ssh-key FILE is needed: the private key that logs in to the image');
  if (!existsSync(values['ssh-key'])) throw new ConfigError(`--ssh-key ${values['ssh-key']}: no such file (the private key that logs in to the image)`);
  const checksFile = typeof values.checks === 'string' ? resolve(values.checks) : undefined;
  const number = (name: 'timeout' | 'memory', min: number) => {
    const raw = String(values[name] ?? VERIFY_FLAGS[name].default);
    if (!/^\d+$/.test(raw) || Number(raw) < min) throw new ConfigError(`--${name} ${raw}: expected a whole number of ${name === 'timeout' ? 'seconds' : 'MiB'}, at least ${min}`);
    return Number(raw);
  };
  const flags = { work: values.work, cache: values.cache, verbose: values.verbose, quiet: values.quiet };
  const config = resolveConfig([], { flags }, 'verify');
  const pipeline = verifyPipeline({
    image: resolve(image),
    sshKey: resolve(values['ssh-key']),
    user: String(values.user ?? 'root'),
    authorize: values.authorize === true,
    checks: checksFile ? readChecksFile(checksFile) : [],
    checksFile,
    timeoutS: number('timeout', 10),
    memoryMiB: number('memory', 256),
    debianMirror: String(values['debian-mirror'] ?? VERIFY_FLAGS['debian-mirror'].default).replace(/\/+$/, ''),
  });
  const { state, timings } = await runPipeline(pipeline, { ...config, work: join(config.work, 'verify') }, {}, pickReporter(config));
  const v = state.verify!;
  const results = v.results ?? [];
  const failed = results.filter((r) => !r.ok).length;
  process.stdout.write(`${formatResults(results)}\n`);
  process.stdout.write(`${results.length - failed} of ${results.length} checks passed; SSH answered ${v.bootSeconds} s after QEMU started; kernel: ${v.kernel.source}\n`);
  if (!config.quiet) process.stderr.write(`\n${timingTable(timings)}\n`);
  return failed ? 1 : 0;
}

const FLASH_FLAGS = {
  force: { type: 'boolean', help: 'write a disk that is not removable (never the system disk, a mounted one, or a too small one)' },
  bmap: { type: 'string', placeholder: 'FILE', help: 'the block map (default: NAME.img.bmap beside the image, when there is one)' },
  'no-bmap': { type: 'boolean', help: 'write every byte of the image, even with a .bmap beside it' },
  work: { type: 'string', placeholder: 'DIR', help: 'working directory (logs go to DIR/flash)', default: './work' },
  verbose: { type: 'boolean', help: 'echo every command and its output' },
  quiet: { type: 'boolean', help: 'print only errors' },
  help: { type: 'boolean', help: 'this help' },
} as const;

function flagRows(flags: Record<string, { help: string; placeholder?: string; default?: unknown }>): string[] {
  const rows = Object.entries(flags).map(([name, f]) => {
    const d = typeof f.default === 'function' ? (f.default as () => unknown)() : f.default;
    return [`--${name}${f.placeholder ? ` ${f.placeholder}` : ''}`, `${f.help}${d !== undefined ? ` (default: ${d})` : ''}`] as const;
  });
  const width = Math.max(...rows.map(([a]) => a.length));
  return rows.map(([a, b]) => `  ${a.padEnd(width)}  ${b}`);
}

function flashUsage(): string {
  return [
    'build-image flash IMAGE DEVICE [options]: write IMAGE (.img, .img.xz, .img.zst, .img.gz, .zip or .img.tar.gz) to the',
    'disk DEVICE, only the blocks of its .bmap when it has one, with progress; then read back what was written and',
    'compare. Refuses the disk the system runs from, a disk in use, a partition, a disk smaller than the image, and a',
    'disk that is not removable unless --force.',
    '',
    'Options:',
    ...flagRows(FLASH_FLAGS),
  ].join('\n');
}

async function flash(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: Object.fromEntries(Object.entries(FLASH_FLAGS).map(([k, f]) => [k, { type: f.type }])), allowPositionals: true, strict: true });
  } catch (error) {
    throw new ConfigError(`${(error as Error).message.split('\n')[0]} (see build-image --help flash)`);
  }
  const { values, positionals } = parsed as { values: Record<string, string | boolean | undefined>; positionals: string[] };
  if (values.help) {
    process.stdout.write(`${flashUsage()}\n`);
    return 0;
  }
  if (positionals.length !== 2) throw new ConfigError('flash takes an IMAGE and a DEVICE: build-image flash IMAGE DEVICE (see build-image --help flash)');
  const [image, device] = positionals as [string, string];
  if (!existsSync(image)) throw new ConfigError(`${image}: no such file (the image to write)`);
  if (typeof values.bmap === 'string' && values['no-bmap']) throw new ConfigError('--bmap and --no-bmap: give one or the other');
  if (typeof values.bmap === 'string' && !existsSync(values.bmap)) throw new ConfigError(`--bmap ${values.bmap}: no such file`);
  const bmap = values['no-bmap'] ? undefined : typeof values.bmap === 'string' ? values.bmap : bmapBeside(resolve(image));
  const config = resolveConfig([], { flags: { work: values.work, verbose: values.verbose, quiet: values.quiet } }, 'flash');
  const pipeline = flashPipeline({ image: resolve(image), device, bmap: bmap && resolve(bmap), force: values.force === true });
  const { state, timings } = await runPipeline(pipeline, { ...config, work: join(config.work, 'flash') }, {}, pickReporter(config));
  const f = state.flash!;
  process.stdout.write(
    `${device}: wrote ${formatBytes(f.deviceBytes!)} of the ${formatBytes(f.bytes!)} image${bmap ? ` (only what ${basename(bmap)} maps)` : ''}; read back ${formatBytes(f.verified!)} and it matches\n`,
  );
  if (!config.quiet) process.stderr.write(`\n${timingTable(timings)}\n`);
  return 0;
}

/** The list a build writes beside its outputs, for a directory gathering several builds' outputs. */
function osList(argv: string[]): number {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { 'release-url': { type: 'string' } }, allowPositionals: true, strict: true });
  } catch (error) {
    throw new ConfigError(`${(error as Error).message.split('\n')[0]} (usage: build-image os-list DIR [--release-url URL])`);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1 || !existsSync(positionals[0]!)) throw new ConfigError('os-list takes the output directory of builds: build-image os-list DIR [--release-url URL]');
  const config = resolveConfig(['release-url'], { flags: { 'release-url': values['release-url'] } }, 'os-list');
  const file = writeImagerList(positionals[0]!, config['release-url']);
  if (!file) throw new UserError(`${positionals[0]} holds no image Raspberry Pi Imager can download (build with --compress xz)`);
  process.stdout.write(`${file}\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const first = argv[0];
  if (first === '--version' || first === '-v') {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  if (first === 'doctor') {
    const { values } = parseArgs({ args: argv.slice(1), options: { work: { type: 'string' } }, strict: true });
    const checks = runChecks(values.work ?? './work');
    process.stdout.write(`${formatChecks(checks)}\n`);
    return checks.some((c) => !c.ok && !c.warning) ? 1 : 0;
  }
  if (first === 'verify') return verify(argv.slice(1));
  if (first === 'flash') return flash(argv.slice(1));
  if (first === 'os-list') return osList(argv.slice(1));
  if (first === '--help' && (argv[1] === 'verify' || argv[1] === 'flash')) {
    process.stdout.write(`${argv[1] === 'verify' ? verifyUsage() : flashUsage()}\n`);
    return 0;
  }
  const command: PipelineCommand = first !== undefined && first in PIPELINES ? (first as PipelineCommand) : 'build';
  const rest = command === first ? argv.slice(1) : argv;
  const pipeline = PIPELINES[command];
  const keys = optionsOf(pipeline);
  const { values, positionals } = parse(rest, keys, command);
  if (values.help) {
    const topic = positionals[0] ?? (command === first ? command : undefined);
    process.stdout.write(`${usage(topic !== undefined && topic in PIPELINES ? (topic as PipelineCommand) : undefined)}\n`);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  if (positionals.length > 0) throw new ConfigError(`${JSON.stringify(positionals[0])}: unknown command (commands: ${Object.keys(PIPELINES).join(', ')}, doctor)`);
  const flags = Object.fromEntries(keys.filter((k) => values[k] !== undefined).map((k) => [k, values[k]]));
  const config = resolveConfig(keys, { file: typeof values.config === 'string' ? readConfigFile(values.config) : undefined, flags }, command);
  const range = { from: values.from as string | undefined, until: values.until as string | undefined };
  const stages = selectStages(pipeline, range);
  if (values.plan) {
    process.stdout.write(`${printPlan(pipeline, config, stages)}\n`);
    return 0;
  }
  const reporter = pickReporter(config);
  const { timings } = await runPipeline(pipeline, config, range, reporter);
  if (!config.quiet) process.stderr.write(`\n${timingTable(timings)}\n`);
  return 0;
}
