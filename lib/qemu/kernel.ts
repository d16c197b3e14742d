/**
 * The kernel and initrd `verify` boots the image with, under QEMU's `virt` machine.
 *
 * The image's own kernel when it can: a /boot/vmlinuz-V with its initrd.img-V and a config-V that
 * has virtio and the generic PCI host (a Debian-style image). Raspberry Pi OS kernels (kernel8.img
 * and friends) are built for the Pi's SoC, without virtio or the `virt` board, so for those the
 * guest boots Debian's generic kernel for the arch instead (cloud-arm64; armmp-lpae for armhf),
 * with an initrd made here from Debian's busybox-static and only the modules needed to reach the
 * root filesystem. Its module tree is copied into the throw-away copy, so nfsd, netfilter and vfat
 * load as usual. Both packages come from the Debian mirror through apt, which checks the archive's
 * signature and the files' hashes, and are cached per version.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { UserError } from '../../engine/errors.ts';
import { withLock } from '../../engine/lock.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { inRoot } from '../image/in-root.ts';

export type GuestArch = 'arm64' | 'armhf';

export interface GuestKernel {
  /** Said in the report: which kernel, and why. */
  source: string;
  version: string;
  kernel: string;
  initrd: string;
  /** `lib/modules/<version>` to copy into the image; none for the image's own kernel. */
  modules?: string;
  /** Debian's static busybox, fetched with Debian's kernel (the initrd's tools). */
  busybox?: string;
}

const FLAVOUR: Record<GuestArch, string> = { arm64: 'linux-image-cloud-arm64', armhf: 'linux-image-armmp-lpae' };
/** A node's kernel: Debian's generic arm64 one, which has the SD card's drivers (the cloud one has none). */
const NODE_FLAVOUR = 'linux-image-arm64';

/** Config lines a kernel needs to boot under `-M virt` from a virtio disk with a PL011 console. */
const VIRT_NEEDS = [
  'CONFIG_PCI_HOST_GENERIC=y',
  'CONFIG_VIRTIO_PCI=[ym]',
  'CONFIG_VIRTIO_BLK=[ym]',
  'CONFIG_VIRTIO_NET=[ym]',
  'CONFIG_SERIAL_AMBA_PL011_CONSOLE=y',
];

export function bootsUnderVirt(kernelConfig: string): boolean {
  return VIRT_NEEDS.every((line) => new RegExp(`^${line}$`, 'm').test(kernelConfig));
}

/** The newest kernel in the image's /boot that boots under `virt` with its own initrd, if any. */
export function ownKernel(root: string): { version: string; kernel: string; initrd: string } | undefined {
  const boot = inRoot(root, 'boot');
  if (!existsSync(boot)) return undefined;
  const versions = readdirSync(boot)
    .map((name) => /^vmlinuz-(.+)$/.exec(name)?.[1])
    .filter((v): v is string => v !== undefined)
    .sort((a, b) => b.localeCompare(a, undefined, { numeric: true }));
  for (const version of versions) {
    const [kernel, initrd, config] = ['vmlinuz', 'initrd.img', 'config'].map((n) => inRoot(root, `boot/${n}-${version}`)) as [string, string, string];
    if (existsSync(initrd) && existsSync(config) && bootsUnderVirt(readFileSync(config, 'utf8'))) return { version, kernel, initrd };
  }
  return undefined;
}

/** A private apt for another arch's packages: its own lists and cache, Debian's keyring. */
function aptRoot(dir: string, arch: GuestArch, mirror: string): Record<string, string> {
  for (const sub of [
    'etc/apt/apt.conf.d',
    'etc/apt/preferences.d',
    'etc/apt/sources.list.d',
    'var/lib/apt/lists/partial',
    'var/cache/apt/archives/partial',
    'var/lib/dpkg',
  ]) {
    mkdirSync(join(dir, sub), { recursive: true });
  }
  if (!existsSync(join(dir, 'var/lib/dpkg/status'))) writeFileSync(join(dir, 'var/lib/dpkg/status'), '');
  writeFileSync(join(dir, 'etc/apt/sources.list'), `deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror} bookworm main\n`);
  writeFileSync(
    join(dir, 'apt.conf'),
    [
      `Dir "${dir}/";`,
      `Dir::State::status "${dir}/var/lib/dpkg/status";`,
      `APT::Architecture "${arch}";`,
      `APT::Architectures { "${arch}"; };`,
      'APT::Sandbox::User "root";',
      'Acquire::Languages "none";',
      '',
    ].join('\n'),
  );
  return { APT_CONFIG: join(dir, 'apt.conf') };
}

