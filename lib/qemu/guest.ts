/**
 * The image booted under QEMU system emulation (`-M virt`): on KVM with the host's CPU for an
 * arm64 guest on an arm64 host whose /dev/kvm opens, else on TCG's software CPU (see
 * accelerationFor). A virtio disk on the throw-away copy, user networking with `restrict=on` (the
 * guest reaches nothing outside) on the image's own subnet so its static address works, chosen
 * guest ports forwarded from 127.0.0.1 only, the serial console in a log file. The QEMU process is
 * ended by the clean-up stack.
 */
import { closeSync, existsSync, openSync, readFileSync, statSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { hostArch } from '../chroot/emulation.ts';
import type { Arch } from '../image/arch.ts';
import { intToIpv4, ipv4ToInt } from '../net.ts';
import type { ClusterLink } from './cluster-link.ts';
import type { StaticAddress } from './facts.ts';
import type { GuestArch, GuestKernel } from './kernel.ts';

export interface GuestSpec {
  arch: GuestArch;
  console: string;
  memoryMiB: number;
  /**
   * An image booted with a kernel and initrd given to QEMU, or a firmware with no disk (a node
   * booting from the network: U-Boot).
   */
  boot: { image: string; rootPartition: number; kernel: GuestKernel; bootArgs: readonly string[] } | { firmware: string };
  /**
   * QEMU's user network (restrict=on: it reaches nothing outside), with guest TCP `ports` (22
   * first) forwarded from 127.0.0.1; on the subnet of the image's static `address` when the
   * image's own interface is on it.
   */
  user?: { address?: StaticAddress; ports: readonly number[] };
  /** The cluster's Ethernet (a bridge in a namespace of its own, see cluster-link.ts): the first NIC. */
  cluster?: { link: ClusterLink; mac: string };
  /** A raw image the guest sees as its SD card, /dev/mmcblk0 (sdhci-pci and sd-card, as on a Pi). */
  sdCard?: string;
}

export interface Guest {
  /** Guest port -> port on 127.0.0.1. */
  hostPort: Map<number, number>;
  /** Set once QEMU has exited. */
  exit?: string;
  stopped: Promise<void>;
  pid: number;
  /** Where this boot's output starts in the console file. */
  consoleFrom: number;
  /** Cut the power: QEMU ends at once. */
  stop(): Promise<void>;
  /** How QEMU runs the guest's CPU: `QEMU: KVM, host CPU` or `QEMU: TCG (software CPU, cortex-a72)`. */
  acceleration: string;
}

/** The machine, and the software CPU TCG emulates (a Pi 4's for arm64, a 32-bit one for armhf). */
const MACHINE: Record<GuestArch, { qemu: string; machine: string; cpu: string }> = {
  arm64: { qemu: 'qemu-system-aarch64', machine: 'virt', cpu: 'cortex-a72' },
  armhf: { qemu: 'qemu-system-arm', machine: 'virt,highmem=off', cpu: 'cortex-a15' },
};

/**
 * QEMU's machine, accelerator and CPU arguments, and the line the log and verify's summary show.
 * KVM with the host's CPU for an arm64 guest on an arm64 host whose /dev/kvm opens; TCG otherwise.
 * An armhf guest stays on TCG even on an arm64 KVM host: KVM would need a CPU that runs AArch32 at
 * EL1 (the Pi 5's does, most arm64 servers' do not) and `-cpu host,aarch64=off` under
 * qemu-system-aarch64, a second way to boot armhf that nothing here tests.
 */
export function accelerationFor(host: Arch, guest: GuestArch, kvmUsable: boolean): { args: string[]; line: string } {
  const { machine, cpu } = MACHINE[guest];
  if (guest === 'arm64' && host === 'arm64' && kvmUsable) {
    // The host's own interrupt controller: the Pi 5's is a GICv2, arm64 servers' a GICv3 that may not emulate v2 (virt's default).
    return { args: ['-M', `${machine},gic-version=max`, '-accel', 'kvm', '-cpu', 'host'], line: 'QEMU: KVM, host CPU' };
  }
  return { args: ['-M', machine, '-accel', 'tcg', '-cpu', cpu], line: `QEMU: TCG (software CPU, ${cpu})` };
}

/** Whether /dev/kvm exists and opens read-write (as QEMU opens it: root, or the kvm group). */
export function kvmUsable(device = '/dev/kvm'): boolean {
  try {
    closeSync(openSync(device, 'r+'));
    return true;
  } catch {
    return false;
  }
}

/** A TCP port on 127.0.0.1 that is free now (the kernel's pick). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * QEMU's user network on the image's subnet: its gateway and DNS addresses (x.x.x.2 and .3 by
 * default) moved to two others when the image's own address is one of them.
 */
export function userNetwork(address: StaticAddress | undefined): string[] {
  if (!address) return [];
  const network = ipv4ToInt(address.network);
  const [host, dns] = [1, 2, 3, 4]
    .map((i) => network + i)
    .filter((n) => n !== ipv4ToInt(address.address))
    .slice(1, 3) as [number, number];
  return [`net=${address.network}/${address.prefix}`, `host=${intToIpv4(host)}`, `dns=${intToIpv4(dns)}`];
}

/** Raspberry Pi OS bookworm's first boot: verify's initrd grows the root for it, as the Pi's initramfs does. */
export const FIRSTBOOT_INIT = 'init=/usr/lib/raspberrypi-sys-mods/firstboot';

/**
 * The image's kernel arguments that the boot under QEMU keeps: those user space reads
 * (`systemd.run=` of Raspberry Pi Imager, `ds=nocloud`, `resize`, ...) and bookworm's first-boot
 * init. Not where the root is, the consoles, another init= (buster's init_resize.sh needs the
 * Pi's firmware), nor quiet/splash (the console log is what tells what happened).
 */
export function guestArgs(cmdline: string): string[] {
  const dropped = /^(root|rootfstype|console|init|plymouth\.[^=]*)=|^(quiet|splash|rootwait|ro|rw|plymouth\.ignore-serial-consoles)$/;
  return cmdline
    .trim()
    .split(/\s+/)
    .filter((arg) => arg && (arg === FIRSTBOOT_INIT || !dropped.test(arg)));
}

/** Whether the image grows its root at the first boot, by its release's own mechanism. */
export const growsAtFirstBoot = (args: readonly string[]) => args.includes('resize') || args.includes(FIRSTBOOT_INIT);

export function consoleTail(file: string, from = 0, lines = 25): string {
  if (!existsSync(file)) return '(no console output)';
  // Without colours and hyperlinks (systemd's status lines have both).
  const text = readFileSync(file)
    .subarray(from)
    .toString('utf8')
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, '')
    .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
    .replace(/\r/g, '');
  const tail = text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .slice(-lines);
  return tail.length ? tail.map((l) => `  | ${l}`).join('\n') : '(no console output)';
}

