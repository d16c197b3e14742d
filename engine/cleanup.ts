export type Outcome = 'success' | 'failure' | 'interrupted';

interface Entry {
  label: string;
  undo: (outcome: Outcome) => unknown;
}

/**
 * Whatever a stage attaches, mounts or creates is registered here where it is made, and undone
 * in reverse order. Unwinding never stops half way: an undo that fails is reported and the rest
 * still run.
 */
export class CleanupStack {
  #entries: Entry[] = [];
  #onError: (label: string, error: unknown) => void;

  constructor(onError: (label: string, error: unknown) => void = () => {}) {
    this.#onError = onError;
  }

  get size(): number {
    return this.#entries.length;
  }

  defer(label: string, undo: (outcome: Outcome) => unknown): void {
    this.#entries.push({ label, undo });
  }

  /** A position to unwind back to later (a stage that closes what an earlier one opened). */
  mark(): number {
    return this.#entries.length;
  }

  /** Undo everything registered after `mark`, newest first. Returns the errors it met. */
  async unwindTo(mark: number, outcome: Outcome): Promise<unknown[]> {
    const errors: unknown[] = [];
    while (this.#entries.length > mark) {
      const entry = this.#entries.pop()!;
      try {
        await entry.undo(outcome);
      } catch (error) {
        errors.push(error);
        this.#onError(entry.label, error);
      }
    }
    return errors;
  }

  unwind(outcome: Outcome): Promise<unknown[]> {
    return this.unwindTo(0, outcome);
  }
}

/**
 * Run `fn` with its own part of the stack: what it registers is undone when it returns (a loop
 * device needed only for one step), and by the build's unwinding if the process is stopped first.
 */
export async function scoped<T>(stack: CleanupStack, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  const mark = stack.mark();
  let outcome: Outcome = 'success';
  try {
    return await fn();
  } catch (error) {
    outcome = signal.aborted ? 'interrupted' : 'failure';
    throw error;
  } finally {
    const errors = await stack.unwindTo(mark, outcome);
    // biome-ignore lint/correctness/noUnsafeFinally: a failed clean-up after a success is the error to report; after a failure, the first error wins.
    if (errors.length && outcome === 'success') throw errors[0];
  }
}
