/**
 * Checks of the pimaster image, read-only: every fact of shared/piseduce.md checked in the output
 * of a real build (the CLI, a Raspberry Pi OS Lite look-alike over HTTP, stand-in PiSeduce
 * repositories), and what the build must undo or keep of the release it starts from. Booting it
 * is the verify tests' job.
 */

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { ADMIN_HASH } from '../fixtures/piseduce-repos.ts';
import { ImageReader } from './image-reader.ts';
import { type PimasterBase, type PimasterBuild, pimasterBuild } from './pimaster-build.ts';
import { sbomErrors } from './sbom.ts';

const PACKAGES =
  'dnsmasq git sqlite3 nfs-kernel-server python3-pip pv snmp vim iptables rsyslog parted rsync iputils-ping python3-flask python3-flask-login python3-sqlalchemy python3-cryptography python3-paramiko python3-influxdb python3-requests'.split(
    ' ',
  );
const NFS_CMDLINE =
  'nfsroot=48.48.0.254:/nfs/raspi,vers=4.1,proto=tcp console=serial0,115200 console=tty1 root=/dev/nfs rw ip=dhcp elevator=deadline fsck.repair=yes rootwait quiet splash plymouth.ignore-serial-consoles';
const DNSMASQ = `listen-address=48.48.0.254
interface=eth0
bind-interfaces
log-dhcp
enable-tftp
dhcp-boot=/bootcode.bin
tftp-root=/tftpboot
pxe-service=0,"Raspberry Pi Boot"
tftp-no-blocksize
no-hosts
dhcp-range=48.48.0.0,static,255.255.255.0
dhcp-option=23,64
`;

