import { readFileSync } from 'node:fs';

/** The toolkit's version, from its package.json (shown by --version, written into each SBOM). */
export const version = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
