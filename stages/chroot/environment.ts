/**
 * The environment for running code inside the attached image under qemu-user: kernel file
 * systems bound in, DNS from the host, no service starting, no libarmmem preload flooding qemu,
 * dpkg's unsafe-io, the host's apt archive cache, an optional apt proxy or mirror. Every change
 * to the image's own files is undone on the way out, so none of it stays in the finished image.
 */
import { copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../pipeline/errors.ts';
import type { RunOptions, RunResult } from '../../pipeline/commands.ts';
import type { BuildContext } from '../../pipeline/stage.ts';
import { rootDir } from '../attach.ts';
import { ensureBinfmt, type Arch } from './emulation.ts';
import { mount } from '../image/loop.ts';

const SAVED = '.build-image-saved';
/** Inside the image, on a tmpfs: scripts and files staged for them, gone after the build. */
export const STAGING = '/run/build-image';

/** Files gathered on the host for the scripts (sources, keys, environments): bound read-only at STAGING/files. */
export const stagedFiles = (work: string) => join(work, 'files');

/** The environment every command in the image gets (nothing of the host's leaks in). */
export const CHROOT_ENV: Readonly<Record<string, string>> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LANG: 'C.UTF-8',
  DEBIAN_FRONTEND: 'noninteractive',
  DEBCONF_NONINTERACTIVE_SEEN: 'true',
};

function present(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Put `content` at `path` in the image for the build (or just move the file aside when null), restored after. */
export function swapFile(ctx: BuildContext, root: string, path: string, content: string | null, mode = 0o644): void {
  const file = join(root, path);
  const saved = `${file}${SAVED}`;
  const had = present(file);
  if (had) renameSync(file, saved);
  if (content !== null) {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, content, { mode });
  }
  ctx.defer(`restore ${path}`, () => {
    rmSync(file, { force: true });
    if (had) renameSync(saved, file);
  });
}

/** Point every Debian archive URL (`.../debian`, one-line or deb822 sources) at `mirror`. */
export function rewriteSources(text: string, mirror: string): string {
  return text.replace(/\bhttps?:\/\/\S+?\/debian\/?(?=\s|$)/gm, mirror);
}

/** Processes whose root directory is inside the image (daemons a package started anyway). */
export function processesIn(root: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const r = readlinkSync(`/proc/${entry}/root`);
      if (r === root || r.startsWith(`${root}/`)) pids.push(Number(entry));
    } catch {}
  }
  return pids;
}

async function endProcessesIn(ctx: BuildContext, root: string): Promise<void> {
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    const pids = processesIn(root);
    if (pids.length === 0) return;
    ctx.log.line(`${signal} to processes still running in the image: ${pids.join(' ')}`);
    for (const pid of pids) {
      try {
        process.kill(pid, signal);
      } catch {}
    }
    for (let i = 0; i < 20 && processesIn(root).length; i++) await sleep(100);
  }
}

/** Hard link, or copy where the two are on different filesystems; `to` appears whole or not at all. */
function linkOrCopy(from: string, to: string): void {
  const tmp = `${to}.${process.pid}.tmp`;
  try {
    linkSync(from, tmp);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
    copyFileSync(from, tmp);
  }
  renameSync(tmp, to);
}

/**
 * The build's own apt archive directory, filled from the shared cache (hard links: no copy), and
 * the packages it downloaded given back to the cache afterwards. Builds sharing a cache never
 * hold apt's archive lock on the same directory, so they can run at the same time.
 */
function shareAptCache(ctx: BuildContext, shared: string, archives: string): void {
  mkdirSync(shared, { recursive: true });
  rmSync(archives, { recursive: true, force: true });
  mkdirSync(join(archives, 'partial'), { recursive: true });
  const debs = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.deb'));
  for (const deb of debs(shared)) linkOrCopy(join(shared, deb), join(archives, deb));
  ctx.defer('keep the downloaded packages in the apt cache', () => {
    // Only whole packages are here: apt downloads into partial/ and moves them when complete.
    const known = new Set(debs(shared));
    for (const deb of debs(archives)) if (!known.has(deb)) linkOrCopy(join(archives, deb), join(shared, deb));
    rmSync(archives, { recursive: true, force: true });
  });
}

export interface ChrootOptions {
  aptProxy?: string;
  aptMirror?: string;
  /** dpkg's force-unsafe-io (no fsync per file): on unless a benchmark measures without it. */
  unsafeIo?: boolean;
  /** A host directory bound read-only at STAGING/files (what the files stage gathered). */
  files?: string;
}

