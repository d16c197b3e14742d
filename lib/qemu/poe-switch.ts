/**
 * The PoE switch stand-in of `verify --node`: net-snmp's snmpd on the cluster link answers the
 * agent's SNMP v2c `snmpwalk` and `snmpset` as a managed PoE switch does. The ports are the
 * POWER-ETHERNET-MIB's pethPsePortAdminEnable column (RFC 3621): 1 powers a port, 2 cuts it.
 *
 * snmpd hands the column to a `pass_persist` program; ours only relays snmpd's requests to this
 * process over a Unix socket, so the table and the power actions live here: a set that turns a
 * port off stops that port's node VM, one that turns it on boots it from cold.
 */
import { appendFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { BuildContext } from '../../engine/stage.ts';
import type { ClusterLink } from './cluster-link.ts';

/** pethPsePortAdminEnable, group 1: `${POE_COLUMN}.1.<port>`. */
export const POE_COLUMN = '1.3.6.1.2.1.105.1.1.1.3';
export const POE_GROUP = 1;

export type PowerHandler = (port: number, on: boolean) => void;

export interface PowerEvent {
  at: Date;
  port: number;
  on: boolean;
  /** The line snmpd relayed, as the stand-in's log shows it. */
  request: string;
}

/**
 * The power steps that `events` since index `from` made: `port N on|off`, a set that repeats the
 * one before it left out (snmpset sends a set again when the answer is slow, and a repeated set
 * changes nothing).
 */
export function powerSteps(events: readonly PowerEvent[], from = 0): string[] {
  const steps: string[] = [];
  for (const e of events.slice(from)) {
    const step = `port ${e.port} ${e.on ? 'on' : 'off'}`;
    if (steps.at(-1) !== step) steps.push(step);
  }
  return steps;
}

function parseOid(oid: string): number[] {
  return oid.replace(/^\./, '').split('.').filter(Boolean).map(Number);
}

function compareOids(a: number[], b: number[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

/** The ports' admin states and the answers to snmpd's pass_persist requests about them. */
export class PoeTable {
  readonly ports: boolean[];
  readonly #onSet: PowerHandler;
  constructor(count: number, onSet: PowerHandler) {
    this.ports = Array.from({ length: count }, () => false);
    this.#onSet = onSet;
  }

  private oidOf(port: number): string {
    return `.${POE_COLUMN}.${POE_GROUP}.${port}`;
  }

  private entry(port: number): string[] {
    return [this.oidOf(port), 'integer', this.ports[port - 1] ? '1' : '2'];
  }

  /** The port an OID names exactly, or undefined. */
  portOf(oid: string): number | undefined {
    const parts = parseOid(oid);
    const column = parseOid(POE_COLUMN);
    if (parts.length !== column.length + 2 || compareOids(parts.slice(0, column.length), column) !== 0 || parts[column.length] !== POE_GROUP) return undefined;
    const port = parts.at(-1)!;
    return port >= 1 && port <= this.ports.length ? port : undefined;
  }

  get(oid: string): string[] {
    const port = this.portOf(oid);
    return port ? this.entry(port) : ['NONE'];
  }

  getNext(oid: string): string[] {
    const after = parseOid(oid);
    for (let port = 1; port <= this.ports.length; port++) if (compareOids(parseOid(this.oidOf(port)), after) > 0) return this.entry(port);
    return ['NONE'];
  }

  set(oid: string, value: string): string[] {
    const port = this.portOf(oid);
    if (!port) return ['not-writable'];
    const [type, number] = value.trim().split(/\s+/);
    if (type !== 'integer') return ['wrong-type'];
    if (number !== '1' && number !== '2') return ['wrong-value'];
    const on = number === '1';
    this.ports[port - 1] = on;
    this.#onSet(port, on);
    return ['DONE'];
  }
}

/**
 * snmpd's pass_persist protocol (snmpd.conf(5)): PING → PONG; `get`/`getnext` and an OID → the OID,
 * its type and value, or NONE; `set`, an OID and `TYPE VALUE` → DONE or an error. Fed chunks of
 * the stream, it answers each complete request.
 */
export class PassPersist {
  #buffered = '';
  readonly #table: PoeTable;
  readonly #log: (line: string) => void;
  constructor(table: PoeTable, log: (line: string) => void = () => {}) {
    this.#table = table;
    this.#log = log;
  }

  feed(chunk: string): string {
    this.#buffered += chunk;
    const out: string[] = [];
    for (;;) {
      const lines = this.#buffered.split('\n');
      const command = lines[0]!.trim();
      const needs = command === 'set' ? 3 : command === 'get' || command === 'getnext' ? 2 : 1;
      if (lines.length <= needs) break;
      const request = lines.slice(0, needs).map((l) => l.trim());
      this.#buffered = lines.slice(needs).join('\n');
      let answer: string[];
      if (command === 'PING') answer = ['PONG'];
      else if (command === 'get') answer = this.#table.get(request[1]!);
      else if (command === 'getnext') answer = this.#table.getNext(request[1]!);
      else if (command === 'set') answer = this.#table.set(request[1]!, request[2]!);
      else if (command === '') continue;
      else answer = ['NONE'];
      this.#log(`${request.join(' ')} -> ${answer.join(' ')}`);
      out.push(...answer);
    }
    return out.length ? `${out.join('\n')}\n` : '';
  }
}

export interface PoeSwitchSpec {
  link: ClusterLink;
  community: string;
  ports: number;
  onPower: PowerHandler;
}

export interface PoeSwitch {
  address: string;
  community: string;
  /** The OID the agent is given (port 1's; it walks the column above it). */
  firstPortOid: string;
  events: PowerEvent[];
  /** The stand-in's log: snmpd's own lines and every request relayed. */
  log: string;
  table: PoeTable;
}

/** Start snmpd in the link's namespace, on the link's switch address; stopped by the clean-up stack. */
export async function startPoeSwitch(ctx: BuildContext, spec: PoeSwitchSpec): Promise<PoeSwitch> {
  const dir = spec.link.dir;
  const log = join(dir, 'poe-switch.log');
  const socket = join(dir, 'poe.sock');
  const relay = join(dir, 'poe-relay');
  const events: PowerEvent[] = [];
  let last = '';
  const table = new PoeTable(spec.ports, (port, on) => {
    events.push({ at: new Date(), port, on, request: last });
    spec.onPower(port, on);
  });
  const note = (line: string) => {
    last = line;
    appendFileSync(log, `${new Date().toISOString()} ${line}\n`);
  };
  const server: Server = createServer((connection: Socket) => {
    const session = new PassPersist(table, note);
    connection.setEncoding('utf8');
    connection.on('data', (chunk: string) => {
      const answer = session.feed(chunk);
      if (answer) connection.write(answer);
    });
    connection.on('error', () => {});
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(socket, resolve));
  ctx.defer('stop the PoE switch stand-in socket', () => new Promise<void>((resolve) => server.close(() => resolve())));

  // snmpd runs the relay as root inside the namespace: it only joins its standard streams to the socket.
  writeFileSync(
    relay,
    `#!/bin/sh\nexec ${process.execPath} -e 'const s = require("node:net").connect(process.argv[1]); process.stdin.pipe(s).pipe(process.stdout); s.on("close", () => process.exit(0))' ${socket}\n`,
    { mode: 0o755 },
  );
  const conf = join(dir, 'snmpd.conf');
  writeFileSync(
    conf,
    [`agentAddress udp:${spec.link.switchAddress}:161`, `rwcommunity ${spec.community} ${spec.link.subnet}`, `pass_persist .${POE_COLUMN} ${relay}`, ''].join(
      '\n',
    ),
  );
  await spec.link.spawn(ctx, 'snmpd', ['-f', '-C', '-c', conf, '-Lf', log, '-p', join(dir, 'snmpd.pid'), '-I', '-smux'], {
    env: { SNMP_PERSISTENT_DIR: join(dir, 'snmp'), MIBS: '' },
    ready: { udpPort: 161 },
  });
  return {
    address: spec.link.switchAddress,
    community: spec.community,
    firstPortOid: `${POE_COLUMN}.${POE_GROUP}.1`,
    events,
    log,
    table,
  };
}