/** Query a sqlite database of the image on the host. */
async function sql(image: ImageReader, path: string, query: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'pimaster-db-'));
  try {
    await image.dump(path, join(dir, 'db'));
    const { stdout } = await execa('python3', [
      '-c',
      'import sqlite3,sys; print("\\n".join("|".join(map(str, r)) for r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2])))',
      join(dir, 'db'),
      query,
    ]);
    return stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const enabled = async (image: ImageReader, root: string, unit: string, target = 'multi-user.target') =>
  (await image.ls(`${root}/etc/systemd/system/${target}.wants`)).includes(unit);
const catOr = async (image: ImageReader, path: string, missing = '') => ((await image.exists(path)) ? image.cat(path) : missing);

/** Every check, for the build from one base (one test file each, so ava runs them apart). */
export function pimasterChecks(base: PimasterBase): void {
  let build: PimasterBuild;
  let image: ImageReader;
  const [release, arch] = base.split('-') as ['bookworm' | 'trixie', 'arm64' | 'armhf'];
  const it = (title: string, fn: (t: ExecutionContext) => Promise<void>) => test.serial(`${base}: ${title}`, fn);

  test.before(async () => {
    build ??= await pimasterBuild(base);
    image = await ImageReader.open(build.image);
  });
  test.after.always(async () => {
    await image?.close();
  });

  it('SSH is switched on by an empty ssh file on the boot partition', async (t) => {
    t.true((await image.bootFiles()).includes('ssh'));
  });

  it('the static address is a NetworkManager profile that wins over any other for eth0', async (t) => {
    const profile = '/etc/NetworkManager/system-connections/pimaster-eth0.nmconnection';
    t.like(await image.stat(profile), { mode: 0o600, uid: 0 });
    const text = await image.cat(profile);
    t.regex(text, /^interface-name=eth0$/m);
    t.regex(text, /^autoconnect-priority=999$/m);
    t.regex(text, /^method=manual\naddress1=48\.48\.0\.254\/24$/m);
    t.notRegex(await catOr(image, '/etc/dhcpcd.conf'), /static ip_address/, 'dhcpcd (a dependency of cloud-init on trixie) is not what configures the address');
  });

  it("Raspberry Pi OS's first-boot rename is cancelled: userconfig off, getty@tty1 back, no SSH banner", async (t) => {
    t.false(await enabled(image, '', 'userconfig.service'));
    t.true(await enabled(image, '', 'getty@tty1.service', 'getty.target'));
    t.false(await image.exists('/etc/ssh/sshd_config.d/rename_user.conf'));
    t.true(await image.exists('/usr/bin/cancel-rename'), "the release's own tools stay");
  });

  it("the image keeps the release's apt sources and foreign architecture; none of the build's files stay", async (t) => {
    const sources = release === 'trixie' ? '/etc/apt/sources.list.d/debian.sources' : '/etc/apt/sources.list';
    t.regex(
      await image.cat(sources),
      arch === 'armhf' ? /http:\/\/raspbian\.raspberrypi\.com\/raspbian\// : /http:\/\/deb\.debian\.org\/debian\/?(\s|$)/m,
      "not the build's --apt-mirror",
    );
    const foreign = (await catOr(image, '/var/lib/dpkg/arch')).split('\n').filter((a) => a && a !== arch);
    t.deepEqual(foreign, arch === 'arm64' ? ['armhf'] : [], 'arm64 images keep armhf as a foreign arch');
    for (const root of ['', '/nfs/raspi']) {
      for (const file of ['/usr/sbin/policy-rc.d', '/etc/dpkg/dpkg.cfg.d/zz-build-image', '/etc/apt/apt.conf.d/zz-build-image'])
        t.false(await image.exists(`${root}${file}`), `${root}${file}`);
      t.deepEqual(
        (await image.ls(`${root}/etc`)).filter((f) => f.endsWith('.build-image-saved')),
        [],
        `${root}/etc`,
      );
    }
  });

  it('host name pimaster in /etc/hostname and /etc/hosts', async (t) => {
    t.is(await image.cat('/etc/hostname'), 'pimaster\n');
    t.regex(await image.cat('/etc/hosts'), /^127\.0\.1\.1\s+pimaster$/m);
  });

  it("root logs in with the build's key: /root/.ssh 0700, authorized_keys 0600, root:root", async (t) => {
    const dir = await image.stat('/root/.ssh');
    t.like(dir, { type: 'directory', mode: 0o700, uid: 0, gid: 0 });
    t.like(await image.stat('/root/.ssh/authorized_keys'), { mode: 0o600, uid: 0, gid: 0 });
    t.is((await image.cat('/root/.ssh/authorized_keys')).trim(), readFileSync(`${build.sshKey}.pub`, 'utf8').trim());
  });

  it('sshd: UsePAM no, and root has no password but is not locked', async (t) => {
    t.regex(await image.cat('/etc/ssh/sshd_config'), /^UsePAM no$/m);
    t.notRegex(await image.cat('/etc/ssh/sshd_config'), /^UsePAM yes/m);
    t.regex(await image.cat('/etc/shadow'), /^root:\*:/m);
  });

  it('no pi user, no home, no known password', async (t) => {
    t.notRegex(await image.cat('/etc/passwd'), /^pi:/m);
    t.notRegex(await image.cat('/etc/shadow'), /^pi:/m);
    t.false(await image.exists('/home/pi'));
  });

  it('every package of the install guide and the Python modules are installed', async (t) => {
    const status = await image.cat('/var/lib/dpkg/status');
    for (const name of PACKAGES) t.regex(status, new RegExp(`^Package: ${name}\\nStatus: install ok installed$`, 'm'), name);
  });

  it('IP forwarding, and NAT on the uplink by an enabled unit', async (t) => {
    t.regex(await image.cat('/etc/sysctl.d/90-pimaster-forwarding.conf'), /^net\.ipv4\.ip_forward=1$/m);
    t.regex(await image.cat('/etc/systemd/system/pimaster-nat.service'), /iptables -t nat -A POSTROUTING -o wlan0 -j MASQUERADE/);
    t.true(await enabled(image, '', 'pimaster-nat.service'));
  });

  it("the root grows to its card at the first boot, by the release's own mechanism, nothing else", async (t) => {
    const cmdline = await image.bootFile('cmdline.txt');
    t.regex(cmdline, /root=PARTUUID=\S+ rootfstype=ext4/);
    if (release === 'trixie') {
      t.regex(cmdline, /(^| )resize( |$)/);
      t.notRegex(cmdline, /init=/);
    } else {
      t.regex(cmdline, / init=\/usr\/lib\/raspberrypi-sys-mods\/firstboot( |$)/);
      t.notRegex(cmdline, /(^| )resize( |$)/);
    }
  });

  it('dphys-swapfile is skipped, not failed, on a root without room for its swap file', async (t) => {
    t.regex(await image.cat('/etc/systemd/system/dphys-swapfile.service.d/pimaster.conf'), /^ExecCondition=\/usr\/local\/sbin\/pimaster-swap-room$/m);
    t.like(await image.stat('/usr/local/sbin/pimaster-swap-room'), { mode: 0o755 });
  });

  it(`clean: no wifi network, no host keys, no key pairs, no known_hosts, no leases, no logs, machine-id as the release ships it (${release === 'trixie' ? 'uninitialized' : 'empty'})`, async (t) => {
    t.notRegex(await catOr(image, '/etc/wpa_supplicant/wpa_supplicant.conf'), /network=|psk=/);
    t.deepEqual(
      (await image.ls('/etc/ssh')).filter((f) => f.startsWith('ssh_host_')),
      [],
    );
    t.deepEqual((await image.ls('/root/.ssh')).sort(), ['authorized_keys']);
    t.false(await image.exists('/var/lib/misc/dnsmasq.leases'));
    t.is(await image.cat('/etc/machine-id'), release === 'trixie' ? 'uninitialized\n' : '', 'a trixie first boot counts as one (ConditionFirstBoot)');
    for (const dir of ['/var/log', '/var/log/apt'])
      t.deepEqual(
        (await image.ls(dir)).filter((f) => /\.log$|^syslog|^messages/.test(f)),
        [],
        dir,
      );
  });

  if (release === 'trixie') {
    it("cloud-init makes no default user unless the boot partition's user-data names one", async (t) => {
      t.regex(await image.cat('/etc/cloud/cloud.cfg.d/90-pimaster.cfg'), /^users: \[\]$/m);
      t.true(await enabled(image, '', 'rpi-resize.service'), "the release's first-boot growth stays (it grows nothing without resize on the command line)");
    });
  }

  it('the NFS root: hostname nfspi, empty fstab, no host keys or key pairs of its own yet, boot_dir and fs_dir, pv, rsh -> ssh', async (t) => {
    t.is(await image.cat('/nfs/raspi/etc/hostname'), 'nfspi\n');
    t.is(await image.cat('/nfs/raspi/etc/fstab'), '');
    t.deepEqual(
      (await image.ls('/nfs/raspi/etc/ssh')).filter((f) => f.startsWith('ssh_host_')),
      [],
    );
    t.deepEqual(await image.ls('/nfs/raspi/root/.ssh'), []);
    t.like(await image.stat('/nfs/raspi/root/boot_dir'), { type: 'directory' });
    t.like(await image.stat('/nfs/raspi/root/fs_dir'), { type: 'directory' });
    t.like(await image.stat('/nfs/raspi/usr/bin/pv'), { type: 'regular' });
    t.like(await image.stat('/nfs/raspi/usr/bin/rsh'), { type: 'symlink', link: 'ssh' });
    t.is(await image.cat('/nfs/raspi/etc/machine-id'), '');
  });

  it("the NFS root has no static address, starts sshd itself, and runs none of the pimaster's services", async (t) => {
    t.deepEqual(
      (await image.ls('/nfs/raspi/etc/NetworkManager/system-connections')).filter((f) => f.startsWith('pimaster-')),
      [],
    );
    t.true(await enabled(image, '/nfs/raspi', 'ssh.service'));
    for (const unit of [
      'dnsmasq.service',
      'nfs-server.service',
      'pimaster-firstboot.service',
      'pimaster-nat.service',
      'pimaster-firewall.service',
      'webui.service',
      'agent_api.service',
      'agent_exec.service',
    ]) {
      t.false(await enabled(image, '/nfs/raspi', unit), unit);
    }
    t.false(await image.exists('/nfs/raspi/root/piseduce_webui'));
    t.false(await image.exists('/nfs/raspi/root/environments'));
    t.false(await image.exists('/nfs/raspi/tftpboot'));
  });

  it('the NFS root is the image as shipped: its own DNS file and preload, no build files; nothing grows it, swaps on it, asks for a user, or runs cloud-init', async (t) => {
    t.is(await image.cat('/nfs/raspi/etc/resolv.conf'), await image.cat('/etc/resolv.conf'), "the image's resolv.conf, not the build host's");
    t.is(await catOr(image, '/nfs/raspi/etc/ld.so.preload', 'none'), await catOr(image, '/etc/ld.so.preload', 'none'));
    if (arch === 'armhf') t.regex(await image.cat('/nfs/raspi/etc/ld.so.preload'), /libarmmem/);
    t.false(await image.exists('/nfs/raspi/etc/init.d/resize2fs_once'), 'resize2fs_once would fail at every node boot');
    if (release === 'bookworm') t.true(await image.exists('/etc/init.d/resize2fs_once'), 'the pimaster keeps it (it grows its own root once)');
    for (const unit of ['rpi-resize.service', 'userconfig.service', 'regenerate_ssh_host_keys.service', 'dphys-swapfile.service'])
      t.false(await enabled(image, '/nfs/raspi', unit), unit);
    if (release === 'bookworm') t.true(await enabled(image, '', 'dphys-swapfile.service'), 'the pimaster keeps its swap file');
    if (release === 'trixie') t.true(await image.exists('/nfs/raspi/etc/cloud/cloud-init.disabled'));
  });

  it('/etc/exports exports /nfs read-write to the cluster subnet only; the firewall and the services gated on the first boot are in place', async (t) => {
    t.regex(await image.cat('/etc/exports'), /^\/nfs 48\.48\.0\.0\/24\(rw,sync,no_subtree_check,no_root_squash\)$/m);
    t.notRegex(await image.cat('/etc/exports'), /^\/nfs \*/m);
    t.regex(await image.cat('/etc/default/pimaster'), /^CLUSTER_INTERFACE=eth0\nCLUSTER_SUBNET=48\.48\.0\.0\/24$/m);
    t.true(await enabled(image, '', 'pimaster-firewall.service'));
    for (const unit of ['webui', 'agent_api', 'agent_exec']) {
      t.regex(
        await image.cat(`/etc/systemd/system/${unit}.service.d/pimaster-firstboot.conf`),
        /^ConditionPathExists=\/var\/lib\/pimaster\/firstboot\/done$/m,
        unit,
      );
    }
  });

  it("TFTP: the base image's bootcode.bin, and a copy of the boot partition without the EEPROM files", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'pimaster-tftp-'));
    try {
      await image.dump('/tftpboot/bootcode.bin', join(dir, 'bootcode.bin'));
      t.is((await execa('sha256sum', [join(dir, 'bootcode.bin')])).stdout.split(' ')[0], build.baseBootcodeSha256);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const files = await image.ls('/tftpboot/rpiboot_uboot');
    for (const f of ['config.txt', 'start4.elf', 'overlays', 'cmdline.txt', arch === 'arm64' ? 'kernel8.img' : 'kernel7l.img']) t.true(files.includes(f), f);
    for (const f of ['bootcode.bin', 'pieeprom.upd', 'pieeprom.sig', 'recovery.bin', 'ssh', 'user-data', 'meta-data', 'network-config'])
      t.false(files.includes(f), f);
    t.is((await image.cat('/tftpboot/rpiboot_uboot/cmdline.txt')).trim(), NFS_CMDLINE);
  });

  it('nodes boot without an initramfs (klibc nfsmount speaks NFS v2/v3 only; cmdline.txt asks 4.1)', async (t) => {
    t.deepEqual(
      (await image.ls('/tftpboot/rpiboot_uboot')).filter((f) => f.startsWith('initramfs')),
      [],
    );
    const config = await image.cat('/tftpboot/rpiboot_uboot/config.txt');
    t.notRegex(config, /^\s*(auto_initramfs=1|initramfs\s)/m);
    t.regex(config, /^auto_initramfs=0$/m);
    t.regex(await image.bootFile('config.txt'), /^auto_initramfs=1$/m, 'the pimaster itself boots as the release does');
  });

  it('dnsmasq.conf is exactly the one the agent reads and edits; rsyslog writes the traditional format', async (t) => {
    t.is(await image.cat('/etc/dnsmasq.conf'), DNSMASQ);
    t.regex(await image.cat('/etc/rsyslog.d/00-pimaster-traditional.conf'), /^\$ActionFileDefaultTemplate RSYSLOG_TraditionalFileFormat$/m);
    t.regex(await image.cat('/etc/systemd/system/dnsmasq.service.d/pimaster.conf'), /^Restart=on-failure$/m);
    t.true(await enabled(image, '', 'dnsmasq.service'));
    t.true(await enabled(image, '', 'nfs-server.service'));
  });

  it('the web UI and the agent are checked out at their pinned refs, configured, their databases made', async (t) => {
    t.is((await image.cat('/root/piseduce_webui/.git/HEAD')).trim(), build.webuiRef);
    t.is((await image.cat('/root/piseduce_agent/.git/HEAD')).trim(), build.agentRef);
    const agent = JSON.parse(await image.cat('/root/piseduce_agent/config_agent.json')) as Record<string, unknown>;
    t.like(agent, {
      port_number: 8090,
      node_type: 'raspberry',
      key_file: 'secret.key',
      db_url: 'sqlite:///test-agent.db',
      env_path: '/root/environments/',
      ip: '48.48.0.254',
    });
    const webui = JSON.parse(await image.cat('/root/piseduce_webui/config_webui.json')) as Record<string, unknown>;
    t.like(webui, { port_number: 9000, db_url: 'sqlite:///test-ui.db' });
    t.is(await sql(image, '/root/piseduce_webui/test-ui.db', 'select email, is_admin from user'), 'admin@piseduce.fr|1');
    t.regex(
      await sql(image, '/root/piseduce_agent/test-agent.db', "select sql from sqlite_master where name = 'rasp_environment'"),
      /img_size INTEGER[\s\S]*sector_start INTEGER/,
    );
  });

  it('the web UI and agent units are installed and enabled, after the first-boot unit', async (t) => {
    for (const unit of ['webui.service', 'agent_api.service', 'agent_exec.service', 'pimaster-firstboot.service']) t.true(await enabled(image, '', unit), unit);
    t.regex(
      await image.cat('/etc/systemd/system/webui.service'),
      /WorkingDirectory=\/root\/piseduce_webui\nExecStart=\/usr\/bin\/python3 webui\.py config_webui\.json/,
    );
    t.regex(await image.cat('/etc/systemd/system/pimaster-firstboot.service'), /^Before=.*webui\.service agent_api\.service agent_exec\.service/m);
    t.regex(
      await image.cat('/etc/systemd/system/pimaster-firstboot.service'),
      /^After=.*regenerate_ssh_host_keys\.service/m,
      "not beside the release's own key regeneration",
    );
  });

  it('the environment is stored as <image>.img.tar.gz and registered with its real size and second partition', async (t) => {
    t.deepEqual(await image.ls('/root/environments'), ['tiny-env.img.tar.gz']);
    const { stdout } = await execa('sfdisk', ['--json', build.environment.img]);
    const start = (JSON.parse(stdout) as { partitiontable: { partitions: Array<{ start: number }> } }).partitiontable.partitions[1]!.start;
    const size = Number((await execa('stat', ['-c', '%s', build.environment.img])).stdout);
    t.is(
      await sql(image, '/root/piseduce_agent/test-agent.db', 'select name, img_name, img_size, sector_start, ssh_user, web, state from rasp_environment'),
      `tiny_env|tiny-env.img.tar.gz|${size}|${start}|root|0|available`,
    );
  });

  it('nothing unique to a device is in the image: no secret.key, placeholder secrets, the published admin hash only until first boot', async (t) => {
    t.false(await image.exists('/root/piseduce_webui/secret.key'));
    t.false(await image.exists('/root/piseduce_agent/secret.key'));
    t.is((JSON.parse(await image.cat('/root/piseduce_webui/config_webui.json')) as { pwd_secret_key: string }).pwd_secret_key, 'made-at-first-boot');
    t.deepEqual((JSON.parse(await image.cat('/root/piseduce_agent/config_agent.json')) as { auth_token: string[] }).auth_token, ['made-at-first-boot']);
    t.is(
      await sql(image, '/root/piseduce_webui/test-ui.db', "select password from user where email = 'admin@piseduce.fr'"),
      ADMIN_HASH,
      'replaced by pimaster-firstboot',
    );
    t.like(await image.stat('/usr/local/sbin/pimaster-firstboot'), { mode: 0o755 });
    t.false(await image.exists('/root/piseduce-admin-password'));
  });

  if (base === 'bookworm-arm64') {
    it('build-time settings on the finished pimaster (--timezone, --packages, --disable), the NFS root as it was', async (t) => {
      t.is((await image.stat('/etc/localtime')).link, '/usr/share/zoneinfo/Europe/Paris');
      t.is((await image.cat('/etc/timezone')).trim(), 'Europe/Paris');
      t.regex(await image.cat('/var/lib/dpkg/status'), /^Package: tree\nStatus: install ok installed$/m);
      t.false(await enabled(image, '', 'apt-daily.timer', 'timers.target'));
      t.true(await enabled(image, '/nfs/raspi', 'apt-daily.timer', 'timers.target'), 'the NFS root was made before the user layer');
      t.deepEqual(
        await image.ls('/var/lib/apt/lists').then((l) => l.filter((f) => f !== 'lock' && f !== 'partial' && f !== 'auxfiles')),
        [],
        'no package indexes shipped',
      );
    });
  }

  it('the manifest names the base, the release, the arch and the PiSeduce commits', async (t) => {
    const m = build.manifest as { release: string; arch: string; sources: Record<string, { commit: string }>; packages: Array<{ name: string }> };
    t.is(m.release, release);
    t.is(m.arch, arch);
    t.is(m.sources.piseduce_webui!.commit, build.webuiRef);
    t.true(m.packages.some((p) => p.name === 'dnsmasq'));
  });

  it("the SBOM beside the image is valid CycloneDX 1.6 and lists the pimaster's packages, with licences from their copyright files", async (t) => {
    const text = readFileSync(join(dirname(build.image), (build.manifest as { sbom: { file: string } }).sbom.file), 'utf8');
    t.is(await sbomErrors(text), null);
    const components = (JSON.parse(text) as { components: Array<{ name: string; purl: string; licenses?: unknown[] }> }).components;
    const os = release === 'bookworm' && arch === 'armhf' ? 'raspbian' : 'debian';
    for (const name of ['dnsmasq', 'nfs-kernel-server', 'python3-flask', 'sqlite3', 'openssh-server']) {
      const c = components.find((x) => x.name === name);
      t.truthy(c, name);
      t.true(c?.purl.startsWith(`pkg:deb/${os}/${name}@`), c?.purl);
    }
    const licensed = components.filter((c) => c.licenses?.length).length;
    t.true(licensed > components.length / 2, `${licensed} of ${components.length} packages with a licence`);
  });
}