/**
 * The guest is untrusted and QEMU runs as root: a seccomp filter (no obsolete system calls, no
 * spawning processes, no changes to resource limits) and, once QEMU has opened its files and
 * sockets, the unprivileged user nobody. QEMU 9 renamed -runas to -run-with user=.
 */
async function sandbox(ctx: BuildContext, qemu: string): Promise<string[]> {
  let major = qemuMajor.get(qemu);
  if (major === undefined) {
    const { stdout } = await ctx.run(qemu, ['--version']);
    major = Number(/version (\d+)\./.exec(stdout)?.[1] ?? 0);
    qemuMajor.set(qemu, major);
  }
  return ['-sandbox', 'on,obsolete=deny,spawn=deny,resourcecontrol=deny', ...(major >= 9 ? ['-run-with', 'user=nobody'] : ['-runas', 'nobody'])];
}
/** QEMU's major version, asked once per binary (a verify --node run starts three guests). */
const qemuMajor = new Map<string, number>();

/**
 * Start QEMU and wait until it has opened its forwarded ports (and its tap, moved onto the cluster
 * link). A port freePort found may be taken by another program before QEMU binds it, and QEMU then
 * stops at once ("Could not set up host forwarding rule"): it is started again on other ports.
 */
export async function startGuest(ctx: BuildContext, spec: GuestSpec): Promise<Guest> {
  for (let attempt = 1; ; attempt++) {
    const hostPort = new Map<number, number>();
    for (const port of spec.user?.ports ?? []) hostPort.set(port, await freePort());
    const { guest, tap } = await launch(ctx, spec, hostPort);
    const exit = await listening(ctx, guest);
    if (exit === undefined) {
      if (spec.cluster && tap) await spec.cluster.link.join(ctx, tap, () => guest.exit);
      return guest;
    }
    if (!/host forwarding/i.test(exit) || attempt === 3) throw new UserError(`QEMU stopped as it started (${exit})`);
    ctx.log.line(`QEMU could not bind a forwarded port (${exit}); starting it again on other ports`);
  }
}

