/**
 * The stage cache: snapshots of the working image taken between steps of a build, each under a key
 * that hashes everything the image depends on up to that step (the chain of the steps' own keys,
 * see chainKeys). A build whose first steps have the same keys starts from the newest snapshot
 * instead of redoing them.
 *
 * `<cache>/snapshots/<key>/` holds meta.json and whatever the pipeline saves (the image). It is
 * written as `<key>.tmp-<pid>/` and renamed into place only when complete: a build killed half way
 * leaves a .tmp directory that no build trusts and the next one removes. Least recently used
 * snapshots are removed when the cache outgrows its size limit.
 */
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { treeDigest } from './digest.ts';
import { processAlive, withLock } from './lock.ts';
import type { BuildState } from './stage.ts';
import { privateDir } from './work-dir.ts';

export interface SnapshotMeta {
  key: string;
  pipeline: string;
  /** Where in the build it was taken: "chroot: after 10-packages.sh". */
  label: string;
  /** The build state at that point (what the stages after it read). */
  state: BuildState;
  /** Bytes of each saved file, checked before a snapshot is trusted. */
  files: Record<string, number>;
  created: string;
}

export interface SnapshotEntry {
  dir: string;
  meta: SnapshotMeta;
  /** Bytes the snapshot takes on disk (its files are sparse). */
  diskBytes: number;
  lastUsed: Date;
}

/** One step of a build that the cache can resume after. */
export interface Checkpoint {
  stage: string;
  /** Index of the step within its stage (the chroot stage has one per script). */
  step: number;
  label: string;
  key: string;
}

const sha256 = (...parts: string[]) => {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(`${part.length}:${part}`);
  return hash.digest('hex');
};

/** Each checkpoint's key hashes the key before it with its own: a change invalidates every later step. */
export function chainKeys(root: string, steps: ReadonlyArray<Omit<Checkpoint, 'key'> & { input: string }>): Checkpoint[] {
  let key = sha256('build-image stage cache', root);
  return steps.map(({ input, ...step }) => {
    key = sha256(key, step.stage, String(step.step), input);
    return { ...step, key };
  });
}

/**
 * The toolkit's version for the cache: package.json's, and a digest of the code that makes an
 * image (every folder but the CLI's), so that a changed stage never reuses what the old one made.
 */
const CODE_FOLDERS = ['engine', 'lib', 'settings', 'stages', 'pipelines'];

export async function toolkitVersion(): Promise<string> {
  const root = new URL('../', import.meta.url).pathname;
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  const digests = await Promise.all(CODE_FOLDERS.map((folder) => treeDigest(join(root, folder))));
  return `${version} ${digests.join(' ')}`;
}

const KEY = /^[0-9a-f]{64}$/;
const META = 'meta.json';

/** Allocated bytes of every file under `dir` (du), without following links. */
function diskUsage(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += statSync(join(entry.parentPath, entry.name)).blocks * 512;
  }
  return total;
}

export class StageCache {
  readonly dir: string;
  constructor(dir: string) {
    this.dir = dir;
  }

  #read(key: string): SnapshotEntry | undefined {
    const dir = join(this.dir, key);
    try {
      const meta = JSON.parse(readFileSync(join(dir, META), 'utf8')) as SnapshotMeta;
      if (meta.key !== key) return undefined;
      for (const [file, bytes] of Object.entries(meta.files)) if (statSync(join(dir, file)).size !== bytes) return undefined;
      return { dir, meta, diskBytes: diskUsage(dir), lastUsed: statSync(join(dir, META)).mtime };
    } catch {
      return undefined; // missing, half-written or damaged: not a snapshot
    }
  }

  /** Restoring and pruning take turns between builds sharing the cache: none removes what another copies. */
  locked<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    privateDir(this.dir);
    return withLock(join(this.dir, '.lock'), fn, signal);
  }

  /** The snapshot of the latest checkpoint that has one, and its index. */
  latest(checkpoints: readonly Checkpoint[]): { index: number; entry: SnapshotEntry } | undefined {
    for (let i = checkpoints.length - 1; i >= 0; i--) {
      const entry = this.#read(checkpoints[i]!.key);
      if (entry) return { index: i, entry };
    }
    return undefined;
  }

  /** Mark a snapshot as used now (least recently used ones go first). */
  touch(entry: SnapshotEntry): void {
    const now = new Date();
    utimesSync(join(entry.dir, META), now, now);
  }

  /**
   * Write a snapshot: `fill` saves its files into a temporary directory and returns their names;
   * meta.json is written last and the directory renamed into place. On any error nothing is left.
   */
  async save(meta: Omit<SnapshotMeta, 'files' | 'created'>, fill: (dir: string) => Promise<string[]>): Promise<SnapshotEntry> {
    privateDir(this.dir);
    const tmp = join(this.dir, `${meta.key}.tmp-${process.pid}`);
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { mode: 0o700 });
    try {
      const names = await fill(tmp);
      // A snapshot is a copy of the image, secrets and all: its owner's alone.
      for (const name of names) chmodSync(join(tmp, name), 0o600);
      const files = Object.fromEntries(names.map((name) => [name, statSync(join(tmp, name)).size]));
      writeFileSync(join(tmp, META), `${JSON.stringify({ ...meta, files, created: new Date().toISOString() }, null, 2)}\n`);
      const dir = join(this.dir, meta.key);
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
      return this.#read(meta.key)!;
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }

  /** Every valid snapshot, most recently used first. */
  list(): SnapshotEntry[] {
    if (!existsSync(this.dir)) return [];
    return readdirSync(this.dir)
      .filter((name) => KEY.test(name))
      .flatMap((key) => this.#read(key) ?? [])
      .sort((a, b) => b.lastUsed.getTime() - a.lastUsed.getTime());
  }

  /**
   * Remove what no build can use (directories of builds that died while writing, damaged
   * snapshots), then the least recently used snapshots until the rest fit in `maxBytes`; `keep`
   * is never removed. Returns what was removed.
   */
  prune(maxBytes: number, keep?: string): SnapshotEntry[] {
    if (!existsSync(this.dir)) return [];
    for (const name of readdirSync(this.dir)) {
      const tmp = /\.tmp-(\d+)$/.exec(name);
      if (tmp ? !processAlive(Number(tmp[1])) : KEY.test(name) && !this.#read(name)) rmSync(join(this.dir, name), { recursive: true, force: true });
    }
    const entries = this.list();
    let total = entries.reduce((sum, e) => sum + e.diskBytes, 0);
    const removed: SnapshotEntry[] = [];
    for (const entry of entries.reverse()) {
      if (total <= maxBytes) break;
      if (entry.meta.key === keep) continue;
      rmSync(entry.dir, { recursive: true, force: true });
      removed.push(entry);
      total -= entry.diskBytes;
    }
    return removed;
  }
}
