/**
 * The layers, written down once: each folder imports only from the folders below it, and no stage
 * file imports another. Read from the code's own imports, so a change that points up fails here.
 */

import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import test from 'ava';

const ROOT = new URL('../../', import.meta.url).pathname;
/** Bottom to top. A folder may import its own files and those of the folders before it. */
const LAYERS = ['engine', 'lib', 'settings', 'stages', 'pipelines', 'commands'] as const;
/** Inside lib/ and pipelines/, subfolders import each other only in this order (bottom first). */
const SUBLAYERS: Record<string, readonly string[]> = {
  lib: ['lib', 'lib/image', 'lib/sources', 'lib/codec', 'lib/chroot', 'lib/publish', 'lib/card', 'lib/qemu'],
  pipelines: ['pipelines/pimaster', 'pipelines'],
};

/** `import x from './a.ts'`, `export { y } from './b.ts'`, `import './c.ts'`, `import('./d.ts')`. */
const IMPORT = /(?:^|\n)\s*(?:import|export)\s(?:[^'"]*?from\s+)?['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g;

interface Edge {
  from: string;
  to: string;
}

/** Every relative import between the layers' files, as repository paths. */
function importsOf(root: string): Edge[] {
  const edges: Edge[] = [];
  for (const layer of LAYERS) {
    for (const entry of readdirSync(join(root, layer), { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
      const file = relative(root, join(entry.parentPath, entry.name));
      for (const m of readFileSync(join(root, file), 'utf8').matchAll(IMPORT)) {
        edges.push({ from: file, to: normalize(join(dirname(file), m[1] ?? m[2]!)) });
      }
    }
  }
  return edges;
}

const layerOf = (file: string) => LAYERS.indexOf(file.split('/')[0] as (typeof LAYERS)[number]);
const folderOf = (file: string) => dirname(file);

/** Why an import breaks the rule, or undefined when it points down or stays in its folder. */
function violation({ from, to }: Edge): string | undefined {
  const a = layerOf(from);
  const b = layerOf(to);
  if (b < 0) return `${from} imports ${to}, outside the layers (${LAYERS.join(', ')})`;
  if (b > a) return `${from} imports ${to}: ${LAYERS[a]}/ is below ${LAYERS[b]}/`;
  if (a === b && LAYERS[a] === 'stages' && from !== to) return `${from} imports ${to}: a stage file never imports another (shared code goes to lib/)`;
  const order = SUBLAYERS[LAYERS[a]!];
  if (a === b && order && folderOf(from) !== folderOf(to)) {
    const [i, j] = [order.indexOf(folderOf(from)), order.indexOf(folderOf(to))];
    if (i < 0 || j < 0) return `${from} imports ${to}: ${folderOf(i < 0 ? from : to)}/ has no place in the order of ${LAYERS[a]}/ (${order.join(', ')})`;
    if (j > i) return `${from} imports ${to}: ${folderOf(from)}/ is below ${folderOf(to)}/`;
  }
  return undefined;
}

test('each folder imports only from the folders below it; no stage file imports another', (t) => {
  const edges = importsOf(ROOT);
  t.true(edges.length > 100, `read ${edges.length} imports`);
  t.deepEqual(edges.map(violation).filter(Boolean), []);
});

test('the rule catches an import that points up, across stages, or out of the order of lib/', (t) => {
  t.regex(violation({ from: 'engine/runner.ts', to: 'stages/fetch.ts' })!, /engine\/ is below stages\//);
  t.regex(violation({ from: 'lib/image/loop.ts', to: 'settings/rules.ts' })!, /lib\/ is below settings\//);
  t.regex(violation({ from: 'stages/grow.ts', to: 'stages/finalize.ts' })!, /never imports another/);
  t.regex(violation({ from: 'lib/image/system.ts', to: 'lib/chroot/emulation.ts' })!, /lib\/image\/ is below lib\/chroot\//);
  t.regex(violation({ from: 'pipelines/pimaster/checks.ts', to: 'pipelines/verify.ts' })!, /pipelines\/pimaster\/ is below pipelines\//);
  t.is(violation({ from: 'commands/main.ts', to: 'engine/runner.ts' }), undefined);
  t.is(violation({ from: 'stages/fetch.ts', to: 'lib/sources/fetch.ts' }), undefined);
  t.is(violation({ from: 'pipelines/verify.ts', to: 'pipelines/pimaster/checks.ts' }), undefined);
});
