import { copyFileSync, existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { scoped } from '../pipeline/cleanup.ts';
import { derivedValues, type Config, type ConfigKey } from '../pipeline/config.ts';
import { CommandError, UserError } from '../pipeline/errors.ts';
import type { BuildContext, Stage } from '../pipeline/stage.ts';
import { rootDir } from './attach.ts';
import { chrootArgs, chrootRun, enterChroot, STAGING, stagedFiles } from './chroot.ts';

/**
 * The settings as environment variables of every script: each key upper-cased with `-` as `_`
 * and a BUILD_ prefix (BUILD_ARCH, BUILD_HOSTNAME, ...), lists space-separated, switches
 * "true"/"false", values derived from them (BUILD_IP_ADDRESS, BUILD_IP_PREFIX, BUILD_IP_NETWORK,
 * BUILD_IP_NETMASK), what attach found (BUILD_CODENAME, BUILD_BOOT_MOUNT, BUILD_NETWORK), and
 * BUILD_PIPELINE and BUILD_STAGING (the directory of staged files inside the image).
 */
export function scriptEnv(config: Config, ctx: Pick<BuildContext, 'state' | 'pipeline'>): Record<string, string> {
  const env: Record<string, string> = {};
  const name = (key: string) => `BUILD_${key.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
  for (const [key, value] of Object.entries(config)) {
    if (value === undefined || ['work', 'cache', 'out', 'verbose', 'quiet', 'shell-on-error'].includes(key)) continue;
    env[name(key)] = Array.isArray(value) ? value.join(' ') : String(value);
  }
  for (const [key, value] of Object.entries(derivedValues(config))) env[name(key)] = value;
  const system = ctx.state.system;
  if (system) Object.assign(env, { BUILD_CODENAME: system.codename, BUILD_BOOT_MOUNT: system.bootMount, BUILD_NETWORK: system.network });
  env.BUILD_PIPELINE = ctx.pipeline;
  env.BUILD_STAGING = STAGING;
  return env;
}

/** The pipeline's own scripts in name order, then the user's (--script) in name order. */
export function scriptList(dir: string | undefined, user: readonly string[]): string[] {
  const own = dir && existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.sh')).sort().map((f) => join(dir, f)) : [];
  for (const file of user) {
    if (!existsSync(file) || !statSync(file).isFile()) throw new UserError(`--script ${file}: no such file`);
  }
  const theirs = [...user].map((f) => resolve(f)).sort((a, b) => basename(a).localeCompare(basename(b)));
  return [...own, ...theirs];
}

export interface ChrootStageOptions {
  /** The pipeline's own scripts (scripts/<pipeline>/). */
  scriptsDir?: string;
  /** What the scripts add to the root filesystem, given what it holds: for the grow stage. */
  grows?: (config: Config, rootUsed: number) => number;
  /** The settings the pipeline's scripts use (shown by --plan, accepted by the command). */
  keys?: readonly ConfigKey[];
}

async function runScript(ctx: BuildContext, script: string, index: number, env: Record<string, string>): Promise<void> {
  const name = basename(script);
  const inImage = `${STAGING}/scripts/${String(index).padStart(2, '0')}-${name}`;
  copyFileSync(script, join(rootDir(ctx.paths.work), inImage));
  ctx.log.useFile(`chroot-${String(index).padStart(2, '0')}-${name}.log`);
  ctx.status(`script ${name}`);
  try {
    await chrootRun(ctx, ['/bin/bash', '-e', inImage], { env });
  } catch (error) {
    if (!(error instanceof CommandError)) throw error;
    const failed = new CommandError({ stage: ctx.commands.stage, command: `script ${script}`, exitCode: error.exitCode, tail: error.tail, logFile: error.logFile });
    if (ctx.config['shell-on-error'] && process.stdin.isTTY) {
      process.stderr.write(`\nscript ${name} failed (exit code ${error.exitCode}); a shell inside the image follows. Exit it to clean up.\n`);
      await ctx.commands.interactive('chroot', chrootArgs(ctx, ['/bin/bash', '-i'], { ...env, TERM: process.env.TERM ?? 'xterm' }));
    }
    throw failed;
  }
}

/** Run the pipeline's scripts and the user's inside the image, each with bash -e, in name order. */
export function chrootStage(options: ChrootStageOptions = {}): Stage {
  return {
    name: 'chroot',
    describe: (config) => {
      const n = scriptList(options.scriptsDir, config.script).length;
      return n ? `run ${n} script${n > 1 ? 's' : ''} inside the image (qemu-user, apt cache bound in)` : 'no scripts to run (--script FILE)';
    },
    options: ['script', 'apt-proxy', 'apt-mirror', 'shell-on-error', ...(options.keys ?? [])],
    async grows(ctx, rootUsed) {
      return (options.grows?.(ctx.config, rootUsed) ?? 0) + (ctx.config.script.length ? 512 * 2 ** 20 : 0);
    },
    async run(ctx) {
      const scripts = scriptList(options.scriptsDir, ctx.config.script);
      if (scripts.length === 0) return;
      await scoped(ctx.cleanup, ctx.signal, async () => {
        await enterChroot(ctx, { aptProxy: ctx.config['apt-proxy'], aptMirror: ctx.config['apt-mirror'], files: stagedFiles(ctx.paths.work) });
        const env = scriptEnv(ctx.config, ctx);
        for (const [i, script] of scripts.entries()) await runScript(ctx, script, i + 1, env);
      });
    },
  };
}
