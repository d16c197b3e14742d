/**
 * compress: the finished outputs in `<out>`. The working image is read once; every chunk goes to
 * the sha256 of the raw image and, in parallel, to every requested format (xz, zstd, gzip, zip,
 * tar.gz through their tools, or the sparse `.img` itself). Each output is hashed as it is
 * written, so its `.sha256` sidecar needs no second read. Backpressure from the slowest format
 * paces the read, so memory stays flat whatever the size of the image.
 *
 * Everything is written as `<file>.partial` and renamed only once every output, the `.bmap` and
 * the manifest are complete: a failed or interrupted run leaves no partial output, and an earlier
 * build's outputs of the same name stay whole until the new set replaces them.
 */
import { createHash } from 'node:crypto';
import { type EventEmitter, once } from 'node:events';
import { constants, mkdirSync, openSync, rmSync, type Stats, statSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { Socket } from 'node:net';
import { basename, join } from 'node:path';
import { Transform } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { pack } from 'tar-stream';
import { CommandError, errnoReason, UserError } from '../../engine/errors.ts';
import { commandLine } from '../../engine/exec.ts';
import { Progress } from '../../engine/progress.ts';
import type { BuildContext } from '../../engine/stage.ts';
import type { BuildConfig, Compression } from '../build-options.ts';
import { copyChunks, fileReader, handOver } from '../image/chunks.ts';
import { SparseWriter } from '../image/sparse-writer.ts';
import type { Output } from '../image/state.ts';

/**
 * zstd level 9: on root-filesystem data it is the knee of the curve. Measured on 300 MB of /usr
 * with 2 cores: -3 is 14% larger than -9, -12 is 2% smaller at 2.5x the time, -19 is 11% smaller at
 * 22x the time (slower than xz -6, which is smaller still). So xz stays the format for the smallest
 * download, and zstd is the fast one: faster than pigz, 13% smaller than gzip, and several times
 * faster than xz to decompress. --long=27 (a 128 MiB window) finds repeats further apart in a disk
 * image for a few percent more, and is still what every zstd decoder accepts by default (a larger
 * window would need `zstd -d --long` on the reading side). --stream-size puts the image size in
 * the frame header, for tools that show progress or preallocate.
 */
const ZSTD_LEVEL = 9;

/**
 * xz -6 compresses in independent blocks, one per thread at a time, by default 3 times its 8 MiB
 * dictionary: each block starts with an empty dictionary. 64 MiB blocks made the 1.39 GiB arm64
 * pimaster 1.0% smaller (245.7 MB against 248.1 MB) for 15% more time on 2 cores, and still give
 * 20 blocks to spread over the threads; decompression needs no more memory (the dictionary is the
 * same). xz lowers its thread count when the blocks would not fit its memory limit.
 */
const XZ_BLOCK = '64MiB';

interface FormatSpec {
  /** What follows `<name>.` in the file name. */
  ext: string;
  /** The compressor reading the image (or a tar of it) on stdin and writing to stdout. */
  command?: (name: string, size: number) => [string, string[]];
  tar?: boolean;
}

export const FORMATS: Record<Compression, FormatSpec> = {
  xz: { ext: 'img.xz', command: () => ['xz', ['-T0', '-6', `--block-size=${XZ_BLOCK}`, '-c']] },
  zstd: { ext: 'img.zst', command: (_, size) => ['zstd', ['-T0', `-${ZSTD_LEVEL}`, '--long=27', `--stream-size=${size}`, '-q', '-c']] },
  // -n: no name and no time in the gzip header (stdin's would be now): the same image, the same bytes.
  gz: { ext: 'img.gz', command: () => ['pigz', ['-n', '-c']] },
  // pigz writes a single-entry PKZip archive (Zip64 past 4 GiB), the entry named by --alias. Its
  // DOS header holds the time of the run whatever the options (-m too): zip is not reproducible.
  zip: { ext: 'zip', command: (name) => ['pigz', ['--zip', '--alias', `${name}.img`, '-c']] },
  // <name>.img.tar.gz: a tar of the one <name>.img, as PiSeduce stores deployable environments.
  'tar.gz': { ext: 'img.tar.gz', command: () => ['pigz', ['-n', '-c']], tar: true },
  none: { ext: 'img' },
};

/** `<pipeline>-<release>-<arch>`, lower case, in the characters --name accepts. */
export function defaultName(pipeline: string, codename: string | undefined, arch: string): string {
  const name = `${pipeline}-${codename || 'image'}-${arch}`
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[^a-z0-9]+/, '')
    .replace(/-+$/, '');
  return name || 'image';
}

export function outputName(ctx: BuildContext<BuildConfig>): string {
  return ctx.config.name ?? defaultName(ctx.pipeline, ctx.state.system?.codename, ctx.config.arch);
}

