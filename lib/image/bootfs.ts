/**
 * The FAT boot partition, handled in user space with mtools (many kernels, in containers above
 * all, cannot mount vfat): copied out to a directory, and later written back in place. Writing
 * back copies only what changed and deletes what was removed, so the filesystem's label, volume
 * ID and layout are kept.
 */
import { lstatSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';

const env = { MTOOLS_SKIP_CHECK: '1', MTOOLS_NO_VFAT: undefined };

/** For the commands that write: mtools (4.0.32 and later) takes SOURCE_DATE_EPOCH as "now". */
function writeEnv(ctx: BuildContext): Record<string, string | undefined> {
  const epoch = ctx.state.sourceDateEpoch;
  return epoch === undefined ? env : { ...env, SOURCE_DATE_EPOCH: String(epoch) };
}

/** path (relative, '/'-separated) -> "size:mtime" for files, "dir" for directories. */
export type Snapshot = Map<string, string>;

export function snapshot(dir: string): Snapshot {
  const result: Snapshot = new Map();
  const walk = (rel: string) => {
    for (const entry of readdirSync(join(dir, rel), { withFileTypes: true })) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        result.set(path, 'dir');
        walk(path);
      } else if (entry.isFile()) {
        const st = lstatSync(join(dir, path));
        result.set(path, `${st.size}:${Math.floor(st.mtimeMs / 1000)}`);
      } else {
        throw new UserError(`boot partition: ${path} is a ${entry.isSymbolicLink() ? 'symbolic link' : 'special file'}, which FAT cannot hold`);
      }
    }
  };
  walk('');
  return result;
}

export interface BootChanges {
  /** Directories to create, parents first. */
  mkdirs: string[];
  /** Files to copy in (new or changed). */
  copies: string[];
  /** Files and directories to delete (directories after their contents are gone). */
  deletes: Array<{ path: string; dir: boolean }>;
}

/** What turns the partition as copied out (`before`) into the directory as it is now (`after`). */
export function diffSnapshots(before: Snapshot, after: Snapshot): BootChanges {
  const mkdirs = [...after]
    .filter(([p, v]) => v === 'dir' && before.get(p) !== 'dir')
    .map(([p]) => p)
    .sort();
  const copies = [...after]
    .filter(([p, v]) => v !== 'dir' && before.get(p) !== v)
    .map(([p]) => p)
    .sort();
  const gone = [...before].filter(([p, v]) => !after.has(p) || (after.get(p) === 'dir') !== (v === 'dir'));
  // Deepest first, so a directory is empty when its turn comes; a removed directory's
  // contents go with it (mdeltree), so they are not listed.
  const goneDirs = new Set(gone.filter(([, v]) => v === 'dir').map(([p]) => p));
  const inGoneDir = (p: string) => [...goneDirs].some((d) => p.startsWith(`${d}/`));
  const deletes = gone
    .filter(([p]) => !inGoneDir(p))
    .map(([path, v]) => ({ path, dir: v === 'dir' }))
    .sort((a, b) => b.path.length - a.path.length);
  return { mkdirs, copies, deletes };
}

function drive(image: string, offset: number): string[] {
  return ['-i', `${image}@@${offset}`];
}

/** The names at the top of the boot partition ([] for an empty or unreadable one). */
export async function bootFileNames(ctx: BuildContext, image: string, offset: number): Promise<string[]> {
  const { stdout } = await ctx.run('mdir', ['-b', ...drive(image, offset), '::'], { env, reject: false });
  return stdout
    .split('\n')
    .map((l) => l.trim().replace(/^::\//, ''))
    .filter(Boolean);
}

export async function copyOut(ctx: BuildContext, image: string, offset: number, dir: string): Promise<void> {
  if ((await bootFileNames(ctx, image, offset)).length === 0) return; // empty filesystem: nothing to copy
  await ctx.run('mcopy', ['-s', '-p', '-m', '-n', ...drive(image, offset), '::*', `${dir}/`], { env });
}

export async function writeBack(ctx: BuildContext, image: string, offset: number, dir: string, before: Snapshot): Promise<BootChanges> {
  const changes = diffSnapshots(before, snapshot(dir));
  const d = drive(image, offset);
  const env = writeEnv(ctx);
  for (const { path, dir: isDir } of changes.deletes) {
    await ctx.run(isDir ? 'mdeltree' : 'mdel', [...d, `::/${path}`], { env });
  }
  for (const path of changes.mkdirs) await ctx.run('mmd', [...d, `::/${path}`], { env });
  // One mcopy per target directory, overwriting in place, in sorted order: the same files land in
  // the same directory slots on every build.
  const byDir = new Map<string, string[]>();
  for (const path of [...changes.copies].sort()) {
    const parent = posix.dirname(path);
    byDir.set(parent, [...(byDir.get(parent) ?? []), join(dir, path)]);
  }
  for (const [parent, files] of byDir) {
    const restore = clampTimes(files, ctx.state.sourceDateEpoch);
    try {
      await ctx.run('mcopy', ['-p', '-m', '-o', ...d, ...files, parent === '.' ? '::/' : `::/${parent}/`], { env });
    } finally {
      restore();
    }
  }
  return changes;
}

/**
 * mcopy -m keeps a file's time: none copied in may be newer than the build's one time, or the
 * FAT would hold the time of the build's run. The staged files get their own times back after,
 * so that a later writeBack (a snapshot's, then the final one) still sees what changed.
 */
function clampTimes(files: readonly string[], epoch: number | undefined): () => void {
  if (epoch === undefined) return () => {};
  const clamped: Array<[string, Date, Date]> = [];
  for (const file of files) {
    const st = statSync(file);
    if (st.mtimeMs <= epoch * 1000) continue;
    utimesSync(file, st.atime, epoch);
    clamped.push([file, st.atime, st.mtime]);
  }
  return () => {
    for (const [file, atime, mtime] of clamped) utimesSync(file, atime, mtime);
  };
}

/** Read one file of the boot partition (cmdline.txt) straight from the image. */
export async function readBootFile(ctx: BuildContext, image: string, offset: number, path: string): Promise<string> {
  const { stdout } = await ctx.run('mtype', ['-i', `${image}@@${offset}`, `::/${path}`], { env });
  return stdout;
}

/** Replace one file of the boot partition in the image (the partition is not copied out). */
export async function writeBootFile(ctx: BuildContext, image: string, offset: number, path: string, content: string): Promise<void> {
  const staged = join(ctx.paths.work, posix.basename(path));
  writeFileSync(staged, content);
  try {
    // Without -m: the file's time is mtools' "now", the build's one time where it has one.
    await ctx.run('mcopy', ['-o', '-i', `${image}@@${offset}`, staged, `::/${path}`], { env: writeEnv(ctx) });
  } finally {
    rmSync(staged, { force: true });
  }
}
