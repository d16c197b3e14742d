/** Cutting an ext4 root filesystem to size: the sizes to try, and trying them safely. */
import { renameSync, rmSync } from 'node:fs';
import { scoped } from '../../engine/cleanup.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { attachLoop } from './loop.ts';
import type { Partition } from './state.ts';

/** Below this gain a shrink is not worth a rewrite: shrinking a shrunk image changes nothing. */
const MIN_GAIN = 4 * 2 ** 20;

/**
 * The sizes to try, smallest first, margin included: what the data needs (`fit`: files, journal
 * and the metadata of the groups kept), then the blocks in use today (resize2fs often cannot give
 * back the metadata of the groups it removes while it moves files), then steps up to resize2fs's
 * own estimate, which comes last (the one size it accepts without -f). Sizes that gain less than
 * MIN_GAIN are left out; none left means the filesystem stays as it is.
 */
export function shrinkTries(fit: number | undefined, used: number, estimate: number, blockCount: number, blockSize: number, margin: number): number[] {
  const extra = Math.ceil(margin / blockSize);
  const below = [fit ?? used, used, used + (estimate - used) / 4, used + (estimate - used) / 2].map(Math.round).filter((blocks) => blocks < estimate);
  return [...new Set([...below.sort((a, b) => a - b), estimate].map((blocks) => blocks + extra))].filter(
    (target) => (blockCount - target) * blockSize >= MIN_GAIN,
  );
}

export async function minimumBlocks(ctx: BuildContext, device: string): Promise<number> {
  const { stdout } = await ctx.run('resize2fs', ['-P', device]);
  const m = /minimum size of the filesystem:\s*(\d+)/i.exec(stdout);
  if (!m) throw new Error(`resize2fs -P gave no minimum size: ${stdout.trim()}`);
  return Number(m[1]);
}

/** e2fsck's read-only verdict: 0 is a clean filesystem, anything else is not. */
async function clean(ctx: BuildContext, device: string): Promise<boolean> {
  return (await ctx.run('e2fsck', ['-f', '-n', device], { reject: false })).exitCode === 0;
}

/** resize2fs on the root of `image`, then e2fsck's verdict; `force` goes below resize2fs's own minimum. */
async function resizeAndCheck(ctx: BuildContext, image: string, root: Partition, blocks: number, force: boolean): Promise<boolean> {
  return scoped(ctx.cleanup, ctx.signal, async () => {
    const device = await attachLoop(ctx, image, root);
    const resized = await ctx.run('resize2fs', [...(force ? ['-f'] : []), device, String(blocks)], { reject: false });
    return resized.exitCode === 0 && (await clean(ctx, device));
  });
}

/**
 * Cut the filesystem to the first size of `tries` that holds it. Below resize2fs's `estimate` it
 * takes -f, which may leave a damaged filesystem, so each such try works on a copy of the image
 * (sparse, or a reflink) that replaces it only if e2fsck finds the result clean. (resize2fs's own
 * undo file is no way back: resize2fs 1.47 writes the resize inode wrong when it keeps one.)
 * Returns the blocks kept, or undefined when no size was worth it.
 */
export async function cutTo(ctx: BuildContext, image: string, root: Partition, tries: number[], estimate: number): Promise<number | undefined> {
  const copy = `${image}.shrink-try`;
  ctx.cleanup.defer(`remove ${copy}`, () => rmSync(copy, { force: true }));
  let room = true;
  for (const blocks of tries) {
    if (blocks >= estimate) {
      if (await resizeAndCheck(ctx, image, root, blocks, false)) return blocks;
      throw new Error(`resize2fs did not leave a clean root filesystem at ${blocks} blocks (above its own minimum): see the shrink log`);
    }
    if (!room) continue;
    if ((await ctx.run('cp', ['--sparse=always', '--reflink=auto', image, copy], { reject: false })).exitCode !== 0) {
      // A disk too full for the copy costs only the sizes below resize2fs's estimate.
      ctx.log.line(`no room for a trial copy of the image beside it: only resize2fs's own estimate is tried`);
      rmSync(copy, { force: true });
      room = false;
      continue;
    }
    if (await resizeAndCheck(ctx, copy, root, blocks, true)) {
      renameSync(copy, image);
      return blocks;
    }
    ctx.log.line(`${blocks} blocks are too few (resize2fs failed or e2fsck found errors): the copy is dropped`);
    rmSync(copy, { force: true });
  }
  return undefined;
}
