/** What the image's own files say about it: release, boot mount point, networking, first boot. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../../pipeline/errors.ts';
import { firstBootFor, firstBootOf, parseCmdline } from './cmdline.ts';
import { imageArch } from '../chroot/emulation.ts';
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

/** The first of `candidates` (paths in the image) that exists, read; '' when none does. */
export function readInRoot(root: string, ...candidates: string[]): string {
  for (const path of candidates) {
    const full = join(root, path);
    if (existsSync(full)) return readFileSync(full, 'utf8');
  }
  return '';
}

export function detectSystem(root: string, cmdline: string): SystemInfo {
  const os = parseOsRelease(readInRoot(root, 'etc/os-release', 'usr/lib/os-release'));
  const codename = os.VERSION_CODENAME ?? /\((\w+)\)/.exec(os.VERSION ?? '')?.[1] ?? 'unknown';
  // It names cache directories and outputs: an image's word is checked before it names a path.
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(codename)) throw new UserError(`the image's os-release gives the release ${JSON.stringify(codename)}, which is not a release name (lower-case letters, digits, "-"): is this a Raspberry Pi OS or Debian image?`);
  const has = (...paths: string[]) => paths.some((p) => existsSync(join(root, p)));
  const network: Network = has('usr/sbin/NetworkManager')
    ? 'NetworkManager'
    : has('usr/sbin/dhcpcd', 'sbin/dhcpcd')
      ? 'dhcpcd'
      : 'none';
  const armed = firstBootOf(parseCmdline(cmdline));
  const modern = codename === 'bookworm' || codename === 'trixie';
  return {
    id: os.ID ?? 'unknown',
    codename,
    prettyName: os.PRETTY_NAME ?? codename,
    arch: imageArch(root),
    bootMount: bootMountOf(readInRoot(root, 'etc/fstab')) ?? (modern ? '/boot/firmware' : '/boot'),
    network,
    firstBoot: armed !== 'none' ? armed : firstBootFor(codename),
    initFormat: has('usr/bin/cloud-init') ? 'cloudinit-rpi' : 'systemd',
  };
}
