import { ConfigError, UserError } from '../engine/errors.ts';
import { formatBytes } from '../engine/options.ts';
import type { Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { readBootFile, writeBootFile } from '../lib/image/bootfs.ts';
import { armFirstBoot, disarmFirstBoot, firstBootFor, formatCmdline, parseCmdline } from '../lib/image/cmdline.ts';
import { partition, readLayout } from '../lib/image/partitions.ts';
import { resizeRootPartition } from '../lib/image/resize.ts';
import { rewriteRoot } from '../lib/image/rewrite-root.ts';

/**
 * The root filesystem (finalize checked it) written anew from its tree at what it holds plus a
 * margin (rewrite-root.ts: the same tree gives the same bytes), its free blocks holes (so the image
 * compresses well and copies skip them), the last partition and the file cut to size. The
 * release's own first-boot expansion is then armed (--expand-on-boot, or a pipeline's default: the
 * pimaster grows to its card), disarmed (--fixed-size), or left as it is.
 */
export function shrink(options: { armFirstBoot?: boolean } = {}): Stage<BuildConfig> {
  const firstBoot = (config: BuildConfig) => (config['fixed-size'] ? 'disarm' : config['expand-on-boot'] || options.armFirstBoot ? 'arm' : undefined);
  return {
    name: 'shrink',
    describe: (config) =>
      `write the root filesystem anew with what it holds + ${formatBytes(config['shrink-margin'])}, free blocks as holes${{ arm: ', arm first-boot expansion', disarm: ', disarm first-boot expansion', none: '' }[firstBoot(config) ?? 'none']}`,
    options: ['shrink-margin', 'expand-on-boot', 'fixed-size'],
    async check(config) {
      if (config['expand-on-boot'] && config['fixed-size']) throw new ConfigError('--expand-on-boot and --fixed-size: give one or the other');
    },
    async run(ctx) {
      const image = ctx.state.image;
      if (!image) throw new UserError('shrink: no working image; run the pipeline from its start');
      let layout = await readLayout(ctx, image);
      const root = partition(layout, layout.root);
      const epoch = ctx.state.sourceDateEpoch ?? Math.floor(Date.now() / 1000);
      const bytes = await rewriteRoot(ctx, image, root, { epoch, margin: ctx.config['shrink-margin'] });
      // The partition follows the filesystem (a whole number of blocks is a whole number of sectors).
      layout = await resizeRootPartition(ctx, image, layout, root, bytes / layout.sectorSize);
      // Zeroed blocks become holes: smaller copies, faster reads, and a bmap of the used blocks only.
      await ctx.run('fallocate', ['--dig-holes', image]);
      const firstBootEdit = firstBoot(ctx.config);
      if (firstBootEdit) {
        const boot = partition(layout, layout.boot);
        const mechanism = ctx.state.system?.firstBoot ?? firstBootFor(ctx.state.system?.codename ?? '');
        if (firstBootEdit === 'arm' && mechanism === 'none')
          throw new UserError(
            `${ctx.config['expand-on-boot'] ? '--expand-on-boot' : 'the root grows to its card at the first boot'}: release "${ctx.state.system?.codename}" has no first-boot expansion this tool knows (pass --fixed-size)`,
          );
        const cmdline = parseCmdline(await readBootFile(ctx, image, boot.offset, 'cmdline.txt'));
        const edited = firstBootEdit === 'arm' ? armFirstBoot(cmdline, mechanism) : disarmFirstBoot(cmdline);
        await writeBootFile(ctx, image, boot.offset, 'cmdline.txt', formatCmdline(edited));
        ctx.log.line(`first-boot expansion ${firstBootEdit === 'arm' ? `armed (${mechanism})` : 'disarmed'}: ${formatCmdline(edited).trim()}`);
      }
      ctx.state.layout = layout;
    },
  };
}

export const shrinkStage = shrink();