/** The named Debian packages for `arch`, unpacked into one tree, cached by their versions. */
async function debianPackages(ctx: BuildContext, arch: GuestArch, mirror: string, names: readonly string[]): Promise<{ dir: string; versions: string }> {
  if (!existsSync('/usr/share/keyrings/debian-archive-keyring.gpg')) {
    throw new UserError("verify needs Debian's archive keyring to check the kernel it downloads: apt-get install debian-archive-keyring");
  }
  const base = join(ctx.paths.cache, 'verify', arch);
  mkdirSync(base, { recursive: true });
  return withLock(
    join(base, '.lock'),
    async () => {
      const env = aptRoot(join(base, 'apt'), arch, mirror);
      // <what was asked>/<the versions it resolved to>: one tree per resolution.
      const requested = join(base, names.join('+'));
      const update = await ctx.run('apt-get', ['-q', 'update', '--error-on=any'], { env, reject: false });
      if (update.exitCode !== 0) {
        // Offline: the newest tree unpacked earlier for the same request.
        const cached = existsSync(requested)
          ? readdirSync(requested)
              .filter((n) => !n.endsWith('.part'))
              .map((n) => join(requested, n))
              .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0]
          : undefined;
        const why = /^[WE]: Failed to fetch \S+\s+(.*)$/m.exec(update.stderr)?.[1] ?? update.stderr.trim().split('\n').at(-1);
        if (!cached)
          throw new UserError(`cannot reach the Debian mirror ${mirror} for the kernel verify boots with (${why}): check the network, or pass --debian-mirror`);
        ctx.log.line(`apt-get update failed: using the cached ${cached}`);
        return { dir: cached, versions: readFileSync(join(cached, 'versions'), 'utf8').trim() };
      }
      // A metapackage (linux-image-cloud-arm64) names the versioned kernel package it depends on.
      const packages: string[] = [];
      for (const name of names) {
        const { stdout } = await ctx.run('apt-cache', ['show', '--no-all-versions', name], { env });
        const depends = /^Depends: (linux-image-\S+)/m.exec(stdout)?.[1];
        packages.push(name.startsWith('linux-image-') && depends ? depends : name);
      }
      const lines: string[] = [];
      for (const name of packages) {
        const { stdout } = await ctx.run('apt-cache', ['show', '--no-all-versions', name], { env });
        lines.push(`${name} ${/^Version: (\S+)/m.exec(stdout)?.[1] ?? '?'}`);
      }
      const versions = lines.join(', ');
      const dir = join(requested, lines.join('_').replace(/[^\w.+-]+/g, '_'));
      if (existsSync(dir)) return { dir, versions };
      const tmp = `${dir}.part`;
      rmSync(tmp, { recursive: true, force: true });
      mkdirSync(join(tmp, 'debs'), { recursive: true }); // makes `requested` too
      ctx.defer(`remove ${tmp}`, () => rmSync(tmp, { recursive: true, force: true }));
      await ctx.run('apt-get', ['-q', 'download', ...packages], { env, cwd: join(tmp, 'debs') });
      for (const deb of readdirSync(join(tmp, 'debs'))) await ctx.run('dpkg-deb', ['-x', join(tmp, 'debs', deb), join(tmp, 'root')]);
      rmSync(join(tmp, 'debs'), { recursive: true });
      writeFileSync(join(tmp, 'versions'), `${versions}\n`);
      renameSync(tmp, dir);
      return { dir, versions };
    },
    ctx.signal,
  );
}

/**
 * Debian's busybox-static for the guest (the TFTP client of the checks): the one fetched with
 * Debian's kernel, or fetched alone when the image boots its own.
 */
export async function guestBusybox(ctx: BuildContext, arch: GuestArch, mirror: string, kernel: GuestKernel): Promise<string> {
  return kernel.busybox ?? join((await debianPackages(ctx, arch, mirror, ['busybox-static'])).dir, 'root/bin/busybox');
}

/**
 * The initrd's /init: load the modules, mount the root, hand over to its init. The root is root=
 * (a virtio disk, ext4, read-only), or with root=/dev/nfs what the Raspberry Pi kernel does itself
 * for a network-booted node: ip=dhcp, then nfsroot=SERVER:PATH,OPTIONS with those options.
 */
