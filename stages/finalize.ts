import { scoped } from '../engine/cleanup.ts';
import { UserError } from '../engine/errors.ts';
import type { Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { restoreShipped } from '../lib/image/as-shipped.ts';
import { ATTACHED, rootDir } from '../lib/image/attached.ts';
import { fsck } from '../lib/image/fsck.ts';
import { attachLoop } from '../lib/image/loop.ts';
import { installedPackages } from '../lib/image/packages.ts';
import { partition } from '../lib/image/partitions.ts';

/**
 * Put back what the build must not leave (as-shipped.ts: machine ids, its logs, caches with times),
 * write the boot partition back, unmount, detach (all that attach opened), then fsck the root.
 */
export const finalizeStage: Stage<BuildConfig> = {
  name: 'finalize',
  describe: () => 'machine ids, logs and caches as shipped; write the boot partition back, unmount, detach, fsck the root filesystem',
  options: [],
  async run(ctx) {
    const mark = ctx.resources.get(ATTACHED);
    if (typeof mark !== 'number') throw new UserError('finalize: the image is not attached; run from attach or earlier');
    const root = rootDir(ctx.paths.work);
    ctx.state.packages = installedPackages(root);
    if (ctx.state.shipped) {
      const done = restoreShipped(root, ctx.state.shipped);
      ctx.log.line(`as shipped: ${done.join(', ') || 'nothing to put back'}`);
    }
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
