/**
 * Checks of values users type: each returns the normalised value or throws a string that says
 * what is allowed (the config schema turns it into an error naming the key and the value).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';

export interface Ipv4Cidr {
  address: string;
  prefix: number;
  network: string;
  netmask: string;
}

/** A dotted IPv4 address as a number, and back. */
export const ipv4ToInt = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
export const intToIpv4 = (n: number) => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');

/** `48.48.0.254/24`: an IPv4 host address with its prefix length. */
export function parseIpv4Cidr(raw: string): Ipv4Cidr {
  const allowed = 'an IPv4 address with a prefix length, such as 48.48.0.254/24';
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(raw.trim());
  if (!m) throw allowed;
  const octets = m[1]!.split('.').map(Number);
  if (octets.some((o) => o > 255) || m[1]!.split('.').some((o) => o.length > 1 && o.startsWith('0'))) throw allowed;
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 30) throw 'an IPv4 address with a prefix length from /8 to /30, such as 48.48.0.254/24';
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const address = ipv4ToInt(m[1]!);
  const network = (address & mask) >>> 0;
  if (address === network || address === (network | (~mask >>> 0)) >>> 0) {
    throw `a host address, not the network or broadcast address of /${prefix}`;
  }
  return { address: m[1]!, prefix, network: intToIpv4(network), netmask: intToIpv4(mask) };
}

/** RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens. */
export function parseHostname(raw: string): string {
  const labels = raw.split('.');
  const ok = raw.length <= 253 && labels.every((l) => /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(l));
  if (!ok) throw 'an RFC 1123 host name: letters, digits and hyphens, labels of 1-63 characters not starting or ending with a hyphen';
  return raw.toLowerCase();
}

/** A Linux network interface name (at most 15 characters, no slash, colon or space). */
export function parseInterface(raw: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(raw)) throw 'a network interface name such as eth0 or wlan0 (at most 15 letters, digits, ".", "-" or "_")';
  return raw;
}

const KEY_TYPES = ['ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', 'sk-ssh-ed25519@openssh.com', 'sk-ecdsa-sha2-nistp256@openssh.com'];

/**
 * One OpenSSH public key line: a key type, then a base64 blob that itself starts with that type,
 * optionally after options (which may quote spaces) and before a comment (which may be one word).
 */
export function isPublicKey(line: string): boolean {
  const words = line.trim().split(/\s+/);
  return words.some((type, i) => KEY_TYPES.includes(type) && blobType(words[i + 1]) === type);
}

function blobType(word: string | undefined): string | undefined {
  if (!word || !/^[A-Za-z0-9+/]+={0,2}$/.test(word)) return undefined;
  const blob = Buffer.from(word, 'base64');
  if (blob.length < 4) return undefined;
  return blob.subarray(4, 4 + blob.readUInt32BE(0)).toString('latin1');
}

/** A file of OpenSSH public keys (authorized_keys format); returns its absolute path. */
export function parsePublicKeyFile(raw: string): string {
  const path = resolve(raw);
  if (!existsSync(path) || !statSync(path).isFile()) throw 'an existing file holding OpenSSH public keys (such as ~/.ssh/id_ed25519.pub)';
  const text = readFileSync(path, 'utf8');
  if (/PRIVATE KEY-----/.test(text)) throw 'a public key file: this is a private key, give the matching .pub file';
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  if (lines.length === 0 || !lines.every(isPublicKey)) throw `OpenSSH public keys, one a line (${KEY_TYPES.slice(0, 3).join(', ')}, ...)`;
  return path;
}

export function parseExistingFile(raw: string): string {
  const path = resolve(raw);
  if (!existsSync(path) || !statSync(path).isFile()) throw 'an existing file';
  return path;
}

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

/** `NAME=SOURCE`: an environment name (as the agent lists it) and an image source as for --base. */
export function parseEnvironment(raw: string): string {
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)$/.exec(raw);
  if (!m) throw 'NAME=SOURCE, such as raspbian_bookworm_64bit=https://.../image.img.xz (NAME: letters, digits, ".", "-", "_")';
  return raw;
}
