/**
 * Installing the pimaster's package set (scripts/pimaster/10-packages.sh) into the arm64 Debian
 * fixture under qemu-user, three ways: without the speed-ups (dpkg syncing every file, Python
 * compiled package by package in the image, an empty apt cache), with them (SPEED_UPS in
 * lib/chroot/environment.ts), and with them and the apt cache of the run before (a second
 * build). Prints one table. Needs root and the network to the Debian mirror; takes about
 * a quarter of an hour on two cores.
 *
 *   node bench/chroot-bench.ts
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { scoped } from '../engine/cleanup.ts';
import { formatBytes } from '../engine/options.ts';
import { QuietReporter } from '../engine/report.ts';
import { runPipeline } from '../engine/runner.ts';
import type { Stage } from '../engine/stage.ts';
import { chrootRun, enterChroot, STAGING } from '../lib/chroot/environment.ts';
import { defaultConfig, pimasterConfigSchema } from '../pipelines/pimaster/options.ts';
import { attachStage } from '../stages/attach.ts';
import { finalizeStage } from '../stages/finalize.ts';
import { growStage } from '../stages/grow.ts';
import { debianImage } from '../test/fixtures/debian-image.ts';

const script = new URL('../scripts/pimaster/10-packages.sh', import.meta.url).pathname;

/** A stage that runs the package script in the image and times it. */
function install(result: { seconds: number }): Stage {
  return {
    name: 'install',
    describe: () => 'apt-get install the pimaster packages',
    options: [],
    async run(ctx) {
      await scoped(ctx.cleanup, ctx.signal, async () => {
        await enterChroot(ctx);
        const started = performance.now();
        await chrootRun(ctx, ['/bin/bash', '-e', '-c', readFileSync(script, 'utf8')], { env: { BUILD_STAGING: STAGING } });
        result.seconds = (performance.now() - started) / 1000;
      });
    },
  };
}

/** One install; `speedUpsOff` as BUILD_IMAGE_SPEEDUPS_OFF. */
async function measure(fixture: string, cache: string, speedUpsOff: string): Promise<{ seconds: number; cached: number }> {
  process.env.BUILD_IMAGE_SPEEDUPS_OFF = speedUpsOff;
  const dir = mkdtempSync(join(tmpdir(), 'chroot-bench-'));
  try {
    const image = join(dir, 'image.img');
    await execa('cp', ['--sparse=always', fixture, image]);
    const cached = Number((await execa('du', ['-s', '--block-size=1', cache], { reject: false })).stdout.split('\t')[0] || 0);
    const result = { seconds: 0 };
    const config = defaultConfig({ work: join(dir, 'work'), cache, out: join(dir, 'out'), grow: 1024 * 2 ** 20 });
    await runPipeline(
      { name: 'bench', summary: '', schema: pimasterConfigSchema, stages: [growStage, attachStage, install(result), finalizeStage] },
      config,
      {},
      new QuietReporter(),
      { image },
    );
    return { seconds: result.seconds, cached };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const fixture = await debianImage('arm64');
const caches = mkdtempSync(join(tmpdir(), 'chroot-bench-cache-'));
try {
  const rows: Array<[string, { seconds: number; cached: number }]> = [];
  rows.push(['no speed-ups, empty apt cache', await measure(fixture, join(caches, 'a'), 'all')]);
  rows.push(['speed-ups, empty apt cache', await measure(fixture, join(caches, 'b'), '')]);
  rows.push(['speed-ups, apt cache of the run before', await measure(fixture, join(caches, 'b'), '')]);
  const base = rows[0]![1].seconds;
  process.stdout.write('\nInstalling the pimaster package set into the arm64 fixture (qemu-user)\n\n');
  process.stdout.write(`  ${'case'.padEnd(42)} ${'time'.padStart(8)}  ${'vs first'.padStart(8)}  apt cache before\n`);
  for (const [label, r] of rows) {
    process.stdout.write(
      `  ${label.padEnd(42)} ${`${r.seconds.toFixed(0)} s`.padStart(8)}  ${`${((100 * r.seconds) / base).toFixed(0)}%`.padStart(8)}  ${formatBytes(r.cached)}\n`,
    );
  }
} finally {
  rmSync(caches, { recursive: true, force: true });
}
