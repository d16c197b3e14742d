import { fileURLToPath } from 'node:url';
import { CACHE_KEYS, COMMON_KEYS, PIMASTER_DEFAULTS, type ConfigKey } from '../engine/options.ts';
import type { Pipeline } from '../engine/stage.ts';
import { attachStage } from '../stages/attach.ts';
import { compressStage } from '../stages/compress.ts';
import { extractStage } from '../stages/extract.ts';
import { fetchStage } from '../stages/fetch.ts';
import { filesStage } from '../stages/files.ts';
import { finalizeStage } from '../stages/finalize.ts';
import { growStage } from '../stages/grow.ts';
import { overlayStage } from '../stages/overlay.ts';
import { chrootStage } from '../stages/chroot.ts';
import { settingsStage } from '../stages/settings.ts';
import { shrink, shrinkStage } from '../stages/shrink.ts';
import { imageSnapshots } from '../lib/image/snapshot.ts';

/** A directory of this repository (overlays/..., scripts/...). */
const repo = (path: string) => fileURLToPath(new URL(`../${path}`, import.meta.url));

/** Any Raspberry Pi OS image, customized with the user's overlays and scripts. */
export const customize: Pipeline = {
  name: 'customize',
  summary: 'customize a Raspberry Pi OS image: host name, user, SSH, Wi-Fi, locale, packages, your overlays and scripts',
  // The settings after the overlays (a unit an overlay adds can be enabled), before the scripts (which may use the packages).
  stages: [fetchStage, extractStage, growStage, attachStage, overlayStage(), settingsStage(), chrootStage(), finalizeStage, shrinkStage, compressStage],
  snapshots: imageSnapshots,
};

/** What scripts/pimaster/10-packages.sh installs, about. */
const PACKAGES = 700 * 2 ** 20;

/**
 * The PiSeduce pimaster: our overlays and scripts, then the user's overlays and scripts on the
 * finished pimaster (so a site's change rebuilds from the stage cache's snapshot of it).
 */
export const pimaster: Pipeline = {
  name: 'pimaster',
  summary: 'build the PiSeduce pimaster image (the default)',
  defaults: PIMASTER_DEFAULTS,
  stages: [
    fetchStage,
    // Before extract: what it gathers is part of the stage cache's keys.
    filesStage({
      git: { piseduce_webui: 'piseduce-webui', piseduce_agent: 'piseduce-agent' },
      keys: { authorized_keys: 'ssh-key' },
      file: { 'bootcode.bin': 'bootcode' },
      environments: 'environment',
    }),
    extractStage,
    growStage,
    attachStage,
    overlayStage([repo('overlays/pimaster')], ['hostname', 'ip', 'interface', 'uplink'], { user: false }),
    chrootStage({
      scriptsDir: repo('scripts/pimaster'),
      user: false,
      // The finished pimaster: where a rebuild after a change to the user's layer starts.
      snapshotAtEnd: true,
      keys: ['hostname', 'ip', 'interface', 'uplink'],
      // Packages, then the NFS root: a copy of the whole root with them.
      grows: (_config, rootUsed) => 2 * PACKAGES + rootUsed,
    }),
    overlayStage([], [], { name: 'user-overlay' }),
    // What makes sense on a pimaster: it has no first user (root's keys are --ssh-key), its host name is its own.
    settingsStage(['wifi-ssid', 'wifi-psk-file', 'wifi-country', 'wifi-hidden', 'timezone', 'locale', 'keymap', 'packages', 'enable', 'disable']),
    chrootStage({ name: 'user-chroot' }),
    finalizeStage,
    // The install guide removes the Raspberry Pi first-boot resize; --expand-on-boot keeps it.
    shrink({ disarmFirstBoot: true }),
    compressStage,
  ],
  snapshots: imageSnapshots,
};

export const PIPELINES = { build: pimaster, customize } as const;
export type PipelineCommand = keyof typeof PIPELINES;

/** The config keys a pipeline accepts: the common ones and those its stages read. */
export function optionsOf(pipeline: Pipeline): ConfigKey[] {
  return [...new Set([...pipeline.stages.flatMap((s) => s.options), ...(pipeline.snapshots ? CACHE_KEYS : []), ...COMMON_KEYS])];
}
