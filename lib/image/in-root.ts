/**
 * Paths inside an image's root directory, as the image itself sees them. The image is not trusted:
 * a symbolic link in it (`etc/x.conf -> /etc/x.conf`, `run -> /run`) followed on the host would
 * read, write or mount over the host's own files. Links are followed as a chroot would follow
 * them, absolute ones from the image's root and `..` never above it, so every path resolves inside.
 */
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
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

/** The first of `candidates` (paths in the image) that exists, read; '' when none does. */
export function readInRoot(root: string, ...candidates: string[]): string {
  for (const path of candidates) {
    const full = inRoot(root, path);
    if (existsSync(full)) return readFileSync(full, 'utf8');
  }
  return '';
}
