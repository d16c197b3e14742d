/**
 * What a filesystem of an image holds, entry by entry, for `build-image diff`: an ext4 tree walked
 * from a read-only mount, a FAT tree listed with mtools, any other partition hashed whole. Regular
 * files are hashed by streaming them: no file's content is held, only its sha256.
 */

import { isUtf8 } from 'node:buffer';
import { createHash } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { lstat, open, opendir, readlink } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { BuildContext } from '../../engine/stage.ts';
import type { Entry, EntryType } from './diff.ts';

/** A name or link target from the image: UTF-8 as it is, other bytes as \xNN. */
export function showBytes(bytes: Buffer): string {
  if (isUtf8(bytes)) return bytes.toString('utf8');
  let out = '';
  for (const b of bytes) out += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  return out;
}

/** Nanoseconds since the epoch as ISO 8601 with nine decimals. */
export function isoNs(ns: bigint): string {
  const seconds = ns / 1_000_000_000n;
  const frac = ns % 1_000_000_000n;
  const fixed = frac < 0n ? { s: seconds - 1n, f: frac + 1_000_000_000n } : { s: seconds, f: frac };
  return `${new Date(Number(fixed.s) * 1000).toISOString().slice(0, 19)}.${fixed.f.toString().padStart(9, '0')}Z`;
}

function typeOf(s: {
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
  isCharacterDevice(): boolean;
  isBlockDevice(): boolean;
  isFIFO(): boolean;
}): EntryType {
  if (s.isFile()) return 'file';
  if (s.isDirectory()) return 'dir';
  if (s.isSymbolicLink()) return 'symlink';
  if (s.isCharacterDevice()) return 'char';
  if (s.isBlockDevice()) return 'block';
  if (s.isFIFO()) return 'fifo';
  return 'socket';
}

/** One buffer every file is read through: the walk hashes one file at a time, and no read leaves garbage behind. */
const READ_BUFFER = Buffer.alloc(1024 * 1024);

async function hashFile(path: Buffer | string, signal: AbortSignal): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  // O_NOFOLLOW: the walk has seen a regular file there, and a read-only mount cannot change it.
  const file = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    for (;;) {
      signal.throwIfAborted();
      const { bytesRead } = await file.read(READ_BUFFER, 0, READ_BUFFER.length, null);
      if (bytesRead === 0) break;
      hash.update(READ_BUFFER.subarray(0, bytesRead));
      bytes += bytesRead;
    }
  } finally {
    await file.close();
  }
  return { sha256: hash.digest('hex'), bytes };
}

/**
 * Every entry under `root`, a read-only mount of an ext4 filesystem, the root itself as `/`.
 * Links are read, never followed (lstat, readlink, O_NOFOLLOW); names are read as bytes.
 */
export async function walkTree(root: string, signal: AbortSignal, status: (text: string) => void = () => {}): Promise<Entry[]> {
  const entries: Entry[] = [];
  const base = Buffer.from(root);
  const visit = async (rel: Buffer): Promise<void> => {
    signal.throwIfAborted();
    const full = Buffer.concat([base, rel]);
    const s = await lstat(full, { bigint: true });
    const type = typeOf(s);
    const entry: Entry = {
      path: rel.length ? showBytes(rel) : '/',
      type,
      mode: Number(s.mode & 0o7777n),
      uid: Number(s.uid),
      gid: Number(s.gid),
      mtime: isoNs(s.mtimeNs),
    };
    if (type === 'file') {
      const { sha256, bytes } = await hashFile(full, signal);
      Object.assign(entry, { size: bytes, sha256 });
    }
    if (type === 'symlink') entry.target = showBytes((await readlink(full, { encoding: 'buffer' })) as Buffer);
    if (type !== 'dir' && s.nlink > 1n) entry.links = Number(s.nlink);
    if (type === 'char' || type === 'block') entry.device = `${Number(s.rdev >> 8n) & 0xfff},${Number((s.rdev & 0xffn) | ((s.rdev >> 12n) & 0xfff00n))}`;
    entries.push(entry);
    if (entries.length % 1000 === 0) status(`${entries.length} entries read`);
    if (type !== 'dir') return;
    const names: Buffer[] = [];
    for await (const d of await opendir(full.length ? full : '/', { encoding: 'buffer' } as unknown as { encoding: 'utf8' })) {
      names.push(d.name as unknown as Buffer);
    }
    names.sort(Buffer.compare);
    for (const name of names) await visit(Buffer.concat([rel, Buffer.from('/'), name]));
  };
  await visit(Buffer.alloc(0));
  return entries;
}

