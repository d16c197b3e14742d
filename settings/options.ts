import { existingFile, oneOf, type Schema } from '../engine/options.ts';
import {
  parseCountry,
  parseCryptHash,
  parseHostLabel,
  parseKeymap,
  parseLocale,
  parsePackages,
  parsePublicKeyFile,
  parseSsid,
  parseTimezone,
  parseUnits,
  parseUserName,
} from './rules.ts';

/**
 * What a user sets on a Raspberry Pi: its host name, first user, SSH, Wi-Fi, locale, packages,
 * units. One spec a setting (its flag and --config key, kind, help and rule, whose message is the
 * error's): customize and the pimaster read them, and flash reads those a first boot can apply
 * (settings/first-boot.ts), so a value is refused the same way, with the same line, by each.
 */
export interface PiSettings {
  hostname: string | undefined;
  user: string | undefined;
  'password-hash': string | undefined;
  'password-file': string | undefined;
  ssh: 'on' | 'off' | undefined;
  'ssh-password-auth': boolean;
  'wifi-ssid': string | undefined;
  'wifi-psk-file': string | undefined;
  'wifi-country': string | undefined;
  'wifi-hidden': boolean;
  timezone: string | undefined;
  locale: string | undefined;
  keymap: string | undefined;
  packages: string[];
  enable: string[];
  disable: string[];
  'ssh-key': string[];
}

export const settingsSchema: Schema<PiSettings> = {
  hostname: {
    kind: 'value',
    placeholder: 'NAME',
    help: "the image's host name",
    default: undefined,
    parse: parseHostLabel,
  },
  user: {
    kind: 'value',
    placeholder: 'NAME',
    help: "the first user (uid 1000): the image's is renamed, or made; its rename at first boot is cancelled",
    default: undefined,
    parse: parseUserName,
  },
  'password-hash': {
    kind: 'value',
    placeholder: 'HASH',
    help: "the user's password as a crypt(3) hash (openssl passwd -6)",
    default: undefined,
    parse: parseCryptHash,
    secret: true,
  },
  'password-file': {
    kind: 'value',
    placeholder: 'FILE',
    help: "the user's password, the first line of FILE (hashed anew at each use; never on the command line)",
    default: undefined,
    parse: existingFile,
    hostPath: true,
  },
  ssh: {
    kind: 'value',
    placeholder: 'on|off',
    help: 'start the SSH server at boot, or not (unset: as the image has it, or on with --ssh-key or --ssh-password-auth)',
    default: undefined,
    parse: oneOf(['on', 'off']),
  },
  'ssh-password-auth': {
    kind: 'switch',
    help: 'SSH accepts passwords (else, with --ssh-key, keys only)',
    default: false,
  },
  'wifi-ssid': {
    kind: 'value',
    placeholder: 'SSID',
    help: 'a Wi-Fi network to join (with --wifi-psk-file and --wifi-country)',
    default: undefined,
    parse: parseSsid,
  },
  'wifi-psk-file': {
    kind: 'value',
    placeholder: 'FILE',
    help: 'its passphrase (8 to 63 characters) or 64-hex PSK, the first line of FILE',
    default: undefined,
    parse: existingFile,
    hostPath: true,
  },
  'wifi-country': {
    kind: 'value',
    placeholder: 'CC',
    help: 'the Wi-Fi country, ISO 3166 (FR, GB, US...)',
    default: undefined,
    parse: parseCountry,
  },
  'wifi-hidden': {
    kind: 'switch',
    help: 'the network does not broadcast its SSID',
    default: false,
  },
  timezone: {
    kind: 'value',
    placeholder: 'ZONE',
    help: "the time zone (Europe/Paris); a build also checks the image's zoneinfo",
    default: undefined,
    parse: parseTimezone,
  },
  locale: {
    kind: 'value',
    placeholder: 'LOCALE',
    help: "the system locale (fr_FR.UTF-8), generated; a build also checks the image's supported locales",
    default: undefined,
    parse: parseLocale,
  },
  keymap: {
    kind: 'value',
    placeholder: 'LAYOUT',
    help: 'the keyboard layout (gb, fr, us...)',
    default: undefined,
    parse: parseKeymap,
  },
  packages: {
    kind: 'list',
    placeholder: 'LIST',
    help: 'apt packages to install, comma-separated (through --apt-proxy/--apt-mirror and the apt cache)',
    default: () => [],
    parse: parsePackages,
  },
  enable: {
    kind: 'list',
    placeholder: 'UNIT',
    help: 'a systemd unit to enable (ssh, foo.timer; repeatable or comma-separated)',
    default: () => [],
    parse: parseUnits,
  },
  disable: {
    kind: 'list',
    placeholder: 'UNIT',
    help: 'a systemd unit to disable (repeatable or comma-separated)',
    default: () => [],
    parse: parseUnits,
  },
  'ssh-key': {
    kind: 'list',
    placeholder: 'FILE',
    help: 'a file of OpenSSH public keys allowed to log in: as root on the pimaster, else as the first user (repeatable; flash: a list in --settings FILE)',
    default: () => [],
    parse: parsePublicKeyFile,
    hostPath: true,
  },
};

/** Every setting, in the order --plan and the settings stage list them. */
export const SETTING_KEYS: readonly (keyof PiSettings)[] = [
  'hostname',
  'user',
  'password-hash',
  'password-file',
  'ssh-key',
  'ssh',
  'ssh-password-auth',
  'wifi-ssid',
  'wifi-psk-file',
  'wifi-country',
  'wifi-hidden',
  'timezone',
  'locale',
  'keymap',
  'packages',
  'enable',
  'disable',
];

/** The settings given: a value, a switch on, a list not empty. */
export function given<C extends PiSettings>(config: C): (keyof PiSettings)[] {
  return SETTING_KEYS.filter((key) => {
    const value = config[key];
    return Array.isArray(value) ? value.length > 0 : value !== undefined && value !== false;
  });
}

/** `config` with the settings not in `keys` unset (the pimaster's --ssh-key is root's, not a user's). */
export function only<C extends PiSettings>(config: C, keys: readonly (keyof PiSettings)[]): C {
  const unset = (value: unknown) => (Array.isArray(value) ? [] : typeof value === 'boolean' ? false : undefined);
  return { ...config, ...Object.fromEntries(SETTING_KEYS.filter((key) => !keys.includes(key)).map((key) => [key, unset(config[key])])) };
}
