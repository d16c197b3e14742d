import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../engine/errors.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { recordShipped } from '../lib/image/as-shipped.ts';
import { ATTACHED, BOOT_BEFORE, bootDir, rootDir } from '../lib/image/attached.ts';
import { copyOut, snapshot, writeBack } from '../lib/image/bootfs.ts';
import { attachLoop, mount } from '../lib/image/loop.ts';
import { partition, readLayout } from '../lib/image/partitions.ts';
import { detectSystem } from '../lib/image/system.ts';
import { newestMtime } from '../lib/image/tree-times.ts';
import { sourceDateLine } from '../lib/source-date.ts';

/**
 * Root partition on a loop device by offset and size, mounted; the FAT boot partition copied out
 * with mtools and bound at the mount point the image's own fstab names. All of it is undone by
 * finalize (or the clean-up stack), and the boot partition is written back only if the build got
 * that far without failing. It also fixes the build's one time (SOURCE_DATE_EPOCH): --source-date, or
 * the newest file time of the base image's root filesystem.
 */
export const attachStage: Stage<BuildConfig> = {
  name: 'attach',
  describe: () => 'mount the root partition (loop device by offset) and copy out the boot partition (mtools)',
  options: ['source-date'],
  closedBy: 'finalize',
  async key(ctx) {
    return [{ label: 'image attached', input: String(ctx.config['source-date'] ?? '') }];
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
    setSourceDate(ctx, root);
    // As the base shipped, for finalize: kept from a state that has it (an image restored from the stage cache is no longer the base).
    ctx.state.shipped ??= recordShipped(root);

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

/**
 * The build's one time. Without --source-date it is the root filesystem's newest file time, read
 * before anything is mounted inside it; a time found so in a restored snapshot or an earlier run's
 * state (--from) is kept: the image is then no longer the base image.
 */
function setSourceDate(ctx: BuildContext<BuildConfig>, root: string): void {
  const option = ctx.config['source-date'];
  if (option !== undefined) {
    ctx.state.sourceDateEpoch = option;
    ctx.state.sourceDateFrom = 'option';
  } else if (ctx.state.sourceDateEpoch === undefined || ctx.state.sourceDateFrom !== 'image') {
    ctx.state.sourceDateEpoch = newestMtime(root);
    ctx.state.sourceDateFrom = 'image';
  }
  ctx.log.line(sourceDateLine(ctx.state.sourceDateEpoch, ctx.state.sourceDateFrom!));
}
