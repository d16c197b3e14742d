/**
 * The root filesystem written anew from its own tree (`mke2fs -d`), packed to what it holds plus a
 * margin. The same tree gives the same bytes, whatever the build did on the way: the allocator
 * starts from nothing, the journal is empty, free blocks are zero, and every time in it (inodes,
 * superblock) is the build's one time or earlier. The base image's UUID, label, features, hash
 * seed, inode size and inode density are kept, so the image boots and grows as the release does.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { scoped } from '../../engine/cleanup.ts';
import { UserError } from '../../engine/errors.ts';
import { formatBytes } from '../../engine/options.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { type Ext4Geometry, fittingBlocks, parseExt4Header } from './ext4-fit.ts';
import { attachLoop, mount } from './loop.ts';
import type { Partition } from './state.ts';
import { type TreeEntry, treeTimes } from './tree-times.ts';

export interface Ext4Identity extends Ext4Geometry {
  uuid: string;
  label: string;
  hashSeed: string;
  hashAlg: string;
  inodeSize: number;
  reservedBlocks: number;
  mountOptions: string[];
  flexGroups: number | undefined;
  journalMiB: number | undefined;
}

/** What `mke2fs` needs to make a filesystem like this one, from `dumpe2fs -h`. */
export function parseExt4Identity(stdout: string): Ext4Identity {
  const text = (name: string) => new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(stdout)?.[1]?.trim() ?? '';
  const number = (name: string) => (text(name) === '' ? undefined : Number(text(name)));
  const journal = /^(\d+)([kMG])$/.exec(text('Journal size'));
  const label = text('Filesystem volume name');
  const uuid = (name: string) => (/^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$/i.test(text(name)) ? text(name) : undefined);
  const options = text('Default mount options');
  return {
    ...parseExt4Header(stdout),
    // None given means random to mke2fs: a filesystem without them gets zeros instead.
    uuid: uuid('Filesystem UUID') ?? 'clear',
    label: label === '<none>' ? '' : label,
    hashSeed: uuid('Directory Hash Seed') ?? '00000000-0000-0000-0000-000000000000',
    hashAlg: text('Default directory hash') || 'half_md4',
    inodeSize: number('Inode size') ?? 256,
    reservedBlocks: number('Reserved block count') ?? 0,
    mountOptions: options === '(none)' ? [] : options.split(/\s+/).filter(Boolean),
    flexGroups: number('Flex block group size'),
    journalMiB: journal ? Math.max(1, Math.round(Number(journal[1]) * { k: 1 / 1024, M: 1, G: 1024 }[journal[2] as 'k' | 'M' | 'G'])) : undefined,
  };
}

/** Below this gain the filesystem is written anew at the size it has. */
const SAME_SIZE = 4 * 2 ** 20;

/** Features that describe a state of the filesystem, not its format: never copied. */
const STATE_FEATURES = new Set(['needs_recovery', 'orphan_present']);

/**
 * mke2fs's profile: the host's /etc/mke2fs.conf must not decide anything (its defaults differ
 * between e2fsprogs releases); every format choice is on the command line or here.
 */
export function mke2fsProfile(fs: Ext4Identity): string {
  return [
    '[defaults]',
    `\thash_alg = ${fs.hashAlg}`,
    `\tdefault_mntopts = ${fs.mountOptions.join(',')}`,
    '[fs_types]',
    '\text4 = {',
    '\t}',
    '\tdefault = {',
    '\t}',
    '',
  ].join('\n');
}

/** `mke2fs` arguments for a filesystem like `fs` of `blocks` blocks, filled from `source`. */
export function mke2fsArgs(fs: Ext4Identity, blocks: number, source: string, target: string): string[] {
  const groups = Math.ceil((blocks - fs.firstBlock) / fs.blocksPerGroup);
  const features = fs.features.filter((f) => f && !STATE_FEATURES.has(f));
  const extended = [`hash_seed=${fs.hashSeed}`, 'nodiscard', 'lazy_itable_init=0', 'lazy_journal_init=0', 'root_owner=0:0'];
  return [
    '-q',
    '-F',
    '-t',
    'ext4',
    '-T',
    'default',
    '-b',
    String(fs.blockSize),
    '-I',
    String(fs.inodeSize),
    // As many inodes in each group as the base has: the same density when the root grows on a card.
    '-N',
    String(groups * fs.inodesPerGroup),
    '-m',
    ((100 * fs.reservedBlocks) / fs.blockCount).toFixed(2),
    '-U',
    fs.uuid,
    '-L',
    fs.label,
    '-O',
    ['none', ...features].join(','),
    ...(fs.flexGroups ? ['-G', String(fs.flexGroups)] : []),
    ...(fs.journalMiB && features.includes('has_journal') ? ['-J', `size=${fs.journalMiB}`] : []),
    '-E',
    extended.join(','),
    '-d',
    source,
    target,
    String(blocks),
  ];
}

/**
 * debugfs commands that bring every inode's times to the build's time or earlier: mtime and ctime
 * clamped to `epoch`, atime set to the mtime (what the build happened to read is no part of the
 * image). mke2fs copies the times it finds, and the tree it reads was changed by the build.
 */
export function timeFixes(entries: Iterable<TreeEntry>, epoch: number): string[] {
  const lines: string[] = [];
  const seen = new Set<number>();
  for (const e of entries) {
    if (seen.has(e.ino)) continue; // a hard link: one inode
    seen.add(e.ino);
    const mtime = Math.min(e.mtime, epoch);
    const ctime = Math.min(e.ctime, epoch);
    if (e.mtime !== mtime) lines.push(`sif <${e.ino}> mtime @${mtime}`);
    if (e.atime !== mtime) lines.push(`sif <${e.ino}> atime @${mtime}`);
    if (e.ctime !== ctime) lines.push(`sif <${e.ino}> ctime @${ctime}`);
  }
  return lines;
}

