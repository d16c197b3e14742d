import { lstatSync, readdirSync, type Stats } from 'node:fs';
import { join } from 'node:path';

/** One entry's inode and times, in whole seconds. */
export interface TreeEntry {
  ino: number;
  atime: number;
  mtime: number;
  ctime: number;
}

const entry = (s: Stats): TreeEntry => ({
  ino: s.ino,
  atime: Math.floor(s.atimeMs / 1000),
  mtime: Math.floor(s.mtimeMs / 1000),
  ctime: Math.floor(s.ctimeMs / 1000),
});

/**
 * Every entry of the tree at `dir`, the root included: links are not followed and other
 * filesystems mounted inside are not entered, so these are the tree's own inodes and times.
 */
export function* treeTimes(dir: string): Generator<TreeEntry> {
  const root = lstatSync(dir);
  yield entry(root);
  const inner = function* (path: string): Generator<TreeEntry> {
    for (const name of readdirSync(path)) {
      const child = join(path, name);
      const s = lstatSync(child);
      yield entry(s);
      if (s.isDirectory() && s.dev === root.dev) yield* inner(child);
    }
  };
  yield* inner(dir);
}

/** The newest modification time (whole seconds) of `dir` and everything under it. */
export function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of treeTimes(dir)) newest = Math.max(newest, e.mtime);
  return newest;
}
