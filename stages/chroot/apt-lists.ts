/**
 * apt's package indexes kept between builds, as its archives are. An image that ships none (as
 * released images do: pi-gen deletes them) gets the ones the last build fetched from the same
 * sources, so `apt-get update` only asks whether they changed ("Hit") instead of downloading and
 * verifying 9 MB again under emulation. After each successful update apt runs a hook that copies
 * the indexes to the chroot's staging directory; they become the cache when the session ends.
 * Indexes put in for an update that never came are taken out again: the image ends as it would
 * have without them.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BuildContext } from '../../pipeline/stage.ts';
import { inRoot } from '../image/in-root.ts';

const LISTS = '/var/lib/apt/lists';

/** The index files in `dir` (not apt's lock, partial/ or auxfiles/). */
const indexes = (dir: string) => (existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).filter((e) => e.isFile() && e.name.includes('_')).map((e) => e.name) : []);

/** Copy `names` from one directory to another, with their times (apt compares them). */
function copyIndexes(from: string, to: string, names: string[]): void {
  for (const name of names) {
    copyFileSync(join(from, name), join(to, name));
    const { atime, mtime } = statSync(join(from, name));
    utimesSync(join(to, name), atime, mtime);
  }
}

/**
 * Seed the image's indexes from `shared` (a host directory for these sources) and keep what apt
 * fetches there. `staging` is a directory inside the image on the chroot's tmpfs, `bin` where the
 * build's own commands are. Returns the apt configuration line of the hook. Call with the chroot's
 * /run mounted: the clean-up step registered here runs before it is unmounted.
 */
export function shareAptLists(ctx: BuildContext, root: string, shared: string, staging: string, bin: string): string {
  const lists = inRoot(root, LISTS);
  const seeded = indexes(lists).length === 0 ? indexes(shared) : [];
  if (seeded.length) copyIndexes(shared, lists, seeded);
  const hook = `${bin}/keep-apt-lists`;
  writeFileSync(
    inRoot(root, hook),
    [
      '#!/bin/sh',
      '# Written by build-image: a copy of the indexes apt-get update has just made, for the next build.',
      `rm -rf ${staging} && mkdir ${staging} && cp -p ${LISTS}/*_* ${staging}/ 2>/dev/null || true`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  ctx.defer('keep the apt indexes for the next build', (outcome) => {
    if (outcome !== 'success') return;
    const fetched = inRoot(root, staging);
    if (existsSync(fetched)) {
      // Replaced whole, by renames: a build reading the cache at the same time sees one set or the other.
      const next = `${shared}.${process.pid}.new`;
      rmSync(next, { recursive: true, force: true });
      mkdirSync(next, { recursive: true });
      copyIndexes(fetched, next, indexes(fetched));
      const old = `${shared}.${process.pid}.old`;
      if (existsSync(shared)) renameSync(shared, old);
      renameSync(next, shared);
      rmSync(old, { recursive: true, force: true });
    } else {
      for (const name of seeded) rmSync(join(lists, name), { force: true });
    }
  });
  return `APT::Update::Post-Invoke-Success { "${hook}"; };`;
}
