/** An image's architecture, read from the ELF header of its /bin/sh (never from a flag alone). */
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { inRoot } from './in-root.ts';

export type Arch = 'arm64' | 'armhf' | 'amd64' | 'i386' | 'unknown';

/** The Debian architecture of an ELF file from its header (class, data, e_machine, float ABI). */
export function elfArch(head: Buffer): Arch {
  if (head.length < 20 || head.readUInt32BE(0) !== 0x7f454c46) return 'unknown';
  const is64 = head[4] === 2;
  const machine = head[5] === 1 ? head.readUInt16LE(18) : head.readUInt16BE(18);
  if (machine === 0xb7 && is64) return 'arm64';
  if (machine === 0x28 && !is64) return 'armhf';
  if (machine === 0x3e && is64) return 'amd64';
  if (machine === 0x03 && !is64) return 'i386';
  return 'unknown';
}

export function imageArch(root: string): Arch {
  const sh = inRoot(root, '/bin/sh');
  if (!existsSync(sh)) return 'unknown';
  const fd = openSync(sh, 'r');
  try {
    const head = Buffer.alloc(64);
    readSync(fd, head, 0, 64, 0);
    return elfArch(head);
  } finally {
    closeSync(fd);
  }
}
