/**
 * The settings stage of `customize` (and the pimaster's, with the settings that make sense on it):
 * a user's settings (settings/options.ts) checked together (settings/model.ts) before any stage
 * runs, then applied inside the image (settings/in-image.ts): packages first, then a script.
 */
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { UserError } from '../engine/errors.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { plannedMode } from '../lib/chroot/emulation.ts';
import { APT_UPDATE, chrootRun, enterChroot, STAGING, stagedFiles } from '../lib/chroot/environment.ts';
import { asShipped } from '../lib/image/as-shipped.ts';
import { rootDir } from '../lib/image/attached.ts';
import { inRoot, readInRoot } from '../lib/image/in-root.ts';
import { removedPackages } from '../lib/image/packages.ts';
import { aptIndexes, aptInstallArgs, checkAgainstImage, HOST_KEYS_UNIT, hostKeys, settingsKey, settingsScript } from '../settings/in-image.ts';
import { readSettings } from '../settings/model.ts';
import { given, only, type PiSettings, SETTING_KEYS } from '../settings/options.ts';

/** What the settings stage reads: the build's options and a user's settings. */
type SettingsConfig = BuildConfig & PiSettings;

/** The settings stage, taking `keys` of the settings (all of them in customize). */
export function settingsStage(keys: readonly (keyof PiSettings)[] = SETTING_KEYS): Stage<SettingsConfig> {
  const own = (config: SettingsConfig) => only(config, keys);
  return {
    name: 'settings',
    describe: (config) => {
      const set = given(own(config));
      return set.length
        ? `apply ${set.map((k) => `--${k}`).join(', ')} (chroot: ${plannedMode(config.arch)})`
        : `no settings (${keys
            .slice(0, 6)
            .map((k) => `--${k}`)
            .join(', ')}, ...)`;
    },
    options: keys,
    async check(config) {
      await readSettings(own(config));
    },
    async grows(ctx) {
      const config = own(ctx.config);
      return (config.packages.length ? 512 * 2 ** 20 : 0) + (config.locale ? 32 * 2 ** 20 : 0);
    },
    async key(ctx) {
      // No settings, no step: nothing to snapshot (the scripts' keys hold the settings anyway).
      return given(own(ctx.config)).length ? [{ label: 'settings applied', input: settingsKey(own(ctx.config)) }] : [];
    },
    run: (ctx) => applySettings(ctx, own(ctx.config)),
  };
}

async function applySettings(ctx: BuildContext<SettingsConfig>, config: SettingsConfig): Promise<void> {
  if (given(config).length === 0) return;
  const settings = await readSettings(config);
  const root = rootDir(ctx.paths.work);
  const shipped = asShipped(root);
  const mark = ctx.cleanup.mark();
  await enterChroot(ctx, { aptProxy: ctx.config['apt-proxy'], aptMirror: ctx.config['apt-mirror'], files: stagedFiles(ctx.paths.work) });
  if (settings.packages.length) {
    ctx.log.useFile('settings-packages.log');
    ctx.status(`installing ${settings.packages.join(', ')}`);
    const keysBefore = hostKeys(root);
    const hadIndexes = aptIndexes(root).length > 0;
    const statusBefore = readInRoot(root, 'var/lib/dpkg/status');
    await chrootRun(ctx, [APT_UPDATE]);
    await chrootRun(ctx, aptInstallArgs(settings.packages));
    // apt's --no-remove should stop it first; dpkg's own list says what really happened.
    const removed = removedPackages(statusBefore, readInRoot(root, 'var/lib/dpkg/status'));
    if (removed.length)
      throw new UserError(
        `--packages: installing ${settings.packages.join(',')} removed ${removed.join(', ')} from the image (a conflict): leave out the package that conflicts with it`,
      );
    // Released images carry no package indexes (pi-gen deletes them): they would be stale anyway.
    if (!hadIndexes) for (const file of aptIndexes(root)) rmSync(inRoot(root, `var/lib/apt/lists/${file}`));
    const made = hostKeys(root).filter((key) => !keysBefore.includes(key));
    if (made.length) {
      // Host keys are per device: the package's postinst made them for every card of this image.
      for (const key of made) rmSync(inRoot(root, `etc/ssh/${key}`));
      if (!existsSync(inRoot(root, 'usr/lib/systemd/system/regenerate_ssh_host_keys.service'))) {
        writeFileSync(inRoot(root, 'etc/systemd/system/build-image-ssh-host-keys.service'), HOST_KEYS_UNIT);
        await chrootRun(ctx, ['systemctl', 'enable', 'build-image-ssh-host-keys.service']);
      }
    }
  }
  const facts = { ...checkAgainstImage(root, settings), bootMount: ctx.state.system?.bootMount ?? '/boot/firmware' };
  const script = `${STAGING}/scripts/settings.sh`;
  writeFileSync(inRoot(root, script), settingsScript(settings, facts), { mode: 0o700 });
  ctx.log.useFile('settings.log');
  ctx.status('applying the settings');
  await chrootRun(ctx, ['/bin/bash', '-e', script]);
  shipped.restore();
  const errors = await ctx.cleanup.unwindTo(mark, 'success');
  if (errors.length) throw errors[0];
}
