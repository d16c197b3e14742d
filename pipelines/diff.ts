/**
 * `build-image diff A B`: what differs between two images, for a reviewer (issue 32, reproducible
 * images). One stage:
 *
 *   compare  each input decompressed, if it is compressed, into a sparse raw file of a private
 *            temporary directory (a raw input is read where it is); both partition tables read
 *            and compared; then, partition by partition (matched by number), both filesystems'
 *            entries listed and compared, and the first differing line of each changed small
 *            text file found.
 *
 * The inputs are only read. Everything made (temporary files, loop devices, mounts, their
 * directories) is registered on the clean-up stack where it is made, so nothing outlives the
 * command, whether it ends, fails or is stopped with Ctrl-C.
 *
 * ext4 is read from a read-only mount (`ro,noload,nodev,nosuid,noexec`) of a read-only loop
 * device rather than through debugfs. Both read without trusting the image's paths (links are
 * read, never followed), and neither can write to it: the loop device refuses writes, kernel's
 * included, and noload skips the journal's replay, so a filesystem not cleanly unmounted is read
 * as it is. The mount is the one that streams: each file is hashed as it is read, in one process,
 * where debugfs would need a process per file (`cat`) or a copy of the whole tree (`rdump`); and
 * the kernel's ext4 driver is what already reads every base image the toolkit customizes (attach).
 * FAT is read with mtools (the kernel here does not mount vfat); any other partition is hashed whole.
 */
