/** What the hostile-image tests share: an image's files read without mounting, links planted in it, bait on the host. */
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { ImageReader } from './image-reader.ts';
import { detachLoop } from './leaks.ts';

/** Run `read` on the image's root filesystem (debugfs: what the image holds, links unfollowed). */
export async function inImage<T>(image: string, read: (r: ImageReader) => Promise<T>): Promise<T> {
  const reader = await ImageReader.open(image);
  try {
    return await read(reader);
  } finally {
    await reader.close();
  }
}

/**
 * Plant symbolic links in an image's root filesystem (what a hostile image holds), replacing what
 * is at those paths: debugfs writes the filesystem without mounting it.
 */
export async function plantLinks(image: string, links: Record<string, string>): Promise<void> {
  await debugfsOnRoot(
    image,
    Object.entries(links).flatMap(([path, target]) => {
      const parents = path
        .split('/')
        .slice(0, -1)
        .map((_, i, all) => `mkdir /${all.slice(0, i + 1).join('/')}`);
      return [...parents, `rm /${path}`, `rmdir /${path}`, `symlink /${path} ${target}`];
    }),
  );
}

/** Put a device node or FIFO at `path` in the image's root (`node`: debugfs's "b 7 3", "c 1 3", "p"). */
export async function plantNode(image: string, path: string, node: string): Promise<void> {
  const [dir, name] = [posix.dirname(`/${path}`), posix.basename(path)];
  await debugfsOnRoot(image, [`cd ${dir}`, `rm ${name}`, `mknod ${name} ${node}`]); // mknod takes a name, not a path
}

/** debugfs requests written to the image's root filesystem. */
async function debugfsOnRoot(image: string, requests: string[]): Promise<void> {
  const { stdout } = await execa('sfdisk', ['--json', image]);
  const root = (JSON.parse(stdout) as { partitiontable: { partitions: Array<{ start: number; size: number }> } }).partitiontable.partitions[1]!;
  const { stdout: dev } = await execa('losetup', ['--find', '--show', '--offset', String(root.start * 512), '--sizelimit', String(root.size * 512), image]);
  try {
    const file = `${dev.trim().replace(/\//g, '_')}.debugfs`;
    writeFileSync(join(tmpdir(), file), `${requests.join('\n')}\n`);
    await execa('debugfs', ['-w', '-f', join(tmpdir(), file), dev.trim()]);
    rmSync(join(tmpdir(), file));
  } finally {
    await detachLoop(dev.trim());
  }
}

/** A host directory and file the image's links point at, with what they hold now. */
export function hostBait(dir: string) {
  const hostDir = join(dir, 'host-dir');
  const hostFile = join(dir, 'host-file.conf');
  mkdirSync(hostDir);
  writeFileSync(hostFile, "the host's own\n", { mode: 0o600 });
  const untouched = (t: ExecutionContext) => {
    t.deepEqual(readdirSync(hostDir), [], 'nothing written into the host directory');
    t.is(statSync(hostDir).uid, 0);
    t.is(readFileSync(hostFile, 'utf8'), "the host's own\n", 'the host file is unchanged');
    t.is(statSync(hostFile).mode & 0o777, 0o600);
  };
  return { hostDir, hostFile, untouched };
}
