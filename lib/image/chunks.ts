/**
 * Copying an image through two reused buffers. A fresh buffer per read piles up outside V8's heap,
 * up to its 64 MiB external-memory limit, before a collection frees it: reading a 3.5 GB image into
 * a sparse .img took a peak RSS of 134 MiB with fresh 64 KiB chunks, 105 MiB with these buffers,
 * in the same time.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';

/** How much is read at a time, into each of the two buffers. */
const IMAGE_CHUNK = 1024 * 1024;

/**
 * Read with `read` (the bytes it read; 0 at the end) into two buffers in turn, handing each chunk
 * to `take` while the next is read. `take` is called in order and resolves once it is done with
 * the chunk's buffer.
 */
export async function copyChunks(read: (buffer: Buffer) => Promise<number>, take: (chunk: Buffer) => Promise<unknown>): Promise<void> {
  const buffers = [Buffer.allocUnsafe(IMAGE_CHUNK), Buffer.allocUnsafe(IMAGE_CHUNK)];
  const taking: Array<Promise<unknown>> = [Promise.resolve(), Promise.resolve()];
  for (let n = 0; ; n = 1 - n) {
    await taking[n]; // done with this buffer
    const bytes = await read(buffers[n]!);
    if (bytes === 0) break;
    const took = take(buffers[n]!.subarray(0, bytes));
    took.catch(() => {}); // awaited when its buffer comes round again, or below
    taking[n] = took;
  }
  await Promise.all(taking);
}

/** A reader for copyChunks: `file` from its start, `size` bytes (an error if it ends sooner) or to its end. */
export function fileReader(file: FileHandle, size = Infinity): (buffer: Buffer) => Promise<number> {
  let position = 0;
  return async (buffer) => {
    const { bytesRead } = await file.read(buffer, 0, Math.min(buffer.length, size - position), position);
    if (bytesRead === 0 && position < size && size !== Infinity) throw new Error(`it ended at byte ${position} of ${size}: it changed while being read`);
    position += bytesRead;
    return bytesRead;
  };
}

/**
 * Write `chunk` and resolve once `stream` is done with it (its callback ran), so its buffer may be
 * read into again; reject with the write's error, or when `signal` stops the build.
 */
export function handOver(stream: Writable, chunk: Buffer, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const stop = () => reject(signal.reason);
    signal.addEventListener('abort', stop, { once: true });
    stream.write(chunk, (error) => {
      signal.removeEventListener('abort', stop);
      if (error) reject(error);
      else resolve();
    });
  });
}
