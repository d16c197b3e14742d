import { accessSync, constants } from 'node:fs';
import { resolve } from 'node:path';
import { execa, type Options } from 'execa';
import { CommandError } from './errors.ts';
import type { BuildLog } from './log.ts';

export interface RunOptions {
  input?: string | Uint8Array;
  cwd?: string;
  env?: Record<string, string | undefined>;
  stdin?: 'ignore' | 'inherit' | { file: string };
  stdout?: 'pipe' | 'inherit' | 'ignore' | { file: string };
  /**
   * Runs to its end even after Ctrl-C: clean-up commands, and commands that make something a
   * clean-up step must undo (a loop device, a mount), which must not be cut off between making
   * it and registering its undoing.
   */
  uncancellable?: boolean;
  /** Resolve with the exit code instead of throwing when the command fails. */
  reject?: boolean;
  /** Do not copy stdout to the log (binary or huge output). */
  quietStdout?: boolean;
  /** Killed after this long (a command on a guest that may hang). */
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  durationMs: number;
}

const TAIL_LINES = 15;

export function quote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

export function commandLine(file: string, args: readonly string[]): string {
  return [file, ...args].map(quote).join(' ');
}

/**
 * Every external command of a build goes through here: its command line, output and duration go
 * to the current stage's log, and a failure becomes a CommandError naming the stage, the command,
 * its exit code and its last lines.
 *
 * Commands run in their own process group (detached), so a Ctrl-C on the terminal reaches only
 * this process, which then cancels the running command itself and unwinds the clean-up stack
 * without the terminal also killing the clean-up commands.
 */
export class CommandRunner {
  stage = 'setup';
  /** Milliseconds spent waiting for external commands (the rest is the pipeline's own overhead). */
  commandMs = 0;
  readonly #log: BuildLog;
  readonly #signal: AbortSignal;

  constructor(log: BuildLog, signal: AbortSignal) {
    this.#log = log;
    this.#signal = signal;
  }

  async run(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const line = commandLine(file, args);
    this.#log.line(`$ ${line}`);
    const started = performance.now();
    const options_: Options = {
      input: options.input,
      cwd: options.cwd,
      env: options.env,
      extendEnv: true,
      stdin: options.input === undefined ? (options.stdin ?? 'ignore') : undefined,
      stdout: options.stdout ?? 'pipe',
      stderr: 'pipe',
      detached: true,
      cancelSignal: options.uncancellable ? undefined : this.#signal,
      forceKillAfterDelay: 5000,
      timeout: options.timeoutMs,
      reject: false,
      stripFinalNewline: false,
      maxBuffer: 64 * 1024 * 1024,
    };
    const subprocess = execa(file, [...args], options_);
    const tail: string[] = [];
    const keep = (chunk: Buffer) => {
      const text = chunk.toString();
      this.#log.write(text);
      tail.push(...text.split('\n').filter((l) => l.trim() !== ''));
      if (tail.length > TAIL_LINES) tail.splice(0, tail.length - TAIL_LINES);
    };
    if (!options.quietStdout) subprocess.stdout?.on('data', keep);
    subprocess.stderr?.on('data', keep);
    const result = await subprocess;
    const durationMs = performance.now() - started;
    this.commandMs += durationMs;
    const exitCode = result.exitCode ?? -1;
    this.#log.line(`exit ${result.exitCode ?? result.signal} after ${(durationMs / 1000).toFixed(2)} s${result.timedOut ? ' (timed out)' : ''}`);
    if (result.failed && options.reject !== false) {
      if (result.isCanceled && this.#signal.aborted) throw this.#signal.reason;
      if (result.code === 'ENOENT' || /ENOENT/.test(String(result.cause ?? ''))) {
        tail.push(`${file}: command not found (run \`build-image doctor\` to see which package provides it)`);
      }
      throw new CommandError({
        stage: this.stage,
        command: line,
        exitCode: result.exitCode,
        signal: result.signal,
        tail,
        logFile: this.#log.file,
      });
    }
    return {
      stdout: typeof result.stdout === 'string' ? result.stdout : '',
      stderr: typeof result.stderr === 'string' ? result.stderr : '',
      exitCode,
      durationMs,
    };
  }

  /**
   * Start a command whose stdout the caller streams (a decompressor feeding a file): logged,
   * detached and cancelled like run(), but stdout is not buffered and nothing is thrown. The
   * caller must consume `subprocess.stdout`, then await the subprocess and look at `failed`,
   * `exitCode` and `stderr` (kept, and copied to the log) itself.
   */
  spawn(
    file: string,
    args: readonly string[],
    options: { cwd?: string; env?: Record<string, string>; uncancellable?: boolean; stdin?: 'ignore' | 'pipe' } = {},
  ) {
    this.#log.line(`$ ${commandLine(file, args)}`);
    const started = performance.now();
    const subprocess = execa(file, args, {
      cwd: options.cwd,
      env: options.env,
      extendEnv: true,
      stdin: options.stdin ?? 'ignore',
      stdout: 'pipe',
      stderr: 'pipe',
      detached: true,
      cancelSignal: options.uncancellable ? undefined : this.#signal,
      forceKillAfterDelay: 5000,
      reject: false,
      buffer: { stdout: false, stderr: true },
      maxBuffer: { stderr: 1024 * 1024 },
    });
    subprocess.stderr.on('data', (chunk: Buffer) => this.#log.write(chunk.toString()));
    void subprocess.then((result) => {
      const durationMs = performance.now() - started;
      this.commandMs += durationMs;
      this.#log.line(`exit ${result.exitCode ?? result.signal} after ${(durationMs / 1000).toFixed(2)} s`);
    });
    return subprocess;
  }

  /**
   * A command the user works in (a shell inside the image): the terminal is handed over, so it is
   * neither detached nor cancelled. Only its command line and exit code are logged.
   */
  async interactive(file: string, args: readonly string[]): Promise<number> {
    this.#log.line(`$ ${commandLine(file, args)} (interactive)`);
    const result = await execa(file, [...args], { stdio: 'inherit', reject: false });
    this.#log.line(`exit ${result.exitCode ?? result.signal}`);
    return result.exitCode ?? 1;
  }
}

/** Where a program is, looked up as a root shell would (PATH, then /usr/sbin and /sbin). */
export function findOnPath(command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (!dir) continue;
    const path = resolve(dir, command);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {}
  }
  return undefined;
}
