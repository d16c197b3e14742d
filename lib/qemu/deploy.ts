/**
 * `verify --deploy ENV`: after the node's first boot (node.ts), the whole PiSeduce cycle driven
 * through the agent's own API only, as an administrator and then a user drive it:
 *
 *   admin    the environment (already in /root/environments, see environment.ts) registered
 *            with /v1/admin/add/environment
 *   user     /v1/user/reserve the node, /v1/user/configure, /v1/user/deploy it with the user's
 *            RSA key, /v1/user/node/state polled until `deployed` (or `lost`); the agent's own
 *            log (info_exec.log) gives each state it went through, with its time
 *   checks   the SNMP sets the switch stand-in saw, the SD card's partitions, the root on
 *            mmcblk0p2, the host name, the user's key, the cmdline.txt edits
 *   destroy  /v1/user/destroy, polled until the reservation is gone: the node's port off, its
 *            TFTP directory removed
 *
 * The agent does the rest itself: it powers the node off and on over SNMP, waits for its NFS boot,
 * streams the environment onto /dev/mmcblk0, repartitions and resizes it, edits cmdline.txt,
 * copies the boot files into /tftpboot/<serial>/ and reboots the node into its SD card.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BuildContext } from '../../engine/stage.ts';
import type { CheckResult } from './checks.ts';
import type { DeployEnvironment } from './environment.ts';
import { consoleTail } from './guest.ts';
import { NODE, type NodeSession, onNode, SWITCH } from './node.ts';
import { powerSteps } from './poe-switch.ts';

/** The deploy's states in the agent's order (raspberry/states.py), and destroy's. */
export const DEPLOY_STATES = [
  'boot_conf',
  'turn_off',
  'turn_on',
  'ssh_test',
  'env_copy',
  'env_check',
  'delete_partition',
  'create_partition',
  'mount_partition',
  'resize_partition',
  'wait_resizing',
  'system_conf',
  'boot_files',
  'ssh_test',
  'user_conf',
  'deployed',
] as const;
export const DESTROY_STATES = ['destroying', 'turn_off', 'destroyed'] as const;

export const DEPLOY_USER = 'verify@build-image.local';

export interface DeploySpec {
  environment: DeployEnvironment;
  /** The user's key pair (an RSA key: the agent installs only keys longer than 256 characters). */
  userKey: string;
  /** How long the deploy, then the destroy, may take. */
  timeoutS: number;
}

/**
 * The node's states from the agent's log, each with the time it was first seen: the states it
 * moves to (`[node] changes to the 'X' state`) and those it runs (`successfully executes
 * 'X_exec'`: a process's first state, destroy's `destroying`, is set without a move).
 */
export function statesFromLog(log: string, node: string): Array<{ state: string; at: string }> {
  const out: Array<{ state: string; at: string }> = [];
  for (const line of log.split('\n')) {
    const m = /^(\S+ \S+) INFO\s+\[(.+?)\] (?:changes to the '(.+)' state|successfully executes '(.+)_(?:exec|post)')$/.exec(line);
    if (!m || m[2] !== node) continue;
    const state = (m[3] ?? m[4])!.replace(/_(exec|post)$/, '');
    // A state run after the move to it is the same state; a move to it again (a retry) is not.
    if (m[4] !== undefined && out.at(-1)?.state === state) continue;
    out.push({ state, at: m[1]! });
  }
  return out;
}

/** The states as `name (+seconds since the first)`. */
function timeline(states: Array<{ state: string; at: string }>): string {
  const t0 = states[0] ? Date.parse(`${states[0].at.replace(' ', 'T')}Z`) : 0;
  return states.map((s) => `${s.state} +${Math.round((Date.parse(`${s.at.replace(' ', 'T')}Z`) - t0) / 1000)}s`).join(', ');
}

/** Whether `seen` holds `want` in order (a state seen again after a retry is allowed). */
function inOrder(seen: readonly string[], want: readonly string[]): boolean {
  let i = 0;
  for (const state of seen) if (state === want[i]) i++;
  return i === want.length;
}

