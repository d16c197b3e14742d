import type { CleanupStack, Outcome } from './cleanup.ts';
import type { CommandRunner, RunOptions, RunResult } from './exec.ts';
import type { BuildLog } from './log.ts';
import type { EngineOptions, Schema } from './options.ts';
import type { SnapshotEntry } from './stage-cache.ts';

/**
 * What stages leave for the stages after them. It is saved to `<work>/state.json` after every
 * stage so that `--from STAGE` can pick a build up again. Stage modules add their own fields by
 * declaration merging (`declare module '../engine/stage.ts' { interface BuildState { ... } }`).
 */
export interface BuildState {
  /** Stage name -> seconds, of this run (state.json only: not in the manifest, which must not change between runs). */
  timings?: Record<string, number>;
}

/**
 * A typed key of `BuildContext.resources`: what one stage opens and a later one (or its clean-up)
 * needs, such as the attach stage's clean-up mark that finalize unwinds to.
 */
export class Resource<T> {
  /** Never set: it makes Resource<A> and Resource<B> different types. */
  declare readonly valueType?: T;
  readonly name: string;
  constructor(name: string) {
    this.name = name;
  }
}

/** In-memory handles of this process, each under its typed key. */
export class Resources {
  readonly #values = new Map<Resource<unknown>, unknown>();
  get<T>(key: Resource<T>): T | undefined {
    return this.#values.get(key) as T | undefined;
  }
  set<T>(key: Resource<T>, value: T): void {
    this.#values.set(key, value);
  }
  has(key: Resource<unknown>): boolean {
    return this.#values.has(key);
  }
  delete(key: Resource<unknown>): void {
    this.#values.delete(key);
  }
}

/** What a stage sees of its run; `C` is the options of the pipeline it runs in. */
export interface BuildContext<C extends EngineOptions = EngineOptions> {
  readonly pipeline: string;
  /** Every stage of the pipeline, whether this run executes it or not. */
  readonly stages: readonly Stage<C>[];
  readonly config: C;
  /** The specs of the pipeline's options (how each is published, which change the image). */
  readonly schema: Schema<C>;
  readonly paths: { work: string; cache: string; out: string };
  readonly log: BuildLog;
  readonly commands: CommandRunner;
  readonly cleanup: CleanupStack;
  /** Aborted on SIGINT/SIGTERM: pass it to every long wait (streams, fetch). */
  readonly signal: AbortSignal;
  state: BuildState;
  /** In-memory handles of this process (loop devices, clean-up marks): never saved. */
  readonly resources: Resources;
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

/** One step of a pipeline; `C` is the options it reads (the engine's and its own). */
export interface Stage<C extends EngineOptions = EngineOptions> {
  /** Shown in the task list, the logs, --from/--until and the timing table. */
  readonly name: string;
  /** One line for --plan. */
  describe(config: C): string;
  /** The option keys this stage reads: they are what --plan shows and what a command accepts. */
  readonly options: readonly string[];
  /**
   * The stage that closes what this one opens (attach -> finalize). A run that starts with
   * --from between the two runs this stage again first, since what it opened is gone.
   */
  readonly closedBy?: string;
  /**
   * Bytes this stage will add to the root filesystem, given what the root holds before any
   * stage adds to it: the grow stage makes that much room.
   */
  grows?(ctx: BuildContext<C>, rootUsed: number): Promise<number>;
  /**
   * The stage's steps and what each depends on, known before it runs (from the settings and what
   * fetch and files gathered). Stages without it end the part of a build the stage cache covers.
   */
  key?(ctx: BuildContext<C>): Promise<CacheStep[]>;
  /**
   * The stage cache always keeps the image as this stage leaves it, however quick its steps: the
   * end of a pipeline's own layer, where rebuilds after a change to the user's layer start.
   */
  readonly snapshotAtEnd?: boolean;
  /**
   * Checks of the settings that need more than one key or a file's content: run before any stage
   * (and by --plan), so that a bad value stops the build before it does any work.
   */
  check?(config: C): Promise<void>;
  run(ctx: BuildContext<C>): Promise<void>;
}

/** How a pipeline's working image is saved to the stage cache and restored from it. */
export interface ImageSnapshots<C extends EngineOptions = EngineOptions> {
  /** Save the image as it is now into `dir`; returns the names of the files written. */
  save(ctx: BuildContext<C>, dir: string): Promise<string[]>;
  /** Make the snapshot the working image; `stage` is the stage it was taken in. */
  restore(ctx: BuildContext<C>, entry: SnapshotEntry, stage: string): Promise<void>;
}

export interface Pipeline<C extends EngineOptions = EngineOptions> {
  readonly name: string;
  readonly summary: string;
  /** Defaults of this pipeline that differ from the schema's (the pimaster's host name). */
  /** Every option the pipeline's commands resolve, with its spec. */
  readonly schema: Schema<C>;
  readonly defaults?: Partial<C>;
  readonly stages: readonly Stage<C>[];
  /** Given, the build uses the stage cache. */
  readonly snapshots?: ImageSnapshots<C>;
}
