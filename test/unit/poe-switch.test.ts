/** The PoE switch stand-in's table and snmpd's pass_persist protocol, without snmpd. */
import test from 'ava';
import { PassPersist, POE_COLUMN, PoeTable, powerSteps } from '../../lib/qemu/poe-switch.ts';

const port = (n: number) => `.${POE_COLUMN}.1.${n}`;

test('get, getnext and set answer as pass_persist expects; a set powers the port', (t) => {
  const power: string[] = [];
  const table = new PoeTable(3, (p, on) => power.push(`${p}:${on ? 'on' : 'off'}`));
  const session = new PassPersist(table);
  t.is(session.feed('PING\n'), 'PONG\n');
  t.is(session.feed(`get\n${port(2)}\n`), `${port(2)}\ninteger\n2\n`, 'ports start off');
  // A walk of the column: getnext from the column itself, then from each port, until NONE.
  t.is(session.feed(`getnext\n.${POE_COLUMN}\n`), `${port(1)}\ninteger\n2\n`);
  t.is(session.feed(`getnext\n${port(3)}\n`), 'NONE\n');
  t.is(session.feed(`set\n${port(2)}\ninteger 1\n`), 'DONE\n');
  t.deepEqual(power, ['2:on']);
  t.is(session.feed(`getnext\n${port(1)}\n`), `${port(2)}\ninteger\n1\n`);
  t.is(session.feed(`set\n${port(2)}\ninteger 2\n`), 'DONE\n');
  t.deepEqual(power, ['2:on', '2:off']);
  t.deepEqual(table.ports, [false, false, false]);
});

test('requests split across chunks are answered once complete; several in one chunk each get an answer', (t) => {
  const session = new PassPersist(new PoeTable(2, () => {}));
  t.is(session.feed('ge'), '');
  t.is(session.feed(`t\n${port(1)}`), '');
  t.is(session.feed('\nPING\nget\n'), `${port(1)}\ninteger\n2\nPONG\n`);
  t.is(session.feed(`${port(9)}\n`), 'NONE\n');
});

test('sets the switch refuses: another OID, a port it does not have, a wrong type or value', (t) => {
  const power: number[] = [];
  const session = new PassPersist(new PoeTable(2, (p) => power.push(p)));
  t.is(session.feed(`set\n.${POE_COLUMN}.2.1\ninteger 1\n`), 'not-writable\n', 'another PSE group');
  t.is(session.feed(`set\n${port(3)}\ninteger 1\n`), 'not-writable\n');
  t.is(session.feed(`set\n${port(1)}.0\ninteger 1\n`), 'not-writable\n');
  t.is(session.feed(`set\n${port(1)}\nstring "1"\n`), 'wrong-type\n');
  t.is(session.feed(`set\n${port(1)}\ninteger 3\n`), 'wrong-value\n');
  t.deepEqual(power, []);
});

test('power steps: a set snmpset sent again (a slow answer) is one step; an off after an on is another', (t) => {
  const at = new Date();
  const events = [true, false, false, true, true, false].map((on) => ({ at, port: 2, on, request: '' }));
  t.deepEqual(powerSteps(events), ['port 2 on', 'port 2 off', 'port 2 on', 'port 2 off']);
  t.deepEqual(powerSteps(events, 2), ['port 2 off', 'port 2 on', 'port 2 off']);
  t.deepEqual(powerSteps([]), []);
});
