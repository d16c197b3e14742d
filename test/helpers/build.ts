/** Run real stages on a real work dir, as the CLI does, with typed settings. */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { QuietReporter } from '../../engine/report.ts';
import { type BuildResult, runPipeline } from '../../engine/runner.ts';
import type { BuildState, Stage } from '../../engine/stage.ts';
import '../../lib/image/state.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { defaultConfig, pimasterConfigSchema } from '../../pipelines/pimaster/options.ts';

/** A fresh directory under /tmp for one test (work, cache and out live inside it). */
export function scratch(prefix = 'build-image-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Settings for a test: defaults, with work/cache/out inside `dir`, then the overrides. */
export function testConfig(dir: string, overrides: Partial<PimasterConfig> = {}): PimasterConfig {
  return defaultConfig({ work: join(dir, 'work'), cache: join(dir, 'cache'), out: join(dir, 'out'), ...overrides });
}

export function runStages(stages: readonly Stage<PimasterConfig>[], config: PimasterConfig, state?: BuildState): Promise<BuildResult> {
  return runPipeline({ name: 'test', summary: 'test', schema: pimasterConfigSchema, stages }, config, {}, new QuietReporter(), state);
}

/**
 * A small ext4 filesystem of `mib` MiB (a file in `dir`, mounted by loop at `<dir>/small`) until
 * the test ends: a disk that fills up. Register the test's removal of `dir` before calling this
 * (teardowns run last-registered first: this unmounts before it).
 */
export async function smallDisk(t: ExecutionContext, dir: string, mib: number): Promise<string> {
  const small = join(dir, 'small');
  mkdirSync(small);
  await execa('truncate', ['-s', `${mib}M`, join(dir, 'small.fs')]);
  await execa('mkfs.ext4', ['-q', join(dir, 'small.fs')]);
  await execa('mount', ['-o', 'loop', join(dir, 'small.fs'), small]);
  t.teardown(() => execa('umount', [small], { reject: false }));
  return small;
}
