/**
 * fetch: get the base image and verify it. The base is an http(s) URL, a file:// URL, a local
 * path, or a release name resolved through Raspberry Pi Imager's OS list. Its sha256 comes from
 * --base-sha256, else the `.sha256` sidecar next to it, else the OS list; with none of them the
 * build stops unless --insecure-no-verify. Downloads are cached under
 * `<cache>/downloads/<sha256>/<file>` (a known checksum is looked up there before any download)
 * and resumed from `<cache>/downloads/partial/`. A local file is only read, never copied.
 */
import { createHash } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hashInto } from '../../engine/digest.ts';
import { UserError } from '../../engine/errors.ts';
import { tryLock } from '../../engine/lock.ts';
import { Progress } from '../../engine/progress.ts';
import { type BuildContext, Resource } from '../../engine/stage.ts';
import type { BuildConfig } from '../build-options.ts';
import type { Download } from '../image/state.ts';
import { type Downloaded, downloadToPartial, getText, type Net, probe } from './download.ts';
import { GrowingFile } from './growing-file.ts';
import { availableLite, isRelease, type OsImage, osListItems, pickRelease, type ReleaseName, walkOsList } from './imager-os-list.ts';

export { downloadPolicy } from './download.ts';

/** How many lists (the OS list and its `subitems_url` lists) a release lookup may load. */
const MAX_LISTS = 32;

export type Source = { kind: 'release'; release: ReleaseName } | { kind: 'url'; url: string } | { kind: 'file'; path: string };

export function sourceOf(base: string, flag = '--base'): Source {
  const trimmed = base.trim();
  if (isRelease(trimmed)) return { kind: 'release', release: trimmed };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed)) {
    let url: URL;
    try {
      url = new URL(trimmed);
    } catch {
      throw new UserError(`${flag} ${trimmed}: not a valid URL`);
    }
    if (url.protocol === 'file:') return { kind: 'file', path: fileURLToPath(url) };
    if (url.protocol === 'http:' || url.protocol === 'https:') return { kind: 'url', url: url.href };
    throw new UserError(`${flag} ${trimmed}: only http(s) and file URLs are supported`);
  }
  return { kind: 'file', path: resolve(trimmed) };
}

/**
 * The checksum of `fileName` in a sha256sum file ("HEX  name", "HEX *name", a bare "HEX", or BSD
 * "SHA256 (name) = HEX"). A file with one line is taken whatever name it gives.
 */
export function parseSha256File(text: string, fileName: string, where: string): string {
  const entries: { sha: string; name?: string }[] = [];
  for (const line of text.split(/\r?\n/)) {
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const gnu = /^([0-9a-f]{64})(?:\s+\*?(.+))?$/i.exec(trimmed);
    const bsd = /^SHA256\s*\((.+)\)\s*=\s*([0-9a-f]{64})$/i.exec(trimmed);
    if (gnu) entries.push({ sha: gnu[1]!.toLowerCase(), name: gnu[2]?.trim() });
    else if (bsd) entries.push({ sha: bsd[2]!.toLowerCase(), name: bsd[1]!.trim() });
    else throw new UserError(`checksum file ${where} is not in sha256sum format ("HEX  name"): fix it or give --base-sha256`);
  }
  const named = entries.find((e) => e.name !== undefined && basename(e.name) === fileName);
  if (named) return named.sha;
  if (entries.length === 1) return entries[0]!.sha;
  throw new UserError(`checksum file ${where} has no line for ${fileName}: give --base-sha256`);
}

/** The name a download is cached under: the last part of its URL's path, made safe. */
export function fileNameOf(url: string): string {
  let name = '';
  try {
    name = basename(decodeURIComponent(new URL(url).pathname));
  } catch {
    name = basename(url);
  }
  name = name.replace(/[^\w.+@-]/g, '_').replace(/^\.+/, '');
  return name === '' ? 'download' : name;
}

/** A verified download already in the cache, preferably under `name`. */
async function findCached(cache: string, sha256: string, name?: string): Promise<string | undefined> {
  const dir = join(cache, 'downloads', sha256);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => !n.startsWith('.')).sort();
  } catch {
    return undefined;
  }
  const ordered = name && names.includes(name) ? [name, ...names.filter((n) => n !== name)] : names;
  for (const candidate of ordered) {
    const path = join(dir, candidate);
    const info = await stat(path).catch(() => undefined);
    if (info?.isFile() && info.size > 0) return path;
  }
  return undefined;
}

