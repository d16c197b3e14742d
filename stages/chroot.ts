import { copyFileSync } from 'node:fs';
import { basename } from 'node:path';
import { treeDigest } from '../engine/digest.ts';
import { CommandError } from '../engine/errors.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { plannedMode } from '../lib/chroot/emulation.ts';
import { chrootArgs, chrootRun, enterChroot, STAGING, stagedFiles } from '../lib/chroot/environment.ts';
import { SANDBOX } from '../lib/chroot/sandbox.ts';
import { scriptEnv, scriptList } from '../lib/chroot/scripts.ts';
import { rootDir } from '../lib/image/attached.ts';
import { inRoot } from '../lib/image/in-root.ts';

export interface ChrootStageOptions<C extends BuildConfig> {
  /** The stage's name (a pipeline with two chroot stages names one of them). */
  name?: string;
  /** The pipeline's own scripts (scripts/<pipeline>/). */
  scriptsDir?: string;
  /** Run the user's --script files after the pipeline's own (default: yes). */
  user?: boolean;
  /** Always keep a snapshot of the image as the stage leaves it (see Stage.snapshotAtEnd). */
  snapshotAtEnd?: boolean;
  /** What the scripts add to the root filesystem, given what it holds: for the grow stage. */
  grows?: (config: C, rootUsed: number) => number;
  /** The settings the pipeline's scripts use (shown by --plan, accepted by the command). */
  keys?: readonly (keyof C & string)[];
  /** Values derived from the settings, for the scripts too (the pimaster's BUILD_IP_ADDRESS...). */
  derived?: (config: C) => Record<string, string>;
}

async function runScript(ctx: BuildContext<BuildConfig>, script: string, index: number, env: Record<string, string>): Promise<void> {
  const name = basename(script);
  const inImage = `${STAGING}/scripts/${String(index).padStart(2, '0')}-${name}`;
  copyFileSync(script, inRoot(rootDir(ctx.paths.work), inImage));
  ctx.log.useFile(`chroot-${String(index).padStart(2, '0')}-${name}.log`);
  ctx.status(`script ${name}`);
  try {
    await chrootRun(ctx, ['/bin/bash', '-e', inImage], { env });
  } catch (error) {
    if (!(error instanceof CommandError)) throw error;
    const failed = new CommandError({
      stage: ctx.commands.stage,
      command: `script ${script}`,
      exitCode: error.exitCode,
      tail: error.tail,
      logFile: error.logFile,
    });
    if (ctx.config['shell-on-error'] && process.stdin.isTTY) {
      process.stderr.write(`\nscript ${name} failed (exit code ${error.exitCode}); a shell inside the image follows. Exit it to clean up.\n`);
      await ctx.commands.interactive(SANDBOX, chrootArgs(ctx, ['/bin/bash', '-i'], { ...env, TERM: process.env.TERM ?? 'xterm' }, true));
    }
    throw failed;
  }
}

/**
 * What the scripts read besides themselves: the gathered files (without .git directories, whose
 * index changes with every checkout, and the packed environments: the commits and the sources'
 * sha256 stand for them, in the build state and each environment's .json).
 */
async function stagedDigest(ctx: BuildContext): Promise<string> {
  const tree = await treeDigest(stagedFiles(ctx.paths.work), (rel) => basename(rel) === '.git' || rel.endsWith('.img.tar.gz'));
  return JSON.stringify({ tree, sources: ctx.state.sources ?? {} });
}

/** Run the pipeline's scripts and the user's inside the image, each with bash -e, in name order. */
export function chrootStage<C extends BuildConfig>(options: ChrootStageOptions<C> = {}): Stage<C> {
  const user = options.user ?? true;
  const scripts = (config: BuildConfig) => scriptList(options.scriptsDir, user ? config.script : []);
  return {
    name: options.name ?? 'chroot',
    snapshotAtEnd: options.snapshotAtEnd,
    describe: (config) => {
      const n = scripts(config).length;
      return n
        ? `run ${n} script${n > 1 ? 's' : ''} inside the image (a sandbox, apt cache bound in; chroot: ${plannedMode(config.arch)})`
        : 'no scripts to run (--script FILE)';
    },
    options: [...(user ? (['script'] as const) : []), 'apt-proxy', 'apt-mirror', 'shell-on-error', ...(options.keys ?? [])],
    async grows(ctx, rootUsed) {
      return (options.grows?.(ctx.config, rootUsed) ?? 0) + (user && ctx.config.script.length ? 512 * 2 ** 20 : 0);
    },
    async key(ctx) {
      // The settings part of the scripts' environment; what attach finds follows from the base image.
      const env = JSON.stringify(scriptEnv(ctx.config, { state: {}, pipeline: ctx.pipeline }, options.derived?.(ctx.config)));
      const staged = await stagedDigest(ctx);
      return Promise.all(
        scripts(ctx.config).map(async (script, i) => ({
          label: `after ${basename(script)}`,
          input: JSON.stringify({ i, name: basename(script), script: await treeDigest(script), env, staged }),
        })),
      );
    },
    async run(ctx) {
      const list = scripts(ctx.config);
      const env = scriptEnv(ctx.config, ctx, options.derived?.(ctx.config));
      // The chroot is left before a snapshot (its resolv.conf, policy-rc.d, ... must not be in
      // it) and entered again for the next script.
      let entered: number | undefined;
      const leave = async () => {
        if (entered === undefined) return;
        const errors = await ctx.cleanup.unwindTo(entered, 'success');
        entered = undefined;
        if (errors.length) throw errors[0];
      };
      for (const [i, script] of list.entries()) {
        if (i < ctx.stepsDone) continue; // in the image restored from the stage cache
        if (entered === undefined) {
          entered = ctx.cleanup.mark();
          await enterChroot(ctx, { aptProxy: ctx.config['apt-proxy'], aptMirror: ctx.config['apt-mirror'], files: stagedFiles(ctx.paths.work) });
        }
        await runScript(ctx, script, i + 1, env);
        await ctx.stepDone(leave);
      }
      await leave();
    },
  };
}
