/** Overlay directories (boot/ and rootfs/ trees) copied into an attached image, templates rendered. */
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { renderTemplate, TemplateError } from '../template.ts';
import { bootDir, rootDir } from './attached.ts';
import { inRoot } from './in-root.ts';

/** The trees an overlay directory may hold, and where each goes. */
const TREES = ['boot', 'rootfs'] as const;
/** Optional file of explicit modes: `rootfs/root/.ssh 0700`, one path (relative to the overlay) a line. */
export const MODES_FILE = 'modes.txt';

export function parseModes(text: string, file: string): Map<string, number> {
  const modes = new Map<string, number>();
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^(\S+)\s+([0-7]{3,4})$/.exec(line);
    if (!m) throw new UserError(`${file}:${i + 1}: expected "PATH MODE" (e.g. "rootfs/root/.ssh 0700"), got "${line}"`);
    modes.set(m[1]!.replace(/^\.\//, '').replace(/\/$/, ''), Number.parseInt(m[2]!, 8));
  }
  return modes;
}

export function checkOverlay(dir: string): void {
  if (!existsSync(dir) || !lstatSync(dir).isDirectory()) throw new UserError(`--overlay ${dir}: not a directory`);
  const entries = readdirSync(dir);
  if (!entries.some((e) => (TREES as readonly string[]).includes(e))) {
    throw new UserError(`--overlay ${dir}: holds neither boot/ nor rootfs/ (put files for the boot partition in boot/ and for the root filesystem in rootfs/)`);
  }
}

/** Total size of the files of an overlay's rootfs/ tree: what it adds to the root filesystem. */
export function treeSize(dir: string): number {
  if (!existsSync(dir)) return 0;
  let total = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += lstatSync(join(entry.parentPath, entry.name)).size + 4096;
  }
  return total;
}

/**
 * Copy one tree into the image (`dest`, a directory of the tree rooted at `root`). Files are owned
 * by root:root with mode 0644, or 0755 when the source has an exec bit, unless modes.txt says
 * otherwise; existing directories keep their mode; `*.tmpl` files are rendered and lose the suffix.
 * A link in the image to a directory is followed inside the image (`lib -> usr/lib`); a file, link
 * or template replaces whatever is at its name, never writes through a link there.
 */
function copyTree(
  src: string,
  root: string,
  dest: string,
  overlay: string,
  modes: Map<string, number>,
  vars: Record<string, string>,
  fat: boolean,
  log: (line: string) => void,
): void {
  for (const entry of readdirSync(src, { withFileTypes: true })) {
    const from = join(src, entry.name);
    const rel = relative(overlay, from);
    const template = entry.isFile() && entry.name.endsWith('.tmpl');
    let to = join(dest, template ? entry.name.slice(0, -'.tmpl'.length) : entry.name);
    if (entry.isDirectory() && isLink(to)) to = inRoot(root, relative(root, to));
    const target = existsSync(to) || isLink(to) ? lstatSync(to) : undefined;
    if (entry.isDirectory()) {
      if (target && !target.isDirectory()) throw new UserError(`overlay ${rel}: is a directory, but the image has a file there`);
      if (!target) mkdirSync(to, { recursive: true, mode: 0o755 }); // recursive: a link's target inside the image may not exist yet
      if (!fat) own(to, modes.get(rel) ?? (target ? undefined : 0o755));
      copyTree(from, root, to, overlay, modes, vars, fat, log);
      continue;
    }
    if (target?.isDirectory()) throw new UserError(`overlay ${rel}: is a file, but the image has a directory there`);
    if (entry.isSymbolicLink()) {
      if (fat) throw new UserError(`overlay ${rel}: a symbolic link cannot go on the FAT boot partition`);
      rmSync(to, { force: true });
      symlinkSync(readlinkSync(from), to);
      lchownSync(to, 0, 0);
    } else if (entry.isFile()) {
      if (template) {
        let text: string;
        try {
          text = renderTemplate(readFileSync(from, 'utf8'), vars, rel);
        } catch (error) {
          throw error instanceof TemplateError ? new UserError(`overlay ${error.message}`) : error;
        }
        rmSync(to, { force: true });
        writeFileSync(to, text);
      } else {
        rmSync(to, { force: true });
        copyFileSync(from, to);
      }
      if (!fat) own(to, modes.get(rel) ?? (lstatSync(from).mode & 0o111 ? 0o755 : 0o644));
    } else {
      throw new UserError(`overlay ${rel}: not a regular file, directory or symbolic link`);
    }
    log(`${rel} -> ${to}`);
  }
}

function isLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

function own(path: string, mode: number | undefined): void {
  lchownSync(path, 0, 0);
  if (mode !== undefined) chmodSync(path, mode);
}

/** Copy each overlay directory's boot/ and rootfs/ trees into the attached image, in order. */
export async function applyOverlays(ctx: BuildContext, dirs: readonly string[], vars: Record<string, string>): Promise<void> {
  for (const dir of dirs) {
    checkOverlay(dir);
    const modesFile = join(dir, MODES_FILE);
    const modes = existsSync(modesFile) ? parseModes(readFileSync(modesFile, 'utf8'), modesFile) : new Map<string, number>();
    for (const tree of TREES) {
      const src = join(dir, tree);
      if (!existsSync(src)) continue;
      const dest = tree === 'boot' ? bootDir(ctx.paths.work) : rootDir(ctx.paths.work);
      copyTree(src, dest, dest, dir, modes, vars, tree === 'boot', (line) => ctx.log.line(line));
    }
  }
}
