/**
 * `verify --deploy ENV`: the environment a node deploys, put on the pimaster's copy as an
 * administrator puts one there: `/root/environments/<name>.img.tar.gz`, a gzip'd tar holding the
 * raw image (the agent streams it with `tar xzOf -` onto the node's SD card). The agent then
 * learns of it through its API (deploy.ts), never from its database directly.
 *
 * What a Pi's firmware boots from the environment's boot partition (its kernel8.img) does not run
 * on QEMU's virt machine: the copy's boot partition also gets the node's kernel and initrd, under
 * the names the node's U-Boot script fetches from /tftpboot/<serial>/, where the agent's
 * boot_files step copies that partition. The image given is never changed.
 */
import { mkdirSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { extractImage } from '../codec/decode.ts';
import { entryInRoot } from '../image/in-root.ts';
import { partition, readLayout } from '../image/partitions.ts';
import type { GuestKernel } from './kernel.ts';
import { NODE_INITRD_FILE, NODE_KERNEL_FILE } from './node.ts';

export interface DeployEnvironment {
  /** The agent's environment name: its `raspbian` prefix makes the agent set the host name and root's keys. */
  name: string;
  imgName: string;
  /** The raw image's size in bytes, and the first sector of its root partition (the agent's columns). */
  imgSize: number;
  sectorStart: number;
  sshUser: string;
}

export const ENVIRONMENT_NAME = 'raspbian_verify';

export async function prepareEnvironment(ctx: BuildContext, image: string, pimasterRoot: string, kernel: GuestKernel): Promise<DeployEnvironment> {
  const copy = join(ctx.paths.work, `${ENVIRONMENT_NAME}.img`);
  ctx.defer(`remove ${copy}`, () => rmSync(copy, { force: true }));
  await extractImage(ctx, { path: image, sha256: '', source: image }, copy, 'environment', '--deploy');
  const layout = await readLayout(ctx, copy);
  // The agent deletes and re-creates partition 2 to the card's end, and mounts p1 and p2.
  if (layout.label !== 'dos' || layout.boot !== 1 || layout.root !== 2 || layout.partitions.length !== 2)
    throw new UserError(
      `--deploy ${image}: PiSeduce deploys an MBR image whose partition 1 is the FAT boot and partition 2, the last, the ext4 root; this one has ${layout.label} partitions ${layout.partitions.map((p) => p.number).join(', ')} (boot ${layout.boot}, root ${layout.root})`,
    );
  const boot = partition(layout, 1);
  for (const [file, name] of [
    [kernel.kernel, NODE_KERNEL_FILE],
    [kernel.initrd, NODE_INITRD_FILE],
  ] as const) {
    const r = await ctx.run('mcopy', ['-o', '-i', `${copy}@@${boot.offset}`, file, `::/${name}`], { env: { MTOOLS_SKIP_CHECK: '1' }, reject: false });
    if (r.exitCode !== 0)
      throw new UserError(`--deploy ${image}: cannot add ${name} (${statSync(file).size} bytes) to its boot partition: ${r.stderr.trim().split('\n').at(-1)}`);
  }
  const imgName = `${ENVIRONMENT_NAME}.img.tar.gz`;
  const target = entryInRoot(pimasterRoot, `root/environments/${imgName}`);
  mkdirSync(dirname(target), { recursive: true });
  // gzip -1: the node unpacks it under emulation, and most of an image's free space is zeros.
  await ctx.run('sh', ['-c', 'tar -C "$1" -cSf - "$2" | gzip -1 > "$3"', 'sh', dirname(copy), basename(copy), target]);
  const environment: DeployEnvironment = {
    name: ENVIRONMENT_NAME,
    imgName,
    imgSize: statSync(copy).size,
    sectorStart: partition(layout, 2).offset / 512,
    sshUser: 'root',
  };
  rmSync(copy, { force: true });
  ctx.log.line(
    `environment ${environment.name}: ${imgName}, ${statSync(target).size} bytes (${environment.imgSize} unpacked), root at sector ${environment.sectorStart}`,
  );
  return environment;
}
