/**
 * One time for the whole build, as SOURCE_DATE_EPOCH (reproducible-builds.org) means it: what
 * the image's programs, its FAT boot files and the outputs' headers say "now" is. Two builds of
 * the same inputs then write the same bytes.
 */
import { ConfigError } from '../engine/errors.ts';

export const SOURCE_DATE_ALLOWED = 'seconds since 1970, or a date such as 2026-06-18 or 2026-06-18T10:00:00Z';

/** `1781776800`, `2026-06-18` or `2026-06-18T10:00:00Z` -> seconds since 1970; throws what is allowed. */
export function parseSourceDate(raw: string): number {
  const text = raw.trim();
  if (/^\d+$/.test(text)) {
    const seconds = Number(text);
    if (Number.isSafeInteger(seconds)) return seconds;
    throw SOURCE_DATE_ALLOWED;
  }
  // ISO 8601 only (Date.parse alone takes "June 18", and local times that differ between machines).
  const iso = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?(Z|[+-]\d{2}:\d{2}))?$/.exec(text);
  if (!iso) throw SOURCE_DATE_ALLOWED;
  const [year, month, day, hour = 0, minute = 0, second = 0] = iso.slice(1, 7).map((n) => (n === undefined ? undefined : Number(n))) as number[];
  // Date.parse rolls 2026-02-30 over to March: every field must be in its range.
  const days = new Date(Date.UTC(year!, month!, 0)).getUTCDate();
  if (month! < 1 || month! > 12 || day! < 1 || day! > days || hour > 23 || minute > 59 || second > 59) throw SOURCE_DATE_ALLOWED;
  const ms = Date.parse(text);
  if (Number.isNaN(ms) || ms < 0) throw SOURCE_DATE_ALLOWED;
  return Math.floor(ms / 1000);
}

/** The option's default: SOURCE_DATE_EPOCH from the environment, when set. */
export function sourceDateFromEnv(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env.SOURCE_DATE_EPOCH;
  if (raw === undefined || raw === '') return undefined;
  try {
    return parseSourceDate(raw);
  } catch (allowed) {
    if (typeof allowed !== 'string') throw allowed;
    throw new ConfigError(`SOURCE_DATE_EPOCH ${JSON.stringify(raw)} is invalid: expected ${allowed}`);
  }
}

/** `2026-06-18T10:00:00Z`: whole seconds, UTC. */
export function isoSeconds(epoch: number): string {
  return new Date(epoch * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export type SourceDateFrom = 'option' | 'image';

/** The log line that says which time the build uses and where it came from. */
export function sourceDateLine(epoch: number, from: SourceDateFrom): string {
  const origin = from === 'option' ? 'from --source-date' : "from the base image's newest file";
  return `source date: ${isoSeconds(epoch)} (SOURCE_DATE_EPOCH ${epoch}, ${origin})`;
}
