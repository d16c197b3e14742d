/** What the benchmarks measure alike: resize2fs's minimum of an image, what its root holds, an .xz's size, and their tables. */
import { mkdirSync } from 'node:fs';
import { execa } from 'execa';
import { parseExt4Header } from '../lib/image/ext4-fit.ts';

export async function lastPartitionOffset(image: string): Promise<number> {
  const { stdout } = await execa('sfdisk', ['--json', image]);
  const table = (JSON.parse(stdout) as { partitiontable: { partitions: { start: number }[] } }).partitiontable;
  return table.partitions.at(-1)!.start * 512;
}

/**
 * The smallest image resize2fs allows: the root's start plus `resize2fs -P`'s block count (an
 * estimate known to run high, e2fsprogs issue #174). `?offset=` opens the partition in place; fine
 * for reading, never for resizing (resize2fs would cut the file to the filesystem's size).
 */
export async function minimumImageSize(image: string, rootOffset?: number): Promise<number> {
  const offset = rootOffset ?? (await lastPartitionOffset(image));
  const fs = `${image}?offset=${offset}`;
  const { stdout: estimate } = await execa('resize2fs', ['-P', fs]);
  const { stdout: header } = await execa('dumpe2fs', ['-h', fs]);
  const blocks = Number(/minimum size of the filesystem:\s*(\d+)/i.exec(estimate)?.[1]);
  const blockSize = Number(/^Block size:\s*(\d+)/m.exec(header)?.[1]);
  if (!blocks || !blockSize) throw new Error(`cannot read the minimum size of ${fs}`);
  return offset + blocks * blockSize;
}

/** The root's start plus the blocks its filesystem has in use: what an image cannot go below. */
export async function inUseImageSize(image: string, rootOffset?: number): Promise<number> {
  const offset = rootOffset ?? (await lastPartitionOffset(image));
  const fs = parseExt4Header((await execa('dumpe2fs', ['-h', `${image}?offset=${offset}`])).stdout);
  return offset + (fs.blockCount - fs.freeBlocks) * fs.blockSize;
}

/** The uncompressed size of an .xz file, from its index. */
export async function xzUncompressedSize(path: string): Promise<number> {
  const { stdout } = await execa('xz', ['--robot', '--list', path]);
  return Number(/^totals\t(?:[^\t]*\t){3}(\d+)/m.exec(stdout)?.[1]);
}

/** Rows of cells in columns; the columns numbered in `figures` aligned right, the others left. */
export function formatTable(rows: readonly (readonly string[])[], figures: readonly number[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const align = (cell: string, i: number) => (figures.includes(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!));
  return rows.map((r) => r.map(align).join('   ').trimEnd()).join('\n');
}

/** Mount each image's root read-only (a loop device that goes with the mount) while `use` runs. */
async function withRoots<T>(images: string[], dir: string, use: (roots: string[]) => Promise<T>): Promise<T> {
  const roots: string[] = [];
  try {
    for (const [i, image] of images.entries()) {
      const root = `${dir}/root-${i}`;
      mkdirSync(root, { recursive: true });
      await execa('mount', ['-o', `ro,noload,loop,offset=${await lastPartitionOffset(image)}`, image, root]);
      roots.push(root);
    }
    return await use(roots);
  } finally {
    for (const root of roots.reverse()) await execa('umount', [root]);
  }
}

/**
 * How two images' roots differ as a user could tell: paths whose content (checksum), type, mode,
 * owner or link target differ, or that only one has (rsync's dry run; times are not compared).
 * Also how many .pyc files each holds.
 */
export async function rootDifferences(a: string, b: string, dir: string): Promise<{ pyc: [number, number]; differing: string[] }> {
  return withRoots([a, b], dir, async ([rootA, rootB]) => {
    const pycs = async (root: string) => Number((await execa('bash', ['-c', `find "$1" -xdev -name '*.pyc' | wc -l`, '_', root!])).stdout);
    const { stdout } = await execa('rsync', ['-n', '-rlpgoDc', '--delete', '--itemize-changes', `${rootA}/`, `${rootB}/`]);
    // "*deleting path" (only in a), ">f+++++++++ path" (only in b), ">fc........ path" (content), ...
    const differing = stdout
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => l.replace(/^\S+\s+/, ''));
    return { pyc: [await pycs(rootA!), await pycs(rootB!)], differing };
  });
}
