/**
 * Running the image's own binaries on this host: the emulator is chosen from the ELF header of the
 * image's /bin/sh (never from a flag alone: an arm64 image under qemu-arm is a classic failure),
 * and binfmt_misc is checked, mounted and registered with the F flag (interpreter opened once by
 * the kernel, nothing copied into the image).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import type { Arch } from '../image/arch.ts';

const BINFMT = '/proc/sys/fs/binfmt_misc';
const HANDLERS: Partial<Record<Arch, string>> = { arm64: 'qemu-aarch64', armhf: 'qemu-arm' };

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
