/**
 * Checks run against the booted guest. Most are one shell command run on the guest over SSH: it
 * passes when it exits 0, and its last line of output is what it saw. A few are run from the host
 * (an HTTP request through a forwarded port), which proves the service is reachable from outside.
 */
import { readFileSync } from 'node:fs';
import { ConfigError } from '../../engine/errors.ts';
import { quote } from '../../engine/exec.ts';
import type { GuestFacts } from './facts.ts';

export interface Check {
  name: string;
  /** Shell run on the guest (as the SSH user, by its login shell). */
  command?: string;
  /** Or a probe run on the host, given the host port a guest port is forwarded to. */
  probe?: (hostPort: (guestPort: number) => number) => Promise<{ ok: boolean; saw: string }>;
  /** Seconds before the check is given up as failed. */
  timeoutS?: number;
}

export interface CheckResult {
  name: string;
  ok: boolean;
  saw: string;
}

/**
 * Checks for any image: it booted cleanly, and is what its files said it would be. On a disk
 * larger than the image (`grown`: the image grows its root at the first boot, or --card-size),
 * that the root filled it, and that the image's swap started.
 */
export function systemChecks(facts: GuestFacts, grown = false): Check[] {
  const checks: Check[] = [
    {
      // First: the checks after it see a system that has finished starting.
      name: 'systemd: every unit started, none failed',
      command:
        's=$(systemctl is-system-running --wait); f=$(systemctl --failed --no-legend --plain | awk \'{print $1}\' | paste -sd" "); echo "$s${f:+ (failed: $f)}"; [ "$s" = running ]',
      timeoutS: 300,
    },
    { name: `hostname is ${facts.hostname}`, command: `h=$(hostname); echo "$h"; [ "$h" = ${quote(facts.hostname)} ]` },
    {
      // A shrunk root keeps --shrink-margin free; what the first boot writes (host keys, logs,
      // first-boot files) must fit in it on a card the image's size, not only in verify's larger copy.
      name: 'the root filesystem has room left after the first boot',
      command: facts.room
        ? `used=$(( $(stat -f -c "(%b - %f) * %S" /) )); wrote=$((used - ${facts.room.preparedUsed})); left=$((${facts.room.shippedFree} - wrote)); ` +
          `echo "the first boot wrote $((wrote / 1048576)) MiB: $((left / 1048576)) MiB of the $((${facts.room.shippedFree} / 1048576)) MiB the image ships free would be left on a card its size"; [ "$left" -ge 16777216 ]`
        : 'free=$(( $(stat -f -c "%f * %S" /) )); echo "$((free / 1048576)) MiB free"; [ "$free" -ge 16777216 ]',
    },
  ];
  const a = facts.address;
  if (a) {
    const want = `${a.address}/${a.prefix}`;
    checks.push({
      name: `${a.interface} has ${want}`,
      command: `ip -4 -o addr show dev ${quote(a.interface)} | awk '{print $4}' | paste -sd" "; ip -4 -o addr show dev ${quote(a.interface)} | grep -qF ${quote(` ${want} `)}`,
    });
  }
  if (grown) {
    checks.push({
      name: 'the root grew to the end of its disk at the first boot',
      command:
        'src=$(findmnt -no SOURCE /); part=$(basename "$src"); disk=/dev/$(lsblk -no PKNAME "$src"); size=$(blockdev --getsize64 "$src"); ' +
        'end=$(( $(cat /sys/class/block/$part/start) * 512 + size )); total=$(blockdev --getsize64 "$disk"); fs=$(df -B1 --output=size / | tail -n1 | tr -d " "); ' +
        'echo "partition ends $(( (total - end) / 1048576 )) MiB before the end of the ${total}-byte disk; filesystem ${fs} bytes of ${size}"; ' +
        '[ $((total - end)) -lt 16777216 ] && [ "$fs" -gt $((size * 9 / 10)) ]',
    });
    if (facts.swap.length > 0)
      checks.push({
        name: `swap is on (${facts.swap.join(', ')})`,
        command: 'swapon --noheadings --show=NAME,TYPE,SIZE | tr -s " " | paste -sd";" | sed "s/;/; /g"; [ -n "$(swapon --noheadings --show=NAME)" ]',
      });
  }
  return checks;
}

