/** The pure pieces: no root, no image, fast. */
import test from 'ava';
import { registrationLine } from '../../lib/chroot/emulation.ts';
import { archivesOf, rewriteSources } from '../../lib/chroot/environment.ts';
import { elfArch } from '../../lib/image/arch.ts';
import { diffSnapshots } from '../../lib/image/bootfs.ts';
import { armFirstBoot, disarmFirstBoot, firstBootOf, parseCmdline } from '../../lib/image/cmdline.ts';
import { type Ext4Geometry, fittingBlocks, metadataBlocks } from '../../lib/image/ext4-fit.ts';
import { dep5Licenses, parseDpkgStatus } from '../../lib/image/packages.ts';
import { parseLayout } from '../../lib/image/partitions.ts';
import { resizeInDump } from '../../lib/image/resize.ts';
import { mke2fsArgs, mke2fsProfile, parseExt4Identity, timeFixes } from '../../lib/image/rewrite-root.ts';
import { bootMountOf, parseOsRelease } from '../../lib/image/system.ts';
import { parseIpv4Cidr } from '../../lib/net.ts';
import { growsAtFirstBoot, guestArgs } from '../../lib/qemu/guest.ts';
import { imageBaseName } from '../../lib/sources/environments.ts';
import { parseGitSource } from '../../lib/sources/git-source.ts';
import { renderTemplate } from '../../lib/template.ts';
import { isPublicKey, parseHostLabel } from '../../settings/rules.ts';
import { elfHeader } from '../fixtures/tiny-image.ts';

test('IPv4 address and prefix', (t) => {
  t.deepEqual(parseIpv4Cidr('48.48.0.254/24'), { address: '48.48.0.254', prefix: 24, network: '48.48.0.0', netmask: '255.255.255.0' });
  t.deepEqual(parseIpv4Cidr('10.1.2.3/16'), { address: '10.1.2.3', prefix: 16, network: '10.1.0.0', netmask: '255.255.0.0' });
  for (const bad of ['48.48.0.254', '48.48.0.256/24', '48.48.0.1/31', '48.48.0.255/24', '048.48.0.1/24', 'a.b.c.d/24'])
    t.throws(() => parseIpv4Cidr(bad), { any: true }, bad);
});

test('host names (RFC 1123)', (t) => {
  t.is(parseHostLabel('PiMaster-2'), 'pimaster-2');
  for (const bad of ['-pi', 'pi-', 'pi_master', '', 'a'.repeat(64), 'pimaster.lab.example']) t.throws(() => parseHostLabel(bad), { any: true }, bad);
});

test('OpenSSH public keys: the blob must carry its own type', (t) => {
  const blob = (type: string) => {
    const b = Buffer.alloc(4 + type.length + 8);
    b.writeUInt32BE(type.length, 0);
    b.write(type, 4, 'latin1');
    return b.toString('base64');
  };
  t.true(isPublicKey(`ssh-ed25519 ${blob('ssh-ed25519')} me@host`));
  t.true(isPublicKey(`no-pty ssh-rsa ${blob('ssh-rsa')}`));
  t.true(isPublicKey(`ssh-ed25519 ${blob('ssh-ed25519')} laptop`), 'a one-word comment (ssh-keygen -C laptop)');
  t.true(isPublicKey(`from="10.0.0.0/8",command="echo a b" ssh-ed25519 ${blob('ssh-ed25519')} laptop`), 'options with quoted spaces');
  t.false(isPublicKey(`ssh-ed25519 ${blob('ssh-rsa')}`), 'type and blob disagree');
  t.false(isPublicKey('ssh-ed25519 not-base64!'));
  t.false(isPublicKey('-----BEGIN OPENSSH PRIVATE KEY-----'));
});

test('git sources with refs', (t) => {
  t.is(parseGitSource('https://github.com/SeduceProject/piseduce_agent.git#12353c1'), 'https://github.com/SeduceProject/piseduce_agent.git#12353c1');
  t.throws(() => parseGitSource('https://x/y.git#a..b'), { any: true });
  t.throws(() => parseGitSource('/no/such/dir#main'), { any: true });
});

