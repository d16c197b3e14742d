/**
 * A work directory belongs to build-image and to one build at a time. A marker file says the tool
 * made it, so that clean-up (which deletes what stages made there, `boot/` among them) never runs
 * in a directory holding someone's files (`--work /`). A lock file names the build that holds it.
 * What a build killed with SIGKILL left mounted or attached under it is undone before the next
 * build uses it: otherwise a later `rm -rf` goes through the host's /dev bind-mounted there.
 */
import { chmodSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { execa } from 'execa';
import { ConfigError } from './errors.ts';
import { processAlive } from './lock.ts';
import { backingFile, loopsUnder, mountsUnder } from './mounts.ts';

export const MARKER = '.build-image-work';
const LOCK = '.build-image-lock';

/** A process's start time (clock ticks since boot): with the pid, it tells a reused pid apart. */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

interface Holder {
  pid: number;
  alive: boolean;
}

function holder(lock: string): Holder | undefined {
  let text: string;
  try {
    text = readFileSync(lock, 'utf8');
  } catch {
    return undefined;
  }
  const [pid, started] = text.trim().split(' ');
  const n = Number(pid);
  return { pid: n, alive: n > 0 && processAlive(n) && startTime(n) === started };
}

/**
 * Mounts and loop devices below `work` that no running build holds: a killed build's. A live
 * build in a directory inside it (verify's `work/verify`) keeps its own; `work` itself may be a
 * mount the user made.
 */
export function leftovers(work: string): { mounts: string[]; loops: string[] } {
  if (!existsSync(work)) return { mounts: [], loops: [] };
  const real = realpathSync(work);
  const held = (path: string) => {
    for (let dir = dirname(path); dir === real || dir.startsWith(`${real}/`); dir = dirname(dir)) {
      const owner = holder(join(dir, LOCK));
      if (owner?.alive && owner.pid !== process.pid) return true;
    }
    return false;
  };
  return { mounts: mountsUnder(real).filter((m) => m !== real && !held(m)), loops: loopsUnder(real).filter((l) => !held(backingFile(l))) };
}

/** The commands that undo `leftovers`, for a user to run by hand. */
export function undoCommands({ mounts, loops }: ReturnType<typeof leftovers>): string[] {
  return [...mounts.map((m) => `umount ${m}`), ...loops.map((l) => `losetup -d ${l}`)];
}

/**
 * A directory only its owner can enter (0700), made so or tightened if it was there: the work dir
 * and the cache hold images with Wi-Fi keys and password hashes, which any user could read in a
 * 0755 tree with debugfs.
 */
export function privateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
}

/**
 * Make or take `work` for this process; returns the release. Refuses (exit 2) a directory with
 * files the tool did not make, and one another live build holds.
 */
export async function claimWorkDir(work: string, note: (line: string) => void): Promise<() => void> {
  const target = resolve(work);
  if (existsSync(target)) {
    if (!statSync(target).isDirectory()) throw new ConfigError(`--work ${work}: not a directory; pass a new or empty directory`);
    if (!existsSync(join(target, MARKER))) {
      if (readdirSync(target).length > 0) {
        throw new ConfigError(
          `--work ${work}: holds files build-image did not make (no ${MARKER}); pass a new or empty directory, the build deletes what it makes there`,
        );
      }
      writeFileSync(join(target, MARKER), '');
    }
  } else {
    // Every directory made here is the tool's own (`work/verify` may make `work` too).
    const first = mkdirSync(target, { recursive: true, mode: 0o700 })!;
    for (let dir = target; ; dir = dirname(dir)) {
      writeFileSync(join(dir, MARKER), '');
      if (dir === first || relative(first, dir).startsWith('..')) break;
    }
  }
  chmodSync(target, 0o700);
  const lock = join(target, LOCK);
  const mine = `${process.pid} ${startTime(process.pid)}\n`;
  const tmp = `${lock}.${process.pid}`;
  writeFileSync(tmp, mine);
  try {
    for (;;) {
      try {
        linkSync(tmp, lock); // atomic: fails if a lock is there
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const owner = holder(lock);
      if (owner?.alive) throw new ConfigError(`--work ${work}: another build (pid ${owner.pid}) is using it; wait for it to end or pass another --work`);
      if (owner) await undoLeftovers(target, owner.pid, note);
      try {
        renameSync(lock, `${lock}.stale`); // one of two builds taking over a stale lock wins
      } catch {
        // the other one took it; try again
      }
    }
  } finally {
    rmSync(tmp, { force: true });
  }
  rmSync(`${lock}.stale`, { force: true });
  // A work dir made before locks existed, or whose lock was removed by hand, may still hold a killed build's leftovers.
  await undoLeftovers(target, undefined, note);
  return () => {
    // Gone already (the work dir removed under the build) is as good as released.
    let holder = '';
    try {
      holder = readFileSync(lock, 'utf8');
    } catch {}
    if (holder === mine) rmSync(lock, { force: true });
  };
}

async function undoLeftovers(work: string, pid: number | undefined, note: (line: string) => void): Promise<void> {
  const { mounts, loops } = leftovers(work);
  for (const target of mounts) await execa('umount', [target]);
  for (const device of loops) await execa('losetup', ['--detach', device]);
  if (mounts.length + loops.length > 0) {
    note(
      `--work ${work}: undid ${mounts.length} mount${mounts.length === 1 ? '' : 's'} and ${loops.length} loop device${loops.length === 1 ? '' : 's'} left by a build that was killed${pid ? ` (pid ${pid})` : ''}`,
    );
  }
}