const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m"; done
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=*) root=\${arg#root=} ;; nfsroot=*) nfsroot=\${arg#nfsroot=} ;; init=*) init=\${arg#init=} ;; rw) mode=rw ;; esac
done
# root=PARTUUID=<MBR disk id>-<partition>, as on a Pi's SD card: the disk whose MBR has that id.
partuuid() {
  id=\${1%-*}; n=$(expr "\${1##*-}" + 0)
  for disk in /sys/block/*; do
    d=/dev/\${disk##*/}
    [ "$(od -An -tx4 -j440 -N4 "$d" 2>/dev/null | tr -d ' ')" = "$id" ] || continue
    case "$d" in *[0-9]) echo "\${d}p$n" ;; *) echo "$d$n" ;; esac
  done
}
# The links a Pi's initramfs has from udev: bookworm's firstboot mounts PARTUUID= before udev runs.
partuuid_links() {
  mkdir -p /dev/disk/by-partuuid
  for disk in /sys/block/*; do
    d=\${disk##*/}; id=$(od -An -tx4 -j440 -N4 "/dev/$d" 2>/dev/null | tr -d ' ')
    [ -n "$id" ] && [ "$id" != 00000000 ] || continue
    for p in "$disk/$d"*; do
      [ -e "$p/partition" ] && ln -sf "../../\${p##*/}" "/dev/disk/by-partuuid/$id-$(printf %02x "$(cat "$p/partition")")"
    done
  done
}
handover() {
  partuuid_links
  if [ -e /newroot/sbin/init ] || [ -L /newroot/sbin/init ]; then
    umount /proc /sys
    mount --move /dev /newroot/dev
    exec switch_root /newroot "\${init:-/sbin/init}"
  fi
  echo "verify initrd: $1 has no /sbin/init"
}
# Raspberry Pi OS bookworm's first boot (init=.../firstboot): its initramfs grows the root partition
# to the end of the disk and the filesystem into it. This initrd stands in for that initramfs, with
# the image's own sfdisk, partx and resize2fs.
firstboot_growth() {
  part=\${1##*/}; n=$(cat "/sys/class/block/$part/partition"); disk=/dev/$(basename "$(readlink -f "/sys/class/block/$part/..")")
  mount -t ext4 "$1" /newroot || return 1
  mount --bind /dev /newroot/dev && mount -t proc proc /newroot/proc && mount -t sysfs sysfs /newroot/sys &&
    chroot /newroot sh -c "echo ', +' | sfdisk --no-reread --no-tell-kernel -q -N $n $disk && partx -u --nr $n $disk && resize2fs $1" &&
    echo "verify initrd: grew $1 to the end of $disk (the release's first-boot growth)"
  umount /newroot/sys /newroot/proc /newroot/dev /newroot
}
if [ "$root" = /dev/nfs ]; then
  ip link set eth0 up
  if udhcpc -i eth0 -f -q -n -t 30 -s /udhcpc.sh; then
    server=\${nfsroot%%:*}; rest=\${nfsroot#*:}; path=\${rest%%,*}; options=\${rest#"$path"}; options=\${options#,}
    if mount -t nfs4 -o "\${mode:-ro},\${options:+$options,}addr=$server" "$server:$path" /newroot; then handover "$server:$path"; else echo "verify initrd: cannot mount $server:$path ($options)"; fi
  else
    echo "verify initrd: no DHCP answer on eth0"
  fi
else
  i=0
  while [ $i -lt 100 ]; do
    case "$root" in PARTUUID=*) device=$(partuuid "\${root#PARTUUID=}") ;; *) device=$root ;; esac
    [ -b "$device" ] && break
    sleep 0.1; i=$((i + 1))
  done
  label=$root; [ "$device" = "$root" ] || label="$root ($device)"
  [ "$init" = /usr/lib/raspberrypi-sys-mods/firstboot ] && firstboot_growth "$device"
  if mount -t ext4 -o ro "$device" /newroot; then handover "$label"; else echo "verify initrd: cannot mount $label"; fi
fi
poweroff -f
`;

/** busybox udhcpc's script: the leased address and route on the interface (ip=dhcp). */
const UDHCPC = `#!/bin/busybox sh
case "$1" in
  bound|renew)
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "\${router%% *}" dev "$interface"
    echo "verify initrd: $interface has $ip/\${mask:-24} from $serverid"
    ;;
