/** The image's partition table, read once with sfdisk, checked, with the boot and root found. */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import type { Layout, Partition } from './state.ts';

/** What `sfdisk --json` prints of a table (`id`: the MBR disk id or GPT GUID; `uuid`: a GPT partition's). */
export interface SfdiskJson {
  partitiontable: {
    label: string;
    id?: string;
    sectorsize?: number;
    partitions?: Array<{ node: string; start: number; size: number; type: string; uuid?: string }>;
  };
}

/** The filesystem a partition holds, from its superblock's magic numbers. */
export function detectFs(head: Buffer): Partition['fs'] {
  if (head.length >= 1082 && head.readUInt16LE(1080) === 0xef53) return 'ext4'; // ext2/3/4 magic
  const fat32 = head.toString('latin1', 82, 87) === 'FAT32';
  const fat16 = /^FAT1[26]/.test(head.toString('latin1', 54, 59));
  if ((fat32 || fat16) && head.readUInt16LE(510) === 0xaa55) return 'vfat';
  return 'other';
}

/** Each partition of sfdisk's JSON with its byte range and filesystem; one past the end of the file is refused. */
export function listPartitions(json: SfdiskJson, fileSize: number, fsOf: (p: { offset: number }) => Partition['fs'], name = 'the image'): Partition[] {
  const sectorSize = json.partitiontable.sectorsize ?? 512;
  return (json.partitiontable.partitions ?? []).map((p) => {
    const number = Number(/(\d+)$/.exec(p.node)?.[1]);
    const offset = p.start * sectorSize;
    const size = p.size * sectorSize;
    if (offset + size > fileSize) {
      throw new UserError(`${name}: partition ${number} ends at byte ${offset + size}, past the end of the file (${fileSize} bytes): the image is truncated`);
    }
    return { number, startSector: p.start, sectors: p.size, type: p.type, fs: fsOf({ offset }), offset, size };
  });
}

/** Pure part: sfdisk's JSON plus each partition's filesystem, checked against the file size. */
export function parseLayout(json: SfdiskJson, fileSize: number, fsOf: (p: { offset: number }) => Partition['fs'], name = 'the image'): Layout {
  const table = json.partitiontable;
  if (table.label !== 'dos' && table.label !== 'gpt') throw new UserError(`${name}: unsupported partition table "${table.label}" (expected MBR or GPT)`);
  const sectorSize = table.sectorsize ?? 512;
  const partitions = listPartitions(json, fileSize, fsOf, name);
  const boot = partitions.find((p) => p.fs === 'vfat');
  const roots = partitions.filter((p) => p.fs === 'ext4');
  if (!boot) throw new UserError(`${name}: no FAT boot partition found (partitions: ${describe(partitions)})`);
  if (roots.length !== 1) {
    throw new UserError(
      `${name}: expected one ext4 root partition, found ${roots.length} (partitions: ${describe(partitions)}); only ext4 roots are supported`,
    );
  }
  const root = roots[0]!;
  const last = partitions.reduce((a, b) => (b.offset > a.offset ? b : a));
  if (last !== root) throw new UserError(`${name}: the ext4 root (partition ${root.number}) is not the last partition, so it cannot be grown or shrunk`);
  return { label: table.label, sectorSize, fileSize, partitions, boot: boot.number, root: root.number };
}

function describe(partitions: readonly Partition[]): string {
  return partitions.length ? partitions.map((p) => `${p.number}:${p.fs}`).join(', ') : 'none';
}

export function partition(layout: Layout, number: number): Partition {
  const p = layout.partitions.find((q) => q.number === number);
  if (!p) throw new Error(`no partition ${number}`);
  return p;
}

/** The first 4 KiB at `offset` (what detectFs reads). */
export function readHead(path: string, offset: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buffer = Buffer.alloc(4096);
    const n = readSync(fd, buffer, 0, buffer.length, offset);
    return buffer.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** Read and check the partition table of the working image (or of a card), and keep it in the build state. */
export async function readLayout(ctx: BuildContext, image: string): Promise<Layout> {
  const { stdout, exitCode } = await ctx.run('sfdisk', ['--json', image], { reject: false });
  if (exitCode !== 0 || !stdout.trim()) throw new UserError(`${image}: no partition table found (is it a disk image?)`);
  const info = statSync(image);
  const size = info.isBlockDevice() ? Number((await ctx.run('blockdev', ['--getsize64', image])).stdout.trim()) : info.size;
  const layout = parseLayout(JSON.parse(stdout) as SfdiskJson, size, (p) => detectFs(readHead(image, p.offset)), image);
  ctx.state.layout = layout;
  return layout;
}
