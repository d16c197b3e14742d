/**
 * What a flash target is, from sysfs and the mount table, and why it may not be written: the disk
 * the running system is on, a disk with a mounted partition (or swap), a partition rather than a
 * disk, a non-removable disk unless forced, a disk smaller than the image.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { UserError } from '../pipeline/errors.ts';
import { currentMounts, type Mount } from '../pipeline/mounts.ts';

export interface Disk {
  path: string;
  /** Its name in /sys/block (sdb, mmcblk0, loop3). */
  name: string;
  size: number;
  removable: boolean;
}

/** major:minor of a device number (Linux's encoding of dev_t). */
export function majorMinor(rdev: number): string {
  const major = Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** The /sys/class/block entry of a major:minor, or undefined when it is not a block device. */
function sysfsOf(majMin: string): string | undefined {
  const link = `/sys/dev/block/${majMin}`;
  return existsSync(link) ? realpathSync(link) : undefined;
}

/** The whole disks a block device (partition, device mapper, md) sits on. */
export function disksUnder(majMin: string): string[] {
  const sys = sysfsOf(majMin);
  if (!sys) return [];
  const disk = existsSync(join(sys, 'partition')) ? dirname(sys) : sys;
  const slaves = join(disk, 'slaves');
  const below = existsSync(slaves) ? readdirSync(slaves) : [];
  if (below.length === 0) return [basename(disk)];
  return below.flatMap((name) => disksUnder(readFileSync(join(slaves, name, 'dev'), 'utf8').trim()));
}

const SYSTEM_MOUNTS = ['/', '/boot', '/boot/firmware', '/boot/efi', '/usr', '/var', '/home'];

/** Disks holding the running system's own filesystems. */
export function systemDisks(mounts: Mount[] = currentMounts()): Set<string> {
  return new Set(mounts.filter((m) => SYSTEM_MOUNTS.includes(m.target)).flatMap((m) => disksUnder(m.majMin)));
}

/** Where the disk (or one of its partitions) is mounted or swapped on. */
export function usesOf(disk: string): string[] {
  const uses = currentMounts()
    .filter((m) => disksUnder(m.majMin).includes(disk))
    .map((m) => m.target);
  for (const line of readFileSync('/proc/swaps', 'utf8').split('\n').slice(1)) {
    const device = line.split(/\s+/)[0];
    if (!device?.startsWith('/dev/')) continue;
    try {
      if (disksUnder(majorMinor(statSync(device).rdev)).includes(disk)) uses.push(`swap (${device})`);
    } catch {
      // a swap file, or gone
    }
  }
  return [...new Set(uses)];
}

/** The target as a whole disk, or a one-line refusal. */
export function inspectTarget(path: string): Disk {
  let info;
  try {
    info = statSync(path);
  } catch {
    throw new UserError(`${path}: no such device: give the whole disk to write, such as /dev/sdb or /dev/mmcblk0 (lsblk lists them)`);
  }
  if (!info.isBlockDevice()) throw new UserError(`${path} is not a block device: give the whole disk to write, such as /dev/sdb or /dev/mmcblk0 (lsblk lists them)`);
  const sys = sysfsOf(majorMinor(info.rdev));
  if (!sys) throw new UserError(`${path}: the kernel knows no such block device`);
  const name = basename(sys);
  if (existsSync(join(sys, 'partition'))) {
    throw new UserError(`${path} is a partition of /dev/${basename(dirname(sys))}: give the whole disk, /dev/${basename(dirname(sys))}`);
  }
  const size = Number(readFileSync(join(sys, 'size'), 'utf8').trim()) * 512;
  // SD cards in a built-in reader report removable 0; USB disks are meant to be unplugged.
  const removable = readFileSync(join(sys, 'removable'), 'utf8').trim() === '1' || name.startsWith('mmcblk') || sys.includes('/usb');
  return { path, name, size, removable };
}

/** Every reason not to write `disk`, first the ones --force does not lift. */
export function refusals(disk: Disk, imageSize: number | undefined, force: boolean): string[] {
  const reasons: string[] = [];
  if (systemDisks().has(disk.name)) reasons.push(`${disk.path} holds the running system: refusing to write it, even with --force`);
  const uses = usesOf(disk.name);
  if (uses.length) reasons.push(`${disk.path} is in use (mounted on ${uses.join(', ')}): unmount it first`);
  if (imageSize !== undefined && imageSize > disk.size) {
    reasons.push(`${disk.path} is smaller than the image (${disk.size} bytes, the image ${imageSize}): use a larger card`);
  }
  if (!disk.removable && !force) reasons.push(`${disk.path} is not a removable disk: check it is the right one, then add --force`);
  return reasons;
}
