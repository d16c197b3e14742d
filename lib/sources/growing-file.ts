/**
 * A file another task is still writing (a download), read as it grows: extraction starts with the
 * first bytes instead of after the last. The writer calls grew() after each write and finish()
 * at its end; readers get what is on disk, wait for more, and end once the writer has finished
 * and everything is read (or fail with the writer's error). Reading the file, not a copy of the
 * chunks, keeps memory flat whichever side is faster. The file is opened at once and read through
 * that descriptor: the writer may truncate it, rename it when complete, or remove it.
 */
import { closeSync, openSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';

/**
 * How much is read at a time, into a fresh buffer (the reader keeps each chunk). Small on purpose:
 * a 64 KiB buffer dies young and the scavenger frees it at once, while 1 MiB buffers pile up
 * outside the heap until a full collection. Reading 530 MB: peak RSS 83 MB at 64 KiB, 131 MB at
 * 1 MiB, for the same time. (Copies that can reuse their buffers use image/chunks.ts.)
 */
const READ_CHUNK = 64 * 1024;

export class GrowingFile {
  readonly path: string;
  readonly #file: Promise<FileHandle>;
  #version = 0;
  #finished = false;
  #error: unknown;
  #wake: Array<() => void> = [];

  /** `path` is made if missing: the writer appends to it or truncates it, never replaces it. */
  constructor(path: string) {
    this.path = path;
    closeSync(openSync(path, 'a'));
    this.#file = open(path, 'r');
  }

  /** Let go of the file (once, whether it was read or not). */
  async close(): Promise<void> {
    await (await this.#file).close().catch(() => {});
  }

  grew(): void {
    this.#version++;
    for (const wake of this.#wake.splice(0)) wake();
  }

  finish(error?: unknown): void {
    this.#finished = true;
    this.#error = error;
    this.grew();
  }

  async #next(seen: number, signal: AbortSignal): Promise<void> {
    if (this.#version !== seen) return;
    signal.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      this.#wake.push(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }

  async #size(): Promise<number> {
    return (await (await this.#file).stat()).size;
  }

  /** Wait until the file holds `bytes` bytes or the writer has finished (what a format sniffer needs). */
  async holds(bytes: number, signal: AbortSignal): Promise<void> {
    for (;;) {
      const [seen, finished] = [this.#version, this.#finished];
      if ((await this.#size()) >= bytes || finished) return;
      await this.#next(seen, signal);
    }
  }

  /** The first `bytes` bytes there are. */
  async head(bytes: number): Promise<Buffer> {
    const buffer = Buffer.alloc(bytes);
    const { bytesRead } = await (await this.#file).read(buffer, 0, bytes, 0);
    return buffer.subarray(0, bytesRead);
  }

  /** Every byte the writer writes, in order, as it arrives. */
  async *read(signal: AbortSignal): AsyncGenerator<Buffer> {
    const file = await this.#file;
    let offset = 0;
    for (;;) {
      const [seen, finished] = [this.#version, this.#finished];
      const buffer = Buffer.allocUnsafe(READ_CHUNK);
      const { bytesRead } = await file.read(buffer, 0, READ_CHUNK, offset);
      if (bytesRead > 0) {
        offset += bytesRead;
        yield buffer.subarray(0, bytesRead);
        continue;
      }
      // Nothing more on disk: done if the writer had finished before this read, else wait.
      if (finished) {
        if (this.#error !== undefined) throw this.#error;
        return;
      }
      await this.#next(seen, signal);
    }
  }
}
