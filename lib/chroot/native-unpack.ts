/**
 * dpkg's per-package helper commands run natively, not under emulation.
 *
 * To unpack each package dpkg starts three helpers: `dpkg-split -Qao OUT DEB` (is it part of a
 * split package?), `dpkg-deb --control DEB DIR` and `dpkg-deb --fsys-tarfile DEB`. Under
 * qemu-user each is an emulated process start plus, for the last, xz decompression run emulated:
 * about 0.3 s a package, 28 s for the pimaster's 93. dpkg finds them through PATH, so stand-ins
 * first on it (STAND_INS in environment.ts) hand a plain package (`debian-binary`,
 * `control.tar.xz`, `data.tar.xz`, format 2.0: what Debian and Raspberry Pi OS ship) to the
 * host's static busybox, copied into the image's /run: native code runs in the chroot without
 * emulation. busybox decompresses to the same bytes and extracts the control files with the same
 * modes and owners. Every other package and every other call goes to the image's own command.
 */
import { copyFileSync, writeFileSync } from 'node:fs';
import { findOnPath } from '../../engine/exec.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { rootDir } from '../image/attached.ts';
import { inRoot } from '../image/in-root.ts';
import { SANDBOX, sandboxArgs } from './sandbox.ts';

/** True when `DEB` (argument 1) is a plain package; busybox's `ar` reads the member list. */
const isPlain = (bb: string) =>
  `plain() { [ "$(${bb} ar t "$1" 2>/dev/null)" = "$(printf 'debian-binary\\ncontrol.tar.xz\\ndata.tar.xz')" ] && [ "$(${bb} ar p "$1" debian-binary)" = 2.0 ]; }`;

const header = (bb: string, what: string) => [
  `#!${bb} sh`,
  `# Written by build-image for the build: ${what}`,
  `# runs natively in the host's busybox; anything else goes to the image's own command.`,
  isPlain(bb),
  'set -o pipefail',
];

const dpkgDeb = (bb: string) =>
  [
    ...header(bb, "dpkg-deb's unpacking of a plain package (--control, --fsys-tarfile)"),
    'case "$1:$#" in',
    `  --fsys-tarfile:2) plain "$2" && { ${bb} ar p "$2" data.tar.xz | ${bb} unxz; exit; } ;;`,
    `  --control:3) plain "$2" && { ${bb} mkdir -p "$3" && ${bb} ar p "$2" control.tar.xz | ${bb} unxz | ${bb} tar -x -C "$3"; exit; } ;;`,
    'esac',
    'exec /usr/bin/dpkg-deb "$@"',
    '',
  ].join('\n');

const dpkgSplit = (bb: string) =>
  [
    ...header(bb, "dpkg-split's answer for a plain package (-Qao: not part of a split package, exit 1)"),
    'case "$1:$#" in -Qao:3) plain "$3" && exit 1 ;; esac',
    'exec /usr/bin/dpkg-split "$@"',
    '',
  ].join('\n');

/**
 * Put the stand-ins in `dir` (inside the image, first on PATH) when the host has a static busybox
 * that runs there; else say why the packages unpack under emulation.
 */
export async function unpackNatively(ctx: BuildContext, dir: string): Promise<void> {
  const host = findOnPath('busybox');
  const off = (why: string) => ctx.log.line(`native-unpack off: ${why}; packages unpack under emulation (apt-get install busybox-static to speed it up)`);
  if (!host) return off('no busybox on this host');
  const root = rootDir(ctx.paths.work);
  const bb = `${dir}/busybox`; // named so: busybox takes the applet from argv[1] only under this name
  copyFileSync(host, inRoot(root, bb));
  // A busybox linked to the host's libraries finds none of them in the image.
  const tried = await ctx.run(SANDBOX, sandboxArgs(root, [bb, 'true'], { env: {} }), { reject: false });
  if (tried.exitCode !== 0) return off(`${host} does not run inside the image (not statically linked)`);
  writeFileSync(inRoot(root, `${dir}/dpkg-deb`), dpkgDeb(bb), { mode: 0o755 });
  writeFileSync(inRoot(root, `${dir}/dpkg-split`), dpkgSplit(bb), { mode: 0o755 });
}
