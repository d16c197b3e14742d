/**
 * The environment for running code inside the attached image, in a sandbox (sandbox.ts), under
 * qemu-user where the host does not run its programs: DNS from the host, no service starting, no libarmmem preload flooding qemu,
 * dpkg's unsafe-io, Python byte-compilation held to the end, dpkg's unpacking helpers run natively,
 * the host's apt archive cache, an optional apt proxy or mirror. Every change to the image's own
 * files is undone on the way out, so none of it stays in the finished image.
 */

import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../engine/errors.ts';
import { quote, type RunOptions, type RunResult } from '../../engine/exec.ts';
import { type BuildContext, Resource } from '../../engine/stage.ts';
import type { Arch } from '../image/arch.ts';
import { rootDir } from '../image/attached.ts';
import { entryInRoot, inRoot, readInRoot } from '../image/in-root.ts';
import { mount } from '../image/loop.ts';
import { describeMode, prepareToRun } from './emulation.ts';
import { unpackNatively } from './native-unpack.ts';
import { compileHeldPython, holdPythonCompile } from './python-compile.ts';
import { SANDBOX, sandboxArgs } from './sandbox.ts';

const SAVED = '.build-image-saved';
/** Inside the image, on a tmpfs: scripts and files staged for them, gone after the build. */
export const STAGING = '/run/build-image';

/** Files gathered on the host for the scripts (sources, keys, environments): bound read-only at STAGING/files. */
export const stagedFiles = (work: string) => join(work, 'files');

/**
 * Stand-ins first on PATH (the chroot's and dpkg's): commands whose work waits for the end of the
 * session (python-compile.ts), and dpkg's helpers run natively (native-unpack.ts).
 */
export const STAND_INS = `${STAGING}/stand-ins`;