/** Undefined once every forwarded port accepts a connection; QEMU's exit reason if it stops first. */
async function listening(ctx: BuildContext, guest: Guest): Promise<string | undefined> {
  for (let i = 0; i < 200; i++) {
    if (guest.exit) return guest.exit;
    const open = await Promise.all([...guest.hostPort.values()].map((port) => accepts(port)));
    // The exit is looked at again: a port may answer for a program that took it from QEMU.
    if (open.every(Boolean)) return guest.exit;
    await sleep(50, undefined, { signal: ctx.signal });
  }
  return guest.exit;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

async function launch(ctx: BuildContext, spec: GuestSpec, hostPort: Map<number, number>): Promise<{ guest: Guest; tap?: string }> {
  const { qemu } = MACHINE[spec.arch];
  const acceleration = accelerationFor(hostArch(), spec.arch, kvmUsable());
  ctx.log.line(acceleration.line);
  const nics: string[] = [];
  // No option ROM on any NIC: the kernel or U-Boot is loaded directly, and the ROMs' package (ipxe-qemu) may be absent.
  const tap = spec.cluster?.link.tapName();
  if (spec.cluster) {
    nics.push('-netdev', `tap,id=cluster,ifname=${tap},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=cluster,mac=${spec.cluster.mac},romfile=`);
  }
  if (spec.user) {
    const guestIp = spec.user.address?.address ?? '';
    const forwards = [...hostPort].map(([guest, host]) => `hostfwd=tcp:127.0.0.1:${host}-${guestIp}:${guest}`);
    nics.push(
      '-netdev',
      ['user', 'id=net', 'restrict=on', ...userNetwork(spec.user.address), ...forwards].join(','),
      '-device',
      'virtio-net-pci,netdev=net,romfile=',
    );
  }
  const boot =
    'firmware' in spec.boot
      ? ['-bios', spec.boot.firmware]
      : [
          '-kernel',
          spec.boot.kernel.kernel,
          '-initrd',
          spec.boot.kernel.initrd,
          // eth0 as on a Pi; a panic ends QEMU (-no-reboot) instead of hanging until the timeout.
          '-append',
          [`root=/dev/vda${spec.boot.rootPartition}`, 'ro', 'rootwait', 'console=ttyAMA0', 'net.ifnames=0', 'panic=-1', ...spec.boot.bootArgs].join(' '),
          '-drive',
          `file=${spec.boot.image},format=raw,if=none,id=disk,cache=unsafe`,
          '-device',
          'virtio-blk-pci,drive=disk',
        ];
  const args = [
    ...acceleration.args,
    ...(await sandbox(ctx, qemu)),
    '-smp',
    '2',
    '-m',
    String(spec.memoryMiB),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-monitor',
    'none',
    '-no-reboot',
    // Appended to: the consoles of several boots (a guest that reboots is started again) in one file.
    '-chardev',
    `file,id=console,path=${spec.console},append=on`,
    '-serial',
    'chardev:console',
    ...boot,
    ...(spec.sdCard ? ['-device', 'sdhci-pci', '-drive', `file=${spec.sdCard},format=raw,if=none,id=sd,cache=unsafe`, '-device', 'sd-card,drive=sd'] : []),
    ...nics,
    '-device',
    'virtio-rng-pci',
  ];
  const subprocess = ctx.commands.spawn(qemu, args);
  subprocess.stdout.on('data', (chunk: Buffer) => ctx.log.write(chunk.toString()));
  const guest: Guest = {
    hostPort,
    pid: subprocess.pid ?? 0,
    stopped: Promise.resolve(),
    consoleFrom: existsSync(spec.console) ? statSync(spec.console).size : 0,
    acceleration: acceleration.line,
    async stop() {
      if (guest.exit) return;
      subprocess.kill('SIGTERM');
      await guest.stopped;
    },
  };
  guest.stopped = subprocess.then((result) => {
    guest.exit = result.exitCode !== undefined ? `exit code ${result.exitCode}` : `signal ${result.signal}`;
    if (result.exitCode) guest.exit += `: ${String(result.stderr).trim().split('\n').at(-1)}`;
  });
  ctx.defer(`stop the guest (QEMU pid ${guest.pid})`, () => guest.stop());
  return { guest, tap };
}

export interface SshTarget {
  key: string;
  user: string;
  port: number;
}

export function sshArgs(target: SshTarget, command: string): string[] {
  return [
    '-i',
    target.key,
    '-p',
    String(target.port),
    '-o',
    'BatchMode=yes',
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    'UserKnownHostsFile=/dev/null',
    '-o',
    'LogLevel=ERROR',
    '-o',
    'ConnectTimeout=20',
    '-o',
    'ServerAliveInterval=10',
    `${target.user}@127.0.0.1`,
    '--',
    command,
  ];
}

/** Whether an SSH server answers on the port with its banner (QEMU accepts the connection itself). */
function sshBanner(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(5000, () => done(false));
    socket.once('data', (data) => done(data.toString('latin1').startsWith('SSH-')));
    socket.once('error', () => done(false));
    socket.once('close', () => done(false));
  });
}