interface Expected {
  sha256: string;
  from: string;
}

function mismatch(what: string, expected: Expected, got: string, fix: string): UserError {
  return new UserError(`${what} failed verification: expected sha256 ${expected.sha256} (from ${expected.from}), got ${got}: ${fix}`);
}

function netOf(ctx: BuildContext): Net {
  return { signal: ctx.signal, log: (line) => ctx.log.line(line), status: (text) => ctx.status(text) };
}

async function loadList(url: string, net: Net): Promise<unknown> {
  let text: string;
  if (url.startsWith('file:')) {
    try {
      text = await readFile(fileURLToPath(url), 'utf8');
    } catch (error) {
      throw new UserError(`cannot read the OS list ${url}: ${(error as NodeJS.ErrnoException).code ?? error}`);
    }
  } else {
    text = (await getText(url, net, 'the OS list'))!;
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UserError(`OS list ${url} is not valid JSON (${(error as Error).message}): check --os-list`);
  }
}

const originOf = (url: string) => {
  const u = new URL(url);
  return u.protocol === 'file:' ? 'file:' : u.origin;
};

/**
 * The image a release name stands for, through the OS list and the `subitems_url` lists it
 * points to on the same server (the build talks to no other host than the ones it was given).
 */
export async function resolveRelease(release: ReleaseName, config: BuildConfig, net: Net): Promise<OsImage> {
  const root = config['os-list'];
  const queue = [root];
  const seen = new Set(queue);
  const images: OsImage[] = [];
  const skipped: string[] = [];
  while (queue.length > 0 && seen.size <= MAX_LISTS) {
    const url = queue.shift()!;
    let json: unknown;
    try {
      json = await loadList(url, net);
    } catch (error) {
      if (url === root || net.signal.aborted) throw error;
      net.log(`skipping the OS sub-list ${url}: ${(error as Error).message}`);
      skipped.push(url);
      continue;
    }
    const found = walkOsList(osListItems(json, url), url);
    images.push(...found.images);
    for (const sub of found.subLists) {
      if (seen.has(sub)) continue;
      seen.add(sub);
      if (originOf(sub) !== originOf(root)) {
        net.log(`not following ${sub}: not on the OS list's own server`);
        continue;
      }
      queue.push(sub);
    }
  }
  const image = pickRelease(images, release, config.arch);
  if (!image) {
    const unread = skipped.length ? `; could not read ${skipped.join(', ')}` : '';
    throw new UserError(
      `no Raspberry Pi OS Lite ${release === 'latest' ? 'image' : release} for ${config.arch} in the OS list ${root} (it has: ${availableLite(images)}${unread}): give the image's URL with --base`,
    );
  }
  net.log(`${release} (${config.arch}) is ${image.name}, released ${image.releaseDate ?? '(no date)'}: ${image.url}`);
  return image;
}

/**
 * What to fetch: the base image, or another image given the same way (a deployable environment).
 * `flag` is how the user names it, `shaFlag` how they give its checksum (if they can).
 */
export interface FetchRequest {
  source: string;
  sha256?: string;
  what: string;
  flag: string;
  shaFlag?: string;
}

export function baseRequest(config: BuildConfig): FetchRequest {
  return { source: config.base, sha256: config['base-sha256'], what: 'base image', flag: '--base', shaFlag: '--base-sha256' };
}

const giveChecksum = (req: FetchRequest) => (req.shaFlag ? `give ${req.shaFlag} HEX` : 'put a .sha256 file next to it');

async function sha256Of(ctx: BuildContext, path: string): Promise<string> {
  const hash = createHash('sha256');
  await hashInto(path, hash, ctx.signal, new Progress(ctx.status, 'sha256', (await stat(path)).size));
  return hash.digest('hex');
}

