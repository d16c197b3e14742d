import { chmodSync, copyFileSync, existsSync, lchownSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { UserError } from '../engine/errors.ts';
import { treeDigest } from '../engine/digest.ts';
import type { BuildContext, Stage } from '../engine/stage.ts';
import { renderTemplate, templateVars, TemplateError } from '../lib/template.ts';
import { inRoot } from '../lib/image/in-root.ts';
import { bootDir } from '../lib/image/attached.ts';
import { rootDir } from '../lib/image/attached.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { imageInputs } from '../engine/options.ts';
import { buildConfigSchema } from '../lib/build-options.ts';

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

function checkOverlay(dir: string): void {
  if (!existsSync(dir) || !lstatSync(dir).isDirectory()) throw new UserError(`--overlay ${dir}: not a directory`);
  const entries = readdirSync(dir);
  if (!entries.some((e) => (TREES as readonly string[]).includes(e))) {
    throw new UserError(`--overlay ${dir}: holds neither boot/ nor rootfs/ (put files for the boot partition in boot/ and for the root filesystem in rootfs/)`);
  }
}

/** Total size of the files of an overlay's rootfs/ tree: what it adds to the root filesystem. */
function treeSize(dir: string): number {
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
function copyTree(src: string, root: string, dest: string, overlay: string, modes: Map<string, number>, vars: Record<string, string>, fat: boolean, log: (line: string) => void): void {
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

/** Template variables of the settings that can change what the image holds. */
function overlayVars<C extends BuildConfig>(ctx: BuildContext<C>, derived: Record<string, string>): Record<string, string> {
  return templateVars(imageInputs(buildConfigSchema, ctx.config), { ...derived, codename: ctx.state.system?.codename, 'boot-mount': ctx.state.system?.bootMount });
}

export interface OverlayStageOptions<C extends BuildConfig> {
  /** The stage's name (a pipeline with two overlay stages names one of them). */
  name?: string;
  /** Copy the user's --overlay directories after the pipeline's own (default: yes). */
  user?: boolean;
  /** Values derived from the settings, for the templates too (the pimaster's ip-address...). */
  derived?: (config: C) => Record<string, string>;
}

/**
 * Copy the pipeline's own overlay directories, then the user's (--overlay), into the image: a
 * site adds or replaces files without touching the pipeline's. `keys` are the settings the
 * pipeline's templates use (shown by --plan, accepted by the command).
 */
export function overlayStage<C extends BuildConfig>(own: readonly string[] = [], keys: readonly (keyof C & string)[] = [], options: OverlayStageOptions<C> = {}): Stage<C> {
  const user = options.user ?? true;
  const all = (config: { overlay: readonly string[] }) => [...own, ...(user ? config.overlay : [])];
  return {
    name: options.name ?? 'overlay',
    describe: (config) => {
      const n = all(config).length;
      return n ? `copy ${n} overlay director${n > 1 ? 'ies' : 'y'} into the image` : 'no overlay directories (--overlay DIR)';
    },
    options: [...(user ? (['overlay'] as const) : []), ...keys],
    async grows(ctx) {
      return all(ctx.config).reduce((sum, dir) => sum + treeSize(join(dir, 'rootfs')), 0);
    },
    async key(ctx) {
      const dirs = all(ctx.config);
      for (const dir of dirs) checkOverlay(dir);
      const trees = await Promise.all(dirs.map((dir) => treeDigest(dir)));
      return [{ label: `${dirs.length} overlay director${dirs.length === 1 ? 'y' : 'ies'} copied`, input: JSON.stringify({ trees, vars: overlayVars(ctx, options.derived?.(ctx.config) ?? {}) }) }];
    },
    async run(ctx) {
      await applyOverlays(ctx, all(ctx.config), overlayVars(ctx, options.derived?.(ctx.config) ?? {}));
    },
  };
}
