/**
 * What the stage cache keeps of a build: the working image as it is between two steps, made whole
 * (the root filesystem frozen while it is copied, the boot partition's copied-out files written
 * into the copy), so that restoring is copying it back and attaching it as usual.
 */
import { chmodSync } from 'node:fs';
import { basename, join } from 'node:path';
import { scoped } from '../../engine/cleanup.ts';
import { formatBytes } from '../../engine/options.ts';
import type { BuildContext, ImageSnapshots } from '../../engine/stage.ts';
import type { SnapshotEntry } from '../../engine/stage-cache.ts';
import type { BuildConfig } from '../build-options.ts';
import { ATTACHED, BOOT_BEFORE, bootDir, rootDir } from './attached.ts';
import { writeBack } from './bootfs.ts';
import { ext4Geometry } from './ext4-fit.ts';
import { estimatedGrowth, growRoot, HEADROOM } from './grow-root.ts';
import { attachLoop } from './loop.ts';
import { partition } from './partitions.ts';

const IMAGE = 'image.img';

/** Sparse on every filesystem; a reflink (no data copied at all) where the filesystem has them. */
const copy = (ctx: BuildContext, from: string, to: string) => ctx.run('cp', ['--sparse=always', '--reflink=auto', from, to]);

async function save(ctx: BuildContext, dir: string): Promise<string[]> {
  const image = ctx.state.image!;
  const to = join(dir, IMAGE);
  if (!ctx.resources.has(ATTACHED)) {
    await copy(ctx, image, to);
    return [IMAGE];
  }
  const root = rootDir(ctx.paths.work);
  // Free blocks become holes in the working image (the loop device passes discards on), so the
  // copy skips what apt and the scripts deleted.
  await ctx.run('fstrim', [root], { reject: false });
  await ctx.run('fsfreeze', ['--freeze', root], { uncancellable: true });
  try {
    await copy(ctx, image, to);
  } finally {
    await ctx.run('fsfreeze', ['--unfreeze', root], { uncancellable: true });
  }
  const layout = ctx.state.layout!;
  await writeBack(ctx, to, partition(layout, layout.boot).offset, bootDir(ctx.paths.work), ctx.resources.get(BOOT_BEFORE)!);
  return [IMAGE];
}

/**
 * The snapshot's image becomes the working image; if the stages after the one it was taken in need
 * more room than it has free (an overlay that grew since), its root is grown first.
 */
async function restore(ctx: BuildContext<BuildConfig>, entry: SnapshotEntry, stage: string): Promise<void> {
  const image = join(ctx.paths.work, basename(entry.meta.state.image ?? IMAGE));
  ctx.state = { ...entry.meta.state, ...ctx.state, image };
  await copy(ctx, join(entry.dir, IMAGE), image);
  chmodSync(image, 0o600); // cp onto an earlier build's image keeps that one's mode
  const layout = ctx.state.layout;
  const names = ctx.stages.map((s) => s.name);
  if (!layout || ctx.config.grow !== 'auto' || !(names.indexOf('grow') < names.indexOf(stage))) return;
  const info = await scoped(ctx.cleanup, ctx.signal, async () => ext4Geometry(ctx, await attachLoop(ctx, image, partition(layout, layout.root))));
  const free = info.freeBlocks * info.blockSize;
  const needed = (await estimatedGrowth(ctx, (info.blockCount - info.freeBlocks) * info.blockSize, stage)) + HEADROOM;
  if (free >= needed) return;
  const bytes = Math.ceil((needed - free) / 2 ** 20) * 2 ** 20;
  ctx.log.line(`the stages after ${stage} need ${formatBytes(needed)}, the snapshot has ${formatBytes(free)} free: growing it by ${formatBytes(bytes)}`);
  ctx.state.layout = await growRoot(ctx, image, layout, bytes);
}

export const imageSnapshots: ImageSnapshots<BuildConfig> = { save, restore };
