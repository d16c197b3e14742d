/**
 * Python byte-compilation held off while packages install, then done once at the end of the chroot
 * session, by the host's Python when it is the image's own version.
 *
 * Under qemu-user most of a Python package's install is its postinst's `py3compile -p PKG`: two
 * emulated interpreters started for a few files, package after package (74 s of the pimaster's
 * 141 s of dpkg). The maintainer scripts find py3compile through PATH, so a stand-in first on the
 * chroot's PATH (STAND_INS in environment.ts) writes each call down instead. At the end the files
 * those calls name (`-p PKG`: the package's public modules; `-p PKG DIR`: its files there; chosen
 * as py3compile chooses them, with the exclusions of /usr/share/python3/bcep) are compiled in one
 * go: by /usr/bin/python3.X on the host when it is the image's release (same compiler, same .pyc
 * bytes), else by the image's interpreter under emulation, once rather than per package. Calls of
 * any other form get the image's own py3compile, run as they were called.
 */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { posix } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { entryInRoot, inRoot, readInRoot } from '../image/in-root.ts';
import { PACKAGE_NAME, parseDpkgStatus } from '../image/packages.ts';

/** Where the stand-in writes the calls down: beside it, in `held` (a directory inside the image). */
const callsFile = (held: string) => `${held}/py3compile.calls`;

/** Put the py3compile stand-in in `held`, the directory the chroot's PATH looks in first. */
export function holdPythonCompile(root: string, held: string): void {
  const calls = callsFile(held);
  const standIn = [
    '#!/bin/sh',
    '# Written by build-image: byte-compilation waits for the end of this build step (each argument',
    '# on a line, a blank line after each call); build-image compiles what the calls name then.',
    `for arg in "$@"; do printf '%s\\n' "$arg"; done >> ${calls}`,
    `echo >> ${calls}`,
    '',
  ].join('\n');
  writeFileSync(inRoot(root, `${held}/py3compile`), standIn, { mode: 0o755 });
}

/** The calls the stand-in wrote down, in order. */
function heldCalls(root: string, held: string): string[][] {
  const file = inRoot(root, callsFile(held));
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n\n')
    .map((call) => call.split('\n').filter((arg) => arg !== ''))
    .filter((call) => call.length > 0);
}

/** The image's Python 3 versions py3compile compiles for ("3.11"), the default first, as debian_defaults names them. */
function supportedVersions(root: string): string[] {
  const defaults = inRoot(root, '/usr/share/python3/debian_defaults');
  if (!existsSync(defaults)) return [];
  const text = readFileSync(defaults, 'utf8');
  const named = (key: string) => [...(new RegExp(`^${key}\\s*=\\s*(.*)$`, 'm').exec(text)?.[1] ?? '').matchAll(/python(3\.\d+)/g)].map((m) => m[1]!);
  const supported = named('supported-versions').filter((v) => existsSync(inRoot(root, `/usr/bin/python${v}`)));
  const first = named('default-version').filter((v) => supported.includes(v));
  return [...first, ...supported.filter((v) => !first.includes(v))];
}

/** The .py files dpkg lists for `pkg` ("NAME" or "NAME:ARCH"): NAME.list, or NAME:ARCH.list for a Multi-Arch: same one. */
function packageFiles(root: string, pkg: string, arch: string): string[] {
  const [name, pkgArch = arch] = pkg.split(':');
  const list = [`${name}.list`, `${name}:${pkgArch}.list`].map((f) => inRoot(root, `/var/lib/dpkg/info/${f}`)).find(existsSync);
  if (!list) throw new UserError(`py3compile -p ${pkg}: dpkg has no file list for ${pkg} in the image`);
  return readFileSync(list, 'utf8')
    .split('\n')
    .filter((f) => f.startsWith('/') && f.endsWith('.py') && !f.includes('\t'));
}

/** The public module directories' version: /usr/lib/python3/dist-packages → "3" (debpython's PUBLIC_DIR_RE). */
const PUBLIC_DIR = /^.*?\/usr\/lib\/python(\d(?:.\d+)?)\/(?:site|dist)-packages/;

/** What a /usr/share/python3/bcep line keeps from being compiled, for which of the versions. */
interface Exclusion {
  type: string;
  versions: string[];
  dir: string;
  pattern: RegExp;
}