/**
 * Write the root filesystem of `image` anew, `margin` bytes free, at `epoch`; never larger than it
 * is. The new filesystem is made in a file beside the image and checked before the image is
 * touched: a failure (no room for it, above all) leaves the image as it was. Returns its size in
 * bytes; the caller fits the partition to it.
 */
export async function rewriteRoot(ctx: BuildContext, image: string, root: Partition, options: { epoch: number; margin: number }): Promise<number> {
  const fresh = `${image}.root`;
  const profile = `${image}.mke2fs.conf`;
  ctx.defer(`remove ${fresh}`, () => rmSync(fresh, { force: true }));
  ctx.defer(`remove ${profile}`, () => rmSync(profile, { force: true }));
  const env = { MKE2FS_CONFIG: profile, E2FSPROGS_FAKE_TIME: String(options.epoch) };

  const { blocks, blockSize } = await scoped(ctx.cleanup, ctx.signal, async () => {
    const device = await attachLoop(ctx, image, root, { readOnly: true });
    const fs = parseExt4Identity((await ctx.run('dumpe2fs', ['-h', device])).stdout);
    writeFileSync(profile, mke2fsProfile(fs));
    const tree = await mountedAt(ctx, device, `${image}.tree`);
    const fit = fittingBlocks(fs, Math.ceil((fs.blockCount - fs.freeBlocks) / 100)) ?? fs.blockCount;
    let target = fit + Math.ceil(options.margin / fs.blockSize);
    // Within a few MiB of its size, a filesystem keeps it: packing a packed image changes nothing.
    if ((fs.blockCount - target) * fs.blockSize < SAME_SIZE) target = fs.blockCount;
    ctx.log.line(
      `${fs.blockCount} blocks of ${fs.blockSize} bytes, ${fs.blockCount - fs.freeBlocks} in use; written anew at ${target} blocks (${formatBytes(target * fs.blockSize)}, margin included)`,
    );
    for (let attempt = 1; ; attempt++) {
      rmSync(fresh, { force: true });
      const made = await ctx.run('mke2fs', mke2fsArgs(fs, target, tree, fresh), { env, reject: false });
      if (made.exitCode === 0) return { blocks: target, blockSize: fs.blockSize };
      const why = `${made.stdout}\n${made.stderr}`.trim();
      // The file beside the image could not be written: the disk under the work directory is full.
      if (/No space left on device|File too large/i.test(why) && !/Could not allocate|No free space in the filesystem/i.test(why)) {
        throw new UserError(
          `shrink: no room for the rewritten root filesystem (${formatBytes(target * fs.blockSize)}) beside the image: free space under ${dirname(image)} or pass --work DIR on a larger disk`,
        );
      }
      if (attempt === 3 || target === fs.blockCount) throw new UserError(`shrink: mke2fs could not write the root filesystem anew: ${why.split('\n').at(-1)}`);
      target = Math.min(fs.blockCount, Math.ceil(target * 1.1));
      ctx.log.line(`too few blocks for mke2fs (${why.split('\n').at(-1)}); trying ${target}`);
    }
  });
  const bytes = blocks * blockSize;

  // Every time in the new filesystem brought to the build's time or earlier, then checked.
  const script = `${image}.debugfs`;
  ctx.defer(`remove ${script}`, () => rmSync(script, { force: true }));
  const fixes = await scoped(ctx.cleanup, ctx.signal, async () => {
    const device = await attachLoop(ctx, fresh, { offset: 0, size: bytes }, { readOnly: true });
    return timeFixes(treeTimes(await mountedAt(ctx, device, `${image}.tree`)), options.epoch);
  });
  writeFileSync(script, `${fixes.join('\n')}\n`);
  const fixed = await ctx.run('debugfs', ['-w', '-f', script, fresh], { env });
  // debugfs exits 0 whatever its commands did: anything on stderr but its banner is a failure.
  const complaint = fixed.stderr.split('\n').find((l) => l.trim() && !/^debugfs \d/.test(l));
  if (complaint) throw new Error(`debugfs could not set the times of the rewritten root filesystem: ${complaint}`);
  ctx.log.line(`${fixes.length} inode times brought to ${new Date(options.epoch * 1000).toISOString()} or earlier`);
  const check = await ctx.run('e2fsck', ['-f', '-n', fresh], { reject: false });
  if (check.exitCode !== 0) throw new Error(`e2fsck found errors in the rewritten root filesystem: ${check.stdout.trim().split('\n').at(-1)}`);

  // Only now is the image touched: the old filesystem's blocks become holes, the new one is copied over them.
  await ctx.run('fallocate', ['--punch-hole', '--offset', String(root.offset), '--length', String(root.size), image], { uncancellable: true });
  await ctx.run('dd', [`if=${fresh}`, `of=${image}`, 'bs=1M', `seek=${root.offset}`, 'oflag=seek_bytes', 'conv=sparse,notrunc', 'status=none'], {
    uncancellable: true,
  });
  rmSync(fresh, { force: true });
  return bytes;
}

/** `device` mounted read-only at `dir` (made, and removed with the mount). */
async function mountedAt(ctx: BuildContext, device: string, dir: string): Promise<string> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  ctx.defer(`remove ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  // noatime: reading the tree changes nothing in it; noload: no journal replay on a clean filesystem.
  await mount(ctx, device, dir, ['-t', 'ext4', '-o', 'ro,noload,noatime,nodev,nosuid,noexec']);
  return dir;
}
