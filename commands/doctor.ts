import { existsSync, readFileSync, statfsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { execa } from 'execa';
import { findOnPath } from '../engine/exec.ts';
import { formatBytes } from '../engine/options.ts';
import { leftovers, undoCommands } from '../engine/work-dir.ts';
import { chrootMode, hostArch, runsArmhfNatively } from '../lib/chroot/emulation.ts';
import type { Arch } from '../lib/image/arch.ts';
import { accelerationFor, kvmUsable } from '../lib/qemu/guest.ts';

export interface Check {
  name: string;
  ok: boolean;
  /** Not fatal: the build may still work (little disk space, an optional tool). */
  warning?: boolean;
  /** Not needed on this host (qemu-user for an architecture that runs natively). */
  skipped?: boolean;
  detail: string;
  fix?: string;
}

/** Host commands and the Debian/Ubuntu package that provides each. */
export const HOST_TOOLS: ReadonlyArray<{ command: string; apt: string; use: string; optional?: boolean }> = [
  { command: 'losetup', apt: 'mount', use: 'loop devices' },
  { command: 'mount', apt: 'mount', use: 'mounting the root filesystem' },
  { command: 'sfdisk', apt: 'fdisk', use: 'partition tables' },
  { command: 'e2fsck', apt: 'e2fsprogs', use: 'checking ext4' },
  { command: 'resize2fs', apt: 'e2fsprogs', use: 'growing ext4' },
  { command: 'mke2fs', apt: 'e2fsprogs', use: 'writing the root filesystem anew at shrink' },
  { command: 'debugfs', apt: 'e2fsprogs', use: "the rewritten root filesystem's times" },
  { command: 'mcopy', apt: 'mtools', use: 'the FAT boot partition in user space' },
  { command: 'mkfs.vfat', apt: 'dosfstools', use: 'test fixtures' },
  { command: 'fsck.vfat', apt: 'dosfstools', use: 'checking the boot partition' },
  { command: 'xz', apt: 'xz-utils', use: '.img.xz input and output' },
  { command: 'zstd', apt: 'zstd', use: '.img.zst input and output' },
  { command: 'pigz', apt: 'pigz', use: 'parallel gzip output' },
  { command: 'rsync', apt: 'rsync', use: 'copying trees' },
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

const BINFMT = '/proc/sys/fs/binfmt_misc';

function binfmtCheck(name: string, handler: string, dir: string): Check {
  const file = `${dir}/${handler}`;
  if (!existsSync(`${dir}/status`)) {
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

/** What runChecks asks of the host; a test gives another host's answers. */
export interface HostFacts {
  arch: Arch;
  /** `arch-test -n armhf` exits 0 (asked only on an arm64 host), as the chroot decides. */
  runsArmhfNatively(): Promise<boolean>;
  /** /dev/kvm opens read-write. */
  kvm: boolean;
  /** Where binfmt_misc is mounted. */
  binfmt: string;
}

const thisHost = (): HostFacts => ({
  arch: hostArch(),
  runsArmhfNatively: () => runsArmhfNatively({ run: async (file, args) => ({ exitCode: (await execa(file, [...args], { reject: false })).exitCode ?? -1 }) }),
  kvm: kvmUsable(),
  binfmt: BINFMT,
});

/** The qemu-user command and binfmt handler each image architecture needs where it is not native. */
const EMULATORS = { arm64: { command: 'qemu-aarch64-static', handler: 'qemu-aarch64' }, armhf: { command: 'qemu-arm-static', handler: 'qemu-arm' } } as const;

/**
 * How each image architecture's programs run on this host (the chroot's own decision) and the
 * checks that follow: the binfmt handler where qemu-user is needed; on an arm host a line per
 * architecture, `native` ones with their qemu-user shown as not needed.
 */
async function emulationChecks(host: HostFacts): Promise<{ checks: Check[]; notNeeded: Map<string, string> }> {
  const checks: Check[] = [];
  const notNeeded = new Map<string, string>();
  const arm = host.arch === 'arm64' || host.arch === 'armhf';
  for (const image of ['arm64', 'armhf'] as const) {
    const { command, handler } = EMULATORS[image];
    const aarch32 = host.arch === 'arm64' && image === 'armhf' && (await host.runsArmhfNatively());
    const binfmt = `binfmt ${image}`;
    if (chrootMode(host.arch, image, aarch32) === 'native') {
      const why = `not needed: ${image} images run natively${image === host.arch ? ` on this ${host.arch} host` : ' (arch-test -n armhf: this CPU runs AArch32)'}`;
      checks.push({ name: `${image} images`, ok: true, detail: 'native' });
      const registered = image === host.arch && /^enabled/m.test(readIfExists(`${host.binfmt}/${handler}`));
      checks.push(
        registered
          ? {
              name: binfmt,
              ok: false,
              warning: true,
              detail: `a ${handler} handler is registered: every ${image} program on this host runs under qemu`,
              fix: `echo -1 > ${host.binfmt}/${handler}`,
            }
          : { name: binfmt, ok: true, skipped: true, detail: why },
      );
      notNeeded.set(command, why);
      continue;
    }
    if (host.arch === 'arm64' && image === 'armhf') {
      checks.push(
        findOnPath('arch-test')
          ? {
              name: 'armhf images',
              ok: true,
              detail: `qemu-user (${handler}): arch-test -n armhf fails: this CPU runs no AArch32, or a qemu-arm handler is registered`,
            }
          : {
              name: 'armhf images',
              ok: false,
              warning: true,
              detail: `qemu-user (${handler}): arch-test is missing, so whether this CPU runs AArch32 is not asked`,
              fix: 'apt-get install arch-test',
            },
      );
    } else if (arm) checks.push({ name: `${image} images`, ok: true, detail: `qemu-user (${handler})` });
    checks.push(binfmtCheck(binfmt, handler, host.binfmt));
  }
  return { checks, notNeeded };
}

const readIfExists = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8') : '');

/** Informational: whether verify's guests run on KVM or TCG here. */
function kvmCheck(host: HostFacts): Check {
  const device = host.kvm ? '/dev/kvm opens read-write' : existsSync('/dev/kvm') ? '/dev/kvm does not open read-write' : 'no /dev/kvm';
  const how = (['arm64', 'armhf'] as const).map((g) => `${g} guests on ${accelerationFor(host.arch, g, host.kvm).line.replace(/^QEMU: /, '')}`);
  const why = host.arch === 'arm64' ? '' : ' (KVM only for an arm64 guest on an arm64 host)';
  return { name: 'kvm', ok: true, detail: `${device}; verify: ${how.join(', ')}${why}` };
}

function nearestExisting(path: string): string {
  let p = resolve(path);
  while (!existsSync(p)) p = dirname(p);
  return p;
}

/** Everything a build needs from the host, one check per line. */
export async function runChecks(workDir: string, minFreeBytes = 8 * 2 ** 30, host: HostFacts = thisHost()): Promise<Check[]> {
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
  const emulation = await emulationChecks(host);
  checks.push(...emulation.checks);
  for (const tool of HOST_TOOLS) {
    const path = findOnPath(tool.command);
    const notNeeded = emulation.notNeeded.get(tool.command);
    checks.push(
      notNeeded
        ? { name: tool.command, ok: true, skipped: true, detail: notNeeded }
        : path
          ? { name: tool.command, ok: true, detail: path }
          : { name: tool.command, ok: false, warning: tool.optional, detail: `not found (needed for ${tool.use})`, fix: `apt-get install ${tool.apt}` },
    );
  }
  checks.push(kvmCheck(host));
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
      const mark = c.skipped ? 'skip' : c.ok ? 'ok  ' : c.warning ? 'warn' : 'FAIL';
      return `${mark}  ${c.name.padEnd(width)}  ${c.detail}${c.fix && !c.ok ? `  -> ${c.fix}` : ''}`;
    })
    .join('\n');
}