/** Prepare the attached image for running its own programs. Undone by the clean-up stack. */
export async function enterChroot(ctx: BuildContext, options: ChrootOptions = {}): Promise<void> {
  const root = rootDir(ctx.paths.work);
  const system = ctx.state.system;
  if (!system) throw new UserError('chroot: the image is not attached; run from attach or earlier');
  const arch = system.arch as Arch;
  await ensureBinfmt(ctx, arch);

  for (const dir of ['dev', 'dev/pts', 'proc', 'sys', 'run']) mkdirSync(join(root, dir), { recursive: true });
  await mount(ctx, '/dev', join(root, 'dev'), ['--bind']);
  await mount(ctx, '/dev/pts', join(root, 'dev/pts'), ['--bind']);
  await mount(ctx, 'proc', join(root, 'proc'), ['-t', 'proc']);
  await mount(ctx, '/sys', join(root, 'sys'), ['--bind']);
  await mount(ctx, 'tmpfs', join(root, 'run'), ['-t', 'tmpfs', '-o', 'mode=0755']);

  const archives = join(ctx.paths.work, 'apt-archives');
  shareAptCache(ctx, join(ctx.paths.cache, 'apt', `${system.codename}-${arch}`), archives);
  mkdirSync(join(root, 'var/cache/apt/archives'), { recursive: true });
  await mount(ctx, archives, join(root, 'var/cache/apt/archives'), ['--bind']);

  swapFile(ctx, root, 'etc/resolv.conf', readFileSync('/etc/resolv.conf', 'utf8'));
  swapFile(ctx, root, 'etc/ld.so.preload', null);
  swapFile(ctx, root, 'usr/sbin/policy-rc.d', '#!/bin/sh\n# build-image: no service starts while the image is built\nexit 101\n', 0o755);
  // Unsafe I/O only while building; files an overlay put in place win over a package's defaults.
  swapFile(ctx, root, 'etc/dpkg/dpkg.cfg.d/zz-build-image', `${options.unsafeIo === false ? '' : 'force-unsafe-io\n'}force-confdef\nforce-confold\n`);
  const apt = ['APT::Keep-Downloaded-Packages "true";', 'Binary::apt::APT::Keep-Downloaded-Packages "true";'];
  if (options.aptProxy) apt.push(`Acquire::http::Proxy "${options.aptProxy}";`);
  swapFile(ctx, root, 'etc/apt/apt.conf.d/zz-build-image', `${apt.join('\n')}\n`);
  if (options.aptMirror) {
    const lists = ['etc/apt/sources.list', ...listDir(root, 'etc/apt/sources.list.d').filter((f) => /\.(list|sources)$/.test(f))];
    for (const list of lists) {
      const text = readFileSync(join(root, list), 'utf8');
      const rewritten = rewriteSources(text, options.aptMirror);
      if (rewritten !== text) swapFile(ctx, root, list, rewritten);
    }
  }
  mkdirSync(join(root, STAGING.slice(1), 'scripts'), { recursive: true });
  if (options.files && existsSync(options.files)) {
    mkdirSync(join(root, STAGING.slice(1), 'files'));
    await mount(ctx, options.files, join(root, STAGING.slice(1), 'files'), ['--bind', '-o', 'ro']);
  }
  // Registered last so it runs first: a process still holding a file under one of these mounts
  // (apt stopped by Ctrl-C) would keep it from being unmounted.
  ctx.defer('end processes left in the image', () => endProcessesIn(ctx, root));
}

function listDir(root: string, dir: string): string[] {
  const full = join(root, dir);
  return existsSync(full) ? readdirSync(full).map((f) => `${dir}/${f}`) : [];
}

/** `chroot` arguments running `args` inside the image with the chroot's clean environment plus `env`. */
export function chrootArgs(ctx: BuildContext, args: readonly string[], env: Record<string, string> = {}): string[] {
  const vars = Object.entries({ ...CHROOT_ENV, ...env }).map(([k, v]) => `${k}=${v}`);
  return [rootDir(ctx.paths.work), '/usr/bin/env', '-i', ...vars, ...args];
}

/** Run one command inside the image (after enterChroot). */
export function chrootRun(ctx: BuildContext, args: readonly string[], options: RunOptions & { env?: Record<string, string> } = {}): Promise<RunResult> {
  return ctx.run('chroot', chrootArgs(ctx, args, options.env), { ...options, env: undefined });
}
