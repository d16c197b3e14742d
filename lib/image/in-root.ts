/**
 * Paths inside an image's root directory, as the image itself sees them. The image is not trusted:
 * a symbolic link in it (`etc/x.conf -> /etc/x.conf`, `run -> /run`) followed on the host would
 * read, write or mount over the host's own files. Links are followed as a chroot would follow
 * them, absolute ones from the image's root and `..` never above it, so every path resolves inside.
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readlinkSync, readSync, type Stats } from 'node:fs';
import { isAbsolute, join, posix } from 'node:path';
import { UserError } from '../../engine/errors.ts';

/** The image's path `path` with its symbolic links followed inside the image: /bin/sh -> /usr/bin/dash. */
export function resolveInRoot(root: string, path: string, depth = 0): string {
  if (depth > 40) throw new UserError(`${path}: too many levels of symbolic links in the image`);
  const parts = path.split('/').filter(Boolean);
  let current = '/';
  for (const [i, part] of parts.entries()) {
    const next = posix.join(current, part);
    let target: string | undefined;
    try {
      target = readlinkSync(join(root, next));
    } catch {
      target = undefined;
    }
    if (target === undefined) {
      current = next;
      continue;
    }
    const resolved = isAbsolute(target) ? target : posix.join(current, target);
    return resolveInRoot(root, posix.join(resolved, ...parts.slice(i + 1)), depth + 1);
  }
  return current;
}

/** The host path of the image's `path`, every link on the way followed inside the image. */
export function inRoot(root: string, path: string): string {
  return join(root, resolveInRoot(root, path));
}

/**
 * The host path where the image's `path` itself is (its directory resolved inside the image, a
 * link at the end left as it is): where to write, rename or remove it.
 */
export function entryInRoot(root: string, path: string): string {
  return join(inRoot(root, posix.dirname(posix.join('/', path))), posix.basename(posix.join('/', path)));
}

/** What the toolkit reads of an image's file at most (dpkg's status file of a desktop image: a few MB). */
export const READ_LIMIT = 64 * 2 ** 20;

/**
 * The host file `file` (the image's `path`), read when it is a regular file of at most `limit`
 * bytes; undefined when there is none. Anything else there is refused: a device node would read
 * the host's disk, a FIFO would hang the build.
 */
export function readRegular(file: string, path: string, limit = READ_LIMIT): Buffer | undefined {
  const refuse = () => new UserError(`the image's ${posix.join('/', path)} is not a regular file: the image is damaged or hostile, and is not read`);
  let info: Stats;
  try {
    info = lstatSync(file); // before opening: a device node is never opened, even on a mount without nodev
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw error;
  }
  if (!info.isFile()) throw refuse();
  if (info.size > limit)
    throw new UserError(`the image's ${posix.join('/', path)} is ${info.size} bytes, more than the ${limit} read of it: the image is damaged or hostile`);
  const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const opened = fstatSync(fd);
    if (!opened.isFile()) throw refuse(); // replaced since
    const bytes = Buffer.alloc(Math.min(opened.size, limit));
    let at = 0;
    for (let n = 1; at < bytes.length && n > 0; at += n) n = readSync(fd, bytes, at, bytes.length - at, null);
    return bytes.subarray(0, at);
  } finally {
    closeSync(fd);
  }
}

/** The first of `candidates` (paths in the image) that exists, read (regular files only); '' when none does. */
export function readInRoot(root: string, ...candidates: string[]): string {
  for (const path of candidates) {
    const bytes = readRegular(inRoot(root, path), path);
    if (bytes) return bytes.toString('utf8');
  }
  return '';
}
