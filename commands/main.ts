import { existsSync } from 'node:fs';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { ConfigError, UserError } from '../engine/errors.ts';
import { formatValue, readConfigFile, resolveOptions } from '../engine/options.ts';
import { pickReporter } from '../engine/report.ts';
import { checkSettings, runPipeline, selectStages, timingTable } from '../engine/runner.ts';
import type { Pipeline } from '../engine/stage.ts';
import { version, versionLine } from '../engine/version.ts';
import { writeImagerList } from '../lib/publish/os-list-json.ts';
import { type CustomizeConfig, customize, optionsOf } from '../pipelines/customize.ts';
import { type PimasterConfig, pimasterConfigSchema as schema } from '../pipelines/pimaster/options.ts';
import { pimaster } from '../pipelines/pimaster/pipeline.ts';
import { cacheCommand, cacheUsage } from './cache.ts';
import { diffCommand, diffUsage } from './diff.ts';
import { formatChecks, runChecks } from './doctor.ts';
import { flashCommand, flashUsage } from './flash.ts';
import { dashValue, flagRows, parseFlags } from './tool-command.ts';
import { verifyCommand, verifyUsage } from './verify.ts';

/** The commands that build an image: `build` (the pimaster, the default) and `customize`. */
const PIPELINES = { build: pimaster, customize } as const;
type PipelineCommand = keyof typeof PIPELINES;
/** Every option any build command reads (the pimaster's are a superset of customize's). */
type ConfigKey = keyof PimasterConfig & string;

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
      '  build-image diff A B [--json] [--ignore-times]',
      '                                      compare two images: partition tables, then files (see build-image --help diff)',
      '  build-image cache ls|prune          the snapshots of the stage cache (see build-image --help cache)',
      '  build-image doctor [--work DIR]     check that this host can build images',
      '  build-image --help [COMMAND]        help on a command',
      '  build-image --version',
      '',
      ...Object.entries(PIPELINES).map(([name, p]) => `  ${name.padEnd(10)} ${p.summary}`),
      '',
      "Every option is also a key of a JSON --config file. Run 'build-image --help build' for the options.",
    ].join('\n');
  }
  const pipeline: Pipeline<CustomizeConfig> = PIPELINES[command];
  const keys = optionsOf<PimasterConfig>(pipeline);
  const defaults: Partial<PimasterConfig> = { ...pipeline.defaults };
  const rows = Object.fromEntries(
    keys.map((key) => {
      const spec = schema[key];
      const d = key in defaults ? defaults[key] : typeof spec.default === 'function' ? (spec.default as () => unknown)() : spec.default;
      return [
        key,
        {
          help: spec.help,
          placeholder: `${spec.placeholder ?? ''}${spec.kind === 'list' ? ' ...' : ''}`.trim(),
          default: spec.kind === 'switch' ? undefined : formatValue(spec, d),
        },
      ];
    }),
  );
  return [
    `build-image ${command === 'build' ? '' : `${command} `}[options]: ${pipeline.summary}`,
    '',
    `Stages: ${pipeline.stages.map((s) => s.name).join(' -> ')}`,
    '',
    'Options:',
    ...flagRows({ ...rows, ...RUN_FLAGS }),
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
      const known = name !== undefined && Object.hasOwn(schema, name);
      throw new ConfigError(`${option}: ${known ? `not an option of \`${command}\`` : 'unknown option'} (see build-image --help ${command})`);
    }
    dashValue(error, argv, (name, value) => {
      if ((keys as readonly string[]).includes(name)) resolveOptions(schema, keys, { flags: { [name]: value } }, command);
    });
    if ((error as { code?: string }).code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      throw new ConfigError(
        `${option ?? 'option'}: ${/argument missing/.test(message) ? 'needs a value' : 'takes no value'} (see build-image --help ${command})`,
      );
    }
    throw new ConfigError(message);
  }
}

function printPlan(pipeline: Pipeline<CustomizeConfig>, config: PimasterConfig, stages: readonly Pipeline<CustomizeConfig>['stages'][number][]): string {
  const lines = [`${pipeline.name}: ${stages.length} of ${pipeline.stages.length} stages, work ${config.work}, out ${config.out}`];
  for (const [i, stage] of stages.entries()) {
    lines.push(`${String(i + 1).padStart(2)}. ${stage.name.padEnd(10)} ${stage.describe(config)}`);
    for (const key of stage.options as ConfigKey[]) lines.push(`      ${key} = ${formatValue(schema[key], config[key])}`);
  }
  return lines.join('\n');
}

/** The list a build writes beside its outputs, for a directory gathering several builds' outputs. */
function osList(argv: string[]): number {
  const { values, positionals } = parseFlags(
    { args: argv, options: { 'release-url': { type: 'string' } }, allowPositionals: true, strict: true },
    'usage: build-image os-list DIR [--release-url URL]',
  );
  if (positionals.length !== 1 || !existsSync(positionals[0]!))
    throw new ConfigError('os-list takes the output directory of builds: build-image os-list DIR [--release-url URL]');
  const config = resolveOptions(schema, ['release-url'], { flags: { 'release-url': values['release-url'] } }, 'os-list');
  const file = writeImagerList(positionals[0]!, config['release-url']);
  if (!file) throw new UserError(`${positionals[0]} holds no image Raspberry Pi Imager can download (build with --compress xz)`);
  process.stdout.write(`${file}\n`);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const first = argv[0];
  if (first === '--version' || first === '-v') {
    process.stdout.write(`${versionLine()}\n`);
    return 0;
  }
  if (first === 'doctor') {
    const { values } = parseArgs({ args: argv.slice(1), options: { work: { type: 'string' } }, strict: true });
    const checks = await runChecks(values.work ?? './work');
    process.stdout.write(`${formatChecks(checks)}\n`);
    return checks.some((c) => !c.ok && !c.warning) ? 1 : 0;
  }
  if (first === 'verify') return verifyCommand(argv.slice(1));
  if (first === 'flash') return flashCommand(argv.slice(1));
  if (first === 'os-list') return osList(argv.slice(1));
  if (first === 'cache') return cacheCommand(argv.slice(1));
  if (first === 'diff') return diffCommand(argv.slice(1));
  const toolUsages: Record<string, () => string> = { verify: verifyUsage, flash: flashUsage, cache: cacheUsage, diff: diffUsage };
  if (first === '--help' && argv[1] !== undefined && Object.hasOwn(toolUsages, argv[1])) {
    process.stdout.write(`${toolUsages[argv[1]]!()}\n`);
    return 0;
  }
  const command: PipelineCommand = first !== undefined && Object.hasOwn(PIPELINES, first) ? (first as PipelineCommand) : 'build';
  const rest = command === first ? argv.slice(1) : argv;
  const pipeline: Pipeline<CustomizeConfig> = PIPELINES[command];
  const keys = optionsOf<PimasterConfig>(pipeline);
  const { values, positionals } = parse(rest, keys, command);
  if (values.help) {
    const topic = positionals[0] ?? (command === first ? command : undefined);
    process.stdout.write(`${usage(topic !== undefined && Object.hasOwn(PIPELINES, topic) ? (topic as PipelineCommand) : undefined)}\n`);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`${versionLine()}\n`);
    return 0;
  }
  if (positionals.length > 0)
    throw new ConfigError(`${JSON.stringify(positionals[0])}: unknown command (commands: ${Object.keys(PIPELINES).join(', ')}, doctor)`);
  const flags = Object.fromEntries(keys.filter((k) => values[k] !== undefined).map((k) => [k, values[k]]));
  const config = resolveOptions(schema, keys, { file: typeof values.config === 'string' ? readConfigFile(values.config) : undefined, flags }, command, {
    ...pipeline.defaults,
  });
  const range = { from: values.from as string | undefined, until: values.until as string | undefined };
  const stages = selectStages(pipeline, range);
  if (values.plan) {
    await checkSettings(stages, config);
    process.stdout.write(`${printPlan(pipeline, config, stages)}\n`);
    return 0;
  }
  const reporter = pickReporter(config);
  const { timings } = await runPipeline(pipeline, config, range, reporter);
  if (!config.quiet) process.stderr.write(`\n${timingTable(timings)}\n`);
  return 0;
}