test('cmdline.txt: find, arm and disarm the first-boot resize of each release', (t) => {
  const bookworm = parseCmdline('console=serial0,115200 root=PARTUUID=x-02 rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n');
  t.is(firstBootOf(bookworm), 'firstboot');
  t.deepEqual(disarmFirstBoot(bookworm), ['console=serial0,115200', 'root=PARTUUID=x-02', 'rootwait', 'quiet']);
  t.is(firstBootOf(parseCmdline('root=/dev/x resize quiet')), 'resize');
  t.deepEqual(armFirstBoot(['root=/dev/x', 'init=/bin/sh'], 'init_resize'), ['root=/dev/x', 'init=/usr/lib/raspi-config/init_resize.sh']);
  t.deepEqual(armFirstBoot(disarmFirstBoot(bookworm), 'firstboot'), bookworm);
});

test('boot partition write-back: what to copy, make and delete', (t) => {
  const before = new Map([
    ['a.txt', '1:10'],
    ['dir', 'dir'],
    ['dir/b', '2:10'],
    ['old', 'dir'],
    ['old/c', '3:10'],
    ['gone.txt', '4:10'],
  ]);
  const after = new Map([
    ['a.txt', '1:20'],
    ['dir', 'dir'],
    ['dir/b', '2:10'],
    ['new', 'dir'],
    ['new/d', '5:20'],
  ]);
  t.deepEqual(diffSnapshots(before, after), {
    mkdirs: ['new'],
    copies: ['a.txt', 'new/d'],
    deletes: [
      { path: 'gone.txt', dir: false },
      { path: 'old', dir: true },
    ],
  });
});

test("apt sources pointed at a mirror: the image's distribution archive only", (t) => {
  // Raspberry Pi OS arm64 (bookworm): Debian, its security archive, the Raspberry Pi archive.
  const debian =
    'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian-security/ bookworm-security main\ndeb http://archive.raspberrypi.com/debian/ bookworm main\n';
  t.is(
    rewriteSources(debian, 'http://127.0.0.1:3142/debian'),
    'deb http://127.0.0.1:3142/debian bookworm main\ndeb http://deb.debian.org/debian-security/ bookworm-security main\ndeb http://archive.raspberrypi.com/debian/ bookworm main\n',
  );
  t.is(rewriteSources('URIs: https://deb.debian.org/debian\nSuites: bookworm\n', 'http://m/debian'), 'URIs: http://m/debian\nSuites: bookworm\n');
  // Raspberry Pi OS armhf is Raspbian: its own archive is the one to replace.
  t.is(
    rewriteSources('deb [arch=armhf] http://raspbian.raspberrypi.com/raspbian/ bookworm main contrib non-free rpi\n', 'http://m/raspbian'),
    'deb [arch=armhf] http://m/raspbian bookworm main contrib non-free rpi\n',
  );
  t.is(
    rewriteSources('deb http://archive.raspberrypi.com/debian/ bookworm main\n', 'http://m/debian'),
    'deb http://archive.raspberrypi.com/debian/ bookworm main\n',
    'nothing to replace',
  );
  t.deepEqual(archivesOf('deb [arch=armhf] http://a/raspbian bookworm main\n# deb http://b/debian x\nTypes: deb\nURIs: http://c/debian http://d/debian\n'), [
    'http://a/raspbian',
    'http://c/debian',
    'http://d/debian',
  ]);
});

