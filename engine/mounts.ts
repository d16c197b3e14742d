/** What the host has mounted and attached: the mount table and the loop devices' backing files. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';

export interface Mount {
  majMin: string;
  target: string;
  /** What was mounted (`/dev/sdb1`; a btrfs or ZFS mount's major:minor is 0:N, not its disk's). */
  source: string;
}

const unescapeOctal = (field: string) => field.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/**
 * /proc/self/mountinfo: field 3 is major:minor, field 5 the mount point (octal escapes), and
 * after the optional fields and a lone "-", the filesystem type and the source.
 */
export function parseMountinfo(text: string): Mount[] {
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(' '))
    .map((f) => ({ majMin: f[2]!, target: unescapeOctal(f[4]!), source: unescapeOctal(f[f.indexOf('-', 6) + 2] ?? '') }));
}

export function currentMounts(): Mount[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

const inside = (dir: string, path: string) => path === dir || path.startsWith(`${dir}/`);

/** Mount points at or under `dir` (a real path), deepest first: the order they come off in. */
export function mountsUnder(dir: string): string[] {
  return [
    ...new Set(
      currentMounts()
        .map((m) => m.target)
        .filter((target) => inside(dir, target)),
    ),
  ].sort((a, b) => b.length - a.length);
}

/** The file a loop device (/dev/loopN) reads, or '' when it is free. */
export function backingFile(device: string): string {
  const file = join('/sys/block', basename(device), 'loop/backing_file');
  return existsSync(file)
    ? readFileSync(file, 'utf8')
        .trim()
        .replace(/ \(deleted\)$/, '')
    : '';
}

/** Loop devices whose backing file is under `dir` (a real path). */
export function loopsUnder(dir: string): string[] {
  return readdirSync('/sys/block')
    .filter((name) => name.startsWith('loop'))
    .map((name) => `/dev/${name}`)
    .filter((device) => inside(dir, backingFile(device)));
}
