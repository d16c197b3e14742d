#!/usr/bin/env node
// The `build-image` command. Everything else is in main.ts, importable by tests.
import { describeError, exitCodeOf } from './errors.ts';
import { main } from './main.ts';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`${describeError(error, process.argv.includes('--verbose'))}\n`);
    process.exit(exitCodeOf(error));
  },
);
