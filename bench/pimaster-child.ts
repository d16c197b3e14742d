/**
 * One pimaster build for bench/pimaster.ts, in a Node process of its own that loads what the CLI
 * loads and no bench or test code, so its peak RSS is the build's own. Prints the build's figures
 * as one JSON line.
 *
 *   node bench/pimaster-child.ts '{"flags": {...}, "until": "chroot"}'
 */
import { describeError } from '../engine/errors.ts';
import { resolveOptions } from '../engine/options.ts';
import type { Named } from '../engine/report.ts';
import { LineReporter, type StageBody } from '../engine/report.ts';
import { runPipeline, type Timing } from '../engine/runner.ts';
import type { Output } from '../lib/image/state.ts';
import { optionsOf } from '../pipelines/customize.ts';
import type { PimasterConfig } from '../pipelines/pimaster/options.ts';
import { pimasterConfigSchema } from '../pipelines/pimaster/options.ts';
import { pimaster } from '../pipelines/pimaster/pipeline.ts';

/** What one build reports. */
export interface Build {
  timings: Timing[];
  outputs: Output[];
  image: string;
  maxRssKiB: number;
  /** The stage during which the peak RSS was reached; empty: while loading, before the first. */
  peakStage: string;
}

/** The CLI's line reporter, noting the last stage that raised the process's peak RSS. */
class PeakReporter extends LineReporter {
  peakStage = '';

  override async sequence<S extends Named>(stages: readonly S[], body: StageBody<S>): Promise<void> {
    await super.sequence(stages, async (stage, setStatus) => {
      const before = process.resourceUsage().maxRSS;
      try {
        return await body(stage, setStatus);
      } finally {
        if (process.resourceUsage().maxRSS > before) this.peakStage = stage.name;
      }
    });
  }
}

try {
  const spec = JSON.parse(process.argv[2]!) as { flags: Record<string, unknown>; until?: string };
  const config = resolveOptions(pimasterConfigSchema, optionsOf<PimasterConfig>(pimaster), { flags: spec.flags }, 'build');
  const reporter = new PeakReporter();
  const { timings, state } = await runPipeline(pimaster, config, { until: spec.until }, reporter);
  const build: Build = { timings, outputs: state.outputs ?? [], image: state.image!, maxRssKiB: process.resourceUsage().maxRSS, peakStage: reporter.peakStage };
  process.stdout.write(`${JSON.stringify(build)}\n`);
} catch (error) {
  process.stderr.write(`${describeError(error, true)}\n`);
  process.exitCode = 1;
}
