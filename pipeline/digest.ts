/** Hashes of files and trees, streamed: memory stays flat whatever their size. */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, existsSync, lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { Progress } from './progress.ts';

/**
 * Feed a file to a hash; progress through `progress` if given. Read in fs streams' 64 KiB chunks:
 * buffers that small die young (see READ_CHUNK in stages/image/sparse-writer.ts).
 */
export async function hashInto(path: string, hash: Hash, signal?: AbortSignal, progress?: Progress): Promise<void> {
  const input = createReadStream(path);
  for await (const chunk of input.iterator({ destroyOnReturn: true })) {
    signal?.throwIfAborted();
    hash.update(chunk as Buffer);
    progress?.add((chunk as Buffer).length);
  }
}

/**
 * A hash of a file or a directory tree: relative paths, types, exec bits, link targets and
 * contents (streamed: an overlay may hold large files). `skip` leaves out paths (relative) and
 * everything under them. A missing path hashes as such.
 */
export async function treeDigest(path: string, skip: (rel: string) => boolean = () => false): Promise<string> {
  const hash = createHash('sha256');
  const visit = async (file: string): Promise<void> => {
    const rel = relative(path, file);
    if (rel && skip(rel)) return;
    const stat = lstatSync(file);
    if (stat.isDirectory()) {
      hash.update(`d ${rel}\n`);
      for (const name of readdirSync(file).sort()) await visit(join(file, name));
    } else if (stat.isSymbolicLink()) {
      hash.update(`l ${rel} ${readlinkSync(file)}\n`);
    } else {
      hash.update(`f ${rel} ${stat.mode & 0o111 ? 'x' : '-'} ${stat.size}\n`);
      await hashInto(file, hash);
    }
  };
  if (existsSync(path)) await visit(path);
  else hash.update('missing');
  return hash.digest('hex');
}