/**
 * Wait until the guest lets the key in: 'up'. 'rebooted' when the guest restarted itself before
 * (QEMU runs with -no-reboot: the caller starts it again, as the Pi's firmware would boot again).
 * Fails with the console's last lines when QEMU stops otherwise, when the timeout passes, or when
 * sshd answers but keeps refusing the key for a minute.
 */
export async function waitForSsh(
  ctx: BuildContext,
  guest: Guest,
  target: SshTarget,
  wait: { deadline: number; timeoutS: number },
  console: string,
): Promise<'up' | 'rebooted'> {
  const { deadline, timeoutS } = wait;
  let refusedSince: number | undefined;
  let lastError = '';
  while (Date.now() < deadline) {
    ctx.signal.throwIfAborted();
    if (guest.exit) {
      const output = existsSync(console) ? readFileSync(console).subarray(guest.consoleFrom).toString('utf8') : '';
      if (/reboot: Restarting system/.test(output)) return 'rebooted';
      throw new UserError(`the guest stopped before SSH answered (QEMU ${guest.exit}); its console's last lines:\n${consoleTail(console, guest.consoleFrom)}`);
    }
    if (await sshBanner(target.port)) {
      const r = await ctx.run('ssh', sshArgs(target, 'true'), { reject: false, timeoutMs: 60_000 });
      if (r.exitCode === 0) return 'up';
      lastError = r.stderr.trim().split('\n').at(-1) ?? '';
      refusedSince ??= Date.now();
      if (Date.now() - refusedSince > 60_000) {
        throw new UserError(
          `the guest's sshd refuses ${target.user} with ${target.key} (${lastError}): pass the private half of a key the image authorizes (--ssh-key), or --user`,
        );
      }
    }
    await sleep(2000, undefined, { signal: ctx.signal });
  }
  throw new UserError(
    `SSH on the guest did not answer within ${timeoutS} s${lastError ? ` (${lastError})` : ''} (raise --timeout if it was still booting); its console's last lines:\n${consoleTail(console, guest.consoleFrom)}`,
  );
}

/** Power the guest off from inside and wait for QEMU to end (the clean-up stack kills it otherwise). */
export async function shutDown(ctx: BuildContext, guest: Guest, target: SshTarget, waitS = 90): Promise<boolean> {
  if (guest.exit) return true;
  await ctx.run('ssh', sshArgs(target, 'systemctl poweroff --no-block || poweroff'), { reject: false, timeoutMs: 30_000 });
  const ended = await Promise.race([guest.stopped.then(() => true), sleep(waitS * 1000, false, { signal: ctx.signal })]);
  return ended;
}
