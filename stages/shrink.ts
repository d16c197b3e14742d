import { formatBytes } from '../pipeline/config.ts';
import { scoped } from '../pipeline/cleanup.ts';
import { UserError } from '../pipeline/errors.ts';
import type { BuildContext, Stage } from '../pipeline/stage.ts';
import { readBootFile, writeBootFile } from './image/bootfs.ts';
import { armFirstBoot, disarmFirstBoot, firstBootFor, formatCmdline, parseCmdline } from './image/cmdline.ts';
import { fsck } from './finalize.ts';
import { attachLoop } from './image/loop.ts';
import { partition, readLayout } from './image/partitions.ts';
import { ext4Info, resizeRootPartition } from './image/resize.ts';

/** Below this gain a shrink is not worth a rewrite: shrinking a shrunk image changes nothing. */
const MIN_GAIN = 4 * 2 ** 20;

/** Blocks the filesystem keeps: resize2fs's minimum plus the margin, never more than it has. */
export function shrinkTarget(minBlocks: number, blockCount: number, blockSize: number, margin: number): number | undefined {
  const target = minBlocks + Math.ceil(margin / blockSize);
  return (blockCount - target) * blockSize >= MIN_GAIN ? target : undefined;
}

async function minimumBlocks(ctx: BuildContext, device: string): Promise<number> {
  const { stdout } = await ctx.run('resize2fs', ['-P', device]);
  const m = /minimum size of the filesystem:\s*(\d+)/i.exec(stdout);
  if (!m) throw new Error(`resize2fs -P gave no minimum size: ${stdout.trim()}`);
  return Number(m[1]);
}

/**
 * fsck, the root filesystem cut to its minimum plus a margin, its free blocks zeroed and turned
 * into holes (so the image compresses well and copies skip them), then the last partition and the
 * file cut to size. --expand-on-boot re-arms the release's own first-boot expansion; otherwise a
 * pipeline may ask for it to be disarmed (the pimaster install guide does), or leave it as it is.
 */
export function shrink(options: { disarmFirstBoot?: boolean } = {}): Stage {
  return {
    name: 'shrink',
    describe: (config) =>
      `cut the root filesystem to its minimum + ${formatBytes(config['shrink-margin'])}, zero free blocks${config['expand-on-boot'] ? ', re-arm first-boot expansion' : options.disarmFirstBoot ? ', disarm first-boot expansion' : ''}`,
    options: ['shrink-margin', 'expand-on-boot'],
    async run(ctx) {
      const image = ctx.state.image;
      if (!image) throw new UserError('shrink: no working image; run the pipeline from its start');
      let layout = await readLayout(ctx, image);
      const root = partition(layout, layout.root);
      const resized = await scoped(ctx.cleanup, ctx.signal, async () => {
        const device = await attachLoop(ctx, image, root);
        await fsck(ctx, device);
        const before = await ext4Info(ctx, device);
        const target = shrinkTarget(await minimumBlocks(ctx, device), before.blockCount, before.blockSize, ctx.config['shrink-margin']);
        if (target !== undefined) {
          ctx.log.line(`shrinking from ${before.blockCount} to ${target} blocks of ${before.blockSize} bytes`);
          await ctx.run('resize2fs', [device, String(target)]);
        }
        await ctx.run('zerofree', [device]);
        return target === undefined ? undefined : target * before.blockSize;
      });
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