/** `major.minor` as a number that orders (3.9 < 3.11). */
const order = (version: string) => version.split('.').reduce((n, part) => n * 1000 + Number(part), 0);

/** Which of `versions` a debpython range ("3.1-", "-3.6", "3.1-3.3", "3.2", "") takes (the upper end is excluded). */
function inRange(range: string, versions: string[]): string[] {
  if (range === '' || range === '-') return versions;
  const m = /^(\d+\.\d+)?(-)?(\d+\.\d+)?$/.exec(range);
  if (!m) throw new Error(`version range ${range}`);
  if (!m[2]) return versions.filter((v) => v === m[1]);
  return versions.filter((v) => (!m[1] || order(v) >= order(m[1])) && (!m[3] || order(v) < order(m[3])));
}

/**
 * The exclusion lists packages put in /usr/share/python3/bcep ("type|range|dir|regex"), read as
 * debpython reads them; undefined when one cannot be read here (py3compile then does it all).
 */
function exclusions(root: string, versions: string[]): Exclusion[] | undefined {
  const dir = inRoot(root, '/usr/share/python3/bcep');
  if (!existsSync(dir)) return [];
  const found: Exclusion[] = [];
  try {
    for (const name of readdirSync(dir).filter((n) => !n.startsWith('.'))) {
      for (const line of readInRoot(root, `/usr/share/python3/bcep/${name}`).split('\n')) {
        if (line === '' || line.startsWith('#')) continue;
        const [type = '', range = '', path = '', ...rest] = line.split('|');
        const applies = inRange(range, versions);
        if (applies.length === 0) continue;
        // Python's re.match anchors at the start only.
        const pattern = new RegExp(`^(?:${rest.length ? rest.join('|') : '.*'})`);
        found.push({ type, versions: applies, dir: type === 'file' ? path : `${path.replace(/\/+$/, '')}/`, pattern });
      }
    }
  } catch {
    return undefined;
  }
  return found;
}

/** The versions `file` is compiled for, once the exclusions have had their say (debpython's filter_files). */
function versionsFor(file: string, versions: string[], excluded: Exclusion[]): string[] {
  let left = versions;
  for (const e of excluded) {
    if (!file.startsWith(e.dir)) continue;
    const hit =
      e.type === 'dir' || (e.type === 'file' && file === e.dir) || (e.type === 're' && (e.pattern.test(file) || e.pattern.test(file.slice(e.dir.length))));
    if (hit) left = left.filter((v) => !e.versions.includes(v));
  }
  return left;
}

/**
 * The files a held call compiles, for each version, chosen as py3compile chooses them: `-p PKG`,
 * the package's public modules for every version (debpython's filter_public); `-p PKG DIR...`, its
 * files under those directories for the default version. Undefined for any other form, which only
 * py3compile itself can answer.
 */
function modulesOf(root: string, call: string[], versions: string[], excluded: Exclusion[], arch: string): Map<string, string[]> | undefined {
  const [flag, pkg, ...dirs] = call;
  if ((flag !== '-p' && flag !== '--package') || !pkg || !PACKAGE_NAME.test(pkg.replace(/:[a-z0-9]+$/, '')) || dirs.some((a) => a.startsWith('-')))
    return undefined;
  const byVersion = new Map(versions.map((v) => [v, [] as string[]]));
  for (const file of packageFiles(root, pkg, arch)) {
    if (!statSync(inRoot(root, file), { throwIfNoEntry: false })?.isFile()) continue;
    const dir = PUBLIC_DIR.exec(file)?.[1];
    let candidates: string[];
    if (dirs.length) candidates = dirs.some((d) => file.startsWith(d)) ? versions.slice(0, 1) : [];
    else candidates = dir === undefined ? [] : dir === '3' ? versions : versions.filter((v) => v === dir);
    for (const v of versionsFor(file, candidates, excluded)) byVersion.get(v)!.push(file);
  }
  return byVersion;
}

/** The image's release of python3.X ("3.11.2"), from dpkg's status of python3.X-minimal. */
function imageRelease(root: string, version: string): string | undefined {
  const minimal = parseDpkgStatus(readInRoot(root, '/var/lib/dpkg/status')).find((p) => p.name === `python${version}-minimal`);
  return /^(?:\d+:)?(\d+\.\d+\.\d+)/.exec(minimal?.version ?? '')?.[1];
}

