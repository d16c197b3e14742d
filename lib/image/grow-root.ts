/** Room in the root filesystem: how much the later stages need, and making it. */
import { scoped } from '../../engine/cleanup.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { fsck } from './fsck.ts';
import { attachLoop } from './loop.ts';
import { partition } from './partitions.ts';
import { resizeRootPartition } from './resize.ts';
import type { Layout } from './state.ts';

/** Always kept free while customizing: logs, apt lists, dpkg's temporary files. */
export const HEADROOM = 256 * 2 ** 20;

/** Bytes the stages after `after` say they will add, with a quarter more for what estimates miss. */
export async function estimatedGrowth(ctx: BuildContext, rootUsed: number, after = 'grow'): Promise<number> {
  const later = ctx.stages.slice(ctx.stages.findIndex((s) => s.name === after) + 1);
  const sizes = await Promise.all(later.map((s) => s.grows?.(ctx, rootUsed) ?? 0));
  return Math.ceil(sizes.reduce((a, b) => a + b, 0) * 1.25);
}

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
