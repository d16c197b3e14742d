/** An error the user can fix: printed as one line, no stack trace. */
export class UserError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode = 1) {
    super(message);
    this.name = 'UserError';
    this.exitCode = exitCode;
  }
}

/** A bad configuration value or flag: exit code 2, like other command-line tools. */
export class ConfigError extends UserError {
  constructor(message: string) {
    super(message, 2);
    this.name = 'ConfigError';
  }
}

/** The build was stopped by SIGINT or SIGTERM. */
export class InterruptedError extends UserError {
  readonly signal: NodeJS.Signals;
  constructor(signal: NodeJS.Signals) {
    super(`interrupted by ${signal}`, signal === 'SIGINT' ? 130 : 143);
    this.name = 'InterruptedError';
    this.signal = signal;
  }
}

/** An external command failed: names the stage, the command, its exit code and its last lines. */
export class CommandError extends Error {
  readonly stage: string;
  readonly command: string;
  readonly exitCode: number | undefined;
  readonly tail: string[];
  readonly logFile: string | undefined;
  constructor(init: { stage: string; command: string; exitCode?: number; signal?: string; tail: string[]; logFile?: string }) {
    const how = init.exitCode !== undefined ? `exit code ${init.exitCode}` : `signal ${init.signal ?? 'unknown'}`;
    super(`stage ${init.stage}: \`${init.command}\` failed with ${how}`);
    this.name = 'CommandError';
    this.stage = init.stage;
    this.command = init.command;
    this.exitCode = init.exitCode;
    this.tail = init.tail;
    this.logFile = init.logFile;
  }
}

/** Bad input and failed commands read as one line (plus a command's last output lines). */
export function describeError(error: unknown, verbose = false): string {
  if (error instanceof CommandError) {
    const noSpace = error.tail.some((l) => /No space left on device|ENOSPC/i.test(l));
    if (noSpace)
      return `error: no space left on device during stage ${error.stage}: free some space or use --work DIR on a larger disk (log: ${error.logFile})`;
    return [`error: ${error.message}`, ...error.tail.map((l) => `  | ${l}`), error.logFile ? `  log: ${error.logFile}` : ''].filter(Boolean).join('\n');
  }
  if ((error as NodeJS.ErrnoException)?.code === 'ENOSPC')
    return `error: no space left on device (${(error as Error).message}): free some space or use --work DIR on a larger disk`;
  if (error instanceof UserError) return `error: ${error.message}`;
  const e = error as Error;
  return verbose && e?.stack ? `error: ${e.stack}` : `error: ${e?.message ?? String(error)}`;
}

export function exitCodeOf(error: unknown): number {
  return error instanceof UserError ? error.exitCode : 1;
}

/** "no space left on device (ENOSPC)" from Node's "ENOSPC: no space left on device, write". */
export function errnoReason(error: unknown): string {
  const e = error as NodeJS.ErrnoException | undefined;
  const m = /^([A-Z0-9_]+): ([^,]+)/.exec(e?.message ?? '');
  if (m) return `${m[2]} (${m[1]})`;
  return e?.message ?? String(error);
}