/** The release of the host's /usr/bin/python3.X, if it has one. */
async function hostRelease(ctx: BuildContext, version: string): Promise<string | undefined> {
  const python = `/usr/bin/python${version}`;
  if (!existsSync(python)) return undefined;
  const result = await ctx.run(python, ['-E', '-S', '-c', 'import platform; print(platform.python_version())'], { reject: false });
  return result.exitCode === 0 ? result.stdout.trim() : undefined;
}

/**
 * Compiles as py_compile does inside the image, from stdin lines "SOURCE<tab>PYC<tab>NAME": host
 * paths resolved inside the image's root (its links never followed out of it), NAME the in-image
 * path recorded in the code; directories and files made as under dpkg's umask. The invalidation
 * mode is argv[1]: TIMESTAMP as py_compile's default, CHECKED_HASH as its default under
 * SOURCE_DATE_EPOCH (what the image's own py3compile does when the build has one time): no time in the .pyc.
 */
const HOST_COMPILE = `# Written by build-image: byte-compiles image files on the host.
import os, py_compile, sys
os.umask(0o022)
mode = py_compile.PycInvalidationMode[sys.argv[1]]
for line in sys.stdin:
    source, pyc, name = line.rstrip('\\n').split('\\t')
    py_compile.compile(source, cfile=pyc, dfile=name, doraise=True, invalidation_mode=mode)
`;

/** The host's compile input for `files` (in-image paths) and python`version`: see HOST_COMPILE. */
function hostCompileInput(root: string, files: Iterable<string>, version: string): string {
  const tag = `cpython-${version.replace('.', '')}`;
  const lines = [...files].map((file) => {
    const pyc = posix.join(posix.dirname(file), '__pycache__', `${posix.basename(file, '.py')}.${tag}.pyc`);
    return [inRoot(root, file), entryInRoot(root, pyc), file].join('\t');
  });
  return `${lines.join('\n')}\n`;
}

/**
 * Compile what the held py3compile calls named, then forget them. `chroot` runs a command in the
 * image (the chroot is still entered).
 */
export async function compileHeldPython(
  ctx: BuildContext,
  root: string,
  held: string,
  arch: string,
  chroot: (args: string[], input?: string) => Promise<unknown>,
): Promise<void> {
  const calls = heldCalls(root, held);
  if (calls.length === 0) return;
  ctx.status(`byte-compiling the Python modules of ${calls.length} package${calls.length > 1 ? 's' : ''}`);
  const versions = supportedVersions(root);
  const excluded = exclusions(root, versions);
  const byVersion = new Map<string, Set<string>>();
  const others: string[][] = [];
  for (const call of calls) {
    const modules = excluded && modulesOf(root, call, versions, excluded, arch);
    if (!modules) others.push(call);
    for (const [v, files] of modules || []) byVersion.set(v, new Set([...(byVersion.get(v) ?? []), ...files]));
  }
  for (const [version, files] of byVersion) {
    if (files.size === 0) continue;
    const release = imageRelease(root, version);
    const host = release !== undefined && (await hostRelease(ctx, version)) === release;
    ctx.log.line(
      `python${version}: ${files.size} modules of ${calls.length - others.length} py3compile calls compiled ${host ? `by the host's Python ${release}` : `in the image (the host has no Python ${release ?? version})`}`,
    );
    if (host) {
      const script = inRoot(root, `${held}/host-compile.py`);
      writeFileSync(script, HOST_COMPILE);
      const mode = ctx.state.sourceDateEpoch === undefined ? 'TIMESTAMP' : 'CHECKED_HASH';
      await ctx.run(`/usr/bin/python${version}`, ['-E', '-S', script, mode], { input: hostCompileInput(root, files, version) });
    } else {
      await chroot([`/usr/bin/python${version}`, '-m', 'py_compile', '-'], `${[...files].join('\n')}\n`);
    }
  }
  for (const call of others) await chroot(['/usr/bin/py3compile', ...call]);
  writeFileSync(inRoot(root, callsFile(held)), '');
}
