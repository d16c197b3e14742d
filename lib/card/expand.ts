/**
 * `flash --expand`: the card's root partition (the last) and its ext4 filesystem grown to the end
 * of the card, offline, after the read-back. The first boot then has nothing to grow, whatever the
 * image's own first-boot resize does (a pimaster's is disarmed).
 */
import { scoped } from '../../engine/cleanup.ts';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { ext4Geometry } from '../image/ext4-fit.ts';
import { fsck } from '../image/fsck.ts';
import { attachLoop } from '../image/loop.ts';
import { partition, readLayout } from '../image/partitions.ts';
import { GPT_TAIL, resizeRootPartition } from '../image/resize.ts';
import type { Layout } from '../image/state.ts';

/** An MBR entry counts sectors in 32 bits. */
const MBR_LIMIT = 2 ** 32 - 1;

/** The root partition's new size in sectors: to the card's end (less a GPT's backup), in whole 4 KiB. */
export function sectorsToEnd(layout: Layout, diskBytes: number): number {
  const root = partition(layout, layout.root);
  const end = Math.floor(diskBytes / layout.sectorSize) - (layout.label === 'gpt' ? GPT_TAIL : 0);
  const sectors = Math.min(end, layout.label === 'dos' ? MBR_LIMIT : end) - root.startSector;
  const perBlock = 4096 / layout.sectorSize;
  return sectors - (sectors % perBlock);
}

export interface Expanded {
  /** The root filesystem's size in bytes before and after. */
  before: number;
  after: number;
}

/** Grow the root of the image just written to `device` (`diskBytes` long) to the device's end. */
export async function expandRoot(ctx: BuildContext, device: string, diskBytes: number): Promise<Expanded> {
  let layout: Layout;
  try {
    layout = await readLayout(ctx, device);
  } catch (error) {
    if (!(error instanceof UserError)) throw error;
    throw new UserError(`${device} holds the image, written and read back, but --expand cannot grow it: ${error.message}`);
  }
  const root = partition(layout, layout.root);
  const bytes = async (device: string) => {
    const fs = await ext4Geometry(ctx, device);
    return fs.blockCount * fs.blockSize;
  };
  const sectors = sectorsToEnd(layout, diskBytes);
  if (sectors <= root.sectors) {
    ctx.log.line(`${device}: the root partition already ends at the card's end: nothing to grow`);
    const same = await bytes(`${device}?offset=${root.offset}`);
    return { before: same, after: same };
  }
  await resizeRootPartition(ctx, device, layout, root, sectors);
  await ctx.run('blockdev', ['--rereadpt', device], { reject: false });
  return scoped(ctx.cleanup, ctx.signal, async () => {
    const loop = await attachLoop(ctx, device, { offset: root.offset, size: sectors * layout.sectorSize });
    await fsck(ctx, loop);
    const before = await bytes(loop);
    await ctx.run('resize2fs', [loop]);
    return { before, after: await bytes(loop) };
  });
}
