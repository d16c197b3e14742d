/** `build-image cache ls` and `build-image cache prune`: the stage cache's snapshots. */
import { join } from 'node:path';
import { ConfigError } from '../engine/errors.ts';
import { engineSchema, formatBytes, resolveOptions } from '../engine/options.ts';
import { type SnapshotEntry, StageCache } from '../engine/stage-cache.ts';
import { parseFlags } from './tool-command.ts';

export function cacheUsage(): string {
  return [
    'build-image cache ls [--cache DIR]: the snapshots of the stage cache, most recently used first',
    'build-image cache prune [--cache DIR] [--cache-size SIZE | --all]: remove the least recently used',
    '  snapshots until the rest fit in SIZE (default: the build default, 20 GiB), or all of them',
  ].join('\n');
}

function table(entries: readonly SnapshotEntry[]): string {
  const rows = entries.map((e) => [
    e.meta.key.slice(0, 12),
    e.meta.pipeline,
    e.meta.label,
    formatBytes(e.diskBytes),
    e.lastUsed.toISOString().slice(0, 16).replace('T', ' '),
  ]);
  const head = ['KEY', 'PIPELINE', 'TAKEN AT', 'ON DISK', 'LAST USED'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows]
    .map((r) =>
      r
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export async function cacheCommand(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  if (action !== 'ls' && action !== 'prune') throw new ConfigError(`cache${action ? ` ${action}` : ''}: expected ls or prune (see build-image --help cache)`);
  const { values } = parseFlags(
    { args: rest, options: { cache: { type: 'string' }, 'cache-size': { type: 'string' }, all: { type: 'boolean' } }, strict: true },
    'see build-image --help cache',
  );
  if (action === 'ls' && (values['cache-size'] !== undefined || values.all)) throw new ConfigError('cache ls takes only --cache DIR');
  if (values.all && values['cache-size'] !== undefined) throw new ConfigError('cache prune: give --cache-size SIZE or --all, not both');
  const config = resolveOptions(engineSchema, ['cache-size'], { flags: { cache: values.cache, 'cache-size': values['cache-size'] } }, 'cache');
  const store = new StageCache(join(config.cache, 'snapshots'));
  if (action === 'ls') {
    const entries = store.list();
    const total = entries.reduce((sum, e) => sum + e.diskBytes, 0);
    process.stdout.write(
      entries.length
        ? `${table(entries)}\n${entries.length} snapshot${entries.length > 1 ? 's' : ''}, ${formatBytes(total)} in ${store.dir}\n`
        : `no snapshots in ${store.dir}\n`,
    );
    return 0;
  }
  const removed = await store.locked(async () => store.prune(values.all ? 0 : config['cache-size']));
  const freed = removed.reduce((sum, e) => sum + e.diskBytes, 0);
  process.stdout.write(
    `removed ${removed.length} snapshot${removed.length === 1 ? '' : 's'} (${formatBytes(freed)}); ${store.list().length} left in ${store.dir}\n`,
  );
  return 0;
}