export async function runDeploy(ctx: BuildContext, session: NodeSession, spec: DeploySpec): Promise<CheckResult[]> {
  const { agent, node, ip, sw, power } = session;
  const env = spec.environment;
  const results: CheckResult[] = [];
  const add = await agent.post('/v1/admin/add/environment', {
    name: env.name,
    img_name: env.imgName,
    img_size: env.imgSize,
    sector_start: env.sectorStart,
    ssh_user: env.sshUser,
    web: false,
    state: 'available',
  });
  results.push({ name: `environment ${env.name} registered through the agent API`, ok: add.ok && add.json?.environment === env.name, saw: add.text });
  if (!results.at(-1)!.ok) return results;

  const logLines = Number((await node.run('wc -l < /root/piseduce_agent/info_exec.log')).out.trim()) || 0;
  const reserve = await agent.post('/v1/user/reserve', {
    user: DEPLOY_USER,
    filter: { nb_nodes: 1, name: NODE.name },
    // The agent starts a deploy once its start date is past.
    start_date: Math.floor(Date.now() / 1000) - 60,
    duration: 2,
  });
  const configure = await agent.post('/v1/user/configure', { user: DEPLOY_USER });
  const publicKey = readFileSync(`${spec.userKey}.pub`, 'utf8').trim();
  const deploy = await agent.post('/v1/user/deploy', {
    user: DEPLOY_USER,
    nodes: { [NODE.name]: { node_bin: 'verify', environment: env.name, part_size: 'whole', form_ssh_key: publicKey } },
  });
  const reserved = (reserve.json?.nodes as string[] | undefined)?.includes(NODE.name) ?? false;
  const offered = JSON.stringify(configure.json ?? {}).includes(env.name);
  const ready = (deploy.json?.[NODE.name] as { state?: string } | undefined)?.state === 'ready';
  results.push({
    name: `as ${DEPLOY_USER}: the node reserved, the environment offered in its form, the deploy asked`,
    ok: reserved && offered && ready,
    saw: `reserve: ${reserve.text}; configure ${offered ? `offers ${env.name}` : configure.text}; deploy: ${deploy.text}`,
  });
  if (!results.at(-1)!.ok) return results;

  const from = sw.events.length;
  let keysChecked = false;
  const deployed = await pollState(
    ctx,
    session,
    spec.timeoutS,
    (state) => state === 'deployed' || state === 'lost',
    (state) => {
      // While the node still runs the NFS root (the copy), its host keys are those of its first boot.
      if (state === 'env_check' && !keysChecked) {
        keysChecked = true;
        return node.run(onNode(ip, 'cat /etc/ssh/ssh_host_*_key.pub | sort')).then((r) => {
          results.push({
            name: 'node: the same SSH host keys at its second NFS boot (the deploy powered it off and on)',
            ok: r.out !== '' && r.out === session.firstKeys,
            saw: r.out === session.firstKeys ? `${r.out.trim().split('\n').length} keys unchanged` : 'the keys changed',
          });
        });
      }
      return undefined;
    },
  );
  const log = (await node.run(`tail -n +${logLines + 1} /root/piseduce_agent/info_exec.log`, 60_000)).out;
  const states = statesFromLog(log, NODE.name);
  results.push({
    name: `deploy: the agent went through every state in order to ${deployed.state}`,
    ok:
      deployed.state === 'deployed' &&
      inOrder(
        states.map((s) => s.state),
        DEPLOY_STATES,
      ),
    saw:
      deployed.state === 'deployed'
        ? timeline(states)
        : `${deployed.state} after ${deployed.seconds} s in ${states.at(-1)?.state ?? 'no state'}; the agent's log:\n${agentLines(log)}\n` +
          `the node's power: ${power.error ? `failed: ${power.error}` : `QEMU ${power.guest?.exit ?? 'running'}`}, ${power.reboots} reboots of its own\n` +
          `the node's console (${node.console}):\n${consoleTail(node.console, 0, 15)}\nthe switch stand-in's log (${sw.log}):\n${consoleTail(sw.log, 0, 6)}\n` +
          `the pimaster's console: ${join(dirname(node.console), 'console.log')}`,
  });
  const sets = powerSteps(sw.events, from);
  // turn_off then turn_on; again for each hard reboot the agent chose (a node slow to answer ping).
  const cycle = [`port ${SWITCH.nodePort} off`, `port ${SWITCH.nodePort} on`];
  results.push({
    name: "deploy: the stand-in saw the agent's SNMP sets for turn_off and turn_on",
    ok: sets.length >= 2 && sets.length % 2 === 0 && sets.every((set, i) => set === cycle[i % 2]),
    saw: sets.join(', ') || 'no SNMP set',
  });
  if (deployed.state !== 'deployed') return results;

  const key = '/root/.verify-user-key';
  const copied = await node.run(`cat > ${key} <<'EOF'\n${readFileSync(spec.userKey, 'utf8').trim()}\nEOF\nchmod 600 ${key}`);
  const checks: Array<{ name: string; command: string }> = [
    {
      name: "deployed node: the SD card holds the environment, its root partition grown to the card's end",
      command: onNode(
        ip,
        `b=/sys/block/mmcblk0; start=$(cat $b/mmcblk0p2/start); end=$((start + $(cat $b/mmcblk0p2/size))); size=$(cat $b/size); ` +
          `echo "partitions: $(ls -d $b/mmcblk0p* | wc -l); p2 from sector $start to $end of $size"; [ "$start" = ${env.sectorStart} ] && [ "$end" -ge $((size - 2048)) ] && [ ! -e $b/mmcblk0p3 ]`,
      ),
    },
    {
      name: 'deployed node: the root is /dev/mmcblk0p2 (not NFS), its filesystem resized',
      command: onNode(ip, 'findmnt -no SOURCE,FSTYPE,SIZE / | tr -s " "; findmnt -no SOURCE / | grep -qx /dev/mmcblk0p2'),
    },
    { name: `deployed node: host name ${NODE.name}`, command: `h=$(${onNode(ip, 'cat /etc/hostname')}); echo "$h"; [ "$h" = ${NODE.name} ]` },
    {
      name: `deployed node: the user's key logs in as ${env.sshUser}`,
      command: `ssh -i ${key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR ${env.sshUser}@${ip} 'echo "$(whoami)@$(hostname)"'`,
    },
    {
      name: "deploy's cmdline.txt edits: no init= on the card's boot partition, the same file in /tftpboot/<serial>/",
      command:
        `c=$(${onNode(ip, 'cat /boot/firmware/cmdline.txt 2>/dev/null || cat /boot/cmdline.txt')}); t=$(cat /tftpboot/${NODE.serial}/cmdline.txt); echo "$c" | cut -c1-120; ` +
        `[ -n "$c" ] && [ "$c" = "$t" ] && ! echo "$c" | grep -q 'init='`,
    },
  ];
  if (!copied.ok) results.push({ name: "the user's key copied to the pimaster", ok: false, saw: copied.out });
  for (const check of checks) {
    const r = await node.run(check.command, 120_000);
    results.push({ name: check.name, ok: r.ok, saw: r.out.trim().split('\n').at(-1) ?? '' });
  }
  await node.run(`rm -f ${key}`);

  // Destroy: the reservation ends, the node is powered off, its TFTP directory removed.
  const destroyFrom = sw.events.length;
  const destroyLog = Number((await node.run('wc -l < /root/piseduce_agent/info_exec.log')).out.trim()) || 0;
  const destroy = await agent.post('/v1/user/destroy', { user: DEPLOY_USER, nodes: [NODE.name] });
  const gone = await pollState(ctx, session, spec.timeoutS, (state) => state === undefined || state === 'lost');
  const destroyStates = statesFromLog((await node.run(`tail -n +${destroyLog + 1} /root/piseduce_agent/info_exec.log`)).out, NODE.name);
  const dir = await node.run(`test -e /tftpboot/${NODE.serial} && echo present || echo removed`);
  await power.settled();
  const offSets = powerSteps(sw.events, destroyFrom);
  results.push({
    name: "destroy: the agent's states in order, the node's port off, its TFTP directory removed (its next deploy boots NFS again)",
    ok:
      destroy.ok &&
      gone.state === undefined &&
      inOrder(
        destroyStates.map((s) => s.state),
        DESTROY_STATES,
      ) &&
      offSets.join() === `port ${SWITCH.nodePort} off` &&
      dir.out.trim() === 'removed' &&
      power.guest?.exit !== undefined,
    saw: `${timeline(destroyStates) || gone.state || 'no state'}; SNMP: ${offSets.join(', ') || 'none'}; QEMU ${power.guest?.exit ?? 'still running'}; /tftpboot/${NODE.serial}: ${dir.out.trim()}`,
  });
  return results;
}

