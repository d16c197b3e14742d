/** What the image's own files say about it: release, boot mount point, networking, first boot. */
import { existsSync } from 'node:fs';
import { posix } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import { imageArch } from './arch.ts';
import { firstBootFor, firstBootOf, parseCmdline } from './cmdline.ts';
import { inRoot, readInRoot, resolveInRoot } from './in-root.ts';
import type { Network, SystemInfo } from './state.ts';

export function parseOsRelease(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) fields[m[1]!] = m[2]!.replace(/^(["'])(.*)\1$/, '$2');
  }
  return fields;
}

/** The mount point /etc/fstab gives the FAT boot partition; undefined when it has none. */
export function bootMountOf(fstab: string): string | undefined {
  for (const line of fstab.split('\n')) {
    const [, target, type] = line.trim().split(/\s+/);
    if (line.trim().startsWith('#') || !target) continue;
    if (type === 'vfat' || target === '/boot' || target === '/boot/firmware') return target;
  }
  return undefined;
}

const notPlain = (mount: string) =>
  new UserError(
    `the image's /etc/fstab mounts the boot partition at ${JSON.stringify(mount)}, which is not a plain directory path inside the image (like /boot/firmware: letters, digits, . _ + - and /, no .., no symbolic link): fix the image's fstab`,
  );

/**
 * The boot mount point from an image's (or a card's) fstab as a plain absolute path: no `..`, not
 * `/`, and nothing a shell or the kernel command line reads specially, since firstrun.sh and
 * cmdline.txt name it and the build binds the boot partition there.
 */
export function plainBootMount(mount: string): string {
  const plain = posix.normalize(mount).replace(/\/$/, '');
  if (!/^\/[A-Za-z0-9._+/-]+$/.test(mount) || mount.split('/').includes('..') || plain === '') throw notPlain(mount);
  return plain;
}

/**
 * The boot partition is bound at this path of the image on the host: a plain directory path inside
 * the image (`/../../tmp/x` or a path through a symbolic link is the image's fstab lying).
 */
function checkedBootMount(root: string, mount: string): string {
  const plain = plainBootMount(mount);
  if (resolveInRoot(root, plain) !== plain) throw notPlain(mount);
  return plain;
}

export function detectSystem(root: string, cmdline: string): SystemInfo {
  const os = parseOsRelease(readInRoot(root, 'etc/os-release', 'usr/lib/os-release'));
  const codename = os.VERSION_CODENAME ?? /\((\w+)\)/.exec(os.VERSION ?? '')?.[1] ?? 'unknown';
  // It names cache directories and outputs: an image's word is checked before it names a path.
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(codename))
    throw new UserError(
      `the image's os-release gives the release ${JSON.stringify(codename)}, which is not a release name (lower-case letters, digits, "-"): is this a Raspberry Pi OS or Debian image?`,
    );
  const has = (...paths: string[]) => paths.some((p) => existsSync(inRoot(root, p)));
  const network: Network = has('usr/sbin/NetworkManager') ? 'NetworkManager' : has('usr/sbin/dhcpcd', 'sbin/dhcpcd') ? 'dhcpcd' : 'none';
  const armed = firstBootOf(parseCmdline(cmdline));
  const modern = codename === 'bookworm' || codename === 'trixie';
  return {
    id: os.ID ?? 'unknown',
    codename,
    prettyName: os.PRETTY_NAME ?? codename,
    arch: imageArch(root),
    bootMount: checkedBootMount(root, bootMountOf(readInRoot(root, 'etc/fstab')) ?? (modern ? '/boot/firmware' : '/boot')),
    network,
    firstBoot: armed !== 'none' ? armed : firstBootFor(codename),
    initFormat: has('usr/bin/cloud-init') ? 'cloudinit-rpi' : 'systemd',
  };
}
