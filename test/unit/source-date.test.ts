/** The build's one time (SOURCE_DATE_EPOCH): parsing it, its default, its log line, and the base image's newest file. */
import { lutimesSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { ConfigError } from '../../engine/errors.ts';
import { resolveOptions } from '../../engine/options.ts';
import { publishedSettings } from '../../engine/redact.ts';
import { newestMtime } from '../../lib/image/tree-times.ts';
import { isoSeconds, parseSourceDate, SOURCE_DATE_ALLOWED, sourceDateFromEnv, sourceDateLine } from '../../lib/source-date.ts';
import { type PimasterConfig, pimasterConfigSchema } from '../../pipelines/pimaster/options.ts';

/** What `f` throws: the option parsers throw the string of what is allowed, not an Error. */
function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (error) {
    return error;
  }
  return undefined;
}

test('--source-date: seconds since 1970 or an ISO 8601 date, nothing else', (t) => {
  t.is(parseSourceDate('1781776800'), 1781776800);
  t.is(parseSourceDate('0'), 0);
  t.is(parseSourceDate('2026-06-18'), 1781740800);
  t.is(parseSourceDate('2026-06-18T10:00:00Z'), 1781776800);
  t.is(parseSourceDate('2026-06-18T10:00Z'), 1781776800);
  t.is(parseSourceDate('2026-06-18T12:00:00+02:00'), 1781776800);
  for (const bad of [
    '',
    'now',
    '-1',
    '1.5',
    '1e9',
    'June 18 2026',
    '2026-02-30',
    '2026-13-01',
    '2026-06-18T10:00:00',
    '2026-06-18T24:00:00Z',
    '99999999999999999999',
  ])
    t.is(
      thrown(() => parseSourceDate(bad)),
      SOURCE_DATE_ALLOWED,
      bad,
    );
});

test('SOURCE_DATE_EPOCH: the default when set, and a bad value a one-line ConfigError naming it', (t) => {
  t.is(sourceDateFromEnv({}), undefined);
  t.is(sourceDateFromEnv({ SOURCE_DATE_EPOCH: '' }), undefined);
  t.is(sourceDateFromEnv({ SOURCE_DATE_EPOCH: '1781776800' }), 1781776800);
  const error = t.throws(() => sourceDateFromEnv({ SOURCE_DATE_EPOCH: 'yesterday' }), { instanceOf: ConfigError })!;
  t.is(error.message, `SOURCE_DATE_EPOCH "yesterday" is invalid: expected ${SOURCE_DATE_ALLOWED}`);
});

test('source-date as an option: the flag wins over the environment, and the manifest publishes it', (t) => {
  const keys: (keyof PimasterConfig)[] = ['source-date'];
  const resolve = (flags: Record<string, unknown>) => resolveOptions(pimasterConfigSchema, keys, { flags }, 'customize');
  const saved = process.env.SOURCE_DATE_EPOCH;
  try {
    delete process.env.SOURCE_DATE_EPOCH;
    t.is(resolve({})['source-date'], undefined);
    process.env.SOURCE_DATE_EPOCH = '1700000000';
    t.is(resolve({})['source-date'], 1700000000);
    const config = resolve({ 'source-date': '2026-06-18T10:00:00Z' });
    t.is(config['source-date'], 1781776800);
    t.is(publishedSettings(pimasterConfigSchema, config)['source-date'], 1781776800);
    t.is(
      t.throws(() => resolve({ 'source-date': 'soon' }), { instanceOf: ConfigError })!.message,
      `--source-date "soon" is invalid: expected ${SOURCE_DATE_ALLOWED}`,
    );
    process.env.SOURCE_DATE_EPOCH = 'soon';
    t.throws(() => resolve({}), { instanceOf: ConfigError, message: /^SOURCE_DATE_EPOCH "soon" is invalid/ });
  } finally {
    if (saved === undefined) delete process.env.SOURCE_DATE_EPOCH;
    else process.env.SOURCE_DATE_EPOCH = saved;
  }
});

test('the log line says the time, the number and where it came from', (t) => {
  t.is(isoSeconds(1781776800), '2026-06-18T10:00:00Z');
  t.is(sourceDateLine(1781776800, 'option'), 'source date: 2026-06-18T10:00:00Z (SOURCE_DATE_EPOCH 1781776800, from --source-date)');
  t.is(sourceDateLine(1781776800, 'image'), "source date: 2026-06-18T10:00:00Z (SOURCE_DATE_EPOCH 1781776800, from the base image's newest file)");
});

test("newestMtime: every entry's time, whole seconds, links not followed", (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'newest-mtime-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const outside = mkdtempSync(join(tmpdir(), 'newest-mtime-outside-'));
  t.teardown(() => rmSync(outside, { recursive: true, force: true }));
  mkdirSync(join(dir, 'a', 'b'), { recursive: true });
  writeFileSync(join(dir, 'a', 'b', 'deep'), 'x');
  writeFileSync(join(dir, 'top'), 'x');
  writeFileSync(join(outside, 'newer'), 'x');
  symlinkSync(outside, join(dir, 'link'));
  utimesSync(join(outside, 'newer'), 1900000000, 1900000000);
  utimesSync(outside, 1900000000, 1900000000);
  lutimesSync(join(dir, 'link'), 1000, 1000);
  utimesSync(join(dir, 'top'), 1000, 1000);
  utimesSync(join(dir, 'a', 'b', 'deep'), 1781776800.9, 1781776800.9);
  for (const d of [join(dir, 'a', 'b'), join(dir, 'a'), dir]) utimesSync(d, 1000, 1000);
  t.is(newestMtime(dir), 1781776800, 'the deepest file, floored; not the link target');
  utimesSync(dir, 1781776900, 1781776900);
  t.is(newestMtime(dir), 1781776900, 'the directory itself counts');
});
