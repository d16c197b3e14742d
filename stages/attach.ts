import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../engine/errors.ts';
import type { Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { ATTACHED, BOOT_BEFORE, bootDir, rootDir } from '../lib/image/attached.ts';
import { copyOut, snapshot, writeBack } from '../lib/image/bootfs.ts';
import { attachLoop, mount } from '../lib/image/loop.ts';
import { partition, readLayout } from '../lib/image/partitions.ts';
import { detectSystem } from '../lib/image/system.ts';

/**
 * Root partition on a loop device by offset and size, mounted; the FAT boot partition copied out
 * with mtools and bound at the mount point the image's own fstab names. All of it is undone by
 * finalize (or the clean-up stack), and the boot partition is written back only if the build got
 * that far without failing.
 */
export const attachStage: Stage<BuildConfig> = {
  name: 'attach',
  describe: () => 'mount the root partition (loop device by offset) and copy out the boot partition (mtools)',
  options: [],
  closedBy: 'finalize',
  async key() {
    return [{ label: 'image attached', input: '' }];
  },
  async run(ctx) {
    const image = ctx.state.image;
    if (!image) throw new UserError('attach: no working image; run the pipeline from its start');
    const layout = await readLayout(ctx, image);
    ctx.resources.set(ATTACHED, ctx.cleanup.mark());
    const root = rootDir(ctx.paths.work);
    const boot = bootDir(ctx.paths.work);
    mkdirSync(root, { recursive: true });
    const device = await attachLoop(ctx, image, partition(layout, layout.root));
    // nodev: a device node in a downloaded image opens nothing of the host's; nosuid: the build is root already.
    await mount(ctx, device, root, ['-t', 'ext4', '-o', 'nodev,nosuid']);

    rmSync(boot, { recursive: true, force: true });
    mkdirSync(boot);
    ctx.defer(`remove ${boot}`, () => rmSync(boot, { recursive: true, force: true }));
    const bootOffset = partition(layout, layout.boot).offset;
    await copyOut(ctx, image, bootOffset, boot);
    const before = snapshot(boot);
    ctx.resources.set(BOOT_BEFORE, before); // for the stage cache's snapshots (lib/image/snapshot.ts)
    ctx.defer('write back the boot partition', async (outcome) => {
      if (outcome === 'success') await writeBack(ctx, image, bootOffset, boot, before);
    });

    const cmdline = existsSync(join(boot, 'cmdline.txt')) ? readFileSync(join(boot, 'cmdline.txt'), 'utf8') : '';
    const system = detectSystem(root, cmdline);
    if (system.arch !== ctx.config.arch) {
      throw new UserError(
        `the image is ${system.arch} (from its /bin/sh) but --arch is ${ctx.config.arch}: pass --arch ${system.arch}, or an image for ${ctx.config.arch}`,
      );
    }
    ctx.state.system = system;
    const target = join(root, system.bootMount);
    mkdirSync(target, { recursive: true });
    await mount(ctx, boot, target, ['--bind']);
    ctx.log.line(`${system.prettyName}; boot at ${system.bootMount}; network ${system.network}; first boot ${system.firstBoot}`);
  },
};
