/**
 * Raspberry Pi Imager's OS list (`os_list_imagingutility_v4.json`), read as plain data: which
 * entries are Raspberry Pi OS Lite images, of which release and architecture, and which one a
 * release name (`bookworm`, `latest`...) stands for. No I/O here: the fetch stage loads the lists
 * (including the ones named by `subitems_url`) and hands them over.
 */
import { UserError } from '../../engine/errors.ts';
import type { BuildConfig } from '../build-options.ts';
import { RELEASES } from '../build-options.ts';

export type ReleaseName = (typeof RELEASES)[number];
export type Arch = BuildConfig['arch'];
export type Codename = Exclude<ReleaseName, 'latest'>;

const CODENAMES: readonly Codename[] = RELEASES.filter((r): r is Codename => r !== 'latest');

/** One entry of the list, as far as the pipeline reads it (every field optional: it is the network's data). */
export interface OsListItem {
  name?: unknown;
  description?: unknown;
  url?: unknown;
  release_date?: unknown;
  extract_size?: unknown;
  extract_sha256?: unknown;
  image_download_size?: unknown;
  image_download_sha256?: unknown;
  subitems?: unknown;
  subitems_url?: unknown;
}

/** An image entry of the list, with what its URL says about it. */
export interface OsImage {
  name: string;
  url: string;
  releaseDate?: string;
  downloadSha256?: string;
  downloadSize?: number;
  extractSha256?: string;
  extractSize?: number;
  codename?: Codename;
  arch?: Arch;
  lite: boolean;
}

export function isRelease(base: string): base is ReleaseName {
  return (RELEASES as readonly string[]).includes(base);
}

/** The entries of a parsed list file: `{"os_list": [...]}` (the main list and sub-lists) or a bare array. */
export function osListItems(json: unknown, where: string): OsListItem[] {
  const list = Array.isArray(json) ? json : (json as { os_list?: unknown } | null)?.os_list;
  if (!Array.isArray(list))
    throw new UserError(`OS list ${where} has no "os_list" array: is it Raspberry Pi Imager's os_list_imagingutility_v4.json? (set --os-list)`);
  return list.filter((item): item is OsListItem => typeof item === 'object' && item !== null);
}

const str = (v: unknown) => (typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined);
const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined);
const sha = (v: unknown) => (typeof v === 'string' && /^[0-9a-f]{64}$/i.test(v) ? v.toLowerCase() : undefined);

/** Release, architecture and flavour of a Raspberry Pi OS image, from its URL (then its name and description). */
export function classify(url: string, text = ''): { codename?: Codename; arch?: Arch; lite: boolean; raspios: boolean } {
  let path: string;
  try {
    path = decodeURIComponent(new URL(url).pathname).toLowerCase();
  } catch {
    path = url.toLowerCase();
  }
  const file = path.slice(path.lastIndexOf('/') + 1);
  const raspios = /raspios|raspbian/.test(path);
  const lite = /[-_]lite(?=[-_./]|$)/.test(path);
  const archMatch = /(?:^|[-_/])(arm64|armhf)(?=[-_./]|$)/.exec(path);
  // Before arm64 builds existed the files were "raspbian-<codename>-lite" and 32-bit only.
  const arch = (archMatch?.[1] as Arch | undefined) ?? (raspios && /raspbian/.test(path) ? 'armhf' : undefined);
  let codename = CODENAMES.find((c) => new RegExp(`(?:raspios|raspbian)[-_]${c}(?=[-_.]|$)`).test(file));
  codename ??= CODENAMES.find((c) => new RegExp(`\\b${c}\\b`, 'i').test(text));
  return { codename, arch, lite, raspios };
}

/**
 * Every image entry of a list, nested `subitems` included, and the `subitems_url` lists it points
 * to (resolved against `base`, the list's own URL) that still have to be loaded.
 */
export function walkOsList(items: readonly OsListItem[], base: string): { images: OsImage[]; subLists: string[] } {
  const images: OsImage[] = [];
  const subLists: string[] = [];
  const visit = (list: readonly unknown[], depth: number) => {
    for (const raw of list) {
      if (typeof raw !== 'object' || raw === null) continue;
      const item = raw as OsListItem;
      if (Array.isArray(item.subitems) && depth < 16) visit(item.subitems, depth + 1);
      const sub = str(item.subitems_url);
      if (sub) {
        try {
          subLists.push(new URL(sub, base).href);
        } catch {
          // Not a URL: nothing to follow.
        }
      }
      const url = str(item.url);
      if (!url) continue;
      const name = str(item.name) ?? url;
      const { codename, arch, lite, raspios } = classify(url, `${name} ${str(item.description) ?? ''}`);
      if (!raspios) continue;
      let absolute = url;
      try {
        absolute = new URL(url, base).href;
      } catch {
        continue;
      }
      images.push({
        name,
        url: absolute,
        releaseDate: str(item.release_date),
        downloadSha256: sha(item.image_download_sha256),
        downloadSize: num(item.image_download_size),
        extractSha256: sha(item.extract_sha256),
        extractSize: num(item.extract_size),
        codename,
        arch,
        lite,
      });
    }
  };
  visit(items, 0);
  return { images, subLists: [...new Set(subLists)] };
}

/**
 * The Lite image a release name stands for: the newest (by release_date) Lite image of that
 * release and architecture; for `latest`, the newest Lite image of that architecture.
 */
export function pickRelease(images: readonly OsImage[], release: ReleaseName, arch: Arch): OsImage | undefined {
  const seen = new Set<string>();
  const candidates = images.filter((image) => {
    if (!image.lite || image.arch !== arch) return false;
    if (release !== 'latest' && image.codename !== release) return false;
    if (seen.has(image.url)) return false;
    seen.add(image.url);
    return true;
  });
  candidates.sort((a, b) => (b.releaseDate ?? '').localeCompare(a.releaseDate ?? '') || Number(!!b.downloadSha256) - Number(!!a.downloadSha256));
  return candidates[0];
}

/** What the list does offer, for the error when a release is not in it. */
export function availableLite(images: readonly OsImage[]): string {
  const found = new Set(
    images.filter((i) => i.lite && i.arch).map((i) => `${i.codename ?? 'unknown release'} ${i.arch}${i.releaseDate ? ` (${i.releaseDate})` : ''}`),
  );
  return found.size ? [...found].sort().join(', ') : 'no Raspberry Pi OS Lite image at all';
}
