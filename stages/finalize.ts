import { existsSync, readFileSync } from 'node:fs';
import { UserError } from '../pipeline/errors.ts';
import type { Stage } from '../pipeline/stage.ts';
import { rootDir } from './attach.ts';
import { inRoot } from './image/in-root.ts';
import { attachLoop } from './image/loop.ts';
import { partition } from './image/partitions.ts';
import { scoped } from '../pipeline/cleanup.ts';
import type { Package } from './image/state.ts';

/** Installed packages from a dpkg status file (for the manifest). */
export function parseDpkgStatus(text: string): Package[] {
  const packages: Package[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const field = (name: string) => new RegExp(`^${name}: *(.*)$`, 'm').exec(block)?.[1]?.trim();
    const name = field('Package');
    if (name && /install ok installed/.test(field('Status') ?? '')) {
      packages.push({ name, version: field('Version') ?? '', arch: field('Architecture') ?? '' });
    }
  }
  return packages.sort((a, b) => a.name.localeCompare(b.name));
}

/** Write the boot partition back, unmount, detach (all that attach opened), then fsck the root. */
export const finalizeStage: Stage = {
  name: 'finalize',
  describe: () => 'write the boot partition back, unmount, detach, fsck the root filesystem',
  options: [],
  async run(ctx) {
    const mark = ctx.resources.get('attach');
    if (typeof mark !== 'number') throw new UserError('finalize: the image is not attached; run from attach or earlier');
    const status = inRoot(rootDir(ctx.paths.work), 'var/lib/dpkg/status');
    ctx.state.packages = existsSync(status) ? parseDpkgStatus(readFileSync(status, 'utf8')) : [];
    const errors = await ctx.cleanup.unwindTo(mark, 'success');
    if (errors.length) throw errors[0];
    ctx.resources.delete('attach');
    const { image, layout } = ctx.state;
    await scoped(ctx.cleanup, ctx.signal, async () => {
      const device = await attachLoop(ctx, image!, partition(layout!, layout!.root));
      await fsck(ctx, device);
    });
  },
};

/** e2fsck -f -y: exit codes 0 (clean) and 1 (errors fixed) are fine; anything else is not. */
export async function fsck(ctx: Parameters<Stage['run']>[0], device: string): Promise<void> {
  const { exitCode, stdout } = await ctx.run('e2fsck', ['-f', '-y', device], { reject: false });
  if (exitCode > 1) {
    throw new UserError(`e2fsck found errors it could not fix in the root filesystem (exit code ${exitCode}): ${stdout.trim().split('\n').at(-1)}`);
  }
}