/** The environment every command in the image gets (nothing of the host's leaks in). */
export const CHROOT_ENV: Readonly<Record<string, string>> = {
  PATH: `${STAND_INS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
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
function swapFile(ctx: BuildContext, root: string, path: string, content: string | null, mode = 0o644): void {
  const file = entryInRoot(root, path); // a link at `path` is moved aside, not written through
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
  swapped(ctx).push(path);
}

/** The paths swapFile changed in this chroot session. */
/** The image's files a chroot session swapped for its stand-ins, put back when it ends. */
const CHROOT_SWAPS = new Resource<string[]>('chroot-swaps');

const swapped = (ctx: BuildContext): string[] => {
  if (!ctx.resources.has(CHROOT_SWAPS)) ctx.resources.set(CHROOT_SWAPS, []);
  return ctx.resources.get(CHROOT_SWAPS)!;
};

/**
 * The command scripts run on a copy of the image's root (an NFS root made with rsync of /) to put
 * the image's own files back where the build has swapped in its temporary ones: the copy gets the
 * image as it will ship, not the host's DNS, a no-service policy or the build's apt settings.
 */
export const RESTORE_IMAGE_FILES = `${STAGING}/bin/restore-image-files`;

/**
 * `apt-get update` that waits for a mirror caught in the middle of a sync: its indexes disagree with
 * its Release file ("File has unexpected size ... Mirror sync in progress?") for a few minutes.
 */
export const APT_UPDATE = `${STAGING}/bin/apt-update`;

const APT_UPDATE_SCRIPT = `#!/bin/sh
# Written by build-image: apt-get update, tried again while the mirror is being synced.
for attempt in 1 2 3 4; do
  if apt-get update -q >/run/apt-update.log 2>&1; then cat /run/apt-update.log; exit 0; fi
  cat /run/apt-update.log
  if [ "$attempt" = 4 ] || ! grep -qE 'Mirror sync in progress|unexpected size|Hash Sum mismatch' /run/apt-update.log; then exit 1; fi
  echo "apt-get update: the mirror is being synced; trying again in $((attempt * 20)) s"
  sleep $((attempt * 20))
done
`;

function writeRestoreCommand(ctx: BuildContext, root: string): void {
  const lines = swapped(ctx).map((path) => `restore ${quote(`/${path}`)}`);
  const script = [
    '#!/bin/sh -e',
    "# Written by build-image for this build: in DIR, a copy of the image's root, the files the build",
    "# swapped in for its own use become the image's own again.",
    'dir=${1:?usage: restore-image-files DIR}',
    `restore() { if [ -e "$dir$1${SAVED}" ] || [ -L "$dir$1${SAVED}" ]; then mv -f "$dir$1${SAVED}" "$dir$1"; else rm -f "$dir$1"; fi; }`,
    ...lines,
    '',
  ].join('\n');
  const file = inRoot(root, RESTORE_IMAGE_FILES);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, script, { mode: 0o755 });
}

/**
 * Point the image's distribution archive at `mirror`, in one-line or deb822 sources: Debian's
 * (`.../debian`) or, on Raspbian images, Raspbian's (`.../raspbian`). The Raspberry Pi archive
 * (archive.raspberrypi.com/debian) and the security archive (`.../debian-security`) are not the
 * distribution and stay as they are.
 */
export function rewriteSources(text: string, mirror: string): string {
  return text.replace(/\bhttps?:\/\/[^\s\]]+/g, (url) => (isDistributionArchive(url) ? mirror : url));
}

function isDistributionArchive(url: string): boolean {
  const { hostname, pathname } = new URL(url);
  if (/\/raspbian\/?$/.test(pathname)) return true;
  return /\/debian\/?$/.test(pathname) && !/(^|\.)raspberrypi\.(com|org)$/.test(hostname);
}

/** The archive URLs that sources (one-line `deb` lines or deb822 `URIs:`) name. */
export function archivesOf(text: string): string[] {
  const urls: string[] = [];
  for (const line of text.split('\n')) {
    const oneLine = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)/.exec(line);
    const deb822 = /^URIs:\s*(.+)$/i.exec(line);
    if (oneLine) urls.push(oneLine[1]!);
    if (deb822) urls.push(...deb822[1]!.trim().split(/\s+/));
  }
  return urls;
}

/**
 * Processes whose root directory is the image's (a sandbox's processes all die with it; this is
 * for the one moment a command is being ended). Compared by device and inode: a process in the
 * sandbox's mount namespace names its root `/`.
 */
export function processesIn(root: string): number[] {
  const pids: number[] = [];
  const image = statSync(root);
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const r = statSync(`/proc/${entry}/root`);
      if (r.dev === image.dev && r.ino === image.ino) pids.push(Number(entry));
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

/**
 * What makes installing packages under emulation faster without changing what is installed:
 * dpkg's force-unsafe-io (no fsync per file: the image is synced when it is detached), Python
 * byte-compilation done once at the end, on the host where it can be (python-compile.ts), and
 * dpkg's unpacking helpers run by the host's static busybox (native-unpack.ts).
 */
export const SPEED_UPS = ['unsafe-io', 'python-compile', 'native-unpack'] as const;
export type SpeedUp = (typeof SPEED_UPS)[number];

/** The speed-ups on: all, less those BUILD_IMAGE_SPEEDUPS_OFF names ("all" for every one), to measure or rule one out. */
export function speedUpsOn(env: NodeJS.ProcessEnv = process.env): Set<SpeedUp> {
  const off = (env.BUILD_IMAGE_SPEEDUPS_OFF ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const name of off) {
    if (name !== 'all' && !(SPEED_UPS as readonly string[]).includes(name))
      throw new UserError(`BUILD_IMAGE_SPEEDUPS_OFF=${env.BUILD_IMAGE_SPEEDUPS_OFF}: no speed-up "${name}"; name some of ${SPEED_UPS.join(', ')}, or all`);
  }
  return new Set(SPEED_UPS.filter((s) => !off.includes(s) && !off.includes('all')));
}

export interface ChrootOptions {
  aptProxy?: string;
  aptMirror?: string;
  /** A host directory bound read-only at STAGING/files (what the files stage gathered). */
  files?: string;
}

/** Prepare the attached image for running its own programs. Undone by the clean-up stack. */
export async function enterChroot(ctx: BuildContext, options: ChrootOptions = {}): Promise<void> {
  const root = rootDir(ctx.paths.work);
  ctx.resources.set(CHROOT_SWAPS, []);
  const system = ctx.state.system;
  if (!system) throw new UserError('chroot: the image is not attached; run from attach or earlier');
  const arch = system.arch as Arch;
  const mode = await prepareToRun(ctx, arch);
  ctx.state.chroot = describeMode(mode, arch);
  // native-unpack and python-compile exist to keep work out of the emulator: with none, they are off.
  const speedUps = speedUpsOn();
  if (mode === 'native') for (const speedUp of ['native-unpack', 'python-compile'] as const) speedUps.delete(speedUp);

  // Mount points resolved inside the image: its `run -> /run` must not hide the host's /run.
  const at = (dir: string) => {
    const target = inRoot(root, dir);
    mkdirSync(target, { recursive: true });
    return target;
  };
  // /dev, /proc and /sys are the sandbox's own (sandbox.ts); /run and the binds below are in it.
  await mount(ctx, 'tmpfs', at('run'), ['-t', 'tmpfs', '-o', 'mode=0755,nodev,nosuid']);

  // The apt sources as the build's apt will see them: the distribution archive at --apt-mirror.
  const lists = ['etc/apt/sources.list', ...listDir(root, 'etc/apt/sources.list.d').filter((f) => /\.(list|sources)$/.test(f))].filter((f) =>
    existsSync(inRoot(root, f)),
  );
  const sources = new Map(lists.map((list) => [list, readInRoot(root, list)]));
  const archivesNamed = () => [...new Set([...sources.values()].flatMap(archivesOf))];
  if (options.aptMirror) {
    let matched = false;
    for (const [list, text] of sources) {
      matched ||= archivesOf(text).some(isDistributionArchive);
      const rewritten = rewriteSources(text, options.aptMirror);
      if (rewritten === text) continue;
      sources.set(list, rewritten);
      swapFile(ctx, root, list, rewritten);
    }
    const named = archivesNamed().join(', ') || 'none';
    if (!matched)
      throw new UserError(
        `--apt-mirror ${options.aptMirror}: the image's apt sources name no Debian or Raspbian archive to replace (they name: ${named}); leave --apt-mirror out, or use --apt-proxy`,
      );
  }
  // Packages of the same name differ between archives (Raspbian's armhf is not Debian's): one cache each.
  const archiveKey = createHash('sha256').update(archivesNamed().sort().join('\n')).digest('hex').slice(0, 8);
  const archives = join(ctx.paths.work, 'apt-archives');
  shareAptCache(ctx, join(ctx.paths.cache, 'apt', `${system.codename}-${arch}-${archiveKey}`), archives);
  await mount(ctx, archives, at('var/cache/apt/archives'), ['--bind']);

  swapFile(ctx, root, 'etc/resolv.conf', readFileSync('/etc/resolv.conf', 'utf8'));
  swapFile(ctx, root, 'etc/ld.so.preload', null);
  swapFile(ctx, root, 'usr/sbin/policy-rc.d', '#!/bin/sh\n# build-image: no service starts while the image is built\nexit 101\n', 0o755);
  // Unsafe I/O only while building; files an overlay put in place win over a package's defaults.
  swapFile(ctx, root, 'etc/dpkg/dpkg.cfg.d/zz-build-image', `${speedUps.has('unsafe-io') ? 'force-unsafe-io\n' : ''}force-confdef\nforce-confold\n`);
  const apt = [
    'APT::Keep-Downloaded-Packages "true";',
    'Binary::apt::APT::Keep-Downloaded-Packages "true";',
    // The build installs for the image's own architecture: the indexes of foreign ones (armhf on
    // a Raspberry Pi OS arm64 image) would double the download. The image keeps its setting.
    `APT::Architectures { "${arch}"; };`,
    // Package descriptions in other languages are for people, not for the build.
    'Acquire::Languages "none";',
    'Acquire::Retries "3";',
  ];
  if (options.aptProxy) apt.push(`Acquire::http::Proxy "${options.aptProxy}";`);
  // apt gives dpkg a PATH of its own (/usr/sbin:/usr/bin:/sbin:/bin): the stand-ins go first.
  apt.push(`DPkg::Path "${STAND_INS}:/usr/sbin:/usr/bin:/sbin:/bin";`);
  swapFile(ctx, root, 'etc/apt/apt.conf.d/zz-build-image', `${apt.join('\n')}\n`);
  mkdirSync(inRoot(root, `${STAGING}/scripts`), { recursive: true });
  writeRestoreCommand(ctx, root);
  writeFileSync(inRoot(root, APT_UPDATE), APT_UPDATE_SCRIPT, { mode: 0o755 });
  if (options.files && existsSync(options.files)) {
    mkdirSync(inRoot(root, `${STAGING}/files`));
    await mount(ctx, options.files, inRoot(root, `${STAGING}/files`), ['--bind', '-o', 'ro']);
  }
  mkdirSync(inRoot(root, STAND_INS), { recursive: true });
  if (speedUps.has('native-unpack')) await unpackNatively(ctx, STAND_INS);
  if (speedUps.has('python-compile')) {
    holdPythonCompile(root, STAND_INS);
    // Only a session that succeeded is worth finishing: a failed one's image is thrown away.
    ctx.defer('byte-compile the Python modules whose compilation was held', (outcome) =>
      outcome === 'success' ? compileHeldPython(ctx, root, STAND_INS, arch, (args, input) => chrootRun(ctx, args, { input })) : undefined,
    );
  }
  // Registered last so it runs first: a process still holding a file under one of these mounts
  // (apt stopped by Ctrl-C) would keep it from being unmounted.
  ctx.defer('end processes left in the image', () => endProcessesIn(ctx, root));
}

function listDir(root: string, dir: string): string[] {
  const full = inRoot(root, dir);
  return existsSync(full) ? readdirSync(full).map((f) => `${dir}/${f}`) : [];
}

/**
 * Sandbox arguments running `args` inside the image with the chroot's clean environment plus `env`,
 * and the build's one time as SOURCE_DATE_EPOCH: shadow's tools then write that day in /etc/shadow,
 * Python hash-based .pyc files.
 */
export function chrootArgs(ctx: BuildContext, args: readonly string[], env: Record<string, string> = {}, interactive = false): string[] {
  const epoch = ctx.state.sourceDateEpoch;
  const sourceDate: Record<string, string> = epoch === undefined ? {} : { SOURCE_DATE_EPOCH: String(epoch) };
  return sandboxArgs(rootDir(ctx.paths.work), args, { env: { ...CHROOT_ENV, ...sourceDate, ...env }, interactive });
}

/** Run one command inside the image (after enterChroot). */
export function chrootRun(ctx: BuildContext, args: readonly string[], options: RunOptions & { env?: Record<string, string> } = {}): Promise<RunResult> {
  return ctx.run(SANDBOX, chrootArgs(ctx, args, options.env), { ...options, env: undefined });
}
