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
const modules = readdirSync(dir).filter((f) => f.endsWith('.ts') && f !== 'run.ts').sort();
for (const module of modules) {
  const { exitCode } = await execa(process.execPath, [join(dir, module), ...process.argv.slice(2)], { stdio: 'inherit', reject: false });
  if (exitCode !== 0) {
    process.exitCode = exitCode ?? 1;
    break;
  }
}