/** The node's state as the user API gives it, polled until `done` says so or time runs out. */
async function pollState(
  ctx: BuildContext,
  session: NodeSession,
  timeoutS: number,
  done: (state: string | undefined) => boolean,
  onState?: (state: string) => Promise<void> | undefined,
): Promise<{ state: string | undefined; seconds: number }> {
  const started = Date.now();
  let last: string | undefined = 'unknown';
  while (Date.now() - started < timeoutS * 1000) {
    const r = await session.agent.post('/v1/user/node/state', { nodes: [NODE.name] });
    const state: string | undefined = r.ok ? (r.json?.nodes as Record<string, { state: string }> | undefined)?.[NODE.name]?.state : last;
    if (state !== last) {
      ctx.status(`deploy: ${state ?? 'no reservation'}`);
      last = state;
    }
    if (done(state)) return { state, seconds: Math.round((Date.now() - started) / 1000) };
    if (state) await onState?.(state);
    await sleep(2000, undefined, { signal: ctx.signal });
  }
  return { state: `no end within ${timeoutS} s (last: ${last ?? 'none'})`, seconds: timeoutS };
}

/** The agent's log lines about the node, the last 30 (what a failing deploy shows). */
function agentLines(log: string): string {
  return log
    .split('\n')
    .filter((l) => l.includes(`[${NODE.name}]`) || /ERROR|Traceback/.test(l))
    .slice(-30)
    .map((l) => `  | ${l}`)
    .join('\n');
}
