import { join } from 'node:path';
import { treeDigest } from '../engine/digest.ts';
import { imageInputs } from '../engine/options.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { buildConfigSchema } from '../lib/build-options.ts';
import { applyOverlays, checkOverlay, treeSize } from '../lib/image/overlay.ts';
import { templateVars } from '../lib/template.ts';

/** Template variables of the settings that can change what the image holds. */
function overlayVars<C extends BuildConfig>(ctx: BuildContext<C>, derived: Record<string, string>): Record<string, string> {
  return templateVars(imageInputs(buildConfigSchema, ctx.config), {
    ...derived,
    codename: ctx.state.system?.codename,
    'boot-mount': ctx.state.system?.bootMount,
  });
}

export interface OverlayStageOptions<C extends BuildConfig> {
  /** The stage's name (a pipeline with two overlay stages names one of them). */
  name?: string;
  /** Copy the user's --overlay directories after the pipeline's own (default: yes). */
  user?: boolean;
  /** Values derived from the settings, for the templates too (the pimaster's ip-address...). */
  derived?: (config: C) => Record<string, string>;
}

/**
 * Copy the pipeline's own overlay directories, then the user's (--overlay), into the image: a
 * site adds or replaces files without touching the pipeline's. `keys` are the settings the
 * pipeline's templates use (shown by --plan, accepted by the command).
 */
export function overlayStage<C extends BuildConfig>(
  own: readonly string[] = [],
  keys: readonly (keyof C & string)[] = [],
  options: OverlayStageOptions<C> = {},
): Stage<C> {
  const user = options.user ?? true;
  const all = (config: { overlay: readonly string[] }) => [...own, ...(user ? config.overlay : [])];
  return {
    name: options.name ?? 'overlay',
    describe: (config) => {
      const n = all(config).length;
      return n ? `copy ${n} overlay director${n > 1 ? 'ies' : 'y'} into the image` : 'no overlay directories (--overlay DIR)';
    },
    options: [...(user ? (['overlay'] as const) : []), ...keys],
    async grows(ctx) {
      return all(ctx.config).reduce((sum, dir) => sum + treeSize(join(dir, 'rootfs')), 0);
    },
    async key(ctx) {
      const dirs = all(ctx.config);
      for (const dir of dirs) checkOverlay(dir);
      const trees = await Promise.all(dirs.map((dir) => treeDigest(dir)));
      return [
        {
          label: `${dirs.length} overlay director${dirs.length === 1 ? 'y' : 'ies'} copied`,
          input: JSON.stringify({ trees, vars: overlayVars(ctx, options.derived?.(ctx.config) ?? {}) }),
        },
      ];
    },
    async run(ctx) {
      await applyOverlays(ctx, all(ctx.config), overlayVars(ctx, options.derived?.(ctx.config) ?? {}));
    },
  };
}
