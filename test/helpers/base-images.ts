/** Base-image fixtures for the fetch and extract tests: a real tiny image and its archives. */
import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { UserError } from '../../engine/errors.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';

export const IMAGE_NAME = '2024-11-19-raspios-bookworm-arm64-lite.img';

export interface BaseImages {
  dir: string;
  /** The raw image and facts about it. */
  img: string;
  imgSha: string;
  imgSize: number;
  xz: string;
  zip: string;
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** A tiny image with 4 MiB of random data in its root, plus an .img.xz and a .zip of it. */
export async function makeBaseImages(dir: string): Promise<BaseImages> {
  mkdirSync(dir, { recursive: true });
  const img = join(dir, IMAGE_NAME);
  await makeTinyImage(img, { payloadMiB: 4 });
  await execa('xz', ['-k', '-T0', '-1', '-f', img]);
  await execa('zip', ['-q', '-j', '-1', `${img.slice(0, -4)}.zip`, img]);
  return { dir, img, imgSha: await sha256File(img), imgSize: statSync(img).size, xz: `${img}.xz`, zip: `${img.slice(0, -4)}.zip` };
}

/** A sha256sum line, as the download site's sidecars. */
export function sidecarFor(path: string, sha: string): string {
  return `${sha}  ${basename(path)}\n`;
}

/** Every file under `dir`, relative, sorted ([] when it does not exist). */
export function filesUnder(dir: string): string[] {
  let entries: string[];
  try {
    entries = readdirSync(dir, { recursive: true }) as string[];
  } catch {
    return [];
  }
  return entries.filter((e) => statSync(join(dir, e)).isFile()).sort();
}

/** What a failed build may leave in the download cache: only resumable parts. */
export function assertCacheHasOnlyParts(t: ExecutionContext, cache: string): void {
  const files = filesUnder(join(cache, 'downloads'));
  t.deepEqual(
    files.filter((f) => !/^partial\/[^/]+\.part$/.test(f)),
    [],
    `cache holds ${files.join(', ')}`,
  );
}

/** No image.img, and nothing partial of it, in the work dir. */
export function assertNoWorkImage(t: ExecutionContext, work: string): void {
  t.deepEqual(
    filesUnder(work).filter((f) => /\.img/.test(f)),
    [],
  );
}

/** A failure is one UserError line matching `pattern`. */
export async function assertUserError(t: ExecutionContext, promise: Promise<unknown>, pattern: RegExp): Promise<UserError> {
  const error = await t.throwsAsync(promise, { instanceOf: UserError });
  t.regex(error.message, pattern);
  t.false(error.message.includes('\n'), 'one line');
  return error;
}

/** The extracted image is the original byte for byte, and sparse. */
export async function assertSameSparseImage(t: ExecutionContext, image: string, base: BaseImages): Promise<void> {
  const info = statSync(image);
  t.is(info.size, base.imgSize);
  t.is(await sha256File(image), base.imgSha);
  t.true(info.blocks * 512 < info.size / 2, `allocated ${info.blocks * 512} of ${info.size} bytes`);
}

/** Lay out files for the test server: relative path -> source file or content. */
export function populate(root: string, files: Record<string, string | Buffer | { copy: string }>): void {
  for (const [path, content] of Object.entries(files)) {
    const target = join(root, path);
    mkdirSync(dirname(target), { recursive: true });
    if (typeof content === 'string' || Buffer.isBuffer(content)) writeFileSync(target, content);
    else copyFileSync(content.copy, target);
  }
}