/** A local file: hashed where it is, never copied or changed. */
async function fetchLocal(ctx: BuildContext<BuildConfig>, path: string, req: FetchRequest): Promise<Download> {
  const config = ctx.config;
  const info = await stat(path).catch(() => undefined);
  if (!info) throw new UserError(`${req.what} ${path} does not exist: check ${req.flag}`);
  if (!info.isFile()) throw new UserError(`${req.what} ${path} is not a file: check ${req.flag}`);
  let expected: Expected | undefined;
  const sidecar = `${path}.sha256`;
  if (req.sha256) expected = { sha256: req.sha256, from: req.shaFlag ?? 'the request' };
  else if (existsSync(sidecar)) expected = { sha256: parseSha256File(await readFile(sidecar, 'utf8'), basename(path), sidecar), from: sidecar };
  else if (!config['insecure-no-verify']) {
    throw new UserError(
      `${req.what} ${path} has no checksum: no ${req.shaFlag ? `${req.shaFlag} and no ` : ''}${basename(sidecar)} next to it; ${giveChecksum(req)}, or --insecure-no-verify to use it unverified`,
    );
  }
  const got = await sha256Of(ctx, path);
  if (expected && got !== expected.sha256) {
    throw mismatch(
      `${req.what} ${path}`,
      expected,
      got,
      expected.from === req.shaFlag ? `check ${req.shaFlag} or the file` : `the file or ${basename(sidecar)} is wrong`,
    );
  }
  ctx.log.line(expected ? `${path}: sha256 ${got} matches ${expected.from}` : `${path}: sha256 ${got}, NOT VERIFIED (--insecure-no-verify)`);
  return { path, sha256: got, source: req.source };
}

/** https, or this machine itself (nothing on the network stands between): what a checksum may come over. */
function trustedTransport(url: string): boolean {
  const { protocol, hostname } = new URL(url);
  return protocol === 'https:' || hostname === '127.0.0.1' || hostname === 'localhost' || hostname === '[::1]';
}

