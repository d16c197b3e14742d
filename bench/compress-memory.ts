/**
 * The memory compress holds while it streams an image: a tiny image whose root is 1 GiB (8 MiB of
 * incompressible data, the rest free), compressed to .img.zst and written as .img (the `none`
 * output) by the compress stage in this process, whose RSS is sampled every 20 ms. Prints the
 * image's size, each output's, the time, the RSS before, its peak, and how much it grew: the
 * stage reads through two reused 1 MiB buffers, so the growth should stay near 10 MiB whatever the
 * image's size (it was 48 MiB with a fresh buffer per read). This was a timed test (compress's
 * "memory stays flat"); speed and memory are measured by benchmarks, never asserted by tests.
 * Needs no root: the image is made with mkfs.ext4 -d and mtools, nothing is attached.
 *
 *   node bench/compress-memory.ts [--root-mib 1024] [--keep]
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatBytes } from '../engine/options.ts';
import type { Output } from '../lib/image/state.ts';
import { compressStage } from '../stages/compress.ts';
import { makeTinyImage } from '../test/fixtures/tiny-image.ts';
import { runStages, testConfig } from '../test/helpers/build.ts';
import { formatTable } from './measure.ts';

const MiB = 2 ** 20;

async function bench(rootMiB: number, keep: boolean): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'compress-memory-'));
  try {
    const image = join(dir, 'image.img');
    await makeTinyImage(image, { rootMiB, payloadMiB: 8 });
    const size = statSync(image).size;
    const config = testConfig(dir, { compress: ['zstd', 'none'], name: 'pi' });
    const before = process.memoryUsage().rss;
    let peak = before;
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const started = performance.now();
    let outputs: Output[] = [];
    try {
      outputs = (await runStages([compressStage], config, { image })).state.outputs ?? [];
    } finally {
      clearInterval(timer);
    }
    const seconds = (performance.now() - started) / 1000;
    const rows = [
      ['compress (zstd, none)', 'figure'],
      ['image', formatBytes(size)],
      ...outputs.map((o) => [`  ${o.format} output`, formatBytes(o.size)]),
      ['time', `${seconds.toFixed(1)} s`],
      ['RSS before', formatBytes(before)],
      ['RSS peak (sampled every 20 ms)', formatBytes(peak)],
      ['RSS growth', formatBytes(peak - before)],
      ['growth per GiB of image', formatBytes(((peak - before) / size) * 1024 * MiB)],
    ];
    if (keep) process.stderr.write(`compress-memory: kept ${dir}\n`);
    return formatTable(rows, [1]);
  } finally {
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

try {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { 'root-mib': { type: 'string', default: '1024' }, keep: { type: 'boolean', default: false } },
  });
  const rootMiB = Number(values['root-mib']);
  if (!(Number.isInteger(rootMiB) && rootMiB >= 64)) throw new Error(`--root-mib ${values['root-mib']}: expected a whole number of MiB, at least 64`);
  console.log(await bench(rootMiB, values.keep));
} catch (error) {
  process.stderr.write(`compress-memory: ${(error as { shortMessage?: string }).shortMessage ?? (error as Error).message}\n`);
  process.exitCode = 1;
}
