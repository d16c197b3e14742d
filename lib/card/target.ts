/**
 * What a flash target is, from sysfs and the mount table, and why it may not be written: the disk
 * the running system is on, a disk with a mounted partition (or swap), a partition rather than a
 * disk, a non-removable disk unless forced, a disk smaller than the image.
 */
import { constants, existsSync, readdirSync, readFileSync, realpathSync, type Stats, statSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import { currentMounts, type Mount } from '../../engine/mounts.ts';

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

/**
 * The disks a mount is on: by its major:minor, or for btrfs (and other filesystems that give their
 * mounts an anonymous 0:N) by the device it names as its source.
 */
export function mountDisks(mount: Mount): string[] {
  const disks = disksUnder(mount.majMin);
  if (mount.source.startsWith('/dev/')) {
    try {
      disks.push(...disksUnder(majorMinor(statSync(mount.source).rdev)));
    } catch {
      // gone, or not a device
    }
  }
  return [...new Set(disks)];
}

/** Disks holding the running system's own filesystems. */
export function systemDisks(mounts: Mount[] = currentMounts()): Set<string> {
  return new Set(mounts.filter((m) => SYSTEM_MOUNTS.includes(m.target)).flatMap(mountDisks));
}

/** What the kernel has stacked on the disk or its partitions: device mapper (LVM, LUKS), md RAID. */
export function holdersOf(disk: string, sysBlock = '/sys/block'): string[] {
  const sys = join(sysBlock, disk);
  const parts = readdirSync(sys).filter((entry) => existsSync(join(sys, entry, 'partition')));
  return [sys, ...parts.map((p) => join(sys, p))].flatMap((dir) => (existsSync(join(dir, 'holders')) ? readdirSync(join(dir, 'holders')) : []));
}

/** Where the disk (or one of its partitions) is mounted or swapped on. */
export function usesOf(disk: string): string[] {
  const uses = currentMounts()
    .filter((m) => mountDisks(m).includes(disk))
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

/**
 * Open the disk for writing with O_EXCL: the kernel says EBUSY while anything holds it (a mounted
 * filesystem, btrfs or ZFS, LVM, md, another program's exclusive open), whatever the checks above saw.
 */
export async function openExclusive(path: string): Promise<FileHandle> {
  try {
    return await open(path, constants.O_RDWR | constants.O_EXCL);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EBUSY')
      throw new UserError(`${path} is busy: something holds it (a mounted filesystem, a ZFS pool, LVM, RAID, or another program): stop it first`);
    throw error;
  }
}

/** The target as a whole disk, or a one-line refusal. */
export function inspectTarget(path: string): Disk {
  let info: Stats;
  try {
    info = statSync(path);
  } catch {
    throw new UserError(`${path}: no such device: give the whole disk to write, such as /dev/sdb or /dev/mmcblk0 (lsblk lists them)`);
  }
  if (!info.isBlockDevice())
    throw new UserError(`${path} is not a block device: give the whole disk to write, such as /dev/sdb or /dev/mmcblk0 (lsblk lists them)`);
  const sys = sysfsOf(majorMinor(info.rdev));
  if (!sys) throw new UserError(`${path}: the kernel knows no such block device`);
  const name = basename(sys);
  if (existsSync(join(sys, 'partition'))) {
    throw new UserError(`${path} is a partition of /dev/${basename(dirname(sys))}: give the whole disk, /dev/${basename(dirname(sys))}`);
  }
  const size = Number(readFileSync(join(sys, 'size'), 'utf8').trim()) * 512;
  // SD cards in a built-in reader report removable 0 (their type says SD; soldered eMMC says MMC);
  // USB disks are meant to be unplugged.
  const card = readIfExists(join(sys, 'device/type')) === 'SD';
  const removable = readIfExists(join(sys, 'removable')) === '1' || card || sys.includes('/usb');
  return { path, name, size, removable };
}

function readIfExists(path: string): string | undefined {
  return existsSync(path) ? readFileSync(path, 'utf8').trim() : undefined;
}

/** Every reason not to write `disk`, first the ones --force does not lift. */
export function refusals(disk: Disk, imageSize: number | undefined, force: boolean): string[] {
  const reasons: string[] = [];
  if (systemDisks().has(disk.name)) reasons.push(`${disk.path} holds the running system: refusing to write it, even with --force`);
  const holders = holdersOf(disk.name);
  if (holders.length)
    reasons.push(
      `${disk.path} is held by ${holders.join(', ')} (device mapper: LVM or LUKS, or md RAID): stop ${holders.length > 1 ? 'them' : 'it'} first (dmsetup ls, cat /proc/mdstat)`,
    );
  const uses = usesOf(disk.name);
  if (uses.length) reasons.push(`${disk.path} is in use (mounted on ${uses.join(', ')}): unmount it first`);
  if (imageSize !== undefined && imageSize > disk.size) {
    reasons.push(`${disk.path} is smaller than the image (${disk.size} bytes, the image ${imageSize}): use a larger card`);
  }
  if (!disk.removable && !force) reasons.push(`${disk.path} is not a removable disk: check it is the right one, then add --force`);
  return reasons;
}
