import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The newest modification time (whole seconds) of `dir` and everything under it: links are not
 * followed and other filesystems mounted inside are not entered, so it is the tree's own time.
 */
export function newestMtime(dir: string): number {
  const device = lstatSync(dir).dev;
  let newest = 0;
  const walk = (path: string) => {
    const st = lstatSync(path);
    newest = Math.max(newest, Math.floor(st.mtimeMs / 1000));
    if (!st.isDirectory() || st.dev !== device) return;
    for (const name of readdirSync(path)) walk(join(path, name));
  };
  walk(dir);
  return newest;
}
