/** What a build may leave behind: loop devices on a file, mounts under a directory. */
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';

export async function loopsOn(file: string): Promise<string[]> {
  const { stdout } = await execa('losetup', ['-j', file, '-O', 'NAME', '-n']);
  return stdout.split('\n').filter(Boolean);
}

export function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[1] ?? '')
    .map((target) => target.replace(/\\040/g, ' '))
    .filter((target) => target === dir || target.startsWith(`${dir}/`));
}

/** Loop devices whose backing file is under `dir` (a copy a command made there). */
export async function loopsUnder(dir: string): Promise<string[]> {
  const { stdout } = await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([, file]) => file !== undefined && (file === dir || file.startsWith(`${dir}/`)))
    .map(([name]) => name!);
}

/** `losetup -d`, then wait until the kernel has let go (udev may still hold the device a moment). */
export async function detachLoop(device: string): Promise<void> {
  await execa('losetup', ['-d', device]);
  for (let i = 0; i < 100 && existsSync(`/sys/block/${device.replace('/dev/', '')}/loop/backing_file`); i++) await sleep(100);
}
