import { formatBytes } from '../pipeline/config.ts';
import { scoped } from '../pipeline/cleanup.ts';
import { UserError } from '../pipeline/errors.ts';
import type { BuildContext, Stage } from '../pipeline/stage.ts';
import { fsck } from './finalize.ts';
import { attachLoop } from './image/loop.ts';
import { partition, readLayout } from './image/partitions.ts';
import { ext4Info, resizeRootPartition } from './image/resize.ts';
import type { Layout } from './image/state.ts';

const MiB = 2 ** 20;
/** Always kept free while customizing: logs, apt lists, dpkg's temporary files. */
export const HEADROOM = 256 * MiB;

/** Bytes the stages after `after` say they will add, with a quarter more for what estimates miss. */
export async function estimatedGrowth(ctx: BuildContext, rootUsed: number, after = 'grow'): Promise<number> {
  const later = ctx.stages.slice(ctx.stages.findIndex((s) => s.name === after) + 1);
  const sizes = await Promise.all(later.map((s) => s.grows?.(ctx, rootUsed) ?? 0));
  return Math.ceil(sizes.reduce((a, b) => a + b, 0) * 1.25);
}

/**
 * Enlarge the file, the root partition and its filesystem before anything is installed, so a
 * build never runs out of space half way (the complaint of pi-gen and packer-builder-arm users).
 */
export const growStage: Stage = {
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
    const info = await scoped(ctx.cleanup, ctx.signal, async () => ext4Info(ctx, await attachLoop(ctx, image, root)));
    const free = info.freeBlocks * info.blockSize;
    const used = (info.blockCount - info.freeBlocks) * info.blockSize;
    const wanted = ctx.config.grow === 'auto' ? (await estimatedGrowth(ctx, used)) + HEADROOM - free : ctx.config.grow;
    if (wanted <= 0) {
      ctx.log.line(`${formatBytes(free)} free is room enough; not growing`);
      return;
    }
    const bytes = Math.ceil(wanted / MiB) * MiB;
    ctx.log.line(`growing the root filesystem by ${formatBytes(bytes)} (${formatBytes(free)} free now)`);
    await growRoot(ctx, image, layout, bytes);
  },
};

/** The file, the root partition (the last) and its ext4 filesystem made `bytes` larger (whole MiB). */
export async function growRoot(ctx: BuildContext, image: string, layout: Layout, bytes: number): Promise<Layout> {
  const root = partition(layout, layout.root);
  const grown = await resizeRootPartition(ctx, image, layout, root, root.sectors + bytes / layout.sectorSize);
  await scoped(ctx.cleanup, ctx.signal, async () => {
    const device = await attachLoop(ctx, image, partition(grown, grown.root));
    await fsck(ctx, device);
    await ctx.run('resize2fs', [device]);
  });
  return grown;
}