/** `HEX  file`, as sha256sum writes it and `sha256sum -c` reads it. */
export function sha256Line(sha256: string, file: string): string {
  return `${sha256}  ${basename(file)}\n`;
}

interface Written {
  size: number;
  /** Undefined for the `.img` itself: it is the image's own hash, known at the end of the read. */
  sha256?: string;
}

/** One output being written. */
interface Sink {
  readonly format: Compression;
  readonly file: string;
  /** Take one chunk of the image; resolves once the sink is done with its buffer. */
  write(chunk: Buffer, signal: AbortSignal): Promise<void>;
  /** No more data (the whole image, or what came before a failure). */
  end(): void;
  readonly done: Promise<Written>;
}

interface Input {
  write(chunk: Buffer): boolean;
  end(): unknown;
}

/** Write and, when the stream asks for it, wait for it to drain (or for the build to stop). */
async function push(stream: Input, chunk: Buffer, signal: AbortSignal): Promise<void> {
  if (!stream.write(chunk)) await once(stream as unknown as EventEmitter, 'drain', { signal });
}

async function openPartial(path: string): Promise<FileHandle> {
  try {
    // Every copy of the image is 0600: the tool cannot tell whether an overlay, a script or a
    // setting put a secret in it. Publishing one is a chmod away.
    const handle = await open(path, 'w', 0o600);
    await handle.chmod(0o600);
    return handle;
  } catch (error) {
    throw new UserError(`compress: cannot write ${path}: ${errnoReason(error)}`);
  }
}

/** The shell runs the tool with the FIFO as its stdin: it, not this process, waits for the open. */
const FROM_FIFO = 'f=$1; shift; exec "$@" <"$f"';

/**
 * The image fed to a compressor (directly, or as the one file of a tar) through a FIFO, the
 * compressor's stdout hashed on its way to the file. This process holds the FIFO read-write and
 * non-blocking, so opening it never waits, and writes go through the event loop with backpressure.
 */
async function commandSink(
  ctx: BuildContext,
  format: Compression,
  file: string,
  fifo: string,
  name: string,
  image: { size: number; mtime: Date },
  fail: (error: unknown) => void,
): Promise<Sink> {
  const [command, args] = FORMATS[format].command!(name, image.size);
  const partial = `${file}.partial`;
  const handle = await openPartial(partial);
  const socket = new Socket({ fd: openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK), readable: false, writable: true });
  socket.on('error', () => {}); // the compressor's exit tells what went wrong
  let input: Input = socket;
  const tar = FORMATS[format].tar ? pack() : undefined;
  if (tar) {
    const entry = tar.entry({ name: `${name}.img`, size: image.size, mode: 0o600, mtime: image.mtime, type: 'file' }, (error) => {
      if (error) tar.destroy(error);
      else tar.finalize();
    });
    entry.on('error', () => {});
    pipeline(tar, socket).catch(() => socket.destroy());
    input = entry as unknown as Input; // a streamx Writable: write(), end(), "drain"
  }

  const subprocess = ctx.commands.spawn('sh', ['-c', FROM_FIFO, 'sh', fifo, command, ...args]);
  const hash = createHash('sha256');
  let size = 0;
  let writeFailure: UserError | undefined;
  const output = handle.createWriteStream(); // closes the file when done, or failed
  output.on('error', (error) => {
    writeFailure ??= new UserError(`compress: cannot write ${partial}: ${errnoReason(error)}`);
    fail(writeFailure);
  });
  const count = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });
  const copied = pipeline(subprocess.stdout, count, output).then(
    () => undefined,
    (error: unknown) => error,
  );
  let ended = false;
  const done = (async (): Promise<Written> => {
    const result = await subprocess;
    const copyError = await copied;
    socket.destroy();
    await handle.close().catch(() => {}); // closed already, unless the copy never started
    if (ctx.signal.aborted) throw ctx.signal.reason;
    if (writeFailure) throw writeFailure;
    if (result.failed) {
      if (result.exitCode === 127) throw new UserError(`compress: ${command} is not installed, and the ${format} output needs it: run \`build-image doctor\``);
      const stderr = typeof result.stderr === 'string' ? result.stderr : '';
      throw new CommandError({
        stage: 'compress',
        command: commandLine(command, args),
        exitCode: result.exitCode,
        signal: result.signal,
        tail: stderr
          .split('\n')
          .filter((l) => l.trim() !== '')
          .slice(-15),
        logFile: ctx.log.file,
      });
    }
    if (copyError) throw copyError;
    if (!ended) throw new UserError(`compress: \`${command}\` ended before it had read the whole image`);
    return { size, sha256: hash.digest('hex') };
  })();
  done.catch(fail);
  return {
    format,
    file,
    // The tar stream keeps what it is given until it is read: a copy, then, of the reused buffer.
    write: (chunk, signal) => (tar ? push(input, Buffer.from(chunk), signal) : handOver(socket, chunk, signal)),
    end: () => {
      ended = true;
      input.end();
    },
    done,
  };
}

