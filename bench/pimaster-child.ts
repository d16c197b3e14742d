/**
 * One pimaster build for bench/pimaster.ts, in a Node process of its own that loads what the CLI
 * loads and no bench or test code, so its peak RSS is the build's own. Prints the build's figures
 * as one JSON line.
 *
 *   node bench/pimaster-child.ts '{"flags": {...}, "until": "chroot"}'
 */
import { resolveConfig } from '../pipeline/config.ts';
import { describeError } from '../pipeline/errors.ts';
import { optionsOf, pimaster } from '../pipeline/pipelines.ts';
import { LineReporter } from '../pipeline/report.ts';
import { runPipeline, type Timing } from '../pipeline/runner.ts';
import type { Output } from '../stages/image/state.ts';

/** What one build reports. */
export interface Build {
  timings: Timing[];
  outputs: Output[];
  image: string;
  maxRssKiB: number;
}

try {
  const spec = JSON.parse(process.argv[2]!) as { flags: Record<string, unknown>; until?: string };
  const config = resolveConfig(optionsOf(pimaster), { flags: spec.flags }, 'build');
  const { timings, state } = await runPipeline(pimaster, config, { until: spec.until }, new LineReporter());
  const build: Build = { timings, outputs: state.outputs ?? [], image: state.image!, maxRssKiB: process.resourceUsage().maxRSS };
  process.stdout.write(`${JSON.stringify(build)}\n`);
} catch (error) {
  process.stderr.write(`${describeError(error, true)}\n`);
  process.exitCode = 1;
}
