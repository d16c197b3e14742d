import { renameSync, rmSync } from 'node:fs';
import { formatBytes } from '../engine/options.ts';
import { scoped } from '../engine/cleanup.ts';
import { UserError } from '../engine/errors.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import { readBootFile, writeBootFile } from '../lib/image/bootfs.ts';
import { armFirstBoot, disarmFirstBoot, firstBootFor, formatCmdline, parseCmdline } from '../lib/image/cmdline.ts';
import { attachLoop } from '../lib/image/loop.ts';
import { partition, readLayout } from '../lib/image/partitions.ts';
import type { Partition } from '../lib/image/state.ts';
import { resizeRootPartition } from '../lib/image/resize.ts';
import { ext4Geometry, fittingBlocks } from '../lib/image/ext4-fit.ts';
import { fsck } from '../lib/image/fsck.ts';
import type { BuildConfig } from '../lib/build-options.ts';

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
  return [...new Set([...below.sort((a, b) => a - b), estimate].map((blocks) => blocks + extra))].filter((target) => (blockCount - target) * blockSize >= MIN_GAIN);
}

async function minimumBlocks(ctx: BuildContext, device: string): Promise<number> {
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

/**
 * fsck, the root filesystem cut to its minimum plus a margin, its free blocks zeroed and turned
 * into holes (so the image compresses well and copies skip them), then the last partition and the
 * file cut to size. --expand-on-boot re-arms the release's own first-boot expansion; otherwise a
 * pipeline may ask for it to be disarmed (the pimaster install guide does), or leave it as it is.
 */
export function shrink(options: { disarmFirstBoot?: boolean } = {}): Stage<BuildConfig> {
  return {
    name: 'shrink',
    describe: (config) =>
      `cut the root filesystem to what it holds + ${formatBytes(config['shrink-margin'])}, zero free blocks${config['expand-on-boot'] ? ', re-arm first-boot expansion' : options.disarmFirstBoot ? ', disarm first-boot expansion' : ''}`,
    options: ['shrink-margin', 'expand-on-boot'],
    async run(ctx) {
      const image = ctx.state.image;
      if (!image) throw new UserError('shrink: no working image; run the pipeline from its start');
      let layout = await readLayout(ctx, image);
      const root = partition(layout, layout.root);
      const { geometry, tries, estimate } = await scoped(ctx.cleanup, ctx.signal, async () => {
        const device = await attachLoop(ctx, image, root);
        await fsck(ctx, device);
        const geometry = await ext4Geometry(ctx, device);
        const estimate = await minimumBlocks(ctx, device);
        const fit = fittingBlocks(geometry, Math.ceil((geometry.blockCount - geometry.freeBlocks) / 200));
        const tries = shrinkTries(fit, geometry.blockCount - geometry.freeBlocks, estimate, geometry.blockCount, geometry.blockSize, ctx.config['shrink-margin']);
        ctx.log.line(`${geometry.blockCount} blocks of ${geometry.blockSize} bytes, ${geometry.blockCount - geometry.freeBlocks} in use; resize2fs estimates ${estimate}, the data needs ${fit ?? 'an unknown count'}; trying ${tries.join(', ') || 'none'} (margin included)`);
        return { geometry, tries, estimate };
      });
      const kept = await cutTo(ctx, image, root, tries, estimate);
      await scoped(ctx.cleanup, ctx.signal, async () => ctx.run('zerofree', [await attachLoop(ctx, image, root)]));
      const resized = kept === undefined ? undefined : kept * geometry.blockSize;
      // The partition follows the filesystem (a whole number of blocks is a whole number of sectors).
      if (resized !== undefined && resized < root.size) {
        layout = await resizeRootPartition(ctx, image, layout, root, resized / layout.sectorSize);
      }
      // Zeroed blocks become holes: smaller copies, faster reads, and a bmap of the used blocks only.
      await ctx.run('fallocate', ['--dig-holes', image]);
      if (ctx.config['expand-on-boot'] || options.disarmFirstBoot) {
        const boot = partition(layout, layout.boot);
        const mechanism = ctx.state.system?.firstBoot ?? firstBootFor(ctx.state.system?.codename ?? '');
        if (ctx.config['expand-on-boot'] && mechanism === 'none') throw new UserError(`--expand-on-boot: release "${ctx.state.system?.codename}" has no first-boot expansion this tool knows`);
        const cmdline = parseCmdline(await readBootFile(ctx, image, boot.offset, 'cmdline.txt'));
        const edited = ctx.config['expand-on-boot'] ? armFirstBoot(cmdline, mechanism) : disarmFirstBoot(cmdline);
        await writeBootFile(ctx, image, boot.offset, 'cmdline.txt', formatCmdline(edited));
      }
      ctx.state.layout = layout;
    },
  };
}

export const shrinkStage = shrink();
