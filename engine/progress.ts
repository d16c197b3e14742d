import { formatBytes } from './options.ts';

/** A byte counter that renders as "120 MiB / 400 MiB  31 MiB/s  ETA 9 s" through a status line. */
export class Progress {
  readonly #status: (text: string) => void;
  readonly #label: string;
  readonly #total: number | undefined;
  readonly #started = performance.now();
  readonly #startBytes: number;
  #done = 0;

  constructor(status: (text: string) => void, label: string, total?: number, already = 0) {
    this.#status = status;
    this.#label = label;
    this.#total = total;
    this.#done = already;
    this.#startBytes = already;
  }

  add(bytes: number): void {
    this.#done += bytes;
    this.#status(this.text());
  }

  text(): string {
    const seconds = (performance.now() - this.#started) / 1000;
    const rate = seconds > 0 ? (this.#done - this.#startBytes) / seconds : 0;
    const parts = [this.#label, this.#total ? `${formatBytes(this.#done)} / ${formatBytes(this.#total)}` : formatBytes(this.#done)];
    if (rate > 0) parts.push(`${formatBytes(rate)}/s`);
    if (this.#total && rate > 0) parts.push(`ETA ${Math.max(0, Math.round((this.#total - this.#done) / rate))} s`);
    return parts.join('  ');
  }
}
