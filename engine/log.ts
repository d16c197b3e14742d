import { appendFileSync, chmodSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { redactCredentials } from './redact.ts';

/**
 * The build log: one file per stage under `<work>/logs/`, plus an optional echo of every line
 * (--verbose) to stderr. Writes are synchronous so nothing is lost when the process is stopped.
 * Only root reads it (commands and their output may name secrets), and credentials in URLs are
 * written as `***`.
 */
export class BuildLog {
  readonly dir: string;
  #file: string;
  #echo: ((text: string) => void) | undefined;

  constructor(dir: string, echo?: (text: string) => void) {
    this.dir = dir;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700); // made by an earlier version with the default mode
    this.#file = join(dir, 'build.log');
    this.#echo = echo;
  }

  get file(): string {
    return this.#file;
  }

  /** Route what follows to the stage's own file. */
  useStage(index: number, stage: string): void {
    this.#file = join(this.dir, `${String(index).padStart(2, '0')}-${stage}.log`);
  }

  /** Route what follows to a file of its own next to the stage logs (one chroot script). */
  useFile(name: string): void {
    this.#file = join(this.dir, name);
  }

  write(text: string): void {
    const clean = redactCredentials(text);
    appendFileSync(this.#file, clean, { mode: 0o600 });
    this.#echo?.(clean);
  }

  line(text: string): void {
    this.write(`[${new Date().toISOString()}] ${text}\n`);
  }
}
