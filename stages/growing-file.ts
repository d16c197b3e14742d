/**
 * A file another task is still writing (a download), read as it grows: extraction starts with the
 * first bytes instead of after the last. The writer calls grew() after each write and finish()
 * at its end; readers get what is on disk, wait for more, and end once the writer has finished
 * and everything is read (or fail with the writer's error). Reading the file, not a copy of the
 * chunks, keeps memory flat whichever side is faster.
 */
import type { FileHandle } from 'node:fs/promises';
import { open, stat } from 'node:fs/promises';

const CHUNK = 1024 * 1024;

export class GrowingFile {
  readonly path: string;
  #version = 0;
  #finished = false;
  #error: unknown;
  #wake: Array<() => void> = [];

  constructor(path: string) {
    this.path = path;
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
    return (await stat(this.path).catch(() => undefined))?.size ?? 0;
  }

  /** Wait until the file holds `bytes` bytes or the writer has finished (what a format sniffer needs). */
  async holds(bytes: number, signal: AbortSignal): Promise<void> {
    for (;;) {
      const [seen, finished] = [this.#version, this.#finished];
      if ((await this.#size()) >= bytes || finished) return;
      await this.#next(seen, signal);
    }
  }

  /** Every byte the writer writes, in order, as it arrives. */
  async *read(signal: AbortSignal): AsyncGenerator<Buffer> {
    let file: FileHandle | undefined;
    let offset = 0;
    try {
      for (;;) {
        const [seen, finished] = [this.#version, this.#finished];
        file ??= await open(this.path, 'r').catch(() => undefined);
        if (file) {
          const buffer = Buffer.allocUnsafe(CHUNK);
          const { bytesRead } = await file.read(buffer, 0, CHUNK, offset);
          if (bytesRead > 0) {
            offset += bytesRead;
            yield buffer.subarray(0, bytesRead);
            continue;
          }
        }
        // Nothing more on disk: done if the writer had finished before this read, else wait.
        if (finished) {
          if (this.#error !== undefined) throw this.#error;
          return;
        }
        await this.#next(seen, signal);
      }
    } finally {
      await file?.close();
    }
  }
}
