/** What the extract tests share: a scratch config, the extract stage run alone, refusals, small zips. */
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import type { Download } from '../../lib/image/state.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { extractStage } from '../../stages/extract.ts';
import { assertNoWorkImage, assertUserError, sha256File } from './base-images.ts';
import { runStages, scratch, testConfig } from './build.ts';

export async function setup(t: ExecutionContext): Promise<{ dir: string; config: PimasterConfig }> {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return { dir, config: testConfig(dir) };
}

export async function extract(config: PimasterConfig, path: string, extra: Partial<Download> = {}) {
  return runStages([extractStage], config, { download: { path, sha256: await sha256File(path), source: path, ...extra } });
}

/** The extract fails with one line matching `pattern`, leaves no image and does not touch its input. */
export async function assertRefused(t: ExecutionContext, config: PimasterConfig, input: string, pattern: RegExp, extra: Partial<Download> = {}) {
  const before = await sha256File(input);
  const mtime = statSync(input).mtimeMs;
  const error = await assertUserError(t, extract(config, input, extra), pattern);
  assertNoWorkImage(t, config.work);
  t.is(await sha256File(input), before);
  t.is(statSync(input).mtimeMs, mtime);
  return error;
}

/** A 1 MiB "disk" with a boot signature: enough for zip tests that never get as far as the data. */
export function bootSignedDisk(): Buffer {
  const disk = Buffer.alloc(1024 * 1024);
  randomBytes(64 * 1024).copy(disk, 8192);
  disk[510] = 0x55;
  disk[511] = 0xaa;
  return disk;
}

/** Build a zip of the given files with the `zip` command (names stored as given, relative to `dir`). */
export async function makeZip(dir: string, zip: string, files: Record<string, Buffer>): Promise<void> {
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), content);
  }
  await execa('zip', ['-q', zip, ...Object.keys(files)], { cwd: dir });
}
