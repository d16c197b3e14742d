/**
 * Running the image's own binaries on this host: natively where the host's CPU runs them (an
 * arm64 image on an arm64 host), else through qemu-user. The architecture comes from the ELF
 * header of the image's /bin/sh (never from a flag alone: an arm64 image under qemu-arm is a
 * classic failure). For qemu-user, binfmt_misc is checked, mounted and registered with the F flag
 * (interpreter opened once by the kernel, nothing copied into the image). A handler is never
 * registered for the host's own architecture: binfmt_misc is consulted before the native ELF
 * loader, so every program on the host would then run under qemu.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import type { Arch } from '../image/arch.ts';

const BINFMT = '/proc/sys/fs/binfmt_misc';
const HANDLERS: Partial<Record<Arch, string>> = { arm64: 'qemu-aarch64', armhf: 'qemu-arm' };

/** The Debian architecture of the machine this process runs on. */
export function hostArch(nodeArch: string = process.arch): Arch {
  const arches: Record<string, Arch> = { arm64: 'arm64', arm: 'armhf', x64: 'amd64', ia32: 'i386' };
  return arches[nodeArch] ?? 'unknown';
}

export type ChrootMode = 'native' | 'qemu-user';

/**
 * How `image` programs run on a `host`: natively on the host's own architecture, and armhf on an
 * arm64 host when `runsAArch32` (the CPU executes AArch32 and no qemu-arm handler is registered:
 * binfmt_misc would otherwise send every armhf program to it); through qemu-user otherwise.
 */
export function chrootMode(host: Arch, image: Arch, runsAArch32: boolean): ChrootMode {
  if (image === host) return 'native';
  return host === 'arm64' && image === 'armhf' && runsAArch32 ? 'native' : 'qemu-user';
}

/** What the log, --plan and the manifest say: `native arm64`, or `qemu-user (arm64 on amd64)`. */
export function describeMode(mode: ChrootMode, image: Arch, host: Arch = hostArch()): string {
  return mode === 'native' ? `native ${image}` : `qemu-user (${image} on ${host})`;
}

/** For --plan, before the image is read: how `arch` programs will run here. */
export function plannedMode(arch: Arch, host: Arch = hostArch()): string {
  if (host === 'arm64' && arch === 'armhf')
    return `native armhf where this CPU runs AArch32 (arch-test -n armhf), else ${describeMode('qemu-user', arch, host)}`;
  return describeMode(chrootMode(host, arch, false), arch, host);
}

/**
 * Whether this host runs armhf programs with no emulator: arch-test's -n disables qemu (it sets
 * QEMU_VERSION, which makes qemu-user print its version and exit), so a qemu-arm handler counts as no.
 */
export async function runsArmhfNatively(ctx: {
  run(file: string, args: readonly string[], options: { reject: false }): Promise<{ exitCode: number }>;
}): Promise<boolean> {
  const { exitCode } = await ctx.run('arch-test', ['-n', 'armhf'], { reject: false }).catch(() => ({ exitCode: 1 }));
  return exitCode === 0;
}

/** Decide how the image's programs run here, and set the host up for it (binfmt for qemu-user). */
export async function prepareToRun(ctx: Pick<BuildContext, 'run'> & { log: { line(text: string): void } }, arch: Arch): Promise<ChrootMode> {
  const host = hostArch();
  const mode = chrootMode(host, arch, host === 'arm64' && arch === 'armhf' && (await runsArmhfNatively(ctx)));
  ctx.log.line(`chroot: ${describeMode(mode, arch, host)}`);
  if (mode === 'qemu-user') await ensureBinfmt(ctx, arch);
  return mode;
}

/** A binfmt_misc registration line from binfmt-support's format file, with the F flag. */
export function registrationLine(name: string, format: string): string {
  const field = (key: string) => new RegExp(`^${key} (.*)$`, 'm').exec(format)?.[1]?.trim();
  const interpreter = field('interpreter');
  const magic = field('magic');
  if (!interpreter || !magic) throw new Error(`${name}: the binfmt format file has no interpreter or magic`);
  const flags = `F${field('preserve') === 'yes' ? 'P' : ''}${field('credentials') === 'yes' ? 'C' : ''}`;
  return `:${name}:M:${field('offset') ?? '0'}:${magic}:${field('mask') ?? ''}:${interpreter}:${flags}`;
}

/** Make sure the kernel runs `arch` binaries through qemu-user with the F flag. */
export async function ensureBinfmt(ctx: Pick<BuildContext, 'run'> & { log: { line(text: string): void } }, arch: Arch): Promise<void> {
  const handler = HANDLERS[arch];
  if (arch === hostArch()) throw new Error(`no qemu-user handler is registered for the host's own architecture (${arch})`);
  if (!handler) throw new UserError(`images for ${arch} cannot be run here: only arm64 and armhf are supported`);
  if (!existsSync(`${BINFMT}/register`)) {
    const { exitCode } = await ctx.run('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT], { reject: false });
    if (exitCode !== 0)
      throw new UserError(`binfmt_misc is not mounted and mounting it failed: run as root, or mount it yourself (mount -t binfmt_misc binfmt_misc ${BINFMT})`);
  }
  const current = existsSync(`${BINFMT}/${handler}`) ? readFileSync(`${BINFMT}/${handler}`, 'utf8') : undefined;
  const flags = current ? (/^flags: *(\S*)/m.exec(current)?.[1] ?? '') : '';
  if (current && /^enabled/m.test(current) && flags.includes('F') && existsSync(/^interpreter (\S+)/m.exec(current)?.[1] ?? '')) return;
  const formatFile = `/usr/share/binfmts/${handler}`;
  if (!existsSync(formatFile))
    throw new UserError(`${handler} is not registered with binfmt_misc and qemu-user-static is not installed: apt-get install qemu-user-static`);
  const line = registrationLine(handler, readFileSync(formatFile, 'utf8'));
  ctx.log.line(`registering ${handler} with binfmt_misc: ${line}`);
  try {
    // A registration without the F flag would need the interpreter inside the image: replace it.
    if (current) writeFileSync(`${BINFMT}/${handler}`, '-1');
    writeFileSync(`${BINFMT}/register`, line);
  } catch (error) {
    throw new UserError(`cannot register ${handler} with binfmt_misc (${(error as Error).message}): run as root`);
  }
}