import { constants, mkdirSync, mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { scoped } from '../engine/cleanup.ts';
import { CommandError, UserError } from '../engine/errors.ts';
import { engineSchema } from '../engine/options.ts';
import type { BuildContext, Pipeline, Stage } from '../engine/stage.ts';
import { extractImage, imageFormat } from '../lib/codec/decode.ts';
import {
  compareEntries,
  compareTables,
  type DiffResult,
  type Entry,
  firstDifferingLine,
  isIdentical,
  type PartitionDiff,
  type Table,
  wantsFirstLine,
} from '../lib/image/diff.ts';
import { hashRange, listFat, readFatFile, walkTree } from '../lib/image/inventory.ts';
import { attachLoop, mount } from '../lib/image/loop.ts';
import { detectFs, listPartitions, readHead, type SfdiskJson } from '../lib/image/partitions.ts';

export interface DiffOptions {
  a: string;
  b: string;
  ignoreTimes: boolean;
}

interface OpenedImage {
  /** As the user gave it. */
  input: string;
  /** The raw image read: the input itself, or its decompressed copy. */
  raw: string;
  table: Table;
  partitions: Map<number, { offset: number; size: number; fs: string }>;
}

/** The input as a raw image, with its partition table. `side`: A or B, for names and errors. */
async function openImage(ctx: BuildContext, input: string, side: 'A' | 'B', tmp: string): Promise<OpenedImage> {
  const what = side === 'A' ? 'the first IMAGE' : 'the second IMAGE';
  const format = await imageFormat(input, input, `${what} (give an .img, .img.xz, .img.zst, .img.gz, .zip or .img.tar.gz)`);
  let raw = input;
  if (format !== 'raw') {
    raw = join(tmp, `${side}.img`);
    ctx.defer(`remove ${raw}`, () => rmSync(raw, { force: true }));
    ctx.status(`decompressing ${input}`);
    await extractImage(ctx, { path: input, sha256: '', source: input }, raw, 'image', what);
  }
  const { stdout, exitCode } = await ctx.run('sfdisk', ['--json', raw], { reject: false });
  if (exitCode !== 0 || !stdout.trim()) throw new UserError(`${input}: no partition table found: ${what} must be a disk image with an MBR or GPT table`);
  const t = (JSON.parse(stdout) as SfdiskJson).partitiontable;
  // A bare FAT filesystem's boot sector reads as an MBR without partitions.
  if (!t.partitions?.length)
    throw new UserError(`${input}: its partition table lists no partition (a filesystem rather than a disk image?): ${what} must be a whole disk image`);
  const found = listPartitions({ partitiontable: t }, (await stat(raw)).size, (p) => detectFs(readHead(raw, p.offset)), input);
  const partitions = new Map(found.map((p) => [p.number, { offset: p.offset, size: p.size, fs: p.fs as string }]));
  const listed: Table['partitions'] = found.map((p, i) => {
    const uuid = t.partitions?.[i]?.uuid;
    return { number: p.number, start: p.startSector, size: p.sectors, type: p.type, ...(uuid ? { uuid } : {}) };
  });
  return { input, raw, table: { label: t.label, id: t.id ?? '', partitions: listed }, partitions };
}

/** A read-only mount of an ext4 partition, undone when the enclosing scope ends. */
async function mountExt4(ctx: BuildContext, image: OpenedImage, number: number, part: { offset: number; size: number }, dir: string): Promise<void> {
  mkdirSync(dir, { mode: 0o700 });
  ctx.defer(`remove ${dir}`, () => rmdirSync(dir)); // after the unmount; never recursive
  const device = await attachLoop(ctx, image.raw, part, { readOnly: true });
  try {
    await mount(ctx, device, dir, ['-t', 'ext4', '-o', 'ro,noload,nodev,nosuid,noexec']);
  } catch (error) {
    if (!(error instanceof CommandError)) throw error;
    const why = (error.tail.find((l) => /mount\(2\)|wrong fs type|bad superblock/.test(l)) ?? error.tail.at(-1) ?? '').replace(/^.*: /, '').replace(/\.$/, '');
    throw new UserError(
      `${image.input}: partition ${number} holds an ext4 filesystem the kernel refuses to mount read-only (${why}): the image is damaged, or uses ext4 features this kernel lacks; check it with e2fsck -n`,
    );
  }
}

/** One partition number of both images: listed, compared, the changed small texts' first lines found. */
async function comparePartition(ctx: BuildContext, a: OpenedImage, b: OpenedImage, number: number, tmp: string, ignoreTimes: boolean): Promise<PartitionDiff> {
  const pa = a.partitions.get(number);
  const pb = b.partitions.get(number);
  const fs = { a: pa?.fs ?? null, b: pb?.fs ?? null };
  const empty = { entries: { a: 0, b: 0 }, added: [], removed: [], changed: [] };
  if (!pa || !pb) return { number, fs, compared: false, note: `partition ${number} is only in ${pa ? 'A' : 'B'}`, ...empty };
  if (pa.fs !== pb.fs) return { number, fs, compared: false, note: `the filesystems differ (${pa.fs} in A, ${pb.fs} in B)`, ...empty };
  return scoped(ctx.cleanup, ctx.signal, async () => {
    let read: (side: OpenedImage, path: string) => Promise<Buffer>;
    let ea: Entry[];
    let eb: Entry[];
    ctx.status(`partition ${number} (${pa.fs})`);
    if (pa.fs === 'ext4') {
      const [da, db] = [join(tmp, `A${number}`), join(tmp, `B${number}`)];
      await mountExt4(ctx, a, number, pa, da);
      await mountExt4(ctx, b, number, pb, db);
      ea = await walkTree(da, ctx.signal, (t) => ctx.status(`partition ${number} of A: ${t}`));
      eb = await walkTree(db, ctx.signal, (t) => ctx.status(`partition ${number} of B: ${t}`));
      // Only small regular files (wantsFirstLine); O_NOFOLLOW as in the walk.
      read = (side, path) => readFile(join(side === a ? da : db, path), { flag: constants.O_RDONLY | constants.O_NOFOLLOW, signal: ctx.signal });
    } else if (pa.fs === 'vfat') {
      ea = await listFat(ctx, a.raw, pa.offset);
      eb = await listFat(ctx, b.raw, pb.offset);
      read = (side, path) => readFatFile(ctx, side.raw, (side === a ? pa : pb).offset, path);
    } else {
      ea = [await hashRange(a.raw, pa.offset, pa.size, ctx.signal)];
      eb = [await hashRange(b.raw, pb.offset, pb.size, ctx.signal)];
      read = async () => Buffer.alloc(0);
    }
    const diff = compareEntries(ea, eb, ignoreTimes);
    if (pa.fs === 'ext4' || pa.fs === 'vfat') {
      const byPathA = new Map(ea.map((e) => [e.path, e]));
      const byPathB = new Map(eb.map((e) => [e.path, e]));
      for (const change of diff.changed) {
        const [x, y] = [byPathA.get(change.path)!, byPathB.get(change.path)!];
        // Paths shown with \xNN escapes are not names to open.
        if (!wantsFirstLine(change, x, y) || /\\x[0-9a-f]{2}/.test(change.path)) continue;
        change.firstLine = firstDifferingLine(await read(a, change.path), await read(b, change.path));
      }
    }
    return { number, fs, compared: true, entries: { a: ea.length, b: eb.length }, ...diff };
  });
}

/** The pipeline; its result is left in `out.result`. */
export function diffPipeline(opts: DiffOptions, out: { result?: DiffResult }): Pipeline {
  const stage: Stage = {
    name: 'compare',
    describe: () => `compare ${opts.a} with ${opts.b}: partition tables, then each filesystem's entries`,
    options: [],
    async run(ctx) {
      // Private (0700 under the work directory, itself 0700): decompressed images hold what the images hold.
      const tmp = mkdtempSync(join(ctx.paths.work, 'tmp-'));
      ctx.defer(`remove ${tmp}`, () => rmdirSync(tmp)); // emptied by the steps registered after this one; never recursive
      const a = await openImage(ctx, opts.a, 'A', tmp);
      const b = await openImage(ctx, opts.b, 'B', tmp);
      const table = compareTables(a.table, b.table);
      const numbers = [...new Set([...a.partitions.keys(), ...b.partitions.keys()])].sort((x, y) => x - y);
      const partitions: PartitionDiff[] = [];
      for (const number of numbers) partitions.push(await comparePartition(ctx, a, b, number, tmp, opts.ignoreTimes));
      const result = { a: opts.a, b: opts.b, identical: false, ignoreTimes: opts.ignoreTimes, table, partitions };
      result.identical = isIdentical(result);
      out.result = result;
    },
  };
  return { name: 'diff', summary: 'compare two images', schema: engineSchema, stages: [stage] };
}
