import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { name: string; version: string };

/** The toolkit's version, from its package.json (shown by --version, written into each SBOM and manifest). */
export const version = pkg.version;

/** The npm package the toolkit is published as. */
export const PACKAGE_NAME = pkg.name;

let known: string | undefined;

/**
 * The commit the toolkit was built from: engine/commit.txt in a packed package (.ci/package), else
 * the clone's HEAD (`-dirty` with changes not committed), else "unknown". A package never asks git:
 * it may be installed inside some other project's repository.
 */
export function commit(): string {
  known ??= (() => {
    try {
      return readFileSync(new URL('./commit.txt', import.meta.url), 'utf8').trim();
    } catch {}
    if (fileURLToPath(import.meta.url).includes('/node_modules/')) return 'unknown';
    try {
      const cwd = fileURLToPath(new URL('..', import.meta.url));
      return execFileSync('git', ['describe', '--always', '--dirty', '--abbrev=40'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return 'unknown';
    }
  })();
  return known;
}

/** What --version prints: `0.1.0 (commit 0dbbd16c...)`. */
export const versionLine = () => `${version} (commit ${commit()})`;
