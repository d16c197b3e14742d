/** The scripts a chroot stage runs, and the environment they see. */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import { imageInputs } from '../../engine/options.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { type BuildConfig, buildConfigSchema } from '../build-options.ts';
import { RESTORE_IMAGE_FILES, STAGING } from './environment.ts';

/**
 * The settings as environment variables of every script (those that can change what the image
 * holds: not --work, --compress, ...): each key upper-cased with `-` as `_`
 * and a BUILD_ prefix (BUILD_ARCH, BUILD_HOSTNAME, ...), lists space-separated, switches
 * "true"/"false", values derived from them (BUILD_IP_ADDRESS, BUILD_IP_PREFIX, BUILD_IP_NETWORK,
 * BUILD_IP_NETMASK), what attach found (BUILD_CODENAME, BUILD_BOOT_MOUNT, BUILD_NETWORK), and
 * BUILD_PIPELINE, BUILD_STAGING (the directory of staged files inside the image) and
 * BUILD_RESTORE_IMAGE_FILES (run it on a copy of the root: see RESTORE_IMAGE_FILES).
 */
export function scriptEnv(config: BuildConfig, ctx: Pick<BuildContext, 'state' | 'pipeline'>, derived: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  const name = (key: string) => `BUILD_${key.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
  for (const [key, value] of Object.entries(imageInputs(buildConfigSchema, config))) {
    if (value !== undefined) env[name(key)] = Array.isArray(value) ? value.join(' ') : String(value);
  }
  for (const [key, value] of Object.entries(derived)) env[name(key)] = value;
  const system = ctx.state.system;
  if (system) Object.assign(env, { BUILD_CODENAME: system.codename, BUILD_BOOT_MOUNT: system.bootMount, BUILD_NETWORK: system.network });
  env.BUILD_PIPELINE = ctx.pipeline;
  env.BUILD_STAGING = STAGING;
  env.BUILD_RESTORE_IMAGE_FILES = RESTORE_IMAGE_FILES;
  return env;
}

/** The pipeline's own scripts in name order, then the user's (--script) in name order. */
export function scriptList(dir: string | undefined, user: readonly string[]): string[] {
  const own =
    dir && existsSync(dir)
      ? readdirSync(dir)
          .filter((f) => f.endsWith('.sh'))
          .sort()
          .map((f) => join(dir, f))
      : [];
  for (const file of user) {
    if (!existsSync(file) || !statSync(file).isFile()) throw new UserError(`--script ${file}: no such file`);
  }
  const theirs = [...user].map((f) => resolve(f)).sort((a, b) => basename(a).localeCompare(basename(b)));
  return [...own, ...theirs];
}
