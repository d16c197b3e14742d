import type { CleanupStack, Outcome } from './cleanup.ts';
import type { CommandRunner, RunOptions, RunResult } from './exec.ts';
import type { Config, ConfigKey } from './options.ts';
import type { BuildLog } from './log.ts';
import type { SnapshotEntry } from './stage-cache.ts';

/**
 * What stages leave for the stages after them. It is saved to `<work>/state.json` after every
 * stage so that `--from STAGE` can pick a build up again. Stage modules add their own fields by
 * declaration merging (`declare module '../engine/stage.ts' { interface BuildState { ... } }`).
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
  /** How many of the current stage's steps the image restored from the stage cache already holds. */
  readonly stepsDone: number;
  /**
   * A stage with several steps calls this after each: the stage cache may snapshot the image
   * there, calling `beforeSnapshot` first (to put away what must not be in a snapshot).
   */
  stepDone(beforeSnapshot?: () => Promise<void>): Promise<void>;
}

/** One step of a stage that the stage cache can resume after. */
export interface CacheStep {
  /** Shown by `build-image cache ls`: "after 10-packages.sh". */
  label: string;
  /** Everything the step's result depends on besides the steps before it (file contents, settings). */
  input: string;
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
  /**
   * The stage's steps and what each depends on, known before it runs (from the settings and what
   * fetch and files gathered). Stages without it end the part of a build the stage cache covers.
   */
  key?(ctx: BuildContext): Promise<CacheStep[]>;
  /**
   * The stage cache always keeps the image as this stage leaves it, however quick its steps: the
   * end of a pipeline's own layer, where rebuilds after a change to the user's layer start.
   */
  readonly snapshotAtEnd?: boolean;
  /**
   * Checks of the settings that need more than one key or a file's content: run before any stage
   * (and by --plan), so that a bad value stops the build before it does any work.
   */
  check?(config: Config): Promise<void>;
  run(ctx: BuildContext): Promise<void>;
}

/** How a pipeline's working image is saved to the stage cache and restored from it. */
export interface ImageSnapshots {
  /** Save the image as it is now into `dir`; returns the names of the files written. */
  save(ctx: BuildContext, dir: string): Promise<string[]>;
  /** Make the snapshot the working image; `stage` is the stage it was taken in. */
  restore(ctx: BuildContext, entry: SnapshotEntry, stage: string): Promise<void>;
}

export interface Pipeline {
  readonly name: string;
  readonly summary: string;
  /** Defaults of this pipeline that differ from the schema's (the pimaster's host name). */
  readonly defaults?: Partial<Config>;
  readonly stages: readonly Stage[];
  /** Given, the build uses the stage cache. */
  readonly snapshots?: ImageSnapshots;
}
