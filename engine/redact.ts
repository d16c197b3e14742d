/**
 * What leaves the build (its logs, the manifest a release publishes, the image itself) holds no
 * credentials and no paths of the machine that built it.
 */
import { basename } from 'node:path';
import type { Schema, Spec } from './options.ts';

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

/** One option's value as published. */
export function published(spec: Spec<unknown>, value: string): string {
  if (spec.secret) return '***';
  if (!spec.hostPath || /^[a-z][a-z0-9+.-]*:\/\//i.test(value.replace(/^[^=/]*=/, ''))) return withoutCredentials(value);
  // NAME=PATH (--environment), PATH#REF (a local git source): the path's last part only.
  const [, name = '', path = value, ref = ''] = /^(?:([^=/]*)=)?([^#]*)(#.*)?$/.exec(value) ?? [];
  return `${name ? `${name}=` : ''}${basename(path)}${ref}`;
}

/** The options as a published manifest shows them. */
export function publishedSettings<T extends object>(schema: Schema<T>, options: T): Record<string, unknown> {
  const specs = schema as Record<string, Spec<unknown>>;
  const one = (spec: Spec<unknown>, value: unknown) => (typeof value === 'string' ? published(spec, value) : value);
  return Object.fromEntries(
    Object.entries(options)
      .filter(([key]) => specs[key] && !specs[key].hostOnly)
      .map(([key, value]) => [key, Array.isArray(value) ? value.map((v) => one(specs[key]!, v)) : one(specs[key]!, value)]),
  );
}
