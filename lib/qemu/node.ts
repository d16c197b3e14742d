/**
 * `verify --node`: a cluster node boots from the pimaster under test, as a Raspberry Pi without an
 * SD card does, on the cluster's Ethernet (cluster-link.ts), powered by the agent through the PoE
 * switch stand-in (poe-switch.ts):
 *
 *   prepare  the pimaster's throw-away copy gets what QEMU can boot in the node's place: Debian's
 *            kernel and verify's initrd in /tftpboot/rpiboot_uboot/ (the Raspberry Pi kernel does
 *            not run on QEMU's virt machine), and /tftpboot/boot.scr.uimg, the script U-Boot runs
 *            after its DHCP: it fetches the kernel, the initrd and cmdline.txt over TFTP from the
 *            node's directory and boots them with that cmdline.txt, plus a console QEMU has.
 *   node     through the agent's API: the node's DHCP entry (add/client: a dhcp-host line,
 *            dnsmasq restarts), the switch (add/switch: the agent walks its PoE ports), the node on
 *            its port (add/node); its TFTP directory made as the agent's deploy makes it
 *            (/tftpboot/<serial>/ links to rpiboot_uboot/); the node powered on by the agent
 *            (U-Boot, no disk), reached over SSH from the pimaster with the pimaster's root key, as
 *            the agent does, checked, powered off and on again by the agent, checked again.
 *
 * The initrd does with root=/dev/nfs, nfsroot= and ip=dhcp what the Raspberry Pi kernel does
 * itself: the address from DHCP, then the NFS root with the options of cmdline.txt.
 */
import { cpSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../../engine/errors.ts';
import { findOnPath, quote } from '../../engine/exec.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { entryInRoot, readInRoot } from '../image/in-root.ts';
import { intToIpv4, ipv4ToInt } from '../net.ts';
import type { Check, CheckResult } from './checks.ts';
import type { ClusterLink } from './cluster-link.ts';
import type { GuestFacts } from './facts.ts';
import { type Guest, type SshTarget, startGuest } from './guest.ts';
import type { GuestKernel } from './kernel.ts';
import { type PoeSwitch, powerSteps, startPoeSwitch } from './poe-switch.ts';

/**
 * The node QEMU boots: a made-up serial (a Pi's is in its OTP) and MAC. Debian's U-Boot for QEMU
 * asks DHCP with its default ethaddr, 52:52:52:52:52:52, whatever the virtio NIC's address: the
 * NIC gets the same, so that U-Boot and Linux ask with one MAC, as a Pi's firmware and kernel do.
 * `mac0` is the pimaster's cluster NIC.
 */
export const NODE = { name: 'verify-node', serial: '0e5a1c1d', mac: '52:52:52:52:52:52', mac0: '52:54:00:4e:00:01' } as const;
export const U_BOOT = '/usr/lib/u-boot/qemu_arm64/u-boot.bin';
/** The node's kernel and initrd in /tftpboot/<serial>/ (a deployed environment's boot partition has them too). */
export const NODE_KERNEL_FILE = 'vmlinuz-verify';
export const NODE_INITRD_FILE = 'initrd-verify.img';

/** The node's address: the tenth of the pimaster's subnet (never the pimaster's own). */
export function nodeAddress(facts: GuestFacts): string {
  const a = facts.address;
  if (!a) throw new UserError('--node: the image gives its cluster interface no static address: is it a pimaster?');
  const network = ipv4ToInt(a.network);
  const ip = network + 10 === ipv4ToInt(a.address) ? network + 11 : network + 10;
  return intToIpv4(ip);
}

/**
 * The U-Boot script the node runs after its DHCP, in the place of a Pi's network boot: the kernel,
 * the initrd and cmdline.txt from the node's own TFTP directory, /tftpboot/<serial>/, booted with
 * that cmdline.txt as it is there now (the NFS root's until a deploy replaces the directory with
 * the environment's boot files), plus a console QEMU has. The file is read into zeroed memory and
 * made the boot arguments with `setexpr.s`.
 */
export function nodeBootScript(): string {
  return [
    `echo build-image verify: node ${NODE.serial} boots from \${serverip}`,
    // The kernel is gzip'd (a third of the bytes over a slow TFTP): booti unpacks it via kernel_comp_addr_r.
    `tftpboot \${kernel_addr_r} ${NODE.serial}/${NODE_KERNEL_FILE}`,
    'setenv kernel_comp_addr_r 0x50000000',
    'setenv kernel_comp_size ${filesize}',
    `tftpboot \${ramdisk_addr_r} ${NODE.serial}/${NODE_INITRD_FILE}`,
    'setenv initrd_size ${filesize}',
    'mw.b ${pxefile_addr_r} 0 0x10000',
    `tftpboot \${pxefile_addr_r} ${NODE.serial}/cmdline.txt`,
    'setexpr.s bootargs *${pxefile_addr_r}',
    'setenv bootargs "${bootargs} console=ttyAMA0"',
    // Quoted: one argument, as U-Boot's echo takes 16 at most and an NFS command line has more words.
    'echo "build-image verify: bootargs ${bootargs}"',
    'booti ${kernel_addr_r} ${ramdisk_addr_r}:${initrd_size} ${fdtcontroladdr}',
    '',
  ].join('\n');
}

/** Into the pimaster's mounted copy: Debian's kernel and the initrd, and U-Boot's script (mkimage). */
export async function prepareNodeBoot(ctx: BuildContext, root: string, kernel: GuestKernel): Promise<void> {
  if (!existsSync(U_BOOT) || !findOnPath('mkimage'))
    throw new UserError(`--node needs U-Boot for QEMU (${U_BOOT}) and mkimage: apt-get install u-boot-qemu u-boot-tools`);
  if (!findOnPath('snmpd') || !findOnPath('ip'))
    throw new UserError("--node needs net-snmp's snmpd (the PoE switch stand-in) and ip (the cluster link): apt-get install snmpd iproute2");
  const cmdline = readInRoot(root, 'tftpboot/rpiboot_uboot/cmdline.txt');
  if (cmdline.length > 4096) throw new UserError('--node: rpiboot_uboot/cmdline.txt is longer than a kernel command line can be');
  // Written into the image's copy: a link already at one of these names is replaced, never followed.
  const into = (name: string) => {
    const file = entryInRoot(root, `tftpboot/rpiboot_uboot/${name}`);
    rmSync(file, { force: true });
    return file;
  };
  cpSync(kernel.kernel, into(NODE_KERNEL_FILE), { dereference: true });
  cpSync(kernel.initrd, into(NODE_INITRD_FILE), { dereference: true });
  const script = join(ctx.paths.work, 'node-boot.txt');
  writeFileSync(script, nodeBootScript());
  const uimg = entryInRoot(root, 'tftpboot/boot.scr.uimg');
  rmSync(uimg, { force: true });
  await ctx.run('mkimage', ['-A', 'arm64', '-O', 'linux', '-T', 'script', '-C', 'none', '-n', 'build-image verify node', '-d', script, uimg]);
  ctx.log.line(`node: boots ${NODE_KERNEL_FILE} and ${NODE_INITRD_FILE} from /tftpboot/${NODE.serial}/ with: ${cmdline.trim()} console=ttyAMA0`);
}

/** Shell run on the pimaster that runs `command` on the node, as the agent reaches nodes. */
export function onNode(ip: string, command: string): string {
  return `ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 root@${ip} ${quote(command)}`;
}

export interface NodeRun {
  pimaster: SshTarget;
  /** The pimaster's forwarded agent API port on 127.0.0.1. */
  agentPort: number;
  facts: GuestFacts;
  /** The cluster's Ethernet, which the pimaster's cluster NIC is on. */
  link: ClusterLink;
  console: string;
  timeoutS: number;
  /** The node's SD card (a raw file), for --deploy. */
  sdCard?: string;
  /** Run a shell command on the pimaster. */
  run(command: string, timeoutMs?: number): Promise<{ ok: boolean; out: string }>;
}

/** The PoE switch stand-in as the agent knows it: the pimaster on port 1, the node on port 2. */
export const SWITCH = { name: 'verify-switch', community: 'verify', ports: 4, masterPort: 1, nodePort: 2 } as const;

/** The agent's HTTP API on the pimaster (its port forwarded to 127.0.0.1), with its token. */
export interface Agent {
  post(path: string, body: Record<string, unknown>): Promise<{ ok: boolean; text: string; json?: Record<string, unknown> }>;
}

async function agentOf(ctx: BuildContext, node: NodeRun): Promise<Agent | string> {
  const token = await node.run(`python3 -c 'import json; print(json.load(open("/root/piseduce_agent/config_agent.json"))["auth_token"][0])'`);
  if (!token.ok) return `no agent token: ${token.out}`;
  return {
    async post(path, body) {
      try {
        const response = await fetch(`http://127.0.0.1:${node.agentPort}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ token: token.out.trim(), ...body }),
          signal: AbortSignal.any([ctx.signal, AbortSignal.timeout(120_000)]),
        });
        const text = (await response.text()).trim();
        let json: Record<string, unknown> | undefined;
        try {
          json = JSON.parse(text) as Record<string, unknown>;
        } catch {}
        return { ok: response.ok && json !== undefined, text: `HTTP ${response.status} ${text.slice(0, 200)}`, json };
      } catch (error) {
        ctx.signal.throwIfAborted();
        return { ok: false, text: `no answer from the agent: ${(error as Error).message}` };
      }
    },
  };
}

/** Register the node's DHCP entry through the agent's API. */
async function register(agent: Agent, node: NodeRun, ip: string): Promise<CheckResult> {
  const answer = await agent.post('/v1/admin/add/client', { name: NODE.name, ip, mac_address: NODE.mac });
  const line = await node.run(`grep -x 'dhcp-host=${NODE.mac},${NODE.name},${ip}' /etc/dnsmasq.conf && systemctl is-active dnsmasq`);
  return {
    name: 'node registered through the agent API',
    ok: answer.ok && 'client' in (answer.json ?? {}) && line.ok,
    saw: `${answer.text}; dnsmasq.conf: ${line.out.split('\n')[0] || 'no dhcp-host line'}`,
  };
}

/** The switch and the node, added through the agent's API as an administrator adds them. */
async function addSwitchAndNode(agent: Agent, sw: PoeSwitch, ip: string): Promise<CheckResult[]> {
  // The agent pings the switch, walks the PoE column above the OID and keeps what it found.
  const added = await agent.post('/v1/admin/add/switch', {
    name: SWITCH.name,
    ip: sw.address,
    community: sw.community,
    master_port: SWITCH.masterPort,
    poe_oid: sw.firstPortOid,
    power_oid: sw.firstPortOid,
  });
  const switches = await agent.post('/v1/user/switch/list', {});
  const switchResult: CheckResult = {
    name: `PoE switch ${sw.address} added through the agent API (it walks the switch's PoE ports itself)`,
    ok: added.ok && added.json?.switch === SWITCH.name,
    saw: `${added.text}; ${switches.text}`,
  };
  const node = await agent.post('/v1/admin/add/node', {
    name: NODE.name,
    ip,
    switch: SWITCH.name,
    port_number: SWITCH.nodePort,
    model: 'QEMU',
    serial: NODE.serial,
  });
  return [
    switchResult,
    {
      name: `node added through the agent API on the switch's port ${SWITCH.nodePort}, serial ${NODE.serial}`,
      ok: node.ok && node.json?.node === NODE.name,
      saw: node.text,
    },
  ];
}

/**
 * The node's power, as the PoE switch stand-in sets its port: on boots a QEMU node from cold, off
 * ends it at once. Steps run in order. A node that reboots itself (QEMU ends) starts again after a
 * pause while its port is on: a Pi's boot ROM and bootloader take seconds to bring its Ethernet
 * back, and the agent's boot_files waits for the rebooted node to stop answering ping, which
 * U-Boot, busy with its TFTP, would do at once.
 */
export class NodePower {
  guest?: Guest;
  /** Set when a power step failed (QEMU would not start). */
  error?: string;
  /** Reboots the node did itself. */
  reboots = 0;
  #on = false;
  #chain: Promise<void> = Promise.resolve();
  readonly #start: () => Promise<Guest>;
  readonly #console: string;
  readonly #signal: AbortSignal;
  constructor(start: () => Promise<Guest>, console: string, signal: AbortSignal) {
    this.#start = start;
    this.#console = console;
    this.#signal = signal;
  }
  set(on: boolean): void {
    this.#on = on;
    this.#chain = this.#chain.then(async () => {
      try {
        if (on && (!this.guest || this.guest.exit)) {
          this.guest = await this.#start();
          this.#watch(this.guest);
        }
        if (!on && this.guest) await this.guest.stop();
      } catch (error) {
        this.error = (error as Error).message;
      }
    });
  }
  /** Until every power step asked so far is done. */
  settled(): Promise<void> {
    return this.#chain;
  }
  #watch(guest: Guest): void {
    void guest.stopped.then(async () => {
      const output = existsSync(this.#console) ? readFileSync(this.#console).subarray(guest.consoleFrom).toString('utf8') : '';
      if (!this.#on || this.guest !== guest || !/reboot: Restarting system/.test(output)) return;
      this.reboots++;
      try {
        await sleep(RESTART_PAUSE_MS, undefined, { signal: this.#signal });
      } catch {
        return;
      }
      if (this.#on && this.guest === guest) this.set(true);
    });
  }
}

/** A Pi 4's reboot until its bootloader asks DHCP again: several seconds (more than the agent's ping period). */
const RESTART_PAUSE_MS = 10_000;

/** Wait until the node answers SSH from the pimaster; false when QEMU stopped or time ran out. */
async function waitForNode(ctx: BuildContext, node: NodeRun, guest: Guest, ip: string): Promise<boolean> {
  const deadline = Date.now() + node.timeoutS * 1000;
  while (Date.now() < deadline && !guest.exit) {
    ctx.signal.throwIfAborted();
    if ((await node.run(onNode(ip, 'true'), 30_000)).ok) return true;
    await sleep(3000, undefined, { signal: ctx.signal });
  }
  return false;
}

/** The checks of a booted node, run through the pimaster. */
export function nodeChecks(ip: string, facts: GuestFacts, environment: string | undefined): Check[] {
  const server = facts.address!.address;
  return [
    {
      name: 'node: every unit started, none failed',
      command: onNode(
        ip,
        's=$(systemctl is-system-running --wait); f=$(systemctl --failed --no-legend --plain | awk \'{print $1}\' | paste -sd" "); echo "$s${f:+ (failed: $f)}"; [ "$s" = running ]',
      ),
      timeoutS: 300,
    },
    {
      name: `node: address ${ip} (the registered one)`,
      command: onNode(ip, `ip -4 -o addr show dev eth0 | awk '{print $4}' | paste -sd" "; ip -4 -o addr show dev eth0 | grep -q " ${ip}/"`),
    },
    {
      name: `node: root is ${server}:/nfs/raspi over NFS, with the options of cmdline.txt`,
      command:
        `want=$(grep -o 'nfsroot=[^ ]*' /tftpboot/rpiboot_uboot/cmdline.txt | cut -d, -f2-); got=$(${onNode(ip, 'findmnt -no SOURCE,FSTYPE,OPTIONS /')}); echo "$got" | cut -c1-100; ` +
        `echo "$got" | grep -q "^${server}:/nfs/raspi nfs" && for o in $(echo "$want" | tr , " "); do echo "$got" | grep -q "\\b$o\\b" || { echo "missing $o"; exit 1; }; done`,
    },
    { name: 'node: host name nfspi', command: `h=$(${onNode(ip, 'hostname')}); echo "$h"; [ "$h" = nfspi ]` },
    {
      name: "node: SSH host keys its own, not the pimaster's",
      command:
        `n=$(${onNode(ip, 'cat /etc/ssh/ssh_host_*_key.pub')} | awk '{print $2}' | sort); p=$(cat /etc/ssh/ssh_host_*_key.pub | awk '{print $2}' | sort); same=$(comm -12 <(echo "$n") <(echo "$p") | grep -c .); ` +
        'echo "$(echo "$n" | grep -c .) keys, $same shared with the pimaster"; [ -n "$n" ] && [ "$same" = 0 ]',
    },
    {
      name: "node: none of the pimaster's services runs",
      command: onNode(
        ip,
        'on=$(for u in dnsmasq nfs-server webui agent_api agent_exec pimaster-firstboot pimaster-nat pimaster-firewall; do systemctl -q is-active $u && echo $u; done | paste -sd" "); echo "${on:-none running}"; [ -z "$on" ]',
      ),
    },
    ...(environment
      ? [
          {
            name: 'node: streams an environment from the pimaster with rsh, as a deploy does',
            command:
              `want=$(sha256sum /root/environments/${quote(environment)} | cut -c1-64); got=$(${onNode(ip, `rsh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes root@${server} 'cat /root/environments/${environment}' | sha256sum | cut -c1-64`)}); ` +
              `echo "${environment}: sha256 $got"; [ -n "$got" ] && [ "$got" = "$want" ]`,
            timeoutS: 300,
          },
        ]
      : []),
    {
      name: "dnsmasq's log: the node's lease and its TFTP transfers",
      command:
        `l=$(grep -a 'dnsmasq-dhcp.*DHCPACK.*${ip} ${NODE.mac}' /var/log/syslog | tail -n1 | grep -o 'DHCPACK.*'); t=$(grep -a 'dnsmasq-tftp.*sent /tftpboot/${NODE.serial}/' /var/log/syslog | grep -o 'sent [^ ]*' | sort -u | paste -sd" "); ` +
        'echo "${l:-no lease}; ${t:-no TFTP transfer}"; [ -n "$l" ] && [ -n "$t" ]',
    },
  ];
}

/**
 * Add the switch and the node through the agent, power the node on through the agent's API (an
 * SNMP set on the stand-in, which boots the node), run its checks, power it off and on again and
 * check its keys stayed; power it off.
 */
/** What a deploy (deploy.ts) goes on with once the node booted and was checked. */
export interface NodeSession {
  node: NodeRun;
  agent: Agent;
  power: NodePower;
  sw: PoeSwitch;
  ip: string;
  /** The node's SSH host keys at its first boot. */
  firstKeys: string;
}

export async function runNode(
  ctx: BuildContext,
  node: NodeRun,
  runCheck: (check: Check) => Promise<CheckResult>,
  /** Run after the first boot in the place of the second (verify --deploy). */
  deploy?: (session: NodeSession) => Promise<CheckResult[]>,
): Promise<CheckResult[]> {
  const ip = nodeAddress(node.facts);
  const agent = await agentOf(ctx, node);
  if (typeof agent === 'string') return [{ name: 'node registered through the agent API', ok: false, saw: agent }];
  const results: CheckResult[] = [await register(agent, node, ip)];
  if (!results[0]!.ok) return results;
  const power = new NodePower(
    () =>
      startGuest(ctx, {
        arch: 'arm64',
        boot: { firmware: U_BOOT },
        console: node.console,
        memoryMiB: 1024,
        cluster: { link: node.link, mac: NODE.mac },
        sdCard: node.sdCard,
      }),
    node.console,
    ctx.signal,
  );
  const sw = await startPoeSwitch(ctx, {
    link: node.link,
    community: SWITCH.community,
    ports: SWITCH.ports,
    onPower: (port, on) => {
      if (port === SWITCH.nodePort) power.set(on);
    },
  });
  sw.table.ports[SWITCH.masterPort - 1] = true;
  results.push(...(await addSwitchAndNode(agent, sw, ip)));
  if (!results.every((r) => r.ok)) return results;
  const dir = await node.run(
    `rm -rf /tftpboot/${NODE.serial} && mkdir /tftpboot/${NODE.serial} && for f in /tftpboot/rpiboot_uboot/*; do ln -s "$f" /tftpboot/${NODE.serial}/; done && ls /tftpboot/${NODE.serial} | wc -l`,
  );
  results.push({
    name: `node's TFTP directory /tftpboot/${NODE.serial}/ (links to rpiboot_uboot/, as the agent's deploy makes it)`,
    ok: dir.ok,
    saw: dir.ok ? `${dir.out.trim()} links` : dir.out,
  });
  if (!dir.ok) return results;
  const switchPorts = `/v1/admin/switch/ports/${SWITCH.name}`;
  let firstKeys = '';
  for (const boot of deploy ? [1] : [1, 2]) {
    const started = performance.now();
    const from = sw.events.length;
    const on = await agent.post(`/v1/admin/switch/turn_on/${SWITCH.name}`, { ports: [SWITCH.nodePort] });
    await power.settled();
    const guest = power.guest;
    const up = on.ok && !power.error && guest !== undefined && !guest.exit && (await waitForNode(ctx, node, guest, ip));
    const seconds = Math.round((performance.now() - started) / 100) / 10;
    results.push({
      name: `node boot ${boot}: powered on by the agent over SNMP, U-Boot, DHCP, TFTP, NFS root, SSH from the pimaster`,
      ok: up,
      saw: up
        ? `SSH answered ${seconds} s after the agent's turn_on`
        : `${on.ok ? '' : `turn_on: ${on.text}; `}${power.error ?? ''}no SSH within ${node.timeoutS} s${guest?.exit ? ` (QEMU ${guest.exit})` : ''}: see ${node.console}`,
    });
    if (!up) break;
    if (boot === 1) {
      const ports = await agent.post(switchPorts, {});
      results.push({
        name: `the agent reads the node's port ${SWITCH.nodePort} as on from the switch`,
        ok: ports.ok && (ports.json?.[SWITCH.name] as string[] | undefined)?.[SWITCH.nodePort - 1] === 'on',
        saw: ports.text,
      });
      for (const check of nodeChecks(ip, node.facts, await smallestEnvironment(node))) results.push(await runCheck(check));
      firstKeys = (await node.run(onNode(ip, 'cat /etc/ssh/ssh_host_*_key.pub | sort'))).out;
    } else {
      const keys = (await node.run(onNode(ip, 'cat /etc/ssh/ssh_host_*_key.pub | sort'))).out;
      results.push({
        name: 'node: the same SSH host keys at its second boot',
        ok: keys !== '' && keys === firstKeys,
        saw: keys === firstKeys ? `${keys.trim().split('\n').length} keys unchanged` : 'the keys changed',
      });
    }
    const off = await agent.post(`/v1/admin/switch/turn_off/${SWITCH.name}`, { ports: [SWITCH.nodePort] });
    await power.settled();
    const sets = powerSteps(sw.events, from);
    results.push({
      name: `power cycle ${boot}: the agent's SNMP sets on the switch stand-in turned the node on, then off`,
      ok: off.ok && sets.join() === `port ${SWITCH.nodePort} on,port ${SWITCH.nodePort} off` && guest.exit !== undefined,
      saw: `${sets.join(', ') || 'no SNMP set'}; QEMU ${guest.exit ?? 'still running'}`,
    });
  }
  if (deploy && results.every((r) => r.ok)) results.push(...(await deploy({ node, agent, power, sw, ip, firstKeys })));
  return results;
}

/** The smallest environment the pimaster holds: the stream check proves rsh, not the bandwidth. */
async function smallestEnvironment(node: NodeRun): Promise<string | undefined> {
  const r = await node.run('ls -Sr /root/environments | head -n1');
  return r.ok && r.out.trim() ? r.out.trim() : undefined;
}
