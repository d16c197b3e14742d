/**
 * `npm run bench:all`: every benchmark module of bench/ in turn, each in a Node process of its own (so
 * no module's memory or signal handlers touch another's), each printing its table. The arguments
 * are passed on to every module.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const dir = fileURLToPath(new URL('.', import.meta.url));
/** Modules that are not benchmarks: this one, what the benchmarks share, the pimaster bench's child build. */
const HELPERS = ['run.ts', 'measure.ts', 'pimaster-child.ts'];
const modules = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && !HELPERS.includes(f))
  .sort();
for (const module of modules) {
  const { exitCode } = await execa(process.execPath, [join(dir, module), ...process.argv.slice(2)], { stdio: 'inherit', reject: false });
  if (exitCode !== 0) {
    process.exitCode = exitCode ?? 1;
    break;
  }
}
