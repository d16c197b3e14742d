/**
 * extract: turn the verified download into `<work>/image.img`, a sparse raw image. The format is
 * found by magic bytes (xz, gzip, zstd, zip, else a raw disk image with a boot signature; a
 * compressed tar of one .img by its name);
 * decompressors stream into a writer that skips zero blocks. The download itself is only read.
 * The image is written as `image.img.part` and renamed when complete and verified, so a failed or
 * interrupted run never leaves a partial `image.img`.
 */
import { createHash } from 'node:crypto';
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { crc32 } from 'node:zlib';
import { extract } from 'tar-stream';
import yauzl from 'yauzl';
import { errnoReason, UserError } from '../../engine/errors.ts';
import { Progress } from '../../engine/progress.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { copyChunks, fileReader, handOver } from '../image/chunks.ts';
import { SparseWriter } from '../image/sparse-writer.ts';
import type { Download } from '../image/state.ts';
import { type Downloading, fileNameOf } from '../sources/fetch.ts';

export type Format = 'xz' | 'gzip' | 'zstd' | 'zip' | 'raw';

const DECOMPRESSORS = {
  xz: { tool: 'xz', args: ['-dc', '-T0'] },
  gzip: { tool: 'pigz', args: ['-dc'] },
  zstd: { tool: 'zstd', args: ['-dc'] },
} as const;

const startsWith = (head: Buffer, bytes: readonly number[]) => bytes.every((b, i) => head[i] === b);
const hasBootSignature = (head: Buffer) => head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa;