const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: '1', LC_ALL: 'C.UTF-8' };

/**
 * One line of `mdir -/ -a`: short name, extension, size or <DIR>, date, time, and the long name
 * when there is one. Returns undefined for the lines around the entries.
 */
export function parseMdirLine(line: string): { name: string; dir: boolean; size?: number; mtime: string } | undefined {
  const m = /^(.{8}) (.{3}) +(<DIR>|\d+) +(\d{4}-\d\d-\d\d) +(\d{1,2}):(\d\d)(?: {1,2}(.*))?$/.exec(line);
  if (!m) return undefined;
  const [, short, ext, size, date, hour, minute, long] = m;
  const name = long?.length ? long : `${short!.trim()}${ext!.trim() ? `.${ext!.trim()}` : ''}`;
  if (name === '.' || name === '..') return undefined;
  return {
    name,
    dir: size === '<DIR>',
    size: size === '<DIR>' ? undefined : Number(size),
    mtime: `${date}T${hour!.padStart(2, '0')}:${minute}`,
  };
}

/** Every entry of the FAT filesystem at `offset` of `image`: mdir lists them, mcopy streams each file to its hash. */
export async function listFat(ctx: BuildContext, image: string, offset: number): Promise<Entry[]> {
  const drive = `${image}@@${offset}`;
  const { stdout } = await ctx.run('mdir', ['-/', '-a', '-i', drive, '::'], { env: MTOOLS_ENV, quietStdout: true });
  const entries: Entry[] = [{ path: '/', type: 'dir' }];
  let dir = '';
  for (const line of stdout.split('\n')) {
    const header = /^Directory for ::(\/.*)$/.exec(line);
    if (header) {
      dir = header[1] === '/' ? '' : header[1]!;
      continue;
    }
    const e = parseMdirLine(line);
    if (!e) continue;
    entries.push({ path: `${dir}/${e.name}`, type: e.dir ? 'dir' : 'file', size: e.size, mtime: e.mtime });
  }
  for (const entry of entries) {
    if (entry.type !== 'file') continue;
    ctx.signal.throwIfAborted();
    const { sha256, bytes } = await catFat(ctx, drive, entry.path, async (source) => {
      const hash = createHash('sha256');
      let n = 0;
      for await (const chunk of source) {
        hash.update(chunk);
        n += chunk.length;
      }
      return { sha256: hash.digest('hex'), bytes: n };
    });
    entry.sha256 = sha256;
    entry.size = bytes;
  }
  entries.sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0));
  return entries;
}

/** Stream one file of a FAT filesystem (`image@@offset`) to `consume`. */
async function catFat<T>(ctx: BuildContext, drive: string, path: string, consume: (source: AsyncIterable<Buffer>) => Promise<T>): Promise<T> {
  const subprocess = ctx.commands.spawn('mcopy', ['-n', '-i', drive, `::${path}`, '-'], { env: MTOOLS_ENV });
  const consumed = consume(subprocess.stdout).then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
  const result = await subprocess;
  const got = await consumed;
  if (ctx.signal.aborted) throw ctx.signal.reason;
  if (result.failed) throw new Error(`mcopy ::${path} from ${drive} failed: ${String(result.stderr).trim().split('\n').at(-1) ?? result.exitCode}`);
  if ('error' in got) throw got.error;
  return got.value;
}

/** A file of a FAT filesystem, whole (the small text files whose first differing line is shown). */
export function readFatFile(ctx: BuildContext, image: string, offset: number, path: string): Promise<Buffer> {
  return catFat(ctx, `${image}@@${offset}`, path, async (source) => {
    const chunks: Buffer[] = [];
    for await (const chunk of source) chunks.push(chunk);
    return Buffer.concat(chunks);
  });
}

/** A partition holding no filesystem diff reads: one entry, its bytes' sha256. */
export async function hashRange(image: string, offset: number, size: number, signal: AbortSignal): Promise<Entry> {
  const hash = createHash('sha256');
  if (size === 0) return { path: '(partition bytes)', type: 'file', size, sha256: hash.digest('hex') };
  await pipeline(
    createReadStream(image, { start: offset, end: offset + size - 1, highWaterMark: 1024 * 1024 }),
    async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) hash.update(chunk);
    },
    { signal },
  );
  return { path: '(partition bytes)', type: 'file', size, sha256: hash.digest('hex') };
}
