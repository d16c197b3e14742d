/**
 * A lock between processes sharing a cache (two builds, or test files run in parallel): a
 * directory made atomically, holding the owner's pid so that a lock left by a dead process is
 * taken over.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Whether a process runs with this id (one of another user's counts: it cannot be signalled). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function ownerAlive(lock: string): boolean {
  const pid = Number(existsSync(join(lock, 'pid')) ? readFileSync(join(lock, 'pid'), 'utf8') || 0 : 0);
  return !pid || processAlive(pid); // no pid yet: being created, its owner writes it next
}

export async function withLock<T>(lock: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  for (;;) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, 'pid'), String(process.pid));
      break;
    } catch {
      if (!ownerAlive(lock)) rmSync(lock, { recursive: true, force: true });
      await sleep(1000, undefined, { signal });
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/**
 * Take `lock` if no live process holds it, without waiting: true when taken (remove the directory
 * to let it go), false when another process has it.
 */
export function tryLock(lock: string): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, 'pid'), String(process.pid));
      return true;
    } catch {
      if (ownerAlive(lock)) return false;
      rmSync(lock, { recursive: true, force: true }); // left by a process that died: taken over
    }
  }
  return false;
}
