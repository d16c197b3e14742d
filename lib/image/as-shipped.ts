/**
 * What a build must not leave in an image: what identifies one device, what records the build's
 * own run, and caches that hold times. Recorded as the image shipped at attach, put back at
 * finalize (and after the settings), so two builds of the same inputs give the same image and
 * every card made from it is a device of its own.
 * - Machine ids: a package's script may write one (dbus-uuidgen --ensure), which every card would
 *   then share, or replace trixie's "uninitialized", which makes the first boot one
 *   (ConditionFirstBoot).
 * - Logs: apt's and dpkg's lines of this build, with its times (pi-gen empties them): each is cut
 *   back to its shipped size, and one the build made is removed.
 * - Caches apt and ldconfig make again when they need them: apt's binary package caches hold the
 *   times of its lists, ldconfig's aux-cache the inodes and ctimes of the libraries.
 */
import { existsSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { entryInRoot, inRoot, readRegular } from './in-root.ts';

const IDS = ['etc/machine-id', 'var/lib/dbus/machine-id'];
const CACHES = ['var/cache/apt/pkgcache.bin', 'var/cache/apt/srcpkgcache.bin', 'var/cache/ldconfig/aux-cache'];

/** The image as shipped: its machine ids (base64, null for none) and the size of each log. */
export interface Shipped {
  ids: Record<string, string | null>;
  logs: Record<string, number>;
}

function logFiles(root: string): string[] {
  const dir = inRoot(root, 'var/log');
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(root, join(e.parentPath, e.name)));
}

export function recordShipped(root: string): Shipped {
  const ids = Object.fromEntries(IDS.map((path) => [path, readRegular(inRoot(root, path), path)?.toString('base64') ?? null]));
  const logs = Object.fromEntries(logFiles(root).map((path) => [path, statSync(join(root, path)).size]));
  return { ids, logs };
}

/** Put back what `shipped` recorded, remove the caches; returns what was done, for the log. */
export function restoreShipped(root: string, shipped: Shipped): string[] {
  const done: string[] = [];
  for (const [path, content] of Object.entries(shipped.ids)) {
    const file = inRoot(root, path);
    const now = readRegular(file, path);
    if (content === null && now !== undefined) {
      rmSync(file, { force: true });
      done.push(`${path} removed`);
    } else if (content !== null && !now?.equals(Buffer.from(content, 'base64'))) {
      writeFileSync(file, Buffer.from(content, 'base64'));
      done.push(`${path} as shipped`);
    }
  }
  for (const path of logFiles(root)) {
    const size = shipped.logs[path];
    const file = join(root, path);
    if (size === undefined) {
      rmSync(file);
      done.push(`${path} removed`);
    } else if (statSync(file).size !== size) {
      truncateSync(file, size);
      done.push(`${path} cut to its ${size} bytes`);
    }
  }
  for (const path of CACHES) {
    const file = entryInRoot(root, path);
    if (existsSync(file)) {
      rmSync(file, { force: true });
      done.push(`${path} removed`);
    }
  }
  return done;
}

/** Record now, put back later: around one stage (the settings). */
export function asShipped(root: string): { restore(): string[] } {
  const shipped = recordShipped(root);
  return { restore: () => restoreShipped(root, shipped) };
}
