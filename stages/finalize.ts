import { scoped } from '../engine/cleanup.ts';
import { UserError } from '../engine/errors.ts';
import type { Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { ATTACHED, rootDir } from '../lib/image/attached.ts';
import { fsck } from '../lib/image/fsck.ts';
import { attachLoop } from '../lib/image/loop.ts';
import { installedPackages } from '../lib/image/packages.ts';
import { partition } from '../lib/image/partitions.ts';

/** Write the boot partition back, unmount, detach (all that attach opened), then fsck the root. */
export const finalizeStage: Stage<BuildConfig> = {
  name: 'finalize',
  describe: () => 'write the boot partition back, unmount, detach, fsck the root filesystem',
  options: [],
  async run(ctx) {
    const mark = ctx.resources.get(ATTACHED);
    if (typeof mark !== 'number') throw new UserError('finalize: the image is not attached; run from attach or earlier');
    ctx.state.packages = installedPackages(rootDir(ctx.paths.work));
    const errors = await ctx.cleanup.unwindTo(mark, 'success');
    if (errors.length) throw errors[0];
    ctx.resources.delete(ATTACHED);
    const { image, layout } = ctx.state;
    await scoped(ctx.cleanup, ctx.signal, async () => {
      const device = await attachLoop(ctx, image!, partition(layout!, layout!.root));
      await fsck(ctx, device, true);
    });
  },
};
