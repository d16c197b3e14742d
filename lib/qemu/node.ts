/**
 * `verify --node`: a cluster node boots from the pimaster under test, as a Raspberry Pi without an
 * SD card does, on a link that only the two guests share (QEMU socket networking on 127.0.0.1):
 *
 *   prepare  the pimaster's throw-away copy gets what QEMU can boot in the node's place: Debian's
 *            kernel and verify's initrd in /tftpboot/rpiboot_uboot/ (the Raspberry Pi kernel does
 *            not run on QEMU's virt machine), and /tftpboot/boot.scr.uimg, the script U-Boot runs
 *            after its DHCP: it fetches the kernel and initrd over TFTP from the node's directory
 *            and boots them with rpiboot_uboot/cmdline.txt, unchanged, plus a console QEMU has.
 *   node     the node registered through the agent's API (POST /v1/admin/add/client: its name, IP
 *            and MAC become a dhcp-host line, dnsmasq restarts), its TFTP directory made as the
 *            agent's deploy makes it (/tftpboot/<serial>/ links to rpiboot_uboot/), the node
 *            powered on (U-Boot, no disk), reached over SSH from the pimaster with the pimaster's
 *            root key, as the agent does, checked, booted a second time, checked again.
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
import { entryInRoot, inRoot } from '../image/in-root.ts';
import { intToIpv4, ipv4ToInt } from '../net.ts';
import type { Check, CheckResult } from './checks.ts';
import type { GuestFacts } from './facts.ts';
import { type Guest, type SshTarget, startGuest } from './guest.ts';
import type { GuestKernel } from './kernel.ts';

/**
 * The node QEMU boots: a made-up serial (a Pi's is in its OTP) and MAC. Debian's U-Boot for QEMU
 * asks DHCP with its default ethaddr, 52:52:52:52:52:52, whatever the virtio NIC's address: the
 * NIC gets the same, so that U-Boot and Linux ask with one MAC, as a Pi's firmware and kernel do.
 * `mac0` is the pimaster's cluster NIC.
 */
export const NODE = { name: 'verify-node', serial: '0e5a1c1d', mac: '52:52:52:52:52:52', mac0: '52:54:00:4e:00:01' } as const;
export const U_BOOT = '/usr/lib/u-boot/qemu_arm64/u-boot.bin';
const KERNEL_FILE = 'vmlinuz-verify';
const INITRD_FILE = 'initrd-verify.img';

/** The node's address: the tenth of the pimaster's subnet (never the pimaster's own). */
export function nodeAddress(facts: GuestFacts): string {
  const a = facts.address;
  if (!a) throw new UserError('--node: the image gives its cluster interface no static address: is it a pimaster?');
  const network = ipv4ToInt(a.network);
  const ip = network + 10 === ipv4ToInt(a.address) ? network + 11 : network + 10;
  return intToIpv4(ip);
}