test("verify keeps the image's kernel arguments that user space reads, and bookworm's first-boot init", (t) => {
  t.deepEqual(
    guestArgs(
      'console=serial0,115200 console=tty1 root=PARTUUID=5e1d2c3b-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n',
    ),
    ['fsck.repair=yes', 'init=/usr/lib/raspberrypi-sys-mods/firstboot'],
  );
  t.deepEqual(guestArgs('root=/dev/mmcblk0p2 init=/usr/lib/raspi-config/init_resize.sh init=/bin/sh'), []);
  t.true(growsAtFirstBoot(['fsck.repair=yes', 'init=/usr/lib/raspberrypi-sys-mods/firstboot']));
  t.true(growsAtFirstBoot(['resize']));
  t.false(growsAtFirstBoot(['fsck.repair=yes']));
  t.deepEqual(
    guestArgs(
      'console=tty1 root=PARTUUID=x-02 rootfstype=ext4 rootwait resize splash plymouth.ignore-serial-consoles systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target ds=nocloud;i=abc',
    ),
    ['resize', 'systemd.run=/boot/firmware/firstrun.sh', 'systemd.run_success_action=reboot', 'systemd.unit=kernel-command-line.target', 'ds=nocloud;i=abc'],
  );
});

test('the emulator comes from the ELF header; binfmt registration carries the F flag', (t) => {
  t.is(elfArch(elfHeader('arm64')), 'arm64');
  t.is(elfArch(elfHeader('armhf')), 'armhf');
  t.is(elfArch(Buffer.from('#!/bin/sh\n')), 'unknown');
  const format =
    'package qemu-user-static\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nmagic \\x7f\\x45\\x4c\\x46\noffset 0\nmask \\xff\\xff\\xff\\xff\ncredentials no\nfix_binary yes\npreserve yes\n';
  t.is(registrationLine('qemu-aarch64', format), ':qemu-aarch64:M:0:\\x7f\\x45\\x4c\\x46:\\xff\\xff\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:FP');
});

test('partition tables: boot and root found, a truncated file and a root that is not last refused', (t) => {
  const json = (parts: Array<[number, number]>) => ({
    partitiontable: { label: 'dos', sectorsize: 512, partitions: parts.map(([start, size], i) => ({ node: `img${i + 1}`, start, size, type: '83' })) },
  });
  const fs = (kinds: Record<number, 'vfat' | 'ext4' | 'other'>) => (p: { offset: number }) => kinds[p.offset / 512]!;
  const layout = parseLayout(
    json([
      [8192, 1000],
      [9192, 2000],
    ]),
    11192 * 512,
    fs({ 8192: 'vfat', 9192: 'ext4' }),
  );
  t.like(layout, { label: 'dos', boot: 1, root: 2 });
  t.throws(
    () =>
      parseLayout(
        json([
          [8192, 1000],
          [9192, 2000],
        ]),
        10000 * 512,
        fs({ 8192: 'vfat', 9192: 'ext4' }),
      ),
    { message: /partition 2 ends at byte .* past the end of the file/ },
  );
  t.throws(
    () =>
      parseLayout(
        json([
          [8192, 1000],
          [9192, 2000],
          [11192, 100],
        ]),
        11292 * 512,
        fs({ 8192: 'vfat', 9192: 'ext4', 11192: 'other' }),
      ),
    { message: /is not the last partition/ },
  );
});

test('resizing in an sfdisk dump keeps ids and types, and drops what sfdisk must recompute', (t) => {
  const dump =
    'label: gpt\nlabel-id: X\ndevice: img\nunit: sectors\nfirst-lba: 2048\nlast-lba: 5000\nsector-size: 512\n\nimg1 : start=        8192, size=       81920, type=EBD0, uuid=A\nimg2 : start=       90112, size=      131072, type=0FC6, uuid=B\n';
  t.is(
    resizeInDump(dump, 2, 4096),
    'label: gpt\nlabel-id: X\nunit: sectors\nfirst-lba: 2048\nsector-size: 512\n\nimg1 : start=        8192, size=       81920, type=EBD0, uuid=A\nimg2 : start=       90112, size=4096, type=0FC6, uuid=B\n',
  );
});

