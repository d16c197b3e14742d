import type { CleanupStack, Outcome } from './cleanup.ts';
import type { CommandRunner, RunOptions, RunResult } from './commands.ts';
import type { Config, ConfigKey } from './config.ts';
import type { BuildLog } from './log.ts';

/**
 * What stages leave for the stages after them. It is saved to `<work>/state.json` after every
 * stage so that `--from STAGE` can pick a build up again. Stage modules add their own fields by
 * declaration merging (`declare module '../pipeline/stage.ts' { interface BuildState { ... } }`).
 */
export interface BuildState {
  /** Stage name -> seconds, for the manifest. */
  timings?: Record<string, number>;
}

export interface BuildContext {
  readonly pipeline: string;
  /** Every stage of the pipeline, whether this run executes it or not. */
  readonly stages: readonly Stage[];
  readonly config: Config;
  readonly paths: { work: string; cache: string; out: string };
  readonly log: BuildLog;
  readonly commands: CommandRunner;
  readonly cleanup: CleanupStack;
  /** Aborted on SIGINT/SIGTERM: pass it to every long wait (streams, fetch). */
  readonly signal: AbortSignal;
  state: BuildState;
  /** In-memory handles of this process (loop devices, clean-up marks): never saved. */
  readonly resources: Map<string, unknown>;
  run(file: string, args: readonly string[], options?: RunOptions): Promise<RunResult>;
  /** Register how to undo what was just made; undone in reverse order whatever happens. */
  defer(label: string, undo: (outcome: Outcome) => unknown): void;
  /** One line of live status under the current stage (progress bars). */
  status(text: string): void;
}

export interface Stage {
  /** Shown in the task list, the logs, --from/--until and the timing table. */
  readonly name: string;
  /** One line for --plan. */
  describe(config: Config): string;
  /** The config keys this stage reads: they are what --plan shows and what a command accepts. */
  readonly options: readonly ConfigKey[];
  /**
   * The stage that closes what this one opens (attach -> finalize). A run that starts with
   * --from between the two runs this stage again first, since what it opened is gone.
   */
  readonly closedBy?: string;
  /**
   * Bytes this stage will add to the root filesystem, given what the root holds before any
   * stage adds to it: the grow stage makes that much room.
   */
  grows?(ctx: BuildContext, rootUsed: number): Promise<number>;
  run(ctx: BuildContext): Promise<void>;
}

export interface Pipeline {
  readonly name: string;
  readonly summary: string;
  readonly stages: readonly Stage[];
}
