/**
 * Gather on the host what the chroot scripts need and the image cannot fetch itself: git sources
 * at their refs (cached as mirrors), public keys, single files. They land in `<work>/files`, which
 * the chroot stage binds read-only at /run/build-image/files.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, lutimesSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { CommandError, UserError } from '../engine/errors.ts';
import { withoutCredentials } from '../engine/redact.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { STAGING, stagedFiles } from '../lib/chroot/environment.ts';
import { extractImage } from '../lib/codec/decode.ts';
import { encodeImage } from '../lib/codec/encode.ts';
import type { Environment } from '../lib/sources/environments.ts';
import { imageBaseName } from '../lib/sources/environments.ts';
import { fetchImage } from '../lib/sources/fetch.ts';
import { splitGitSource } from '../lib/sources/git-source.ts';

export interface FilesSpec {
  /** Git sources (a config key holding URL_OR_DIR[#REF]) checked out as files/<name>. */
  git?: Record<string, string>;
  /** A list of public key files (a config key) concatenated into files/<name>. */
  keys?: Record<string, string>;
  /** Single files (a config key holding a path, may be unset) copied to files/<name>. */
  file?: Record<string, string>;
  /**
   * Images given as NAME=SOURCE (a config key; SOURCE as for --base, verified the same way),
   * packed as files/environments/<image>.img.tar.gz with a <NAME>.json describing it.
   */
  environments?: string;
}

async function packEnvironment(ctx: BuildContext<BuildConfig>, spec: string, dir: string): Promise<Environment> {
  const eq = spec.indexOf('=');
  const [name, source] = [spec.slice(0, eq), spec.slice(eq + 1)];
  const what = `environment ${name}`;
  const download = await fetchImage(ctx, { source, what, flag: '--environment' });
  const raw = join(ctx.paths.work, `environment-${name}.img`);
  ctx.defer(`remove ${raw}`, () => rmSync(raw, { force: true }));
  await extractImage(ctx, download, raw, what, '--environment');
  const { stdout } = await ctx.run('sfdisk', ['--json', raw]);
  const partitions = (JSON.parse(stdout) as { partitiontable: { partitions?: Array<{ start: number }> } }).partitiontable.partitions ?? [];
  if (partitions.length < 2)
    throw new UserError(`--environment ${name}: the image has ${partitions.length} partition(s); PiSeduce deploys images with a boot and a root partition`);
  const base = imageBaseName(download.path);
  const partials: string[] = [];
  const { outputs, size } = await encodeImage(
    ctx,
    raw,
    ['tar.gz'],
    (ext) => join(dir, `${base}.${ext}`),
    base,
    (file) => {
      partials.push(`${file}.partial`);
      return `${file}.partial`;
    },
  );
  for (const p of partials) renameSync(p, p.slice(0, -'.partial'.length));
  rmSync(raw, { force: true });
  const file = basename(outputs[0]!.path);
  const env: Environment = {
    name,
    img_name: file,
    path: `${STAGING}/files/environments/${file}`,
    img_size: size,
    sector_start: partitions[1]!.start,
    source_sha256: download.sha256,
  };
  writeFileSync(join(dir, `${name}.json`), `${JSON.stringify(env, null, 2)}\n`);
  ctx.log.line(`environment ${name}: ${file}, ${size} bytes, partition 2 at sector ${env.sector_start}`);
  return env;
}

declare module '../engine/stage.ts' {
  interface BuildState {
    /** name -> the repository, the ref asked for and the commit checked out (for the manifest). */
    sources?: Record<string, { repo: string; ref?: string; commit: string }>;
  }
}

const GIT_ENV = { GIT_TERMINAL_PROMPT: '0', GIT_CONFIG_NOSYSTEM: '1' };

/** A bare mirror of `repo` in the cache, fetched anew each build (a local directory costs nothing). */
async function mirror(ctx: BuildContext, repo: string, ref: string | undefined, flag: string): Promise<string> {
  const dir = join(ctx.paths.cache, 'git', `${createHash('sha256').update(repo).digest('hex').slice(0, 16)}.git`);
  if (ref && /^[0-9a-f]{40}$/.test(ref) && existsSync(join(dir, 'HEAD'))) {
    // A pinned commit already in the mirror: no network needed.
    const { exitCode } = await ctx.run('git', ['-C', dir, 'cat-file', '-e', `${ref}^{commit}`], { reject: false, env: GIT_ENV });
    if (exitCode === 0) return dir;
  }
  try {
    if (existsSync(join(dir, 'HEAD'))) {
      await ctx.run('git', ['-C', dir, 'fetch', '--quiet', '--prune', '--tags', repo, '+refs/heads/*:refs/heads/*'], { env: GIT_ENV });
    } else {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(join(ctx.paths.cache, 'git'), { recursive: true });
      await ctx.run('git', ['clone', '--quiet', '--mirror', repo, dir], { env: GIT_ENV });
    }
  } catch (error) {
    if (error instanceof CommandError) throw new UserError(`--${flag} ${repo}: cannot fetch it (${error.tail.at(-1) ?? `exit code ${error.exitCode}`})`);
    throw error;
  }
  return dir;
}

