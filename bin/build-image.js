#!/usr/bin/env node
// The `build-image` command, as npm installs it. Node strips TypeScript's types only outside
// node_modules: the installed package runs the JavaScript built when it was packed (.ci/package),
// a clone runs its TypeScript as it is.
import { existsSync } from 'node:fs';

const built = new URL('../commands/cli.js', import.meta.url);
await import(existsSync(built) ? built.href : new URL('../commands/cli.ts', import.meta.url).href);
