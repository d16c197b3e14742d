/**
 * The settings stage of `customize`: what Raspberry Pi Imager, pi-gen's config and sdm's plugins set
 * (host name, first user, SSH, Wi-Fi, time zone, locale, keymap, packages, units), applied at build
 * time by settings/in-image.ts.
 *
 * The same flags as `flash` (settings/first-boot.ts checks them both), plus --ssh, --locale,
 * --packages, --enable and --disable. The stage cache keys the settings and the content of the
 * files they name; a password file is hashed again at each build (a fresh salt).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { ConfigError } from '../engine/errors.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import { parseCardSettings } from '../settings/first-boot.ts';
import { aptIndexes, asShipped, checkAgainstImage, HOST_KEYS_UNIT, hostKeys, settingsScript, type ImageSettings } from '../settings/in-image.ts';
import { APT_UPDATE, chrootRun, enterChroot, STAGING, stagedFiles } from '../lib/chroot/environment.ts';
import { inRoot } from '../lib/image/in-root.ts';
import { rootDir } from '../lib/image/attached.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import type { PiSettings } from '../settings/options.ts';

/** What the settings stage reads: the build's options and a user's settings. */
type SettingsConfig = BuildConfig & PiSettings;

const SETTING_KEYS: readonly (keyof SettingsConfig)[] = [
  'hostname', 'user', 'password-hash', 'password-file', 'ssh-key', 'ssh', 'ssh-password-auth', 'wifi-ssid', 'wifi-psk-file', 'wifi-country', 'wifi-hidden',
  'timezone', 'locale', 'keymap', 'packages', 'enable', 'disable',
];

/** The settings given, as --plan and the task list name them. */
function given(config: SettingsConfig): (keyof SettingsConfig)[] {
  return SETTING_KEYS.filter((key) => {
    const value = config[key];
    return Array.isArray(value) ? value.length > 0 : value !== undefined && value !== false;
  });
}

/** The settings checked together and the files they name read (one line, exit 2 on a bad one). */
async function settingsOf(config: SettingsConfig): Promise<ImageSettings> {
  // The host name is checked by the schema (a pimaster's may have dots), not by flash's rule.
  const card = (await parseCardSettings({
    user: config.user,
    'password-hash': config['password-hash'],
    'password-file': config['password-file'],
    'ssh-key': config['ssh-key'],
    'ssh-password-auth': config['ssh-password-auth'] || undefined,
    'wifi-ssid': config['wifi-ssid'],
    'wifi-psk-file': config['wifi-psk-file'],
    'wifi-country': config['wifi-country'],
    'wifi-hidden': config['wifi-hidden'] || undefined,
    timezone: config.timezone,
    keymap: config.keymap,
  })) ?? {};
  if (config.ssh === 'off' && config['ssh-password-auth']) throw new ConfigError('--ssh off and --ssh-password-auth: give one or the other');
  const both = config.enable.find((unit) => config.disable.includes(unit));
  if (both) throw new ConfigError(`--enable and --disable ${both}: give one or the other`);
  return {
    ...card,
    ...(config.hostname !== undefined ? { hostname: config.hostname } : {}),
    ...(config.ssh ? { ssh: config.ssh } : card.sshKeys || card.sshPasswordAuth ? { ssh: 'on' as const } : {}),
    ...(config.locale ? { locale: config.locale } : {}),
    packages: config.packages,
    enable: config.enable,
    disable: config.disable,
  };
}

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** What the image depends on: the settings, and the files they name by content, not by path. */
function keyInput(config: SettingsConfig): string {
  const files = (paths: readonly (string | undefined)[]) => paths.filter((p): p is string => p !== undefined).map(sha256);
  const values = Object.fromEntries(given(config).map((key) => [key, config[key]]));
  return JSON.stringify({ ...values, 'ssh-key': files(config['ssh-key']), 'password-file': files([config['password-file']]), 'wifi-psk-file': files([config['wifi-psk-file']]) });
}

/** `config` with the settings a stage does not take unset (the pimaster's --ssh-key is root's, not a user's). */
function only(config: SettingsConfig, keys: readonly (keyof SettingsConfig)[]): SettingsConfig {
  const unset = (value: unknown) => (Array.isArray(value) ? [] : typeof value === 'boolean' ? false : undefined);
  return { ...config, ...Object.fromEntries(SETTING_KEYS.filter((key) => !keys.includes(key)).map((key) => [key, unset(config[key])])) };
}

/** The settings stage, taking `keys` of the settings (all of them in customize). */
export function settingsStage(keys: readonly (keyof SettingsConfig)[] = SETTING_KEYS): Stage<SettingsConfig> {
  const own = (config: SettingsConfig) => only(config, keys);
  return {
    name: 'settings',
    describe: (config) => {
      const set = given(own(config));
      return set.length ? `apply ${set.map((k) => `--${k}`).join(', ')}` : `no settings (${keys.slice(0, 6).map((k) => `--${k}`).join(', ')}, ...)`;
    },
    options: keys,
    async check(config) {
      await settingsOf(own(config));
    },
    async grows(ctx) {
      const config = own(ctx.config);
      return (config.packages.length ? 512 * 2 ** 20 : 0) + (config.locale ? 32 * 2 ** 20 : 0);
    },
    async key(ctx) {
      // No settings, no step: nothing to snapshot (the scripts' keys hold the settings anyway).
      return given(own(ctx.config)).length ? [{ label: 'settings applied', input: keyInput(own(ctx.config)) }] : [];
    },
    run: (ctx) => applySettings(ctx, own(ctx.config)),
  };
}

async function applySettings(ctx: BuildContext<SettingsConfig>, config: SettingsConfig): Promise<void> {
  if (given(config).length === 0) return;
  const settings = await settingsOf(config);
  const root = rootDir(ctx.paths.work);
  const shipped = asShipped(root);
  const mark = ctx.cleanup.mark();
  await enterChroot(ctx, { aptProxy: ctx.config['apt-proxy'], aptMirror: ctx.config['apt-mirror'], files: stagedFiles(ctx.paths.work) });
  if (settings.packages.length) {
    ctx.log.useFile('settings-packages.log');
    ctx.status(`installing ${settings.packages.join(', ')}`);
    const keysBefore = hostKeys(root);
    const hadIndexes = aptIndexes(root).length > 0;
    await chrootRun(ctx, [APT_UPDATE]);
    await chrootRun(ctx, ['apt-get', 'install', '-y', '-q', ...settings.packages]);
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
