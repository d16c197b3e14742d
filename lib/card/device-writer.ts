/**
 * A writable stream that puts decoded image bytes on a block device: with a block map, only its
 * ranges are written (and each checked against its sha256 as it passes); without one, every byte.
 * The sha256 of what was written, range by range, is kept for reading back.
 */
import { createHash, type Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';
import type { Range } from '../image/bmap.ts';
import { writeAt } from '../image/sparse-writer.ts';

export interface Written {
  start: number;
  end: number;
  sha256: string;
}

export class DeviceWriter extends Writable {
  readonly #device: FileHandle;
  readonly #deviceSize: number;
  readonly #ranges: Range[] | undefined;
  readonly #observe: (chunk: Buffer) => void;
  /** Bytes of image received, and bytes written to the device. */
  bytes = 0;
  written = 0;
  failure: Error | undefined;
  /** Set when the image does not match its block map (a corrupt input, not a write failure). */
  mismatch: string | undefined;
  readonly done: Written[] = [];
  #index = 0;
  #hash: Hash | undefined;

  /** `ranges` from the block map, or undefined to write the whole image. */
  constructor(device: FileHandle, deviceSize: number, ranges: Range[] | undefined, observe: (chunk: Buffer) => void) {
    super({ highWaterMark: 4 * 1024 * 1024 });
    this.#device = device;
    this.#deviceSize = deviceSize;
    this.#ranges = ranges;
    this.#observe = observe;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#observe(chunk);
    const start = this.bytes;
    this.bytes += chunk.length;
    this.#put(chunk, start).then(
      () => callback(),
      (error: Error) => callback(this.#fail(error)),
    );
  }

  override _final(callback: (error?: Error | null) => void): void {
    const finish = async () => {
      if (!this.#ranges) this.#close({ start: 0, end: this.bytes });
      else if (this.#index < this.#ranges.length) throw new Error(`the image ends at byte ${this.bytes}, before the end of its block map`);
      await this.#device.sync();
    };
    finish().then(
      () => callback(),
      (error: Error) => callback(this.#fail(error)),
    );
  }

  #fail(error: Error): Error {
    if (!this.mismatch) this.failure = error;
    return error;
  }

  async #put(chunk: Buffer, position: number): Promise<void> {
    // With a block map its image size was checked against the device before anything was written.
    if (!this.#ranges && position + chunk.length > this.#deviceSize) throw new Error(`the image is larger than the device (${this.#deviceSize} bytes)`);
    if (!this.#ranges) {
      this.#hash ??= createHash('sha256');
      this.#hash.update(chunk);
      await this.#write(chunk, position);
      return;
    }
    const end = position + chunk.length;
    while (this.#index < this.#ranges.length) {
      const range = this.#ranges[this.#index]!;
      if (range.start >= end) return;
      const from = Math.max(range.start, position);
      const to = Math.min(range.end, end);
      if (to > from) {
        const part = chunk.subarray(from - position, to - position);
        this.#hash ??= createHash('sha256');
        this.#hash.update(part);
        await this.#write(part, from);
      }
      if (range.end > end) return;
      this.#close(range);
      this.#index++;
    }
  }

  #close(range: Range): void {
    const sha256 = (this.#hash ?? createHash('sha256')).digest('hex');
    this.#hash = undefined;
    if (range.sha256 && range.sha256 !== sha256) {
      this.mismatch = `bytes ${range.start}-${range.end - 1} do not match the block map's sha256`;
      throw new Error(this.mismatch);
    }
    this.done.push({ start: range.start, end: range.end, sha256 });
  }

  async #write(data: Buffer, position: number): Promise<void> {
    await writeAt(this.#device, data, position);
    this.written += data.length;
  }
}
