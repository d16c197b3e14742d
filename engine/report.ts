import { Listr } from 'listr2';

/** Runs one stage, given a way to show a live status line under it; may return a note ("from cache"). */
/** What a reporter shows of a stage: its name. */
export interface Named {
  readonly name: string;
}
export type StageBody<S extends Named> = (stage: S, status: (text: string) => void) => Promise<string | undefined>;

/** How the build shows itself: listr2's live task list on a terminal, plain timestamped lines elsewhere. */
export interface Reporter {
  sequence<S extends Named>(stages: readonly S[], body: StageBody<S>): Promise<void>;
  info(text: string): void;
}

const clock = () => new Date().toISOString().slice(11, 19);

/** Calls `fn` at most once per `ms`, always keeping the latest text. */
function throttle(ms: number, fn: (text: string) => void): (text: string) => void {
  let last = 0;
  return (text) => {
    const now = Date.now();
    if (now - last >= ms) {
      last = now;
      fn(text);
    }
  };
}

/** One timestamped line per stage start and end: for CI logs, pipes and --verbose. */
export class LineReporter implements Reporter {
  readonly #write: (text: string) => void;
  constructor(write: (text: string) => void = (t) => process.stderr.write(t)) {
    this.#write = write;
  }
  info(text: string): void {
    this.#write(`[${clock()}] ${text}\n`);
  }
  async sequence<S extends Named>(stages: readonly S[], body: StageBody<S>): Promise<void> {
    for (const stage of stages) {
      const started = performance.now();
      this.info(`${stage.name}: started`);
      let note: string | undefined;
      try {
        note = await body(
          stage,
          throttle(10_000, (text) => this.info(`${stage.name}: ${text}`)),
        );
      } catch (error) {
        this.info(`${stage.name}: failed after ${((performance.now() - started) / 1000).toFixed(1)} s`);
        throw error;
      }
      this.info(`${stage.name}: done in ${((performance.now() - started) / 1000).toFixed(1)} s${note ? ` (${note})` : ''}`);
    }
  }
}

/** Only errors and the result (--quiet). */
export class QuietReporter implements Reporter {
  info(): void {}
  async sequence<S extends Named>(stages: readonly S[], body: StageBody<S>): Promise<void> {
    for (const stage of stages) await body(stage, () => {});
  }
}

/** listr2's live list, for a person at a terminal. */
export class ListrReporter implements Reporter {
  info(text: string): void {
    process.stderr.write(`${text}\n`);
  }
  async sequence<S extends Named>(stages: readonly S[], body: StageBody<S>): Promise<void> {
    const list = new Listr(
      stages.map((stage) => ({
        title: stage.name,
        task: async (_ctx: unknown, task: { output: string; title: string }) => {
          const started = performance.now();
          const note = await body(
            stage,
            throttle(200, (text) => (task.output = text)),
          );
          task.title = `${stage.name} (${((performance.now() - started) / 1000).toFixed(1)} s${note ? `, ${note}` : ''})`;
        },
      })),
      { exitOnError: true, registerSignalListeners: false, rendererOptions: { collapseErrors: false } },
    );
    await list.run();
  }
}

export function pickReporter(options: { quiet: boolean; verbose: boolean; 'shell-on-error'?: boolean }): Reporter {
  if (options.quiet) return new QuietReporter();
  const ci = process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false';
  // A shell opened inside the image needs the terminal to itself: no live task list redrawing it.
  if (options.verbose || options['shell-on-error'] || ci || !process.stderr.isTTY) return new LineReporter();
  return new ListrReporter();
}
