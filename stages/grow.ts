import { statfsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { scoped } from '../engine/cleanup.ts';
import { UserError } from '../engine/errors.ts';
import { formatBytes } from '../engine/options.ts';
import type { Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { ext4Geometry } from '../lib/image/ext4-fit.ts';
import { estimatedGrowth, growRoot, HEADROOM } from '../lib/image/grow-root.ts';
import { attachLoop } from '../lib/image/loop.ts';
import { partition, readLayout } from '../lib/image/partitions.ts';

const MiB = 2 ** 20;

/**
 * Enlarge the file, the root partition and its filesystem before anything is installed, so a
 * build never runs out of space half way (the complaint of pi-gen and packer-builder-arm users).
 */
export const growStage: Stage<BuildConfig> = {
  name: 'grow',
  describe: (config) =>
    config.grow === 'auto'
      ? 'enlarge the root filesystem by what the later stages add (computed)'
      : `enlarge the root filesystem by ${formatBytes(config.grow)}`,
  options: ['grow'],
  // With --grow auto, the room made follows from the stages after grow (in the chain of keys);
  // an image restored from the cache is grown again if they need more (see snapshot.ts).
  async key(ctx) {
    return [{ label: 'root filesystem grown', input: String(ctx.config.grow) }];
  },
  async run(ctx) {
    const image = ctx.state.image;
    if (!image) throw new UserError('grow: no working image; run the pipeline from its start');
    const layout = await readLayout(ctx, image);
    const root = partition(layout, layout.root);
    const info = await scoped(ctx.cleanup, ctx.signal, async () => ext4Geometry(ctx, await attachLoop(ctx, image, root)));
    const free = info.freeBlocks * info.blockSize;
    const used = (info.blockCount - info.freeBlocks) * info.blockSize;
    const wanted = ctx.config.grow === 'auto' ? (await estimatedGrowth(ctx, used)) + HEADROOM - free : ctx.config.grow;
    const bytes = wanted > 0 ? Math.ceil(wanted / MiB) * MiB : 0;
    checkHostSpace(image, bytes);
    if (bytes === 0) {
      ctx.log.line(`${formatBytes(free)} free is room enough; not growing`);
      return;
    }
    ctx.log.line(`growing the root filesystem by ${formatBytes(bytes)} (${formatBytes(free)} free now)`);
    await growRoot(ctx, image, layout, bytes);
  },
};

/**
 * The working image is sparse: the build may fill every byte of it. Refuse to start what the disk
 * under it cannot hold, rather than corrupt the image when it fills up half way.
 */
function checkHostSpace(image: string, growBy: number): void {
  const info = statSync(image);
  const need = info.size + growBy - info.blocks * 512;
  const fs = statfsSync(dirname(image));
  const free = fs.bavail * fs.bsize;
  if (need > free) {
    throw new UserError(
      `not enough space in ${dirname(image)}: the working image may take ${formatBytes(need)} more as the build writes it, and the disk has ${formatBytes(free)} free; free some space or pass --work DIR on a larger disk`,
    );
  }
}
