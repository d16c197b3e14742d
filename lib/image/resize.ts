/** Moving the end of the root partition (the last one) and of the image file. */
import { statSync, truncateSync } from 'node:fs';
import type { BuildContext } from '../../engine/stage.ts';
import { readLayout } from './partitions.ts';
import type { Layout, Partition } from './state.ts';

/** Sectors a GPT keeps after the last partition for its backup header and entries. */
export const GPT_TAIL = 33;

/**
 * An `sfdisk --dump` with one partition's size changed, ready to be written back. The device and
 * last-lba lines go so that sfdisk recomputes them for the new file size (a GPT's backup header
 * then lands at the new end); label ids, partition uuids and types are kept.
 */
export function resizeInDump(dump: string, number: number, sectors: number): string {
  let found = false;
  const lines = dump
    .split('\n')
    .filter((line) => !/^(device|last-lba):/.test(line))
    .map((line) => {
      const m = /^(\S*?)(\d+) : (.*)$/.exec(line);
      if (!m || Number(m[2]) !== number) return line;
      found = true;
      return line.replace(/size=\s*\d+/, `size=${sectors}`);
    });
  if (!found) throw new Error(`partition ${number} is not in the partition table`);
  return `${lines.join('\n').trim()}\n`;
}

/**
 * Set the root partition's size and make an image file end right after it (a card keeps its size):
 * the table is rewritten whole from its own dump, which works the same for MBR and GPT, growing or
 * shrinking.
 */
export async function resizeRootPartition(ctx: BuildContext, image: string, layout: Layout, root: Partition, sectors: number): Promise<Layout> {
  const { stdout: dump } = await ctx.run('sfdisk', ['--dump', image]);
  const table = resizeInDump(dump, root.number, sectors);
  if (statSync(image).isFile()) truncateSync(image, (root.startSector + sectors + (layout.label === 'gpt' ? GPT_TAIL : 0)) * layout.sectorSize);
  await ctx.run('sfdisk', ['--no-reread', '--no-tell-kernel', '--quiet', '--wipe', 'never', '--wipe-partitions', 'never', image], {
    input: table,
    uncancellable: true,
  });
  return readLayout(ctx, image);
}
