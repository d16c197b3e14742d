/**
 * The cluster's Ethernet under `verify --node` and `--deploy`: a bridge in a network namespace made
 * for the run, which the pimaster's cluster NIC, each node's NIC and the PoE switch stand-in join.
 * The namespace has no other interface and no route out: nothing on the cluster subnet reaches the
 * host's network, and the host's network reaches nothing on it.
 *
 * QEMU runs in the host's namespace (the pimaster's user network forwards its SSH port to the
 * host's 127.0.0.1) and opens its tap there; the tap is then moved into the namespace and onto the
 * bridge. The open file keeps it working across the move, and closing it (QEMU ends) removes it.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../engine/errors.ts';
import { findOnPath } from '../../engine/exec.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { intToIpv4, ipv4ToInt } from '../net.ts';
import type { StaticAddress } from './facts.ts';

export interface ClusterLink {
  /** The network namespace's name (`ip netns`). */
  ns: string;
  /** Where the link's programs keep their files and logs. */
  dir: string;
  /** The cluster subnet, `NETWORK/PREFIX`. */
  subnet: string;
  /** The bridge's own address: the PoE switch stand-in's. */
  switchAddress: string;
  /** A fresh tap name for a guest's NIC. */
  tapName(): string;
  /** Move the tap QEMU opened into the namespace and onto the bridge; `exited` is QEMU's exit reason once it has stopped. */
  join(ctx: BuildContext, tap: string, exited: () => string | undefined): Promise<void>;
  /** Run a program inside the namespace until the clean-up stack ends it. */
  spawn(ctx: BuildContext, command: string, args: string[], options: { env?: Record<string, string>; ready: { udpPort: number } }): Promise<void>;
}

/** The switch's address: the subnet's last but one, or the one before when the pimaster has it. */
export function switchAddressOf(address: StaticAddress): string {
  const size = 2 ** (32 - address.prefix);
  const last = ipv4ToInt(address.network) + size - 2;
  return intToIpv4(last === ipv4ToInt(address.address) ? last - 1 : last);
}

/**
 * `command` run in the namespace's network only. Not `ip netns exec`: that also makes a mount
 * namespace, a copy of every mount of the moment, and where mounts do not propagate (a container's
 * private /) a build's root filesystem mounted then stays mounted in it after the build unmounts
 * it: its loop device is never let go, and the next fsck sees an unfinished journal.
 */
export function inNetns(ns: string, command: string, args: readonly string[]): [string, string[]] {
  return ['nsenter', [`--net=/run/netns/${ns}`, '--', command, ...args]];
}

export async function createClusterLink(ctx: BuildContext, address: StaticAddress): Promise<ClusterLink> {
  if (!findOnPath('ip')) throw new UserError('the cluster link needs ip (iproute2): apt-get install iproute2');
  const id = randomBytes(3).toString('hex');
  const ns = `build-image-${id}`;
  const dir = join(ctx.paths.work, `cluster-${id}`);
  mkdirSync(dir, { recursive: true });
  const subnet = `${address.network}/${address.prefix}`;
  const switchAddress = switchAddressOf(address);
  // Made and removed even after Ctrl-C: nothing may cut them off from their clean-up step.
  await ctx.run('ip', ['netns', 'add', ns], { uncancellable: true });
  // Every tap, the bridge and whatever runs inside go with the namespace (its programs are ended first).
  ctx.defer(`remove the cluster link's network namespace ${ns}`, async () => {
    await ctx.run('ip', ['netns', 'delete', ns], { uncancellable: true });
  });
  const inNs = (args: string[]) => ctx.run('ip', ['-n', ns, ...args]);
  await inNs(['link', 'set', 'lo', 'up']);
  await inNs(['link', 'add', 'cluster', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0']);
  await inNs(['addr', 'add', `${switchAddress}/${address.prefix}`, 'dev', 'cluster']);
  await inNs(['link', 'set', 'cluster', 'up']);
  let taps = 0;
  return {
    ns,
    dir,
    subnet,
    switchAddress,
    tapName: () => `bi${id}t${taps++}`,
    async join(ctx, tap, exited) {
      // QEMU makes the tap as it starts; until then the name does not exist in the host's namespace.
      for (let i = 0; ; i++) {
        if ((await ctx.run('ip', ['link', 'show', 'dev', tap], { reject: false })).exitCode === 0) break;
        const exit = exited();
        if (exit) throw new UserError(`QEMU stopped before it opened its tap ${tap} (${exit})`);
        if (i > 300) throw new UserError(`QEMU did not open its tap ${tap} within 30 s`);
        await sleep(100, undefined, { signal: ctx.signal });
      }
      await ctx.run('ip', ['link', 'set', 'dev', tap, 'netns', ns]);
      await inNs(['link', 'set', 'dev', tap, 'master', 'cluster']);
      await inNs(['link', 'set', 'dev', tap, 'up']);
    },
    async spawn(ctx, command, args, options) {
      const child = ctx.commands.spawn(...inNetns(ns, command, args), { env: options.env });
      child.stdout.on('data', (chunk: Buffer) => ctx.log.write(chunk.toString()));
      let exited = false;
      const ended = child.then(
        () => {},
        () => {},
      );
      void ended.then(() => {
        exited = true;
      });
      ctx.defer(`stop ${command} (pid ${child.pid}) in ${ns}`, async () => {
        if (!exited) child.kill('SIGTERM');
        await ended;
      });
      for (let i = 0; ; i++) {
        const { stdout } = await ctx.run(...inNetns(ns, 'ss', ['-Hlun', `sport = :${options.ready.udpPort}`]), { reject: false });
        if (stdout.trim()) return;
        if (exited || i > 100) throw new UserError(`${command} did not start in the cluster link's namespace: see ${dir}`);
        await sleep(100, undefined, { signal: ctx.signal });
      }
    },
  };
}