/** The `.img` itself, its zero blocks left as holes. */
async function rawSink(file: string, fail: (error: unknown) => void): Promise<Sink> {
  const handle = await openPartial(`${file}.partial`);
  const writer = new SparseWriter(handle);
  const failure = (error: unknown) => new UserError(`compress: cannot write ${file}.partial: ${errnoReason(writer.failure ?? error)}`);
  writer.on('error', (error) => fail(failure(error)));
  const done = (async (): Promise<Written> => {
    try {
      await finished(writer);
    } catch (error) {
      throw failure(error);
    } finally {
      await handle.close().catch(() => {});
    }
    return { size: writer.bytes };
  })();
  done.catch(fail);
  return { format: 'none', file, write: (chunk, signal) => handOver(writer, chunk, signal), end: () => writer.end(), done };
}

/**
 * Write `formats` of `image` from one read into `<dir>/<name>.<ext>` through `partial(file)` (the
 * name each is first written under). Returns each output with its size and sha256, and the raw
 * image's sha256. The caller renames the partial files once all it writes is complete.
 */
export async function encodeImage(
  ctx: BuildContext,
  image: string,
  formats: readonly Compression[],
  path: (ext: string) => string,
  name: string,
  partial: (file: string) => string,
): Promise<{ outputs: Output[]; imageSha256: string; size: number }> {
  let info: Stats;
  try {
    info = statSync(image);
  } catch (error) {
    throw new UserError(`compress: cannot read the working image ${image}: ${errnoReason(error)}: run the pipeline from its start`);
  }
  const size = info.size;
  // The tar entry's time: the build's one time, not when the working image was last written; 1970
  // before attach has decided it (an environment the files stage packs), a time no run changes.
  const mtime = new Date((ctx.state.sourceDateEpoch ?? 0) * 1000);
  for (const format of formats) partial(path(FORMATS[format].ext));
  const piped = formats.filter((f) => f !== 'none');
  // In the work directory, not /tmp: what a build killed outright leaves, the next one replaces.
  const fifos = join(ctx.paths.work, 'compress-fifos');
  rmSync(fifos, { recursive: true, force: true });
  mkdirSync(fifos);
  ctx.defer(`remove ${fifos}`, () => rmSync(fifos, { recursive: true, force: true }));
  const fifo = (format: Compression) => join(fifos, `${format}.fifo`);
  if (piped.length) await ctx.run('mkfifo', piped.map(fifo));

  // The first failure stops everything, and it is the one reported.
  const stop = new AbortController();
  const fail = (error: unknown) => stop.abort(error);
  const opened = await Promise.allSettled(
    formats.map((format) => {
      const file = path(FORMATS[format].ext);
      return format === 'none' ? rawSink(file, fail) : commandSink(ctx, format, file, fifo(format), name, { size, mtime }, fail);
    }),
  );
  const notOpened = opened.find((r) => r.status === 'rejected');
  if (notOpened) {
    for (const r of opened) if (r.status === 'fulfilled') r.value.end();
    await Promise.allSettled(opened.map((r) => (r.status === 'fulfilled' ? r.value.done : undefined)));
    throw notOpened.reason;
  }
  const sinks = opened.map((r) => (r as PromiseFulfilledResult<Sink>).value);
  const signal = AbortSignal.any([ctx.signal, stop.signal]);

  ctx.log.line(`${image}: ${size} bytes -> ${formats.length ? formats.join(', ') : 'no copy'} as ${path('*')}`);
  const hash = createHash('sha256');
  const progress = new Progress(ctx.status, 'compress', size);
  let readError: unknown;
  let file: FileHandle | undefined;
  try {
    file = await open(image, 'r');
    await copyChunks(fileReader(file, size), async (chunk) => {
      hash.update(chunk);
      await Promise.all(sinks.map((s) => s.write(chunk, signal)));
      progress.add(chunk.length);
    });
  } catch (error) {
    readError = error;
  } finally {
    await file?.close();
  }
  for (const s of sinks) s.end();
  await Promise.allSettled(sinks.map((s) => s.done));
  if (ctx.signal.aborted) throw ctx.signal.reason;
  if (stop.signal.aborted) throw stop.signal.reason;
  if (readError) throw new UserError(`compress: cannot read the working image ${image}: ${errnoReason(readError)}`);

  const imageSha256 = hash.digest('hex');
  const outputs: Output[] = [];
  for (const sink of sinks) {
    const written = await sink.done;
    outputs.push({ format: sink.format, path: sink.file, size: written.size, sha256: written.sha256 ?? imageSha256 });
  }
  return { outputs, imageSha256, size };
}
