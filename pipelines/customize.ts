import { CACHE_KEYS, COMMON_KEYS } from '../engine/options.ts';
import type { Pipeline } from '../engine/stage.ts';
import { type BuildConfig, buildConfigSchema } from '../lib/build-options.ts';
import { imageSnapshots } from '../lib/image/snapshot.ts';
import { type PiSettings, settingsSchema } from '../settings/options.ts';
import { attachStage } from '../stages/attach.ts';
import { chrootStage } from '../stages/chroot.ts';
import { compressStage } from '../stages/compress.ts';
import { extractStage } from '../stages/extract.ts';
import { fetchStage } from '../stages/fetch.ts';
import { finalizeStage } from '../stages/finalize.ts';
import { growStage } from '../stages/grow.ts';
import { overlayStage } from '../stages/overlay.ts';
import { settingsStage } from '../stages/settings.ts';
import { shrinkStage } from '../stages/shrink.ts';

/** What customize reads: the build's options and a user's settings. */
export type CustomizeConfig = BuildConfig & PiSettings;
const customizeSchema = { ...buildConfigSchema, ...settingsSchema };

/** Any Raspberry Pi OS image, customized with the user's overlays and scripts. */
export const customize: Pipeline<CustomizeConfig> = {
  schema: customizeSchema,
  name: 'customize',
  summary: 'customize a Raspberry Pi OS image: host name, user, SSH, Wi-Fi, locale, packages, your overlays and scripts',
  // The settings after the overlays (a unit an overlay adds can be enabled), before the scripts (which may use the packages).
  stages: [fetchStage, extractStage, growStage, attachStage, overlayStage(), settingsStage(), chrootStage(), finalizeStage, shrinkStage, compressStage],
  snapshots: imageSnapshots,
};

/** The option keys a pipeline accepts: the common ones and those its stages read. */
export function optionsOf<C extends object>(pipeline: {
  stages: readonly { readonly options: readonly string[] }[];
  snapshots?: unknown;
}): (keyof C & string)[] {
  return [...new Set([...pipeline.stages.flatMap((s) => s.options), ...(pipeline.snapshots ? CACHE_KEYS : []), ...COMMON_KEYS])] as (keyof C & string)[];
}