/** The U-Boot script the node runs after its DHCP: the kernel and initrd over TFTP, booted with `cmdline`. */
export function nodeBootScript(cmdline: string): string {
  const args = `${cmdline.trim()} console=ttyAMA0`;
  if (/["\\$]/.test(args))
    throw new UserError(`--node: rpiboot_uboot/cmdline.txt holds a quote, backslash or $ that U-Boot would read otherwise: ${cmdline.trim()}`);
  return [
    `echo build-image verify: node ${NODE.serial} boots from \${serverip}`,
    `tftpboot \${kernel_addr_r} ${NODE.serial}/${KERNEL_FILE}`,
    `tftpboot \${ramdisk_addr_r} ${NODE.serial}/${INITRD_FILE}`,
    'setenv initrd_size ${filesize}',
    `setenv bootargs "${args}"`,
    'booti ${kernel_addr_r} ${ramdisk_addr_r}:${initrd_size} ${fdtcontroladdr}',
    '',
  ].join('\n');
}

/** Into the pimaster's mounted copy: Debian's kernel and the initrd, and U-Boot's script (mkimage). */
export async function prepareNodeBoot(ctx: BuildContext, root: string, kernel: GuestKernel): Promise<void> {
  if (!existsSync(U_BOOT) || !findOnPath('mkimage'))
    throw new UserError(`--node needs U-Boot for QEMU (${U_BOOT}) and mkimage: apt-get install u-boot-qemu u-boot-tools`);
  const cmdline = readFileSync(inRoot(root, 'tftpboot/rpiboot_uboot/cmdline.txt'), 'utf8');
  // Written into the image's copy: a link already at one of these names is replaced, never followed.
  const into = (name: string) => {
    const file = entryInRoot(root, `tftpboot/rpiboot_uboot/${name}`);
    rmSync(file, { force: true });
    return file;
  };
  cpSync(kernel.kernel, into(KERNEL_FILE), { dereference: true });
  cpSync(kernel.initrd, into(INITRD_FILE), { dereference: true });
  const script = join(ctx.paths.work, 'node-boot.txt');
  writeFileSync(script, nodeBootScript(cmdline));
  const uimg = entryInRoot(root, 'tftpboot/boot.scr.uimg');
  rmSync(uimg, { force: true });
  await ctx.run('mkimage', ['-A', 'arm64', '-O', 'linux', '-T', 'script', '-C', 'none', '-n', 'build-image verify node', '-d', script, uimg]);
  ctx.log.line(`node: boots ${KERNEL_FILE} and ${INITRD_FILE} from /tftpboot/${NODE.serial}/ with: ${cmdline.trim()} console=ttyAMA0`);
}

/** Shell run on the pimaster that runs `command` on the node, as the agent reaches nodes. */
function onNode(ip: string, command: string): string {
  return `ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 root@${ip} ${quote(command)}`;
}

export interface NodeRun {
  pimaster: SshTarget;
  /** The pimaster's forwarded agent API port on 127.0.0.1. */
  agentPort: number;
  facts: GuestFacts;
  /** The socket the pimaster listens on for the cluster link. */
  clusterPort: number;
  console: string;
  timeoutS: number;
  /** Run a shell command on the pimaster. */
  run(command: string, timeoutMs?: number): Promise<{ ok: boolean; out: string }>;
}

/** Register the node through the agent's API, with the token the pimaster's first boot made. */
async function register(ctx: BuildContext, node: NodeRun, ip: string): Promise<CheckResult> {
  const token = await node.run(`python3 -c 'import json; print(json.load(open("/root/piseduce_agent/config_agent.json"))["auth_token"][0])'`);
  if (!token.ok) return { name: 'node registered through the agent API', ok: false, saw: `no agent token: ${token.out}` };
  const body = { token: token.out.trim(), name: NODE.name, ip, mac_address: NODE.mac };
  let answer: string;
  try {
    const response = await fetch(`http://127.0.0.1:${node.agentPort}/v1/admin/add/client`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.any([ctx.signal, AbortSignal.timeout(60_000)]),
    });
    answer = (await response.text()).trim();
  } catch (error) {
    return { name: 'node registered through the agent API', ok: false, saw: `no answer from the agent: ${(error as Error).message}` };
  }
  const line = await node.run(`grep -x 'dhcp-host=${NODE.mac},${NODE.name},${ip}' /etc/dnsmasq.conf && systemctl is-active dnsmasq`);
  return {
    name: 'node registered through the agent API',
    ok: /"client"/.test(answer) && line.ok,
    saw: `${answer}; dnsmasq.conf: ${line.out.split('\n')[0] || 'no dhcp-host line'}`,
  };
}

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

/** Boot the node, run its checks, boot it again and check its keys stayed; power it off. */
export async function runNode(ctx: BuildContext, node: NodeRun, runCheck: (check: Check) => Promise<CheckResult>): Promise<CheckResult[]> {
  const ip = nodeAddress(node.facts);
  const results: CheckResult[] = [await register(ctx, node, ip)];
  if (!results[0]!.ok) return results;
  const dir = await node.run(
    `rm -rf /tftpboot/${NODE.serial} && mkdir /tftpboot/${NODE.serial} && for f in /tftpboot/rpiboot_uboot/*; do ln -s "$f" /tftpboot/${NODE.serial}/; done && ls /tftpboot/${NODE.serial} | wc -l`,
  );
  results.push({
    name: `node's TFTP directory /tftpboot/${NODE.serial}/ (links to rpiboot_uboot/, as the agent's deploy makes it)`,
    ok: dir.ok,
    saw: dir.ok ? `${dir.out.trim()} links` : dir.out,
  });
  if (!dir.ok) return results;
  let firstKeys = '';
  for (const boot of [1, 2]) {
    const started = performance.now();
    const guest = await startGuest(ctx, {
      arch: 'arm64',
      boot: { firmware: U_BOOT },
      console: node.console,
      memoryMiB: 1024,
      cluster: { port: node.clusterPort, listen: false, mac: NODE.mac },
    });
    const up = await waitForNode(ctx, node, guest, ip);
    const seconds = Math.round((performance.now() - started) / 100) / 10;
    results.push({
      name: `node boot ${boot}: U-Boot, DHCP, TFTP, NFS root, SSH from the pimaster`,
      ok: up,
      saw: up
        ? `SSH answered ${seconds} s after power-on`
        : `no SSH within ${node.timeoutS} s${guest.exit ? ` (QEMU ${guest.exit})` : ''}: see ${node.console}`,
    });
    if (!up) break;
    if (boot === 1) {
      for (const check of nodeChecks(ip, node.facts, await firstEnvironment(node))) results.push(await runCheck(check));
      firstKeys = (await node.run(onNode(ip, 'cat /etc/ssh/ssh_host_*_key.pub | sort'))).out;
    } else {
      const keys = (await node.run(onNode(ip, 'cat /etc/ssh/ssh_host_*_key.pub | sort'))).out;
      results.push({
        name: 'node: the same SSH host keys at its second boot',
        ok: keys !== '' && keys === firstKeys,
        saw: keys === firstKeys ? `${keys.trim().split('\n').length} keys unchanged` : 'the keys changed',
      });
    }
    await node.run(onNode(ip, 'systemctl poweroff --no-block'));
    if (!(await Promise.race([guest.stopped.then(() => true), sleep(120_000, false, { signal: ctx.signal })])))
      ctx.log.line('the node did not power off in time: its QEMU is stopped');
  }
  return results;
}

async function firstEnvironment(node: NodeRun): Promise<string | undefined> {
  const r = await node.run('ls /root/environments | head -n1');
  return r.ok && r.out.trim() ? r.out.trim() : undefined;
}
