/**
 * What leaves the build (its logs, the manifest a release publishes, the image itself) holds no
 * credentials and no paths of the machine that built it.
 */
import { basename } from 'node:path';
import { schema, type Config, type ConfigKey } from './options.ts';

/** The user name and password of a URL (`user:token@`), wherever one appears in a text. */
const USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/@'"]+@/gi;

/** `https://user:token@host/x` -> `https://***@host/x`: what was hidden stays visible as hidden. */
export function redactCredentials(text: string): string {
  return text.replace(USERINFO, '$1***@');
}

/** A URL as it may be kept: its user name and password removed (`https://host/x`). */
export function withoutCredentials(url: string): string {
  return url.replace(USERINFO, '$1');
}

/** Settings whose values may be paths on the build machine (else URLs, kept without credentials). */
const HOST_PATHS: readonly ConfigKey[] = ['base', 'os-list', 'overlay', 'script', 'ssh-key', 'password-file', 'wifi-psk-file', 'bootcode', 'piseduce-webui', 'piseduce-agent', 'environment'];
/** Where the build ran: nothing the image depends on. */
const HOST_ONLY: readonly ConfigKey[] = ['work', 'cache', 'out'];

/** One setting's value as published. */
export function published(key: ConfigKey, value: string): string {
  if (schema[key].secret) return '***';
  if (!HOST_PATHS.includes(key) || /^[a-z][a-z0-9+.-]*:\/\//i.test(value.replace(/^[^=/]*=/, ''))) return withoutCredentials(value);
  // NAME=PATH (--environment), PATH#REF (a local git source): the path's last part only.
  const [, name = '', path = value, ref = ''] = /^(?:([^=/]*)=)?([^#]*)(#.*)?$/.exec(value) ?? [];
  return `${name ? `${name}=` : ''}${basename(path)}${ref}`;
}

/** The settings as a published manifest shows them. */
export function publishedSettings(config: Config): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(config)
      .filter(([key]) => !HOST_ONLY.includes(key as ConfigKey))
      .map(([key, value]) => [key, typeof value === 'string' ? published(key as ConfigKey, value) : Array.isArray(value) ? value.map((v) => (typeof v === 'string' ? published(key as ConfigKey, v) : v)) : value]),
  );
}
