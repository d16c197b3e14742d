/**
 * How small an ext4 filesystem can be cut: resize2fs -P's estimate is far above what it holds (it
 * counts every group's metadata and a generous allowance for moved files), so the shrink stage
 * starts from what the blocks in use need and lets resize2fs and e2fsck say whether it fits.
 */
import type { BuildContext } from '../../engine/stage.ts';

export interface Ext4Geometry {
  blockSize: number;
  blockCount: number;
  freeBlocks: number;
  firstBlock: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  inodeBlocksPerGroup: number;
  reservedGdtBlocks: number;
  inodeCount: number;
  freeInodes: number;
  features: string[];
}

export async function ext4Geometry(ctx: BuildContext, device: string): Promise<Ext4Geometry> {
  return parseExt4Header((await ctx.run('dumpe2fs', ['-h', device])).stdout);
}

/** The superblock's figures from `dumpe2fs -h` output. */
export function parseExt4Header(stdout: string): Ext4Geometry {
  const field = (name: string, fallback?: number) => {
    const m = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(stdout);
    if (m) return Number(m[1]);
    if (fallback !== undefined) return fallback;
    throw new Error(`dumpe2fs gave no "${name}"`);
  };
  return {
    blockSize: field('Block size'),
    blockCount: field('Block count'),
    freeBlocks: field('Free blocks'),
    firstBlock: field('First block'),
    blocksPerGroup: field('Blocks per group'),
    inodesPerGroup: field('Inodes per group'),
    inodeBlocksPerGroup: field('Inode blocks per group'),
    reservedGdtBlocks: field('Reserved GDT blocks', 0),
    inodeCount: field('Inode count'),
    freeInodes: field('Free inodes'),
    features: (/^Filesystem features:\s+(.*)$/m.exec(stdout)?.[1] ?? '').trim().split(/\s+/),
  };
}

/** sparse_super keeps superblock and descriptor copies in groups 0, 1 and the powers of 3, 5 and 7. */
function hasBackup(group: number): boolean {
  if (group <= 1) return true;
  return [3, 5, 7].some((base) => {
    let power = base;
    while (power < group) power *= base;
    return power === group;
  });
}

/** Blocks the first `groups` groups spend on their own metadata (bitmaps, inode tables, backups). */
export function metadataBlocks(fs: Ext4Geometry, groups: number): number {
  const descriptorBlocks = Math.ceil((groups * (fs.features.includes('64bit') ? 64 : 32)) / fs.blockSize);
  let blocks = 0;
  for (let g = 0; g < groups; g++) blocks += 2 + fs.inodeBlocksPerGroup + (hasBackup(g) ? 1 + descriptorBlocks + fs.reservedGdtBlocks : 0);
  return blocks;
}

/**
 * The fewest blocks that can hold the data (files, directories, journal) in use, the metadata of
 * the groups that remain and every inode in use, plus `slack` blocks for the extent blocks files
 * moved by resize2fs may need; undefined for layouts this count does not know (no sparse_super,
 * sparse_super2, bigalloc): those keep resize2fs's own estimate.
 */
export function fittingBlocks(fs: Ext4Geometry, slack: number): number | undefined {
  if (!fs.features.includes('sparse_super') || fs.features.some((f) => f === 'sparse_super2' || f === 'bigalloc')) return undefined;
  const groups = Math.ceil((fs.blockCount - fs.firstBlock) / fs.blocksPerGroup);
  const data = fs.blockCount - fs.freeBlocks - metadataBlocks(fs, groups) + slack;
  const inodes = fs.inodeCount - fs.freeInodes;
  for (let n = 1; n <= groups; n++) {
    const room = n * fs.blocksPerGroup - metadataBlocks(fs, n);
    if (room < data || n * fs.inodesPerGroup < inodes) continue;
    // The last group holds what the first n - 1 cannot, after its own metadata.
    const spill = data - ((n - 1) * fs.blocksPerGroup - metadataBlocks(fs, n - 1));
    const last = metadataBlocks(fs, n) - metadataBlocks(fs, n - 1) + Math.max(0, spill);
    return fs.firstBlock + (n - 1) * fs.blocksPerGroup + last;
  }
  return fs.blockCount;
}
