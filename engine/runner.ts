import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CleanupStack, type Outcome } from './cleanup.ts';
import { ConfigError, InterruptedError, UserError } from './errors.ts';
import { CommandRunner } from './exec.ts';
import { BuildLog } from './log.ts';
import type { EngineOptions } from './options.ts';
import type { Reporter } from './report.ts';
import { type BuildContext, type BuildState, type Pipeline, Resources, type Stage } from './stage.ts';
import { type Checkpoint, chainKeys, StageCache, toolkitVersion } from './stage-cache.ts';
import { claimWorkDir, privateDir } from './work-dir.ts';

export interface Range {
  from?: string;
  until?: string;
}

/**
 * The stages a run executes: `from`..`until`, plus any earlier stage that opens something a
 * selected stage still needs (attach before overlay when starting --from overlay).
 */
export function selectStages<C extends EngineOptions>(pipeline: Pipeline<C>, range: Range): Stage<C>[] {
  const names = pipeline.stages.map((s) => s.name);
  const indexOf = (flag: string, name: string | undefined, fallback: number) => {
    if (name === undefined) return fallback;
    const i = names.indexOf(name);
    if (i < 0) throw new ConfigError(`--${flag} ${JSON.stringify(name)}: no such stage in the ${pipeline.name} pipeline (stages: ${names.join(', ')})`);
    return i;
  };
  const from = indexOf('from', range.from, 0);
  const until = indexOf('until', range.until, names.length - 1);
  if (from > until) throw new ConfigError(`--from ${range.from} comes after --until ${range.until} in the ${pipeline.name} pipeline`);
  return pipeline.stages.filter((stage, i) => {
    if (i >= from && i <= until) return true;
    if (i >= from || !stage.closedBy) return false;
    const closer = names.indexOf(stage.closedBy);
    return closer >= from && from <= until; // opened before the range, still open inside it
  });
}

export interface Timing {
  stage: string;
  seconds: number;
  commandSeconds: number;
  /** "from cache", "2 of 6 steps from cache". */
  note?: string;
}

export function timingTable(timings: readonly Timing[]): string {
  const width = Math.max(5, ...timings.map((t) => t.stage.length));
  const row = (a: string, b: string, c: string) => `  ${a.padEnd(width)}  ${b.padStart(9)}  ${c.padStart(9)}`;
  const total = timings.reduce((s, t) => s + t.seconds, 0);
  const commands = timings.reduce((s, t) => s + t.commandSeconds, 0);
  return [
    row('stage', 'time', 'commands'),
    ...timings.map((t) => `${row(t.stage, `${t.seconds.toFixed(1)} s`, `${t.commandSeconds.toFixed(1)} s`)}${t.note ? `  ${t.note}` : ''}`),
    row('total', `${total.toFixed(1)} s`, `${commands.toFixed(1)} s`),
  ].join('\n');
}

/**
 * The stage cache's part in one build: before the first stage that has a key, the keys of every
 * step up to the first stage without one are chained, and the build starts from the snapshot of
 * the latest step the cache holds; after each later step, a snapshot is saved when the work since
 * the last one took --snapshot-after seconds or more, and always at the end of a stage marked
 * snapshotAtEnd.
 */
class CacheSession<C extends EngineOptions> {
  planned = false;
  readonly #store: StageCache;
  #checkpoints: Checkpoint[] = [];
  /** Index of the checkpoint the build started from (-1: none), and of the next one to pass. */
  #restored = -1;
  #next = 0;
  #since = performance.now();

  readonly pipeline: Pipeline<C> & { snapshots: NonNullable<Pipeline<C>['snapshots']> };
  readonly config: C;
  readonly reporter: Reporter;

  constructor(pipeline: CacheSession<C>['pipeline'], config: C, reporter: Reporter) {
    this.pipeline = pipeline;
    this.config = config;
    this.reporter = reporter;
    this.#store = new StageCache(join(config.cache, 'snapshots'));
  }

