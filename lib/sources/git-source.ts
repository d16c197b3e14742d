import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';

export interface GitSource {
  /** A git URL, or an absolute path to a local repository. */
  repo: string;
  ref: string | undefined;
}

/** `URL_OR_DIR[#REF]`: a git repository and the ref to check out. */
export function parseGitSource(raw: string): string {
  const hash = raw.lastIndexOf('#');
  const repo = hash >= 0 ? raw.slice(0, hash) : raw;
  const ref = hash >= 0 ? raw.slice(hash + 1) : undefined;
  const isUrl = /^(https?|git|ssh|file):\/\//.test(repo) || /^[\w.-]+@[\w.-]+:/.test(repo);
  if (!isUrl && !(existsSync(repo) && statSync(repo).isDirectory())) throw 'a git URL or an existing directory, optionally followed by #REF';
  if (ref !== undefined && (!/^[A-Za-z0-9][A-Za-z0-9._/-]*$/.test(ref) || ref.includes('..') || ref.endsWith('/') || ref.endsWith('.lock'))) {
    throw 'a git URL or directory followed by a valid ref (#main, #v1.2, #<commit>)';
  }
  return `${isUrl ? repo : resolve(repo)}${ref !== undefined ? `#${ref}` : ''}`;
}

export function splitGitSource(value: string): GitSource {
  const hash = value.lastIndexOf('#');
  return hash >= 0 ? { repo: value.slice(0, hash), ref: value.slice(hash + 1) } : { repo: value, ref: undefined };
}
