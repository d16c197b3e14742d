/**
 * Commands that work on an image rather than build one (verify, flash, diff): their own flags, parsed
 * strictly, with --help made from them, run as a pipeline in a subdirectory of the work directory
 * (so a build's state there is left alone) with the same clean-up, signals and logs as a build.
 */
import { join } from 'node:path';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { ConfigError } from '../engine/errors.ts';
import { type EngineOptions, engineSchema, resolveOptions } from '../engine/options.ts';
import { pickReporter } from '../engine/report.ts';
import { runPipeline, type Timing } from '../engine/runner.ts';
import type { BuildState, Pipeline } from '../engine/stage.ts';

export interface ToolFlag {
  type: 'string' | 'boolean';
  /** Repeatable: its values come as a list. */
  multiple?: boolean;
  help: string;
  placeholder?: string;
  default?: string | (() => string);
}

/** What every such command takes besides its own flags. */
export const TOOL_FLAGS = {
  work: { type: 'string', placeholder: 'DIR', help: 'working directory (this command writes in DIR/verify, DIR/flash or DIR/diff)', default: './work' },
  verbose: { type: 'boolean', help: 'echo every command and its output' },
  quiet: { type: 'boolean', help: 'print only the results and errors' },
  help: { type: 'boolean', help: 'this help' },
} as const satisfies Record<string, ToolFlag>;

/** `  --flag PLACEHOLDER  help (default: ...)`, aligned. */
export function flagRows(flags: Record<string, { help: string; placeholder?: string; default?: unknown }>): string[] {
  const rows = Object.entries(flags).map(([name, f]) => {
    const d = typeof f.default === 'function' ? (f.default as () => unknown)() : f.default;
    return [`--${name}${f.placeholder ? ` ${f.placeholder}` : ''}`, `${f.help}${d !== undefined ? ` (default: ${d})` : ''}`] as const;
  });
  const width = Math.max(...rows.map(([a]) => a.length));
  return rows.map(([a, b]) => `  ${a.padEnd(width)}  ${b}`);
}

export function toolUsage(synopsis: readonly string[], flags: Record<string, ToolFlag>): string {
  return [...synopsis, '', 'Options:', ...flagRows({ ...flags, ...TOOL_FLAGS })].join('\n');
}

export type ToolValues = Record<string, string | boolean | string[] | undefined>;

/** node:util's parseArgs, its error as one line with where to look (`hint`). */
export function parseFlags<T extends ParseArgsConfig>(config: T, hint: string, check?: ValueCheck): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    if (check) dashValue(error, config.args ?? [], check);
    throw new ConfigError(`${(error as Error).message.split('\n')[0]} (${hint})`);
  }
}

/** Runs a flag's rule on a value, throwing the rule's one line when it refuses it. */
export type ValueCheck = (name: string, value: string) => void;

/**
 * node:util reads `--hostname -lab` as a flag missing its value ("ambiguous"). Say what the user
 * would hear of `--hostname=-lab`: the flag's rule on the value (a host name cannot start with '-'),
 * or, when the rule takes it, how to give it. Returns when the error is another one.
 */
export function dashValue(error: unknown, argv: readonly string[], check: ValueCheck): void {
  if ((error as { code?: string }).code !== 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' || !/ambiguous/.test((error as Error).message)) return;
  const option = /'(--[^' ]+)'/.exec((error as Error).message)?.[1];
  const at = argv.findIndex((arg, i) => arg === option && argv[i + 1]?.startsWith('-'));
  if (!option || at < 0) return;
  const value = argv[at + 1]!;
  check(option.slice(2), value);
  throw new ConfigError(`${option}: its value ${JSON.stringify(value)} starts with '-', read as a flag; give it as ${option}=${value}`);
}

/** The flags and positionals, or undefined once --help has been answered. */
export function parseTool(
  argv: string[],
  command: string,
  flags: Record<string, ToolFlag>,
  usage: () => string,
  check?: ValueCheck,
): { values: ToolValues; positionals: string[] } | undefined {
  const all: Record<string, ToolFlag> = { ...flags, ...TOOL_FLAGS };
  const parsed = parseFlags(
    {
      args: argv,
      options: Object.fromEntries(Object.entries(all).map(([k, f]) => [k, { type: f.type, multiple: f.multiple ?? false }])),
      allowPositionals: true,
      strict: true,
    },
    `see build-image --help ${command}`,
    check,
  );
  if (parsed.values.help) {
    process.stdout.write(`${usage()}\n`);
    return undefined;
  }
  return parsed as { values: ToolValues; positionals: string[] };
}

/** Run the command's pipeline in `<work>/<command>`. */
export async function runTool(pipeline: Pipeline, values: ToolValues): Promise<{ state: BuildState; timings: Timing[]; config: EngineOptions }> {
  const config = resolveOptions(
    engineSchema,
    [],
    { flags: { work: values.work, cache: values.cache, verbose: values.verbose, quiet: values.quiet } },
    pipeline.name,
  );
  const { state, timings } = await runPipeline(pipeline, { ...config, work: join(config.work, pipeline.name) }, {}, pickReporter(config));
  return { state, timings, config };
}
