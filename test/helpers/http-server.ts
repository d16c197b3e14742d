/**
 * A real HTTP server on 127.0.0.1 (random port) serving the files of a directory, for download
 * tests: Range requests (206/416), redirects, failures on demand (a connection cut after N bytes,
 * an error status, a server that ignores Range), and a log of every request.
 */
import { createReadStream, mkdirSync, rmSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ExecutionContext } from 'ava';
import { populate } from './base-images.ts';
import { scratch } from './build.ts';

export interface LoggedRequest {
  method: string;
  path: string;
  range: string | undefined;
  status: number;
}

export interface TestServer {
  /** http://127.0.0.1:PORT (no trailing slash). */
  readonly origin: string;
  url(path: string): string;
  /** Every request so far, in order. */
  readonly requests: LoggedRequest[];
  /** GETs of one path (the image downloads). */
  gets(path: string): LoggedRequest[];
  /** Answer `from` with a 302 to `to` (a path or a full URL). */
  redirect(from: string, to: string): void;
  /** The next GET of `path` (`times` of them) sends the headers, `bytes` bytes of body, then drops the connection. */
  cutAfter(path: string, bytes: number, times?: number): void;
  /** The next `times` requests of `path` get this status. */
  failWith(path: string, status: number, times?: number): void;
  /** Send `path` at this many bytes a second. */
  pace(path: string, bytesPerSecond: number): void;
  /** Answer Range requests with 200 and the whole file, as some servers do. */
  ignoreRange: boolean;
  close(): Promise<void>;
}

export async function startServer(root: string): Promise<TestServer> {
  const redirects = new Map<string, string>();
  const cuts = new Map<string, { bytes: number; times: number }>();
  const failures = new Map<string, { status: number; times: number }>();
  const paces = new Map<string, number>();
  const requests: LoggedRequest[] = [];
  const state = { ignoreRange: false };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const range = req.headers.range;
    const log = (status: number) => requests.push({ method: req.method ?? 'GET', path, range, status });
    const end = (status: number, headers: Record<string, string | number> = {}) => {
      log(status);
      res.writeHead(status, headers);
      res.end();
    };

    const failure = failures.get(path);
    if (failure && failure.times > 0) {
      failure.times--;
      return end(failure.status);
    }
    const target = redirects.get(path);
    if (target) return end(302, { location: target });

    const file = join(root, normalize(path));
    if (!file.startsWith(root)) return end(403);
    let size: number;
    try {
      const info = statSync(file);
      if (!info.isFile()) return end(404);
      size = info.size;
    } catch {
      return end(404);
    }

    let start = 0;
    let last = size - 1;
    let status = 200;
    const headers: Record<string, string | number> = { 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
    const m = range ? /^bytes=(\d*)-(\d*)$/.exec(range) : null;
    if (m && !state.ignoreRange) {
      if (m[1] === '') {
        start = Math.max(0, size - Number(m[2]));
      } else {
        start = Number(m[1]);
        if (m[2] !== '') last = Math.min(last, Number(m[2]));
      }
      if (start >= size || start > last) return end(416, { 'content-range': `bytes */${size}` });
      status = 206;
      headers['content-range'] = `bytes ${start}-${last}/${size}`;
    }
    headers['content-length'] = last - start + 1;
    log(status);
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return res.end();

    const cut = cuts.get(path);
    if (cut && cut.times > 0) {
      cut.times--;
      const stream = createReadStream(file, { start, end: Math.min(last, start + cut.bytes - 1) });
      stream.pipe(res, { end: false });
      // Like a connection dropped mid-transfer: the bytes sent arrive, then the connection closes
      // (ended, not destroyed, so they are flushed; a moment later, so the client has read them).
      stream.on('end', () => setTimeout(() => res.socket?.end(), 50));
      return;
    }
    const rate = paces.get(path);
    const source = createReadStream(file, { start, end: last, highWaterMark: 64 * 1024 });
    if (!rate) return void source.pipe(res);
    // Each chunk held back as long as it takes at `rate` bytes a second: a slow mirror.
    const paced = new Transform({ transform: (chunk: Buffer, _encoding, done) => void setTimeout(() => done(null, chunk), (1000 * chunk.length) / rate) });
    pipeline(source, paced, res).catch(() => {});
  };

  const server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    origin,
    url: (path) => `${origin}${path.startsWith('/') ? '' : '/'}${path}`,
    requests,
    gets: (path) => requests.filter((r) => r.method === 'GET' && r.path === path),
    redirect: (from, to) => redirects.set(from, to),
    cutAfter: (path, bytes, times = 1) => cuts.set(path, { bytes, times }),
    failWith: (path, status, times = 1) => failures.set(path, { status, times }),
    pace: (path, bytesPerSecond) => paces.set(path, bytesPerSecond),
    get ignoreRange() {
      return state.ignoreRange;
    },
    set ignoreRange(value: boolean) {
      state.ignoreRange = value;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A scratch directory whose `www/` holds `files`, served on 127.0.0.1 until the test ends. */
export async function serveFiles(t: ExecutionContext, files: Record<string, string | Buffer | { copy: string }>): Promise<{ dir: string; server: TestServer }> {
  const dir = scratch();
  const www = join(dir, 'www');
  mkdirSync(www);
  populate(www, files);
  const server = await startServer(www);
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, server };
}