test("root rewrite: the base's identity on mke2fs's command line, its state features left out; times clamped to the build's", (t) => {
  const header = [
    'Filesystem volume name:   rootfs',
    'Filesystem UUID:          0b9e2ba5-7f5a-4c1d-9f1e-6d8b8c1f2a3b',
    'Filesystem features:      has_journal ext_attr resize_inode dir_index filetype needs_recovery extent flex_bg sparse_super large_file huge_file dir_nlink extra_isize',
    'Default mount options:    user_xattr acl',
    'Inode count:              65536',
    'Block count:              262144',
    'Reserved block count:     13107',
    'Free blocks:              100000',
    'Free inodes:              20000',
    'First block:              0',
    'Block size:               4096',
    'Reserved GDT blocks:      63',
    'Blocks per group:         32768',
    'Inodes per group:         8192',
    'Inode blocks per group:   512',
    'Flex block group size:    16',
    'Inode size:               256',
    'Default directory hash:   half_md4',
    'Directory Hash Seed:      5d2f5c33-1111-2222-3333-444455556666',
    'Journal size:             32M',
  ].join('\n');
  const fs = parseExt4Identity(header);
  t.like(fs, { label: 'rootfs', inodeSize: 256, journalMiB: 32, flexGroups: 16, hashAlg: 'half_md4', mountOptions: ['user_xattr', 'acl'] });
  const args = mke2fsArgs(fs, 70000, '/tree', '/new');
  const arg = (flag: string) => args[args.indexOf(flag) + 1];
  t.is(arg('-U'), '0b9e2ba5-7f5a-4c1d-9f1e-6d8b8c1f2a3b');
  t.is(arg('-L'), 'rootfs');
  t.is(arg('-O'), 'none,has_journal,ext_attr,resize_inode,dir_index,filetype,extent,flex_bg,sparse_super,large_file,huge_file,dir_nlink,extra_isize');
  t.is(arg('-N'), String(3 * 8192), "the base's inodes per group, in 3 groups");
  t.is(arg('-m'), '5.00');
  t.is(arg('-J'), 'size=32');
  t.regex(arg('-E')!, /^hash_seed=5d2f5c33-1111-2222-3333-444455556666,nodiscard,/);
  t.deepEqual(args.slice(-4), ['-d', '/tree', '/new', '70000']);
  t.regex(mke2fsProfile(fs), /hash_alg = half_md4\n\tdefault_mntopts = user_xattr,acl\n/);

  const epoch = 1_750_000_000;
  t.deepEqual(
    timeFixes(
      [
        { ino: 2, atime: 100, mtime: 100, ctime: 100 }, // as in the base: nothing to do
        { ino: 12, atime: epoch + 50, mtime: 200, ctime: epoch + 60 }, // read and chmod-ed by the build
        { ino: 13, atime: epoch + 9, mtime: epoch + 9, ctime: epoch + 9 }, // written by the build
        { ino: 13, atime: epoch + 9, mtime: epoch + 9, ctime: epoch + 9 }, // its hard link
      ],
      epoch,
    ),
    ['sif <12> atime @200', `sif <12> ctime @${epoch}`, `sif <13> mtime @${epoch}`, `sif <13> atime @${epoch}`, `sif <13> ctime @${epoch}`],
  );
});

// dumpe2fs -h of a pimaster's root (1 KiB blocks, as mke2fs makes small filesystems).
const pimasterRoot: Ext4Geometry = {
  blockSize: 1024,
  blockCount: 1433601,
  freeBlocks: 182420,
  firstBlock: 1,
  blocksPerGroup: 8192,
  inodesPerGroup: 2048,
  inodeBlocksPerGroup: 512,
  reservedGdtBlocks: 249,
  inodeCount: 358400,
  freeInodes: 312448,
  features:
    'has_journal ext_attr resize_inode dir_index filetype extent 64bit flex_bg sparse_super large_file huge_file dir_nlink extra_isize metadata_csum'.split(
      ' ',
    ),
};

