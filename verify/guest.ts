/**
 * The image booted under QEMU system emulation (`-M virt`, software CPU): a virtio disk on the
 * throw-away copy, user networking with `restrict=on` (the guest reaches nothing outside) on the
 * image's own subnet so its static address works, chosen guest ports forwarded from 127.0.0.1
 * only, the serial console in a log file. The QEMU process is ended by the clean-up stack.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../pipeline/errors.ts';
import { intToIpv4, ipv4ToInt } from '../pipeline/validate.ts';
import type { BuildContext } from '../pipeline/stage.ts';
import type { StaticAddress } from './facts.ts';
import type { GuestArch, GuestKernel } from './kernel.ts';

export interface GuestSpec {
  arch: GuestArch;
  image: string;
  rootPartition: number;
  kernel: GuestKernel;
  /** The image's static address: the user network is made its subnet. */
  address?: StaticAddress;
  /** Guest TCP ports reachable from the host (22 first). */
  ports: readonly number[];
  console: string;
  memoryMiB: number;
}

export interface Guest {
  /** Guest port -> port on 127.0.0.1. */
  hostPort: Map<number, number>;
  /** Set once QEMU has exited. */
  exit?: string;
  stopped: Promise<void>;
  pid: number;
}

const MACHINE: Record<GuestArch, { qemu: string; args: string[] }> = {
  arm64: { qemu: 'qemu-system-aarch64', args: ['-M', 'virt', '-cpu', 'cortex-a72'] },
  armhf: { qemu: 'qemu-system-arm', args: ['-M', 'virt,highmem=off', '-cpu', 'cortex-a15'] },
};

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
  const [host, dns] = [1, 2, 3, 4].map((i) => network + i).filter((n) => n !== ipv4ToInt(address.address)).slice(1, 3) as [number, number];
  return [`net=${address.network}/${address.prefix}`, `host=${intToIpv4(host)}`, `dns=${intToIpv4(dns)}`];
}

function consoleTail(file: string, lines = 25): string {
  if (!existsSync(file)) return '(no console output)';
  // Without colours and hyperlinks (systemd's status lines have both).
  const text = readFileSync(file, 'utf8')
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, '')
    .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
    .replace(/\r/g, '');
  const tail = text.split('\n').filter((l) => l.trim() !== '').slice(-lines);
  return tail.length ? tail.map((l) => `  | ${l}`).join('\n') : '(no console output)';
}

export async function startGuest(ctx: BuildContext, spec: GuestSpec): Promise<Guest> {
  const hostPort = new Map<number, number>();
  for (const port of spec.ports) hostPort.set(port, await freePort());
  const guestIp = spec.address?.address ?? '';
  const forwards = [...hostPort].map(([guest, host]) => `hostfwd=tcp:127.0.0.1:${host}-${guestIp}:${guest}`);
  const { qemu, args: machine } = MACHINE[spec.arch];
  const args = [
    ...machine,
    '-smp', '2', '-m', String(spec.memoryMiB),
    '-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-no-reboot',
    '-serial', `file:${spec.console}`,
    '-kernel', spec.kernel.kernel, '-initrd', spec.kernel.initrd,
    // eth0 as on a Pi; a panic ends QEMU (-no-reboot) instead of hanging until the timeout.
    '-append', `root=/dev/vda${spec.rootPartition} ro rootwait console=ttyAMA0 net.ifnames=0 panic=-1`,
    '-drive', `file=${spec.image},format=raw,if=none,id=disk,cache=unsafe`,
    '-device', 'virtio-blk-pci,drive=disk',
    '-netdev', ['user', 'id=net', 'restrict=on', ...userNetwork(spec.address), ...forwards].join(','),
    // No option ROM: the kernel is loaded directly, and the ROM's package (ipxe-qemu) may be absent.
    '-device', 'virtio-net-pci,netdev=net,romfile=',
    '-device', 'virtio-rng-pci',
  ];
  const subprocess = ctx.commands.spawn(qemu, args);
  subprocess.stdout.on('data', (chunk: Buffer) => ctx.log.write(chunk.toString()));
  const guest: Guest = { hostPort, pid: subprocess.pid ?? 0, stopped: Promise.resolve() };
  guest.stopped = subprocess.then((result) => {
    guest.exit = result.exitCode !== undefined ? `exit code ${result.exitCode}` : `signal ${result.signal}`;
    if (result.exitCode) guest.exit += `: ${String(result.stderr).trim().split('\n').at(-1)}`;
  });
  ctx.defer(`stop the guest (QEMU pid ${guest.pid})`, async () => {
    if (guest.exit) return;
    subprocess.kill('SIGTERM');
    await guest.stopped;
  });
  return guest;
}

export interface SshTarget {
  key: string;
  user: string;
  port: number;
}

export function sshArgs(target: SshTarget, command: string): string[] {
  return [
    '-i', target.key, '-p', String(target.port),
    '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'LogLevel=ERROR', '-o', 'ConnectTimeout=20', '-o', 'ServerAliveInterval=10',
    `${target.user}@127.0.0.1`, '--', command,
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
 * Wait until the guest lets the key in, or fail with the console's last lines: when QEMU stops,
 * when the timeout passes, or when sshd answers but keeps refusing the key for a minute.
 */
export async function waitForSsh(ctx: BuildContext, guest: Guest, target: SshTarget, timeoutS: number, console: string): Promise<void> {
  const deadline = Date.now() + timeoutS * 1000;
  let refusedSince: number | undefined;
  let lastError = '';
  while (Date.now() < deadline) {
    ctx.signal.throwIfAborted();
    if (guest.exit) throw new UserError(`the guest stopped before SSH answered (QEMU ${guest.exit}); its console's last lines:\n${consoleTail(console)}`);
    if (await sshBanner(target.port)) {
      const r = await ctx.run('ssh', sshArgs(target, 'true'), { reject: false, timeoutMs: 60_000 });
      if (r.exitCode === 0) return;
      lastError = r.stderr.trim().split('\n').at(-1) ?? '';
      refusedSince ??= Date.now();
      if (Date.now() - refusedSince > 60_000) {
        throw new UserError(`the guest's sshd refuses ${target.user} with ${target.key} (${lastError}): pass the private half of a key the image authorizes (--ssh-key), or --user`);
      }
    }
    await sleep(2000, undefined, { signal: ctx.signal });
  }
  throw new UserError(`SSH on the guest did not answer within ${timeoutS} s${lastError ? ` (${lastError})` : ''} (raise --timeout if it was still booting); its console's last lines:\n${consoleTail(console)}`);
}

/** Power the guest off from inside and wait for QEMU to end (the clean-up stack kills it otherwise). */
export async function shutDown(ctx: BuildContext, guest: Guest, target: SshTarget, waitS = 90): Promise<boolean> {
  if (guest.exit) return true;
  await ctx.run('ssh', sshArgs(target, 'systemctl poweroff --no-block || poweroff'), { reject: false, timeoutMs: 30_000 });
  const ended = await Promise.race([guest.stopped.then(() => true), sleep(waitS * 1000, false, { signal: ctx.signal })]);
  return ended;
}
