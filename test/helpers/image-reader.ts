/**
 * Read-only inspection of a finished image: its ext4 root through debugfs on a read-only loop
 * device, its FAT boot partition through mtools. Nothing is mounted and nothing is written.
 */
import { execa } from 'execa';
import { detachLoop } from './leaks.ts';

interface Part {
  start: number;
  size: number;
}

export class ImageReader {
  readonly image: string;
  readonly boot: Part;
  readonly root: Part;
  #device: string;

  private constructor(image: string, boot: Part, root: Part, device: string) {
    this.image = image;
    this.boot = boot;
    this.root = root;
    this.#device = device;
  }

  static async open(image: string): Promise<ImageReader> {
    const { stdout } = await execa('sfdisk', ['--json', image]);
    const [boot, root] = (JSON.parse(stdout) as { partitiontable: { partitions: Part[] } }).partitiontable.partitions;
    const { stdout: device } = await execa('losetup', [
      '--find',
      '--show',
      '--read-only',
      '--offset',
      String(root!.start * 512),
      '--sizelimit',
      String(root!.size * 512),
      image,
    ]);
    return new ImageReader(image, boot!, root!, device.trim());
  }

  async close(): Promise<void> {
    await detachLoop(this.#device);
  }

  async #debugfs(request: string): Promise<{ stdout: string; stderr: string }> {
    const r = await execa('debugfs', ['-R', request, this.#device], { reject: false, stripFinalNewline: false });
    return { stdout: r.stdout, stderr: r.stderr.replace(/^debugfs [\d.]+ \(.*\)\n?/m, '') };
  }

  /** A file's content; throws when it does not exist. */
  async cat(path: string): Promise<string> {
    const { stdout, stderr } = await this.#debugfs(`cat ${path}`);
    if (/File not found|not found by ext2_lookup/.test(stderr)) throw new Error(`${path}: not in the image`);
    return stdout;
  }

  async exists(path: string): Promise<boolean> {
    return !/File not found|not found by ext2_lookup/.test((await this.#debugfs(`stat ${path}`)).stderr);
  }

  /** Type, mode, owner, and link target of a path. */
  async stat(path: string): Promise<{ type: string; mode: number; uid: number; gid: number; size: number; link?: string }> {
    const { stdout, stderr } = await this.#debugfs(`stat ${path}`);
    if (/not found/.test(stderr)) throw new Error(`${path}: not in the image`);
    const m = /Type: (\S+)\s+Mode:\s+(\d+)/.exec(stdout)!;
    const link = /Fast link dest: "(.*)"/.exec(stdout)?.[1];
    return {
      type: m[1]!,
      mode: Number.parseInt(m[2]!, 8),
      uid: Number(/User:\s+(\d+)/.exec(stdout)![1]),
      gid: Number(/Group:\s+(\d+)/.exec(stdout)![1]),
      size: Number(/Size: (\d+)/.exec(stdout)![1]),
      link,
    };
  }

  /** Names in a directory (without . and ..). */
  async ls(path: string): Promise<string[]> {
    const { stdout } = await this.#debugfs(`ls -p ${path}`);
    return stdout
      .split('\n')
      .map((l) => l.split('/')[5])
      .filter((n): n is string => !!n && n !== '.' && n !== '..');
  }

  /** Copy a file out of the image (databases to query on the host). */
  async dump(path: string, dest: string): Promise<void> {
    await this.#debugfs(`dump ${path} ${dest}`);
  }

  /** Files of the boot partition, and one file's content. */
  async bootFiles(): Promise<string[]> {
    const { stdout } = await execa('mdir', ['-b', '-/', '-i', `${this.image}@@${this.boot.start * 512}`, '::'], { env: { MTOOLS_SKIP_CHECK: '1' } });
    return stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => l.replace(/^::\//, ''));
  }

  async bootFile(path: string): Promise<string> {
    return (await execa('mtype', ['-i', `${this.image}@@${this.boot.start * 512}`, `::/${path}`], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
  }
}
