#!/usr/bin/env node
// The `build-image` command. Everything else is in main.ts, importable by tests.
import { enableCompileCache } from 'node:module';

// Node strips the types of each .ts file it loads with a WebAssembly module that then holds about
// 30 MiB for the life of the process. With its compile cache (in os.tmpdir(), shared with npm) the
// runs after the first load the stripped, compiled code instead. Enabled before the imports below.
enableCompileCache();
const { describeError, exitCodeOf } = await import('../engine/errors.ts');
const { main } = await import('./main.ts');

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${describeError(error, process.argv.includes('--verbose'))}\n`);
    process.exit(exitCodeOf(error));
  },
);
