/**
 * HTTP for the fetch stage, on Node's own fetch: bounded retries with exponential backoff, an idle
 * timeout, and downloads that resume a partial file with `Range` (hashing as they write, so the
 * file is read once). Everything stops at once when the build's signal is aborted.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, stat, truncate } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { hashInto } from '../../engine/digest.ts';
import { UserError } from '../../engine/errors.ts';
import { Progress } from '../../engine/progress.ts';

/** How hard to try. Tests shorten the delays; nothing else should change these. */
export const downloadPolicy = { attempts: 4, baseDelayMs: 1000, idleTimeoutMs: 60_000 };

export interface Net {
  signal: AbortSignal;
  log: (line: string) => void;
  status: (text: string) => void;
}

export class HttpStatusError extends Error {
  readonly status: number;
  constructor(status: number, statusText: string, url: string) {
    super(`HTTP ${status}${statusText ? ` ${statusText}` : ''} from ${url}`);
    this.name = 'HttpStatusError';
    this.status = status;
  }
}

/** Worth another try: the connection broke, the server stalled or said "later". */
class TransientError extends Error {}

class IdleTimeoutError extends TransientError {
  constructor(ms: number) {
    super(`no data for ${Math.round(ms / 1000)} s`);
  }
}

const TRANSIENT_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH']);

function isTransient(error: unknown): boolean {
  if (error instanceof TransientError) return true;
  if (error instanceof HttpStatusError) return error.status >= 500 || error.status === 408 || error.status === 429;
  // undici reports network failures as TypeError: "fetch failed" (connect) or "terminated" (body).
  if (error instanceof TypeError) return true;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && (TRANSIENT_CODES.has(code) || code.startsWith('UND_ERR_'));
}

/** "fetch failed (ECONNREFUSED)", "terminated (other side closed)": the message and its cause. */
export function reason(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause as (Error & { code?: string }) | undefined;
  const detail = cause ? cause.message || cause.code : undefined;
  return detail && !error.message.includes(detail) ? `${error.message} (${detail})` : error.message;
}

/**
 * Run `attempt` up to downloadPolicy.attempts times while it fails in a way worth retrying,
 * waiting 1, 2, 4... seconds in between. An abort of the build ends it at once with its reason.
 */
export async function withRetries<T>(what: string, net: Net, attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt();
    } catch (error) {
      if (net.signal.aborted) throw net.signal.reason;
      if (error instanceof UserError) throw error;
      const last = n >= downloadPolicy.attempts || !isTransient(error);
      if (last) {
        const tries = n > 1 ? ` (after ${n} attempts)` : '';
        throw new UserError(`cannot ${what}: ${reason(error)}${tries}`);
      }
      const delay = downloadPolicy.baseDelayMs * 2 ** (n - 1);
      net.log(`${what}: ${reason(error)}; attempt ${n + 1} of ${downloadPolicy.attempts} in ${delay / 1000} s`);
      try {
        await sleep(delay, undefined, { signal: net.signal });
      } catch {
        throw net.signal.reason;
      }
    }
  }
}