  /** Chain the keys from `first` on and restore the latest snapshot the cache holds. */
  async plan(ctx: BuildContext<C>, first: Stage<C>): Promise<void> {
    this.planned = true;
    const steps = [];
    for (const stage of this.pipeline.stages.slice(this.pipeline.stages.indexOf(first))) {
      if (!stage.key) break;
      for (const [step, { label, input }] of (await stage.key(ctx)).entries()) steps.push({ stage: stage.name, step, label, input });
    }
    this.#checkpoints = chainKeys(`${await toolkitVersion()}\n${this.pipeline.name}`, steps);
    await this.#store.locked(async () => {
      this.#store.prune(this.config['cache-size']); // what builds killed while writing left, first
      const hit = this.#store.latest(this.#checkpoints);
      if (!hit) return;
      const checkpoint = this.#checkpoints[hit.index]!;
      ctx.status(`restoring the snapshot taken at ${checkpoint.stage}: ${checkpoint.label}`);
      ctx.log.line(`stage cache: starting from ${hit.entry.dir} (${checkpoint.stage}: ${checkpoint.label})`);
      await this.pipeline.snapshots.restore(ctx, hit.entry, checkpoint.stage);
      this.#store.touch(hit.entry);
      this.#restored = hit.index;
      this.#next = hit.index + 1;
    }, ctx.signal);
    this.#since = performance.now();
  }

  #position(stage: string): number {
    return this.pipeline.stages.findIndex((s) => s.name === stage);
  }

  /** How many steps of `stage` the restored image holds (Infinity: all of them). */
  stepsDone(stage: Stage<C>): number {
    if (this.#restored < 0) return 0;
    const restored = this.#checkpoints[this.#restored]!;
    const [here, there] = [this.#position(stage.name), this.#position(restored.stage)];
    if (here !== there) return here < there ? Infinity : 0;
    const last = this.#checkpoints.findLastIndex((c) => c.stage === stage.name);
    return last === this.#restored ? Infinity : restored.step + 1;
  }

  /** A step of `stage` is done: save a snapshot if the work since the last one was worth it. */
  async passed(ctx: BuildContext<C>, stage: Stage<C>, beforeSnapshot?: () => Promise<void>): Promise<void> {
    const checkpoint = this.#checkpoints[this.#next];
    if (checkpoint?.stage !== stage.name) return;
    this.#next++;
    const stageEnds = this.#checkpoints[this.#next]?.stage !== stage.name;
    if (!(stageEnds && stage.snapshotAtEnd) && (performance.now() - this.#since) / 1000 < this.config['snapshot-after']) return;
    await beforeSnapshot?.();
    ctx.status(`saving a snapshot for the stage cache (${checkpoint.label})`);
    try {
      const { timings: _, ...state } = ctx.state;
      const entry = await this.#store.save(
        { key: checkpoint.key, pipeline: this.pipeline.name, label: `${checkpoint.stage}: ${checkpoint.label}`, state },
        (dir) => this.pipeline.snapshots.save(ctx, dir),
      );
      ctx.log.line(`stage cache: saved ${entry.dir} (${checkpoint.stage}: ${checkpoint.label}, ${entry.diskBytes} bytes on disk)`);
      const removed = await this.#store.locked(async () => this.#store.prune(this.config['cache-size'], checkpoint.key), ctx.signal);
      for (const old of removed) ctx.log.line(`stage cache: removed ${old.dir} (least recently used)`);
    } catch (error) {
      if (ctx.signal.aborted) throw ctx.signal.reason;
      const message = `stage cache: no snapshot saved after ${checkpoint.stage}: ${checkpoint.label} (${(error as Error).message.split('\n')[0]}); the build goes on`;
      ctx.log.line(message);
      this.reporter.info(message);
    }
    this.#since = performance.now();
  }

  /** The rest of `stage`'s steps are done (stages of one step do not call ctx.stepDone). */
  async stageDone(ctx: BuildContext<C>, stage: Stage<C>): Promise<void> {
    while (this.#checkpoints[this.#next]?.stage === stage.name) await this.passed(ctx, stage);
  }
}

const STATE_FILE = 'state.json';

function loadState(work: string, needed: boolean, first: string): BuildState {
  const file = join(work, STATE_FILE);
  if (!existsSync(file)) {
    if (needed) throw new UserError(`--from ${first}: ${work} holds no earlier build to continue; run the whole pipeline first (without --from)`);
    return {};
  }
  return needed ? (JSON.parse(readFileSync(file, 'utf8')) as BuildState) : {};
}

function saveState(work: string, state: BuildState): void {
  const file = join(work, STATE_FILE);
  writeFileSync(`${file}.tmp`, JSON.stringify(state, null, 2));
  renameSync(`${file}.tmp`, file);
}

export interface BuildResult {
  timings: Timing[];
  state: BuildState;
}

/**
 * Run part or all of a pipeline. Whatever happens (success, a failed stage, SIGINT, SIGTERM), the
 * clean-up stack is unwound completely before this returns or throws; a second signal during the
 * unwinding is acknowledged and ignored so the stack is never left half undone.
 */
export async function runPipeline<C extends EngineOptions>(
  pipeline: Pipeline<C>,
  config: C,
  range: Range,
  reporter: Reporter,
  initialState?: BuildState,
): Promise<BuildResult> {
  const stages = selectStages(pipeline, range);
  await checkSettings(stages, config);
  const release = await claimWorkDir(config.work, (line) => reporter.info(line));
  privateDir(config.cache);
  try {
    return await runStagesIn(pipeline, stages, config, range, reporter, initialState);
  } finally {
    release();
  }
}

/** The stages' own checks of the settings (Stage.check): before any work, and for --plan. */
export async function checkSettings<C extends EngineOptions>(stages: readonly Stage<C>[], config: C): Promise<void> {
  for (const stage of stages) await stage.check?.(config);
}

async function runStagesIn<C extends EngineOptions>(
  pipeline: Pipeline<C>,
  stages: Stage<C>[],
  config: C,
  range: Range,
  reporter: Reporter,
  initialState?: BuildState,
): Promise<BuildResult> {
  const resuming = range.from !== undefined && range.from !== pipeline.stages[0]!.name;
  const state = initialState ?? loadState(config.work, resuming, range.from ?? '');
  const log = new BuildLog(join(config.work, 'logs'), config.verbose ? (text) => process.stderr.write(text) : undefined);
  const controller = new AbortController();
  const cleanup = new CleanupStack((label, error) => {
    const message = `clean-up "${label}" failed: ${(error as Error).message ?? error}`;
    log.line(message);
    reporter.info(message);
  });
  let unwinding = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (!controller.signal.aborted) {
      reporter.info(`${signal}: stopping and cleaning up`);
      controller.abort(new InterruptedError(signal));
    } else if (unwinding) {
      reporter.info(`${signal}: still cleaning up, this finishes first`);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const commands = new CommandRunner(log, controller.signal);
  let status: (text: string) => void = () => {};
  const { snapshots } = pipeline;
  const cache = snapshots && !config['no-cache'] && !resuming ? new CacheSession({ ...pipeline, snapshots }, config, reporter) : undefined;
  let current: Stage<C> | undefined;
  let currentStepsDone = 0;
  const ctx: BuildContext<C> = {
    pipeline: pipeline.name,
    stages: pipeline.stages,
    config,
    schema: pipeline.schema,
    paths: { work: config.work, cache: config.cache, out: config.out },
    log,
    commands,
    cleanup,
    signal: controller.signal,
    state,
    resources: new Resources(),
    run: (file, args, options) => commands.run(file, args, options),
    defer: (label, undo) => cleanup.defer(label, undo),
    status: (text) => status(text),
    get stepsDone() {
      return currentStepsDone;
    },
    stepDone: async (beforeSnapshot) => {
      if (cache && current) await cache.passed(ctx, current, beforeSnapshot);
    },
  };

  const timings: Timing[] = [];
  let outcome: Outcome = 'success';
  try {
    await reporter.sequence(stages, async (stage, setStatus) => {
      controller.signal.throwIfAborted();
      status = setStatus;
      const i = pipeline.stages.indexOf(stage) + 1;
      log.useStage(i, stage.name);
      commands.stage = stage.name;
      log.line(`stage ${stage.name}: ${stage.describe(config)}`);
      const started = performance.now();
      const commandsBefore = commands.commandMs;
      let note: string | undefined;
      const done = () => {
        const seconds = (performance.now() - started) / 1000;
        timings.push({ stage: stage.name, seconds, commandSeconds: (commands.commandMs - commandsBefore) / 1000, note });
        log.line(
          `stage ${stage.name}: ${seconds.toFixed(1)} s${note ? ` (${note})` : ''}; peak RSS so far ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`,
        );
        ctx.state.timings = { ...ctx.state.timings, [stage.name]: Math.round(seconds * 10) / 10 };
        saveState(config.work, ctx.state);
        return note;
      };
      if (cache && !cache.planned && stage.key) await untilAbortedOrDone(cache.plan(ctx, stage), controller.signal);
      const stepsDone = cache?.stepsDone(stage) ?? 0;
      // A stage whose every step is in the restored image is skipped, unless it opens something
      // (attach) that the stages after it need.
      if (stepsDone === Infinity && !stage.closedBy) {
        note = 'from cache';
        return done();
      }
      if (stepsDone > 0 && stepsDone < Infinity) note = `${stepsDone} step${stepsDone > 1 ? 's' : ''} from cache`;
      current = stage;
      currentStepsDone = stepsDone === Infinity ? 0 : stepsDone;
      await untilAbortedOrDone(stage.run(ctx), controller.signal);
      if (cache) await untilAbortedOrDone(cache.stageDone(ctx, stage), controller.signal);
      return done();
    });
  } catch (error) {
    outcome = controller.signal.aborted ? 'interrupted' : 'failure';
    throw controller.signal.aborted ? controller.signal.reason : error;
  } finally {
    unwinding = true;
    commands.stage = 'clean-up';
    if (cleanup.size > 0) {
      log.useStage(99, 'cleanup');
      if (outcome !== 'success') reporter.info(`cleaning up (${cleanup.size} step${cleanup.size > 1 ? 's' : ''})`);
    }
    await cleanup.unwind(outcome);
    if (outcome === 'success') saveState(config.work, ctx.state); // what clean-up steps finished (a download)
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return { timings, state: ctx.state };
}

/**
 * Wait for a stage. Stages pass ctx.signal to everything long they do, so they end soon after an
 * abort; a stage that does not is given a grace period, then left behind so that the clean-up
 * still runs.
 */
async function untilAbortedOrDone(work: Promise<void>, signal: AbortSignal, graceMs = 15_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort = () => {};
  const givenUp = new Promise<never>((_, reject) => {
    onAbort = () => (timer = setTimeout(() => reject(signal.reason), graceMs));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    await Promise.race([work, givenUp]);
  } finally {
    signal.removeEventListener('abort', onAbort);
    clearTimeout(timer);
  }
}
