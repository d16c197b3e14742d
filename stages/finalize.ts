import { UserError } from '../engine/errors.ts';
import type { Stage } from '../engine/stage.ts';
import { rootDir } from './attach.ts';
import { installedPackages } from '../lib/image/packages.ts';
import { attachLoop } from '../lib/image/loop.ts';
import { partition } from '../lib/image/partitions.ts';
import { scoped } from '../engine/cleanup.ts';

/** Write the boot partition back, unmount, detach (all that attach opened), then fsck the root. */
export const finalizeStage: Stage = {
  name: 'finalize',
  describe: () => 'write the boot partition back, unmount, detach, fsck the root filesystem',
  options: [],
  async run(ctx) {
    const mark = ctx.resources.get('attach');
    if (typeof mark !== 'number') throw new UserError('finalize: the image is not attached; run from attach or earlier');
    ctx.state.packages = installedPackages(rootDir(ctx.paths.work));
    const errors = await ctx.cleanup.unwindTo(mark, 'success');
    if (errors.length) throw errors[0];
    ctx.resources.delete('attach');
    const { image, layout } = ctx.state;
    await scoped(ctx.cleanup, ctx.signal, async () => {
      const device = await attachLoop(ctx, image!, partition(layout!, layout!.root));
      await fsck(ctx, device, true);
    });
  },
};

/**
 * e2fsck -f -y. On a filesystem as it came (the base image, before growing) exit code 1, errors
 * fixed, is fine. On one the build has just written (`written`), any repair means a write went
 * wrong (a full or failing disk under the work directory): the build stops rather than ship it.
 */
export async function fsck(ctx: Parameters<Stage['run']>[0], device: string, written = false): Promise<void> {
  const { exitCode, stdout } = await ctx.run('e2fsck', ['-f', '-y', device], { reject: false });
  const last = stdout.trim().split('\n').at(-1);
  if (exitCode > 1) {
    throw new UserError(`e2fsck found errors it could not fix in the root filesystem (exit code ${exitCode}): ${last}`);
  }
  if (written && exitCode === 1) {
    throw new UserError(`the root filesystem the build wrote had errors (e2fsck repaired them: ${last}): the disk under the work directory may be full or failing; nothing was written to --out (see the finalize log)`);
  }
}