/** The format of a file from its first bytes; undefined when it is none the pipeline reads. */
export function detectFormat(head: Buffer): Format | undefined {
  if (startsWith(head, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) return 'xz';
  if (startsWith(head, [0x1f, 0x8b])) return 'gzip';
  if (startsWith(head, [0x28, 0xb5, 0x2f, 0xfd])) return 'zstd';
  if (startsWith(head, [0x50, 0x4b, 0x03, 0x04]) || startsWith(head, [0x50, 0x4b, 0x05, 0x06])) return 'zip';
  if (hasBootSignature(head)) return 'raw';
  return undefined;
}

/** What a refused file looks like, for the error. */
function looksLike(head: Buffer): string {
  if (startsWith(head, [0x42, 0x5a, 0x68])) return ' (it is bzip2)';
  if (startsWith(head, [0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c])) return ' (it is 7-Zip)';
  if (head.length >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar') return ' (it is a tar archive: extract the .img from it)';
  if (head.length < 512) return ` (it is only ${head.length} bytes long)`;
  return '';
}

async function readHead(path: string): Promise<Buffer> {
  const file = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(512);
    const { bytesRead } = await file.read(buffer, 0, 512, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

/** The last meaningful stderr line of a decompressor, without its name and the file's path. */
export function toolReason(stderr: string, tool: string, input: string): string {
  const lines = stderr
    .split(/[\r\n]/)
    .map((l) => l.trim())
    .filter(Boolean);
  const line = lines.at(-1) ?? '';
  return line
    .replaceAll(input, '')
    .replace(/^\S+ : /, '') // zstd: "<end of the file name> : <message>"
    .replace(new RegExp(`^${tool}:\\s*`), '')
    .replace(/^skipping:\s*/, '')
    .replace(/^[\s:]+/, '')
    .replace(/\s*:\s*:\s*/g, ': ')
    .replace(/\s+:\s*/g, ': ')
    .trim();
}

class Corrupt extends Error {}

/** Where decoded image bytes go: a sparse file (extract) or a block device (flash). */
export interface ImageWriter extends Writable {
  /** Set when writing failed (as opposed to the data not arriving). */
  failure: Error | undefined;
}

interface Sink {
  writer: ImageWriter;
  /** Reported for errors: the archive as the user knows it. */
  name: string;
}

/** Decompress with an external tool, its stdout streamed into the writer; its input the file or `stream`. */
async function decompress(ctx: BuildContext, format: keyof typeof DECOMPRESSORS, input: string, sink: Sink, stream?: AsyncIterable<Buffer>): Promise<void> {
  const { tool, args } = DECOMPRESSORS[format];
  const subprocess = ctx.commands.spawn(tool, stream ? [...args] : [...args, input], { stdin: stream ? 'pipe' : 'ignore' });
  // A tool that stops reading (corrupt input) closes its stdin: its exit code tells why, not EPIPE.
  const fed = stream ? pipeline(stream, subprocess.stdin!, { signal: ctx.signal }).catch((error: unknown) => error) : undefined;
  const copy = TARRED.test(input) ? untar(subprocess.stdout, sink, ctx.signal) : pipeline(subprocess.stdout, sink.writer, { signal: ctx.signal });
  const copied = copy.then(
    () => undefined,
    (error: unknown) => error,
  );
  const result = await subprocess;
  const copyError = await copied;
  const feedError = await fed;
  if (ctx.signal.aborted) throw ctx.signal.reason;
  if (feedError instanceof UserError) throw feedError; // the download failed
  if (sink.writer.failure) throw sink.writer.failure;
  if (copyError instanceof UserError) throw copyError;
  if (result.failed) {
    if (result.code === 'ENOENT' || /ENOENT/.test(String(result.cause ?? ''))) {
      throw new UserError(`${tool} is not installed, and it is needed to decompress ${sink.name}: install it (run \`build-image doctor\`)`);
    }
    const why =
      toolReason(typeof result.stderr === 'string' ? result.stderr : '', tool, input) ||
      (result.exitCode !== undefined ? `exit code ${result.exitCode}` : `killed by ${result.signal}`);
    throw new Corrupt(`${tool}: ${why}`);
  }
  if (copyError) throw copyError;
}

/** A compressed tar (`.img.tar.gz`, as PiSeduce stores environments): its one .img is the image. */
const TARRED = /\.(tar\.(gz|xz|zst)|tgz)$/i;

async function untar(source: Readable, sink: Sink, signal: AbortSignal): Promise<void> {
  const tar = extract();
  const fed = pipeline(source, tar, { signal });
  fed.catch(() => {}); // its error is the loop's below
  const images: string[] = [];
  try {
    for await (const entry of tar) {
      // tar-stream gives GNU sparse entries (tar --sparse) no type: it cannot expand them.
      if (entry.header.type !== 'file' && /\.img$/i.test(entry.header.name)) {
        throw new UserError(
          `${sink.name}: ${entry.header.name} is ${entry.header.type ? `a ${entry.header.type}` : 'stored sparse (tar --sparse)'}, not a plain file: make the tar of the .img itself, without --sparse`,
        );
      }
      if (entry.header.type !== 'file' || !/\.img$/i.test(entry.header.name)) {
        entry.resume();
        continue;
      }
      images.push(entry.header.name);
      if (images.length > 1) throw new UserError(`${sink.name} holds more than one .img file (${images.join(', ')}): give a tar with exactly one disk image`);
      await pipeline(entry, sink.writer, { signal });
    }
  } catch (error) {
    if (error instanceof UserError || sink.writer.failure) throw error;
    throw new Corrupt(`tar: ${(error as Error).message}`);
  }
  await fed;
  if (images.length === 0) throw new UserError(`${sink.name} holds no .img file: give a tar with exactly one disk image`);
}

const SIZE_LIE = /^(too many bytes in the stream|not enough bytes in the stream)/;
const UNSAFE_NAME = /^(absolute path|invalid relative path|invalid characters in fileName): (.*)$/;

const STORED_SIZE_LIE = /^compressed\/uncompressed size mismatch for stored file/;

/** yauzl's error for a stored entry whose two sizes disagree does not name it: find it. */
async function storedLiar(input: string): Promise<string> {
  const zip = await yauzl.openPromise(input, { lazyEntries: true, validateEntrySizes: false, decodeStrings: true, autoClose: false });
  try {
    for await (const entry of zip.eachEntry()) {
      const expected = entry.uncompressedSize + (entry.isEncrypted() ? 12 : 0);
      if (entry.compressionMethod === 0 && entry.compressedSize !== expected) return entry.fileName;
    }
  } catch {
    // Unreadable past this point: the entry stays unnamed.
  } finally {
    zip.close();
  }
  return '(unnamed)';
}

/** Copy the one `.img` of a zip archive, checking its names, its sizes and its CRC. */
async function unzip(ctx: BuildContext, input: string, sink: Sink, observe: { crc: number }): Promise<void> {
  let zip: yauzl.ZipFile;
  try {
    zip = await yauzl.openPromise(input, { lazyEntries: true, validateEntrySizes: true, autoClose: false });
  } catch (error) {
    throw new Corrupt(`zip: ${(error as Error).message}`);
  }
  try {
    const entries: yauzl.Entry[] = [];
    try {
      for await (const entry of zip.eachEntry()) entries.push(entry);
    } catch (error) {
      const message = (error as Error).message;
      const unsafe = UNSAFE_NAME.exec(message);
      if (unsafe) throw new UserError(`${sink.name} holds an entry with an unsafe path (${unsafe[2]}): refusing to use it`);
      if (STORED_SIZE_LIE.test(message)) throw new Corrupt(`entry ${await storedLiar(input)} is not the size the archive says (${message})`);
      throw new Corrupt(`zip: ${message}`);
    }
    for (const entry of entries) {
      // yauzl refuses these already; this keeps the rule in plain sight.
      if (entry.fileName.startsWith('/') || entry.fileName.split('/').includes('..')) {
        throw new UserError(`${sink.name} holds an entry with an unsafe path (${entry.fileName}): refusing to use it`);
      }
    }
    const files = entries.filter((e) => !e.fileName.endsWith('/') && !e.fileName.startsWith('__MACOSX/'));
    const images = files.filter((e) => /\.img$/i.test(e.fileName));
    if (images.length === 0) {
      const names = files.map((e) => e.fileName);
      const shown = names.length ? `it holds ${names.slice(0, 5).join(', ')}${names.length > 5 ? `, and ${names.length - 5} more` : ''}` : 'it is empty';
      throw new UserError(`${sink.name} holds no .img file (${shown}): give a zip with exactly one disk image`);
    }
    if (images.length > 1) {
      throw new UserError(
        `${sink.name} holds ${images.length} .img files (${images.map((e) => e.fileName).join(', ')}): give a zip with exactly one disk image`,
      );
    }
    const entry = images[0]!;
    if (entry.isEncrypted()) throw new UserError(`${sink.name}: ${entry.fileName} is encrypted: decrypt it first`);
    if (!entry.canDecodeFileData())
      throw new UserError(
        `${sink.name}: ${entry.fileName} uses zip compression method ${entry.compressionMethod}, which is not supported: give an .img, .img.xz or a deflate zip`,
      );
    ctx.log.line(`${sink.name}: extracting ${entry.fileName} (${entry.uncompressedSize} bytes)`);
    let stream: Readable;
    try {
      stream = await zip.openReadStreamPromise(entry);
    } catch (error) {
      throw new Corrupt(`zip: ${entry.fileName}: ${(error as Error).message}`);
    }
    try {
      await pipeline(stream, sink.writer, { signal: ctx.signal });
    } catch (error) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      if (sink.writer.failure) throw sink.writer.failure;
      const message = (error as Error).message;
      if (SIZE_LIE.test(message)) throw new Corrupt(`entry ${entry.fileName} is not the size the archive says (${message})`);
      throw new Corrupt(`zip: ${entry.fileName}: ${message}`);
    }
    if (observe.crc >>> 0 !== entry.crc32 >>> 0) {
      throw new Corrupt(`entry ${entry.fileName} fails its CRC-32 check`);
    }
  } finally {
    zip.close();
  }
}

function describeDownload(download: Download, cache: string): { name: string; again: string } {
  const name = basename(download.path);
  const rel = relative(cache, download.path);
  const inCache = !rel.startsWith('..') && !rel.startsWith('/');
  return { name, again: inCache ? `download it again (remove ${dirname(download.path)} first)` : 'download it again' };
}

/** The format of an image file, or a one-line error saying what the file is instead. */
export async function imageFormat(input: string, name: string, flag: string): Promise<Format> {
  return formatOf(await readHead(input), name, flag);
}

function formatOf(head: Buffer, name: string, flag: string): Format {
  const format = detectFormat(head);
  if (!format) {
    throw new UserError(
      `${name} is neither a disk image (no MBR/GPT boot signature 0x55AA at byte 510) nor an xz, gzip, zstd or zip archive${looksLike(head)}: check ${flag}`,
    );
  }
  return format;
}

/** A raw image file into `writer`, through reused buffers. */
async function copyRaw(ctx: BuildContext, input: string, writer: Writable): Promise<void> {
  const file = await open(input, 'r');
  const done = finished(writer); // listens for the writer's error from the start
  done.catch(() => {}); // a failed write rejects handOver too, which is what is thrown
  try {
    await copyChunks(fileReader(file), (chunk) => handOver(writer, chunk, ctx.signal));
    writer.end();
    await done;
  } catch (error) {
    writer.destroy();
    throw error;
  } finally {
    await file.close();
  }
}

/**
 * Stream the raw disk image inside `input` into `writer`, which must keep `zipCrc.crc` up to date
 * (crc32 of every chunk) when the format is zip. Failures are one-line errors: `name` is the input
 * as the user knows it, `again` what to do about a corrupt one, `target` what is written.
 */
export async function decodeImage(
  ctx: BuildContext,
  input: string,
  format: Format,
  writer: ImageWriter,
  zipCrc: { crc: number },
  names: { name: string; again: string; target: string },
  stream?: AsyncIterable<Buffer>,
): Promise<void> {
  const sink = { writer, name: names.name };
  try {
    if (format === 'raw') await (stream ? pipeline(stream, writer, { signal: ctx.signal }) : copyRaw(ctx, input, writer));
    else if (format === 'zip') await unzip(ctx, input, sink, zipCrc);
    else await decompress(ctx, format, input, sink, stream);
  } catch (error) {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    if (error instanceof Corrupt) throw new UserError(`${names.name} is truncated or corrupt (${error.message}): ${names.again}`);
    if (error === writer.failure) {
      const fix = (error as NodeJS.ErrnoException).code === 'ENOSPC' ? ': free some space, or pass --work on a larger disk' : '';
      throw new UserError(`cannot write ${names.target}: ${errnoReason(error)}${fix}`);
    }
    throw error;
  }
}

/**
 * Decompress a verified download into a raw, sparse image at `image` (written as `image.part`,
 * renamed when complete and verified). `what` names it in errors ("base image", "environment x").
 */
export async function extractImage(
  ctx: BuildContext,
  download: Download,
  image: string,
  what = 'base image',
  flag = '--base',
  downloading?: Downloading,
): Promise<Download> {
  const input = download.path;
  const info = downloading ? undefined : await stat(input).catch(() => undefined);
  if (!downloading && !info?.isFile()) throw new UserError(`${what} ${input} is gone: run the fetch stage again (drop --from extract)`);
  const { name: fileName, again } = describeDownload(
    { ...download, path: downloading && download.url ? join(dirname(input), fileNameOf(download.url)) : input },
    ctx.paths.cache,
  );
  const name = `${what} ${fileName}`;
  let format: Format;
  if (downloading) {
    await downloading.growing.holds(512, ctx.signal);
    const head = await downloading.growing.head(512);
    if (head.length < 512) await downloading.done; // a download that failed says why itself
    format = formatOf(head, name, flag);
    if (format === 'zip') {
      // Read from its end: only once it is all here.
      download = await downloading.done;
      downloading = undefined;
    }
  } else {
    format = await imageFormat(input, name, flag);
  }

  const part = `${image}.part`;
  await rm(image, { force: true });
  ctx.defer('remove the partial image', async (outcome) => {
    if (outcome !== 'success') await rm(part, { force: true });
  });

  const hash = download.extractSha256 ? createHash('sha256') : undefined;
  const zipCrc = { crc: 0 };
  const progress = new Progress(ctx.status, 'extract', download.extractSize ?? (format === 'raw' ? info?.size : undefined));
  // The working image will hold the build's secrets: its owner's alone (0600), whatever was there before.
  const file = await open(part, 'w', 0o600);
  await file.chmod(0o600);
  const writer = new SparseWriter(file, (chunk) => {
    hash?.update(chunk);
    if (format === 'zip') zipCrc.crc = crc32(chunk, zipCrc.crc);
    progress.add(chunk.length);
  });
  try {
    await decodeImage(ctx, download.path, format, writer, zipCrc, { name, again, target: part }, downloading?.growing.read(ctx.signal));
    // Nothing extracted from a download counts before the download is verified.
    if (downloading) download = await downloading.done;
  } catch (error) {
    await rm(part, { force: true });
    throw error;
  } finally {
    await file.close();
  }

  const fail = async (message: string) => {
    await rm(part, { force: true });
    return new UserError(message);
  };
  if (!hasBootSignature(writer.head)) {
    throw await fail(`${name} holds ${writer.bytes} bytes that are not a disk image (no MBR/GPT boot signature 0x55AA at byte 510): check ${flag}`);
  }
  if (hash) {
    const got = hash.digest('hex');
    if (got !== download.extractSha256) {
      throw await fail(
        `the image in ${fileName} failed verification: expected sha256 ${download.extractSha256} (extract_sha256 of the OS list), got ${got}: ${again}`,
      );
    }
  } else if (download.extractSize !== undefined && writer.bytes !== download.extractSize) {
    throw await fail(`the image in ${fileName} is ${writer.bytes} bytes, the OS list says ${download.extractSize}: ${again}`);
  }
  await rename(part, image);
  ctx.log.line(
    `${image}: ${writer.bytes} bytes from ${name} (${format}${downloading ? ', extracted while it downloaded' : ''}), ${writer.written} written, the rest left as holes${hash ? ', sha256 matches the OS list' : ''}`,
  );
  return download;
}
