import { fileURLToPath } from 'node:url';
import type { Pipeline } from '../../engine/stage.ts';
import { imageSnapshots } from '../../lib/image/snapshot.ts';
import { attachStage } from '../../stages/attach.ts';
import { chrootStage } from '../../stages/chroot.ts';
import { compressStage } from '../../stages/compress.ts';
import { extractStage } from '../../stages/extract.ts';
import { fetchStage } from '../../stages/fetch.ts';
import { filesStage } from '../../stages/files.ts';
import { finalizeStage } from '../../stages/finalize.ts';
import { growStage } from '../../stages/grow.ts';
import { overlayStage } from '../../stages/overlay.ts';
import { settingsStage } from '../../stages/settings.ts';
import { shrink } from '../../stages/shrink.ts';
import { derivedValues, PIMASTER_DEFAULTS, type PimasterConfig, pimasterConfigSchema } from './options.ts';

/** A directory of this repository (overlays/..., scripts/...). */
const repo = (path: string) => fileURLToPath(new URL(`../../${path}`, import.meta.url));

/** What scripts/pimaster/10-packages.sh installs, about. */
const PACKAGES = 700 * 2 ** 20;

/**
 * The PiSeduce pimaster: our overlays and scripts, then the user's overlays and scripts on the
 * finished pimaster (so a site's change rebuilds from the stage cache's snapshot of it).
 */
export const pimaster: Pipeline<PimasterConfig> = {
  schema: pimasterConfigSchema,
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
    overlayStage<PimasterConfig>([repo('overlays/pimaster')], ['hostname', 'ip', 'interface', 'uplink'], { user: false, derived: derivedValues }),
    chrootStage<PimasterConfig>({
      scriptsDir: repo('scripts/pimaster'),
      user: false,
      // The finished pimaster: where a rebuild after a change to the user's layer starts.
      snapshotAtEnd: true,
      keys: ['hostname', 'ip', 'interface', 'uplink'],
      derived: derivedValues,
      // Packages, then the NFS root: a copy of the whole root with them.
      grows: (_config, rootUsed) => 2 * PACKAGES + rootUsed,
    }),
    overlayStage([], [], { name: 'user-overlay' }),
    // What makes sense on a pimaster: it has no first user (root's keys are --ssh-key), its host name is its own.
    settingsStage(['wifi-ssid', 'wifi-psk-file', 'wifi-country', 'wifi-hidden', 'timezone', 'locale', 'keymap', 'packages', 'enable', 'disable']),
    chrootStage({ name: 'user-chroot' }),
    finalizeStage,
    // Grown to its card at the first boot (room for environments, swap); --fixed-size keeps the built size.
    shrink({ armFirstBoot: true }),
    compressStage,
  ],
  snapshots: imageSnapshots,
};
