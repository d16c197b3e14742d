/**
 * A relay on 127.0.0.1 in front of the Debian mirror: apt inside an image reaches it as an HTTP
 * proxy (absolute request URLs) or as a mirror (`/debian/...`), and the test sees every request.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DEBIAN_MIRROR } from '../fixtures/debian-image.ts';

export interface AptRelay {
  origin: string;
  /** Request paths, as apt sent them. */
  requests: string[];
  close(): Promise<void>;
}

export async function startAptRelay(): Promise<AptRelay> {
  const requests: string[] = [];
  const upstream = new URL(DEBIAN_MIRROR);
  const server = createServer((req, res) => {
    const url = req.url ?? '/';
    requests.push(url);
    // Only the Debian mirror is relayed: this is no open proxy.
    const target = url.startsWith('http://') ? new URL(url) : new URL(url.replace(/^\/debian/, upstream.pathname), upstream.origin);
    if (target.origin !== upstream.origin) {
      res.writeHead(403).end();
      return;
    }
    const relay = async () => {
      const answer = await fetch(target, { method: req.method === 'HEAD' ? 'HEAD' : 'GET' });
      const headers: Record<string, string> = {};
      for (const name of ['content-type', 'content-length', 'last-modified', 'etag']) {
        const value = answer.headers.get(name);
        if (value) headers[name] = value;
      }
      res.writeHead(answer.status, headers);
      if (answer.body && req.method !== 'HEAD') await pipeline(Readable.fromWeb(answer.body as import('node:stream/web').ReadableStream), res);
      else res.end();
    };
    // apt hangs up on answers it no longer wants: that ends the relay of this one, nothing more.
    relay().catch(() => (res.headersSent ? res.destroy() : res.writeHead(502).end()));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
