/** The image's installed packages, for the manifest and the SBOM: dpkg's status and the packages' copyright files. */

import { readFileSync, statSync } from 'node:fs';
import { UserError } from '../../engine/errors.ts';
import { inRoot, readInRoot } from './in-root.ts';
import type { Package } from './state.ts';

/** Debian policy's package names: what may safely become a path under /usr/share/doc. */
export const PACKAGE_NAME = /^[a-z0-9][a-z0-9.+-]+$/;

/** Installed packages from a dpkg status file, with their source package (name and version). */
export function parseDpkgStatus(text: string): Package[] {
  const packages: Package[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    const field = (name: string) => new RegExp(`^${name}: *(.*)$`, 'm').exec(block)?.[1]?.trim();
    const name = field('Package');
    if (!name || !/install ok installed/.test(field('Status') ?? '')) continue;
    const version = field('Version') ?? '';
    // "Source: glibc (2.36-9)" when the source's version differs, "Source: glibc" when not, nothing when the names match.
    const source = /^(\S+)(?:\s+\((\S+)\))?$/.exec(field('Source') ?? '');
    packages.push({ name, version, arch: field('Architecture') ?? '', source: { name: source?.[1] ?? name, version: source?.[2] ?? version } });
  }
  return packages.sort((a, b) => a.name.localeCompare(b.name) || a.arch.localeCompare(b.arch));
}

/** The licence short names of a machine-readable (DEP-5) copyright file; none for free-form ones. */
export function dep5Licenses(text: string): string[] {
  const header = text.split(/\n\s*\n/)[0] ?? '';
  if (!/^Format:.*copyright-format/im.test(header)) return [];
  return [...new Set([...text.matchAll(/^License:[ \t]*(\S.*?)\s*$/gm)].map((m) => m[1]!))];
}

/** A copyright file's text, or '' where there is none that is a plain file of a sane size (the image is not trusted). */
function copyrightOf(root: string, name: string): string {
  try {
    const path = inRoot(root, `usr/share/doc/${name}/copyright`);
    const info = statSync(path);
    return info.isFile() && info.size <= 2 ** 20 ? readFileSync(path, 'utf8') : '';
  } catch {
    return '';
  }
}

/** What `root` (an image's root filesystem, mounted) has installed, with the licences its copyright files name. */
export function installedPackages(root: string): Package[] {
  let status: string;
  try {
    status = readInRoot(root, 'var/lib/dpkg/status');
  } catch (error) {
    throw new UserError(`the image's /var/lib/dpkg/status cannot be read: ${(error as Error).message}`);
  }
  return parseDpkgStatus(status).map((p) => {
    if (!PACKAGE_NAME.test(p.name)) return p;
    const licenses = dep5Licenses(copyrightOf(root, p.name));
    return licenses.length ? { ...p, licenses } : p;
  });
}

/** The packages an install removed, from dpkg's status before and after it. */
export function removedPackages(before: string, after: string): string[] {
  const names = (status: string) => new Set(parseDpkgStatus(status).map((p) => p.name));
  const now = names(after);
  return [...names(before)].filter((name) => !now.has(name));
}