/** The user's --checks file: one shell command a line; blank lines and # comments skipped. */
export function readChecksFile(path: string): Check[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`--checks ${path}: cannot read it (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
  const checks = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((command) => ({ name: command, command }));
  if (checks.length === 0) throw new ConfigError(`--checks ${path}: holds no command (one shell command a line)`);
  return checks;
}

/** The last line of a command's output, short enough for one line of the report. */
export function lastLine(output: string, max = 120): string {
  const line =
    output
      .trim()
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .at(-1) ?? '(no output)';
  return line.length > max ? `${line.slice(0, max - 3)}...` : line;
}

/** An HTTP request to a guest port: any HTTP answer passes (a login page, a 401, a redirect). */
export function httpCheck(name: string, guestPort: number, path = '/'): Check {
  return {
    name,
    async probe(hostPort) {
      try {
        const response = await fetch(`http://127.0.0.1:${hostPort(guestPort)}${path}`, { redirect: 'manual', signal: AbortSignal.timeout(30_000) });
        await response.body?.cancel();
        return { ok: response.status < 500, saw: `HTTP ${response.status} ${response.statusText} for GET ${path} on port ${guestPort}` };
      } catch (error) {
        const cause = (error as { cause?: { code?: string } }).cause?.code;
        return { ok: false, saw: `no HTTP answer on port ${guestPort} (${cause ?? (error as Error).message})` };
      }
    },
  };
}

export function formatResults(results: readonly CheckResult[]): string {
  const width = Math.min(60, Math.max(...results.map((r) => r.name.length)));
  return results.map((r) => `${r.ok ? 'PASS' : 'FAIL'}  ${r.name.padEnd(width)}  ${r.saw}`).join('\n');
}

export interface RpcService {
  label: string;
  port: number;
  program: number;
  version: number;
}

/** NFS and rpcbind, the services that hand out the NFS root (and the root key in it). */
export const NFS_SERVICES: readonly RpcService[] = [
  { label: 'NFS', port: 2049, program: 100003, version: 4 },
  { label: 'rpcbind', port: 111, program: 100000, version: 4 },
];

/** Whether an ONC RPC server answers a NULL call (TCP, record-marked) on a host port within `ms`. */
async function rpcAnswers(hostPort: number, service: RpcService, ms = 5000): Promise<boolean> {
  const xid = 0x62756964;
  const call = Buffer.alloc(44);
  call.writeUInt32BE(0x80000000 + 40, 0); // the last (only) fragment, 40 bytes
  for (const [i, word] of [xid, 0, 2, service.program, service.version, 0, 0, 0, 0, 0].entries()) call.writeUInt32BE(word, 4 + i * 4);
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const socket = connect(hostPort, '127.0.0.1');
    let reply = Buffer.alloc(0);
    const done = (answered: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answered);
    };
    const timer = setTimeout(() => done(false), ms);
    socket.on('connect', () => socket.write(call));
    socket.on('data', (chunk: Buffer) => {
      reply = Buffer.concat([reply, chunk]);
      if (reply.length >= 12) done(reply.readUInt32BE(4) === xid && reply.readUInt32BE(8) === 1);
    });
    socket.on('error', () => done(false));
    socket.on('close', () => done(false));
  });
}

/**
 * RPC services probed from the host through forwarded ports: `answers` where the host stands on
 * the cluster network, silent where it stands on the pimaster's uplink.
 */
export function rpcCheck(name: string, services: readonly RpcService[], expect: 'answers' | 'silent'): Check {
  return {
    name,
    async probe(hostPort) {
      const answered = await Promise.all(services.map((s) => rpcAnswers(hostPort(s.port), s)));
      const saw = services.map((s, i) => `${s.label} (${s.port}): ${answered[i] ? 'answered' : 'no answer in 5 s'}`).join(', ');
      return { ok: answered.every((a) => a === (expect === 'answers')), saw };
    },
  };
}