esac
exit 0
`;

/** Modules the initrd loads (with their dependencies): a virtio disk holding ext4, or a virtio NIC and NFS 4. */
export const INITRD_MODULES = ['virtio_pci', 'virtio_blk', 'ext4', 'virtio_net', 'nfsv4'];
/** And on a node: its SD card and the FAT boot partition on it, which a deploy mounts. */
const NODE_MODULES = [...INITRD_MODULES, 'sdhci_pci', 'mmc_block', 'vfat', 'nls_cp437', 'nls_ascii', 'nls_utf8'];

/** An initrd with busybox, `modules` (and their dependencies) from `tree`, and the /init above. */
export async function makeInitrd(
  ctx: Pick<BuildContext, 'run' | 'defer'>,
  tree: string,
  version: string,
  modules: readonly string[],
  output: string,
): Promise<void> {
  const staging = `${output}.d`;
  rmSync(staging, { recursive: true, force: true });
  for (const d of ['bin', 'dev', 'proc', 'sys', 'newroot', 'modules']) mkdirSync(join(staging, d), { recursive: true });
  ctx.defer(`remove ${staging}`, () => rmSync(staging, { recursive: true, force: true }));
  copyFileSync(join(tree, 'bin/busybox'), join(staging, 'bin/busybox'));
  const order: string[] = [];
  for (const name of modules) {
    // "insmod PATH" per module, dependencies first; "builtin NAME" when it is in the kernel.
    const { stdout } = await ctx.run('modprobe', ['--dirname', tree, '--set-version', version, '--show-depends', name]);
    for (const path of stdout.split('\n').flatMap((l) => /^insmod (\S+)/.exec(l)?.[1] ?? [])) {
      const file = path.split('/').at(-1)!;
      if (order.includes(file)) continue;
      order.push(file);
      copyFileSync(path, join(staging, 'modules', file));
    }
  }
  writeFileSync(join(staging, 'modules.order'), `${order.join('\n')}\n`);
  writeFileSync(join(staging, 'init'), INIT, { mode: 0o755 });
  writeFileSync(join(staging, 'udhcpc.sh'), UDHCPC, { mode: 0o755 });
  await ctx.run('sh', ['-c', 'cd "$1" && find . | cpio --quiet -o -H newc -R 0:0 | gzip -9 > "$2.part" && mv "$2.part" "$2"', 'sh', staging, output]);
}

/** Debian's generic kernel for `arch`, its modules, and an initrd for it (all cached). */
export function debianKernel(ctx: BuildContext, arch: GuestArch, mirror: string): Promise<GuestKernel> {
  return kernelWith(ctx, arch, mirror, FLAVOUR[arch], INITRD_MODULES);
}

/**
 * The kernel and initrd a QEMU node boots in a Pi's place: they know its SD card (arm64). The
 * kernel gzip'd, as U-Boot's booti takes it: a node fetches it over TFTP at each power-on.
 */
export async function nodeKernel(ctx: BuildContext, mirror: string): Promise<GuestKernel> {
  const kernel = await kernelWith(ctx, 'arm64', mirror, NODE_FLAVOUR, NODE_MODULES);
  const gzipped = join(dirname(kernel.initrd), `vmlinuz-${kernel.version}.gz`);
  if (!existsSync(gzipped)) await ctx.run('sh', ['-c', 'gzip -9 -c "$1" > "$2.part" && mv "$2.part" "$2"', 'sh', kernel.kernel, gzipped]);
  return { ...kernel, kernel: gzipped };
}

async function kernelWith(ctx: BuildContext, arch: GuestArch, mirror: string, flavour: string, initrdModules: readonly string[]): Promise<GuestKernel> {
  const { dir, versions } = await debianPackages(ctx, arch, mirror, [flavour, 'busybox-static']);
  const tree = join(dir, 'root');
  const version = readdirSync(join(tree, 'lib/modules'))[0];
  if (!version) throw new UserError(`${dir} holds no kernel modules: remove it and run verify again`);
  const modules = join(tree, 'lib/modules', version);
  // Named by what makes it, so a changed /init or module list makes a new one.
  const initrd = join(
    dir,
    `initrd-${createHash('sha256')
      .update(INIT + UDHCPC + initrdModules.join())
      .digest('hex')
      .slice(0, 12)}.img`,
  );
  if (!existsSync(initrd)) {
    if (!existsSync(join(modules, 'modules.dep'))) await ctx.run('depmod', ['--basedir', tree, version]);
    await makeInitrd(ctx, tree, version, initrdModules, initrd);
  }
  return {
    source: `Debian's ${versions.split(', ')[0]} (the image has no kernel that boots under QEMU's virt machine)`,
    version,
    kernel: join(tree, 'boot', `vmlinuz-${version}`),
    initrd,
    modules,
    busybox: join(tree, 'bin/busybox'),
  };
}