test('what an ext4 filesystem needs: its data plus the metadata of the groups it keeps', (t) => {
  // 175 groups: 514 blocks each of bitmaps and inode table, and 11 backups (groups 0, 1 and the powers of 3, 5, 7) of 1 + 11 + 249 blocks.
  t.is(metadataBlocks(pimasterRoot, 175), 175 * 514 + 11 * 261);
  const used = pimasterRoot.blockCount - pimasterRoot.freeBlocks;
  const fit = fittingBlocks(pimasterRoot, 0)!;
  // 22 groups fewer: their metadata (22 x 514, one backup of 261) is no longer needed.
  t.true(fit < used - 11_000 && fit > used - 12_000, `fit ${fit}, used ${used}`);
  t.is(fittingBlocks(pimasterRoot, 5000), fit + 5000);
  t.is(fittingBlocks({ ...pimasterRoot, features: [...pimasterRoot.features, 'sparse_super2'] }, 0), undefined);
  t.true(fittingBlocks({ ...pimasterRoot, freeInodes: 0 }, 0)! > 1 + 174 * 8192, 'every inode in use: all 175 groups stay');
});

test('dpkg status: installed packages with their source package; DEP-5 copyright files: their licence names', (t) => {
  const status = [
    'Package: libc6\nStatus: install ok installed\nArchitecture: arm64\nSource: glibc\nVersion: 2.36-9+deb12u4',
    'Package: libssl3\nStatus: install ok installed\nArchitecture: armhf\nSource: openssl (3.0.15-1~deb12u1)\nVersion: 3.0.15-1~deb12u1+b1',
    'Package: dash\nStatus: install ok installed\nArchitecture: arm64\nVersion: 0.5.12-2',
    'Package: gone\nStatus: deinstall ok config-files\nArchitecture: arm64\nVersion: 1',
  ].join('\n\n');
  t.deepEqual(parseDpkgStatus(status), [
    { name: 'dash', version: '0.5.12-2', arch: 'arm64', source: { name: 'dash', version: '0.5.12-2' } },
    { name: 'libc6', version: '2.36-9+deb12u4', arch: 'arm64', source: { name: 'glibc', version: '2.36-9+deb12u4' } },
    { name: 'libssl3', version: '3.0.15-1~deb12u1+b1', arch: 'armhf', source: { name: 'openssl', version: '3.0.15-1~deb12u1' } },
  ]);
  const dep5 =
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: x\n\nFiles: *\nCopyright: 2020 A\nLicense: GPL-2+\n\nFiles: debian/*\nLicense: BSD-3-clause or GPL-2+\n\nLicense: GPL-2+\n On Debian systems, see /usr/share/common-licenses/GPL-2.\n';
  t.deepEqual(dep5Licenses(dep5), ['GPL-2+', 'BSD-3-clause or GPL-2+']);
  t.deepEqual(dep5Licenses('This package was debianized by someone.\n\nLicense: GPL\n'), [], 'free-form: no names guessed');
});

test('os-release, fstab, environment names, templates', (t) => {
  t.like(parseOsRelease('ID=debian\nVERSION_CODENAME=bookworm\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'), {
    ID: 'debian',
    VERSION_CODENAME: 'bookworm',
    PRETTY_NAME: 'Debian GNU/Linux 12 (bookworm)',
  });
  t.is(bootMountOf('proc /proc proc defaults 0 0\nPARTUUID=1-01 /boot/firmware vfat defaults 0 2\n'), '/boot/firmware');
  t.is(bootMountOf('# /boot vfat\nPARTUUID=1-01 /boot vfat defaults 0 2\n'), '/boot');
  t.is(imageBaseName('/c/2020-08-20-raspios-buster-armhf-lite.zip'), '2020-08-20-raspios-buster-armhf-lite');
  t.is(imageBaseName('x/2024-11-19-raspios-bookworm-arm64-lite.img.xz'), '2024-11-19-raspios-bookworm-arm64-lite');
  t.is(renderTemplate('listen={{ ip-address }} if={{interface}}', { 'ip-address': '1.2.3.4', interface: 'eth0' }, 'f'), 'listen=1.2.3.4 if=eth0');
  t.throws(() => renderTemplate('{{ nope }}', {}, 'f.tmpl'), { message: /f\.tmpl: unknown template variable \{\{ nope \}\}/ });
});
