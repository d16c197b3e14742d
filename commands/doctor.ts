import { existsSync, readFileSync, statfsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { findOnPath } from '../engine/exec.ts';
import { formatBytes } from '../engine/options.ts';
import { leftovers, undoCommands } from '../engine/work-dir.ts';

export interface Check {
  name: string;
  ok: boolean;
  /** Not fatal: the build may still work (little disk space, an optional tool). */
  warning?: boolean;
  detail: string;
  fix?: string;
}

/** Host commands and the Debian/Ubuntu package that provides each. */
export const HOST_TOOLS: ReadonlyArray<{ command: string; apt: string; use: string; optional?: boolean }> = [
  { command: 'losetup', apt: 'mount', use: 'loop devices' },
  { command: 'mount', apt: 'mount', use: 'mounting the root filesystem' },
  { command: 'sfdisk', apt: 'fdisk', use: 'partition tables' },
  { command: 'e2fsck', apt: 'e2fsprogs', use: 'checking ext4' },
  { command: 'resize2fs', apt: 'e2fsprogs', use: 'growing and shrinking ext4' },
  { command: 'mkfs.ext4', apt: 'e2fsprogs', use: 'test fixtures' },
  { command: 'mcopy', apt: 'mtools', use: 'the FAT boot partition in user space' },
  { command: 'mkfs.vfat', apt: 'dosfstools', use: 'test fixtures' },
  { command: 'fsck.vfat', apt: 'dosfstools', use: 'checking the boot partition' },
  { command: 'xz', apt: 'xz-utils', use: '.img.xz input and output' },
  { command: 'zstd', apt: 'zstd', use: '.img.zst input and output' },
  { command: 'pigz', apt: 'pigz', use: 'parallel gzip output' },
  { command: 'rsync', apt: 'rsync', use: 'copying trees' },
  { command: 'zerofree', apt: 'zerofree', use: 'zeroing free blocks before compression' },
  { command: 'bmaptool', apt: 'bmap-tools', use: '.bmap files' },
  { command: 'bwrap', apt: 'bubblewrap', use: "the sandbox the image's own programs run in" },
  { command: 'qemu-aarch64-static', apt: 'qemu-user-static', use: 'running arm64 code in the image' },
  { command: 'qemu-arm-static', apt: 'qemu-user-static', use: 'running armhf code in the image' },
  { command: 'git', apt: 'git', use: 'cloning the PiSeduce sources' },
  { command: 'busybox', apt: 'busybox-static', use: 'unpacking packages natively in the image (else under emulation, slower)', optional: true },
  { command: 'mmdebstrap', apt: 'mmdebstrap', use: 'building test fixtures', optional: true },
  { command: 'qemu-system-aarch64', apt: 'qemu-system-arm', use: 'build-image verify: booting arm64 images', optional: true },
  { command: 'qemu-system-arm', apt: 'qemu-system-arm', use: 'build-image verify: booting armhf images', optional: true },
  { command: 'mkimage', apt: 'u-boot-tools', use: "build-image verify --node: the node's U-Boot script", optional: true },
  { command: 'ip', apt: 'iproute2', use: "build-image verify --node: the cluster link's namespace, bridge and taps", optional: true },
  { command: 'snmpd', apt: 'snmpd', use: 'build-image verify --node: the PoE switch stand-in', optional: true },
  { command: 'ssh', apt: 'openssh-client', use: 'build-image verify: the checks', optional: true },
  { command: 'modprobe', apt: 'kmod', use: "build-image verify: the initrd's modules", optional: true },
  { command: 'cpio', apt: 'cpio', use: 'build-image verify: the initrd', optional: true },
  { command: 'dpkg-deb', apt: 'dpkg', use: "build-image verify: unpacking Debian's kernel", optional: true },
  { command: 'openssl', apt: 'openssl', use: 'build-image flash --password-file: hashing the password', optional: true },
];

function binfmtCheck(name: string, handler: string): Check {
  const file = `/proc/sys/fs/binfmt_misc/${handler}`;
  if (!existsSync('/proc/sys/fs/binfmt_misc/status')) {
    return {
      name,
      ok: false,
      detail: 'binfmt_misc is not mounted',
      fix: 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc (build-image does this itself when run as root)',
    };
  }
  if (!existsSync(file)) {
    return {
      name,
      ok: false,
      detail: `no ${handler} handler registered`,
      fix: 'apt-get install qemu-user-static binfmt-support && update-binfmts --enable (build-image registers it itself when run as root)',
    };
  }
  const text = readFileSync(file, 'utf8');
  const flags = /^flags: *(\S*)/m.exec(text)?.[1] ?? '';
  const interpreter = /^interpreter (\S+)/m.exec(text)?.[1] ?? '?';
  if (!/^enabled/m.test(text)) return { name, ok: false, detail: `${handler} is registered but disabled`, fix: `echo 1 > ${file}` };
  if (!flags.includes('F')) {
    return {
      name,
      ok: false,
      detail: `${interpreter} is registered without the F flag (flags: ${flags || 'none'})`,
      fix: `echo -1 > ${file}; then let build-image register it with the F flag`,
    };
  }
  return { name, ok: true, detail: `${interpreter} (flags ${flags})` };
}

function nearestExisting(path: string): string {
  let p = resolve(path);
  while (!existsSync(p)) p = dirname(p);
  return p;
}

/** Everything a build needs from the host, one check per line. */
export function runChecks(workDir: string, minFreeBytes = 8 * 2 ** 30): Check[] {
  const checks: Check[] = [];
  const uid = process.getuid?.() ?? -1;
  checks.push(
    uid === 0
      ? { name: 'root', ok: true, detail: 'running as root' }
      : { name: 'root', ok: false, detail: `running as uid ${uid}; loop devices and mounts need root`, fix: 'run with sudo' },
  );
  const [major, minor] = process.versions.node.split('.').map(Number) as [number, number];
  checks.push(
    major > 22 || (major === 22 && minor >= 18)
      ? { name: 'node', ok: true, detail: `v${process.versions.node}` }
      : {
          name: 'node',
          ok: false,
          detail: `v${process.versions.node} is older than 22.18`,
          fix: 'bash .ci/setup-host (installs Node 24 from the npm registry)',
        },
  );
  checks.push(
    existsSync('/dev/loop-control')
      ? { name: 'loop devices', ok: true, detail: '/dev/loop-control present (partitions are attached by offset, no -P needed)' }
      : {
          name: 'loop devices',
          ok: false,
          detail: '/dev/loop-control is missing',
          fix: 'modprobe loop (in a container: run it with --privileged or pass /dev/loop*)',
        },
  );
  checks.push(binfmtCheck('binfmt arm64', 'qemu-aarch64'));
  checks.push(binfmtCheck('binfmt armhf', 'qemu-arm'));
  for (const tool of HOST_TOOLS) {
    const path = findOnPath(tool.command);
    checks.push(
      path
        ? { name: tool.command, ok: true, detail: path }
        : { name: tool.command, ok: false, warning: tool.optional, detail: `not found (needed for ${tool.use})`, fix: `apt-get install ${tool.apt}` },
    );
  }
  const dir = nearestExisting(workDir);
  const stats = statfsSync(dir);
  const free = stats.bavail * stats.bsize;
  checks.push(
    free >= minFreeBytes
      ? { name: 'disk', ok: true, detail: `${formatBytes(free)} free in ${dir}` }
      : {
          name: 'disk',
          ok: false,
          warning: true,
          detail: `${formatBytes(free)} free in ${dir}, a pimaster build wants ${formatBytes(minFreeBytes)}`,
          fix: 'free some space or pass --work DIR on a larger disk',
        },
  );
  const left = leftovers(workDir);
  const count = left.mounts.length + left.loops.length;
  checks.push(
    count === 0
      ? { name: 'work dir', ok: true, detail: `nothing mounted or attached under ${workDir} by a killed build` }
      : {
          name: 'work dir',
          ok: false,
          warning: true,
          detail: `${left.mounts.length} mounts and ${left.loops.length} loop devices under ${workDir} left by a killed build (the next build there undoes them first)`,
          fix: undoCommands(left).join('; '),
        },
  );
  return checks;
}

export function formatChecks(checks: readonly Check[]): string {
  const width = Math.max(...checks.map((c) => c.name.length));
  return checks
    .map((c) => {
      const mark = c.ok ? 'ok  ' : c.warning ? 'warn' : 'FAIL';
      return `${mark}  ${c.name.padEnd(width)}  ${c.detail}${c.fix && !c.ok ? `  -> ${c.fix}` : ''}`;
    })
    .join('\n');
}