/** An abort signal that fires when the build is stopped or nothing arrives for a while. */
class Idle {
  readonly signal: AbortSignal;
  readonly #controller = new AbortController();
  readonly #timer: NodeJS.Timeout;
  constructor(outer: AbortSignal, ms = downloadPolicy.idleTimeoutMs) {
    this.signal = AbortSignal.any([outer, this.#controller.signal]);
    this.#timer = setTimeout(() => this.#controller.abort(new IdleTimeoutError(ms)), ms);
  }
  touch(): void {
    this.#timer.refresh();
  }
  stop(): void {
    clearTimeout(this.#timer);
  }
}

/**
 * A request whose redirects are followed here, not by fetch: a redirect from https to plain http
 * is refused before anything is asked over http. `url` is where it ended.
 */
async function request(
  url: string,
  net: Net,
  init: { method?: string; headers?: Record<string, string> } = {},
): Promise<{ response: Response; idle: Idle; url: string }> {
  const idle = new Idle(net.signal);
  try {
    for (let current = url, hops = 0; ; hops++) {
      const response = await fetch(current, { ...init, redirect: 'manual', signal: idle.signal });
      const location = response.headers.get('location');
      if (response.status < 300 || response.status > 399 || !location) return { response, idle, url: current };
      await response.body?.cancel();
      const next = new URL(location, current).href;
      if (new URL(current).protocol === 'https:' && new URL(next).protocol !== 'https:') {
        throw new UserError(
          `${url} redirects to ${next}: from https to plain http, where anyone on the way could change it; refused (use a URL that stays on https)`,
        );
      }
      if (hops >= 20) throw new UserError(`${url}: more than 20 redirects`);
      current = next;
    }
  } catch (error) {
    idle.stop();
    throw idle.signal.aborted && !net.signal.aborted ? idle.signal.reason : error;
  }
}

/** A small text file (a checksum sidecar, an OS list); undefined for 404/410 when `optional`. */
export async function getText(url: string, net: Net, what: string, optional = false): Promise<string | undefined> {
  return withRetries(`get ${what} ${url}`, net, async () => {
    const { response, idle } = await request(url, net);
    try {
      if (optional && (response.status === 404 || response.status === 410)) {
        await response.body?.cancel();
        return undefined;
      }
      if (!response.ok) {
        await response.body?.cancel();
        throw new HttpStatusError(response.status, response.statusText, url);
      }
      return await response.text();
    } finally {
      idle.stop();
    }
  });
}

/** Where a URL ends up after its redirects, and how big the file is, without downloading it. */
export async function probe(url: string, net: Net): Promise<{ url: string; size?: number }> {
  return withRetries(`reach ${url}`, net, async () => {
    let { response, idle, url: final } = await request(url, net, { method: 'HEAD' });
    try {
      if (response.status === 405 || response.status === 501) {
        // No HEAD here: start a GET and drop it once the headers are in.
        idle.stop();
        ({ response, idle, url: final } = await request(url, net));
        await response.body?.cancel();
      }
      if (!response.ok) throw new HttpStatusError(response.status, response.statusText, url);
      const length = Number(response.headers.get('content-length') ?? NaN);
      return { url: final, size: Number.isSafeInteger(length) ? length : undefined };
    } finally {
      idle.stop();
    }
  });
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw error;
  }
}

function parseContentRange(header: string | null): { start?: number; total?: number } | undefined {
  const m = /^bytes\s+(?:(\d+)-\d+|\*)\/(\d+|\*)$/i.exec(header?.trim() ?? '');
  if (!m) return undefined;
  return { start: m[1] !== undefined ? Number(m[1]) : undefined, total: m[2] !== '*' ? Number(m[2]) : undefined };
}

export interface Downloaded {
  /** The URL the file came from, after redirects. */
  url: string;
  sha256: string;
  size: number;
}

/**
 * Download `url` into `partial`, resuming what is already there: the part on disk is hashed
 * again, then the rest is asked for with `Range`. A server that answers 200 (whole file) instead
 * of 206 is fine: the file starts over. On failure the partial file stays for the next attempt
 * or the next build. `wrote` is called after every write (a reader following the file).
 */
export async function downloadToPartial(url: string, partial: string, net: Net, wrote: () => void = () => {}): Promise<Downloaded> {
  await mkdir(dirname(partial), { recursive: true });
  return withRetries(`download ${url}`, net, async () => {
    const have = await sizeOf(partial);
    let hash = createHash('sha256');
    if (have > 0) {
      net.log(`resuming ${url} after ${have} bytes already in ${partial}`);
      await hashInto(partial, hash, net.signal);
    }
    const { response, idle, url: finalUrl } = await request(url, net, have > 0 ? { headers: { range: `bytes=${have}-` } } : {});
    try {
      let offset = have;
      let total: number | undefined;
      if (have > 0 && response.status === 206) {
        const range = parseContentRange(response.headers.get('content-range'));
        if (range?.start !== have) {
          await response.body?.cancel();
          await truncate(partial, 0);
          throw new TransientError(`the server sent another range than bytes=${have}- (${response.headers.get('content-range')}): starting over`);
        }
        total = range.total;
      } else if (response.status === 200) {
        if (have > 0) net.log(`${finalUrl}: the server ignored the Range request and sends the whole file: starting over`);
        offset = 0;
        hash = createHash('sha256');
        const length = Number(response.headers.get('content-length') ?? NaN);
        total = Number.isSafeInteger(length) ? length : undefined;
      } else if (have > 0 && response.status === 416) {
        await response.body?.cancel();
        const range = parseContentRange(response.headers.get('content-range'));
        if (range?.total === have) return { url: finalUrl, sha256: hash.digest('hex'), size: have };
        await truncate(partial, 0);
        throw new TransientError(`the server refused bytes=${have}- (HTTP 416): starting over`);
      } else {
        await response.body?.cancel();
        throw new HttpStatusError(response.status, response.statusText, finalUrl);
      }
      if (!response.body) throw new TransientError('empty response');
      const progress = new Progress(net.status, 'download', total, offset);
      // Written chunk by chunk, in order: whatever arrived before a failure is on disk for the next attempt.
      const file = await open(partial, offset > 0 ? 'a' : 'w');
      try {
        for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
          idle.touch();
          await file.writeFile(chunk);
          wrote();
          hash.update(chunk);
          progress.add(chunk.length);
        }
      } catch (error) {
        throw idle.signal.aborted && !net.signal.aborted ? idle.signal.reason : error;
      } finally {
        await file.close();
      }
      const size = await sizeOf(partial);
      if (total !== undefined && size !== total) throw new TransientError(`the connection ended after ${size} of ${total} bytes`);
      return { url: finalUrl, sha256: hash.digest('hex'), size };
    } finally {
      idle.stop();
    }
  });
}
