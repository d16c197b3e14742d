/**
 * A writable stream that makes a sparse file: all-zero 4 KiB blocks are skipped by seeking, runs
 * of data blocks are written with one positioned write, and the file gets its full length at the
 * end. Memory stays at one chunk whatever the size of the image.
 */
import type { FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';

const BLOCK = 4096;

const ZERO = Buffer.alloc(BLOCK);

export class SparseWriter extends Writable {
  readonly #file: FileHandle;
  readonly #observe: ((chunk: Buffer) => void) | undefined;
  /** Bytes received so far (the final length of the file). */
  bytes = 0;
  /** Bytes actually written (the rest are holes). */
  written = 0;
  /** The first 512 bytes, to check the boot signature afterwards. */
  head = Buffer.alloc(0);
  /** Set when writing the file failed (as opposed to the data not arriving). */
  failure: Error | undefined;
  #pending: Buffer = Buffer.alloc(0);

  /** `observe` sees every chunk in order (hashing, CRC, progress). */
  constructor(file: FileHandle, observe?: (chunk: Buffer) => void) {
    super({ highWaterMark: 4 * 1024 * 1024 });
    this.#file = file;
    this.#observe = observe;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#observe?.(chunk);
    if (this.head.length < 512) this.head = Buffer.concat([this.head, chunk.subarray(0, 512 - this.head.length)]);
    const start = this.bytes - this.#pending.length;
    this.bytes += chunk.length;
    const data = this.#pending.length ? Buffer.concat([this.#pending, chunk]) : chunk;
    const whole = data.length - (data.length % BLOCK);
    this.#pending = Buffer.from(data.subarray(whole));
    this.#writeBlocks(data.subarray(0, whole), start).then(
      () => callback(),
      (error: Error) => callback(this.#fail(error)),
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    const start = this.bytes - this.#pending.length;
    const tail = this.#pending;
    this.#pending = Buffer.alloc(0);
    const finish = async () => {
      if (tail.length && !tail.equals(ZERO.subarray(0, tail.length))) await this.#write(tail, start);
      await this.#file.truncate(this.bytes);
    };
    finish().then(
      () => callback(),
      (error: Error) => callback(this.#fail(error)),
    );
  }

  #fail(error: Error): Error {
    this.failure = error;
    return error;
  }

  async #writeBlocks(data: Buffer, position: number): Promise<void> {
    let run = -1; // start of the current run of data blocks, or -1
    for (let offset = 0; offset < data.length; offset += BLOCK) {
      const zero = data.subarray(offset, offset + BLOCK).equals(ZERO);
      if (!zero && run < 0) run = offset;
      if (zero && run >= 0) {
        await this.#write(data.subarray(run, offset), position + run);
        run = -1;
      }
    }
    if (run >= 0) await this.#write(data.subarray(run), position + run);
  }

  async #write(data: Buffer, position: number): Promise<void> {
    await writeAt(this.#file, data, position);
    this.written += data.length;
  }
}

/** All of `data` at `position` (a positioned write may take only part of it). */
export async function writeAt(file: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await file.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}