/** A URL: from the cache when its checksum is known and there, else downloaded (resumably) into it. */
async function fetchRemote(ctx: BuildContext<BuildConfig>, url: string, req: FetchRequest, listed: OsImage | undefined, stream: boolean): Promise<Download> {
  const config = ctx.config;
  const net = netOf(ctx);
  const cache = ctx.paths.cache;
  const fromList = listed ? { extractSha256: listed.extractSha256, extractSize: listed.extractSize, releaseDate: listed.releaseDate } : {};
  // Whom the checksum comes from, most trusted first: the user, the OS list, the origin's own
  // sidecar (never a mirror's the download was redirected to), and only over https (or from this
  // machine): a checksum fetched over plain http proves nothing about a download over plain http.
  let expected: Expected | undefined = req.sha256 ? { sha256: req.sha256, from: req.shaFlag ?? 'the request' } : undefined;
  if (!expected && listed?.downloadSha256) expected = { sha256: listed.downloadSha256, from: `the OS list ${config['os-list']}` };
  let finalUrl = url;
  if (!expected) {
    finalUrl = (await probe(url, net)).url;
    if (finalUrl !== url) ctx.log.line(`${url} redirects to ${finalUrl}`);
    const sidecar = `${url}.sha256`;
    if (trustedTransport(sidecar)) {
      const text = await getText(sidecar, net, 'the checksum', true);
      if (text !== undefined) expected = { sha256: parseSha256File(text, fileNameOf(url), sidecar), from: sidecar };
    }
    if (!expected && !config['insecure-no-verify']) {
      const why = trustedTransport(sidecar) ? `no ${fileNameOf(url)}.sha256 next to it` : `a ${fileNameOf(url)}.sha256 over plain http would prove nothing`;
      throw new UserError(
        `no checksum for ${req.what} ${url}: ${req.shaFlag ? `no ${req.shaFlag}, ` : ''}${why}${listed ? ' and none in the OS list' : ''}; ${giveChecksum(req)}, or --insecure-no-verify to use it unverified`,
      );
    }
  }
  if (expected) {
    const cached = await findCached(cache, expected.sha256, fileNameOf(finalUrl));
    // Hashed again on every use: the cache is a directory anyone with root (or a bad disk) can change.
    if (cached && (await sha256Of(ctx, cached)) === expected.sha256) {
      ctx.log.line(`${url}: already in the cache as ${cached} (sha256 ${expected.sha256} from ${expected.from}, hashed again)`);
      return { path: cached, sha256: expected.sha256, source: req.source, url: finalUrl, ...fromList };
    }
    if (cached) {
      ctx.log.line(`${cached}: no longer matches sha256 ${expected.sha256}: removed, downloading it again`);
      await rm(cached, { force: true });
    }
  }

  const key = expected ? expected.sha256 : `url-${createHash('sha256').update(finalUrl).digest('hex').slice(0, 32)}`;
  // One build at a time writes the shared part (the next build resumes it); another build that
  // downloads the same file meanwhile (a cache shared by parallel builds) writes one of its own.
  const parts = join(cache, 'downloads', 'partial');
  await mkdir(parts, { recursive: true });
  const shared = join(parts, `${key}.part`);
  const owned = tryLock(`${shared}.lock`);
  const partial = owned ? shared : join(parts, `${key}.${process.pid}.part`);
  ctx.defer(owned ? `let go of ${shared}` : `remove ${partial}`, () => rmSync(owned ? `${shared}.lock` : partial, { recursive: true, force: true }));
  if (!owned) ctx.log.line(`another build is downloading ${finalUrl} into the cache: this one downloads its own copy`);
  const keep = async (got: Downloaded): Promise<Download> => {
    if (expected && got.sha256 !== expected.sha256) {
      await rm(partial, { force: true });
      const fix =
        expected.from === req.shaFlag
          ? `nothing was kept; check ${req.shaFlag}`
          : 'nothing was kept; the download was damaged or the checksum is stale: run the build again';
      throw mismatch(`download ${got.url}`, expected, got.sha256, fix);
    }
    const dir = join(cache, 'downloads', got.sha256);
    await mkdir(dir, { recursive: true });
    const path = join(dir, fileNameOf(got.url));
    await rename(partial, path);
    ctx.log.line(
      expected
        ? `${got.url}: ${got.size} bytes, sha256 ${got.sha256} matches ${expected.from}; cached as ${path}`
        : `${got.url}: ${got.size} bytes, sha256 ${got.sha256}, NOT VERIFIED (--insecure-no-verify); cached as ${path}`,
    );
    return { path, sha256: got.sha256, source: req.source, url: got.url, ...fromList };
  };
  // A zip is read from its end (the central directory): it is extracted once it is all here.
  if (!stream || !expected || /\.zip$/i.test(fileNameOf(finalUrl))) return keep(await downloadToPartial(finalUrl, partial, net));

  // The download goes on while the next stage extracts it; the build waits for it, verified, at
  // the end of extract (or of the build), and stops it if the build fails first.
  await mkdir(dirname(partial), { recursive: true });
  const growing = new GrowingFile(partial);
  const stop = new AbortController();
  const done = downloadToPartial(finalUrl, partial, { ...net, signal: AbortSignal.any([ctx.signal, stop.signal]) }, () => growing.grew()).then(keep);
  done.then(
    () => growing.finish(),
    (error: unknown) => growing.finish(error),
  );
  ctx.defer(`finish the download of ${finalUrl}`, async (outcome) => {
    if (outcome !== 'success') stop.abort(new Error('the build stopped'));
    const download = await done.catch(() => undefined);
    await growing.close();
    if (download && outcome === 'success') ctx.state.download = download;
  });
  ctx.resources.set(DOWNLOADING, { growing, done } satisfies Downloading);
  return { path: partial, sha256: expected.sha256, source: req.source, url: finalUrl, ...fromList };
}

/** A download still in progress when fetch ends: extract reads it as it grows (ctx.resources). */
export interface Downloading {
  growing: GrowingFile;
  /** The download kept in the cache, verified; rejects with its one-line error. */
  done: Promise<Download>;
}
/** A download extract may start on before it completes (a checksum known beforehand). */
export const DOWNLOADING = new Resource<Downloading>('downloading');

/**
 * Get and verify an image given as a path, a URL or a release name. With `stream`, a download
 * whose checksum is known beforehand is left running for extract (see DOWNLOADING).
 */
export async function fetchImage(ctx: BuildContext<BuildConfig>, req: FetchRequest, stream = false): Promise<Download> {
  const source = sourceOf(req.source, req.flag);
  if (source.kind === 'file') return fetchLocal(ctx, source.path, req);
  if (source.kind === 'url') return fetchRemote(ctx, source.url, req, undefined, stream);
  const image = await resolveRelease(source.release, ctx.config, netOf(ctx));
  return fetchRemote(ctx, image.url, req, image, stream);
}