async function checkout(ctx: BuildContext<BuildConfig>, key: string, name: string, dest: string): Promise<void> {
  const { repo, ref } = splitGitSource(String(option(ctx.config, key)));
  const cached = await mirror(ctx, repo, ref, key);
  const { exitCode, stdout } = await ctx.run('git', ['-C', cached, 'rev-parse', '--verify', '--quiet', `${ref ?? 'HEAD'}^{commit}`], {
    reject: false,
    env: GIT_ENV,
  });
  if (exitCode !== 0) throw new UserError(`--${key} ${repo}#${ref}: no such ref in that repository`);
  const commit = stdout.trim();
  rmSync(dest, { recursive: true, force: true });
  await ctx.run('git', ['clone', '--quiet', '--no-checkout', cached, dest], { env: GIT_ENV });
  await ctx.run('git', ['-C', dest, 'checkout', '--quiet', '--detach', commit], { env: GIT_ENV });
  // The image keeps where its sources came from, not the credentials used to fetch them.
  await ctx.run('git', ['-C', dest, 'remote', 'set-url', 'origin', withoutCredentials(repo)], { env: GIT_ENV });
  await asCommitted(ctx, dest);
  ctx.state.sources = { ...ctx.state.sources, [name]: { repo: withoutCredentials(repo), ref, commit } };
  ctx.log.line(`${name}: ${repo} at ${commit}`);
}

/**
 * A checkout that is the same whenever it is made: its files carry the commit's time (Python's
 * .pyc, written when the image's scripts import them, embed their sources' times), the reflog of
 * the clone is dropped, and the index is read anew from the commit, with none of this host's
 * file times and inode numbers in it (git refreshes them when it next looks).
 */
async function asCommitted(ctx: BuildContext, dest: string): Promise<void> {
  const time = Number((await ctx.run('git', ['-C', dest, 'log', '-1', '--format=%ct'], { env: GIT_ENV })).stdout.trim());
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (dir === dest && entry.name === '.git') continue;
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      lutimesSync(path, time, time);
    }
  };
  walk(dest);
  lutimesSync(dest, time, time);
  rmSync(join(dest, '.git', 'logs'), { recursive: true, force: true });
  rmSync(join(dest, '.git', 'index'), { force: true });
  await ctx.run('git', ['-C', dest, 'read-tree', 'HEAD'], { env: GIT_ENV });
}

/** A pipeline's own option the spec names (the pimaster's --piseduce-webui...): the files stage reads it by name. */
const option = (config: BuildConfig, key: string): unknown => (config as unknown as Record<string, unknown>)[key];

export function filesStage(spec: FilesSpec): Stage<BuildConfig> {
  const keys = [
    ...Object.values(spec.git ?? {}),
    ...Object.values(spec.keys ?? {}),
    ...Object.values(spec.file ?? {}),
    ...(spec.environments ? [spec.environments] : []),
  ];
  return {
    name: 'files',
    describe: () =>
      `gather ${[...Object.keys(spec.git ?? {}), ...Object.keys(spec.keys ?? {}), ...Object.keys(spec.file ?? {}), ...(spec.environments ? ['environments'] : [])].join(', ')} for the scripts`,
    async grows(ctx) {
      // Gathered before grow: what the scripts will copy into the image is on disk already.
      const dir = stagedFiles(ctx.paths.work);
      if (!existsSync(dir)) return 0;
      const { stdout } = await ctx.run('du', ['-s', '--block-size=1', dir]);
      return Number(stdout.split('\t')[0]);
    },
    options: keys,
    async run(ctx) {
      const dir = stagedFiles(ctx.paths.work);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      for (const [name, key] of Object.entries(spec.git ?? {})) await checkout(ctx, key, name, join(dir, name));
      for (const [name, key] of Object.entries(spec.keys ?? {})) {
        const files = option(ctx.config, key) as string[];
        writeFileSync(
          join(dir, name),
          files
            .map((f) => readFileSync(f, 'utf8').trim())
            .filter(Boolean)
            .join('\n') + (files.length ? '\n' : ''),
        );
      }
      for (const [name, key] of Object.entries(spec.file ?? {})) {
        const path = option(ctx.config, key);
        if (typeof path === 'string') copyFileSync(path, join(dir, name));
      }
      const environments = spec.environments ? (option(ctx.config, spec.environments) as string[]) : [];
      if (environments.length) {
        mkdirSync(join(dir, 'environments'));
        for (const env of environments) await packEnvironment(ctx, env, join(dir, 'environments'));
      }
    },
  };
}
