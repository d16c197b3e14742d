/**
 * The PoE switch stand-in for real: net-snmp's snmpd in the cluster link's network namespace,
 * asked by net-snmp's snmpwalk and snmpset as the PiSeduce agent asks (lib/switch_snmp.py), from
 * inside that namespace; and nothing of it left once the run ends, whether it passed or failed.
 */

import { readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import type { BuildContext, Stage } from '../../engine/stage.ts';
import { parseIpv4Cidr } from '../../lib/net.ts';
import { type ClusterLink, createClusterLink, inNetns } from '../../lib/qemu/cluster-link.ts';
import { type PoeSwitch, startPoeSwitch } from '../../lib/qemu/poe-switch.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';

const address = { ...parseIpv4Cidr('48.48.0.254/24'), interface: 'eth0' };

/** What is left of a link once its run ended: its namespace, and processes still inside it. */
async function leftOf(ns: string): Promise<string[]> {
  const left: string[] = [];
  if ((await execa('ip', ['netns', 'list'])).stdout.split('\n').some((l) => l.split(' ')[0] === ns)) left.push(`namespace ${ns}`);
  const pids = await execa('ip', ['netns', 'pids', ns], { reject: false });
  if (pids.stdout.trim()) left.push(`processes ${pids.stdout.trim()}`);
  return left;
}

function stage(body: (ctx: BuildContext<PimasterConfig>) => Promise<void>): Stage<PimasterConfig> {
  return { name: 'switch', describe: () => 'the PoE switch stand-in', options: [], run: body };
}

test('snmpwalk lists the ports, snmpset powers one on and off, as the agent asks; nothing is left after', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let link: ClusterLink | undefined;
  let sw: PoeSwitch | undefined;
  const power: string[] = [];
  const seen: Record<string, string> = {};
  await runStages(
    [
      stage(async (ctx) => {
        link = await createClusterLink(ctx, address);
        sw = await startPoeSwitch(ctx, { link, community: 'piseduce', ports: 4, onPower: (p, on) => power.push(`${p}:${on ? 'on' : 'off'}`) });
        const snmp = (tool: string, ...args: string[]) =>
          execa(...inNetns(link!.ns, tool, ['-v2c', '-c', 'piseduce', '-On', link!.switchAddress, ...args]), { reject: false });
        // The switch sees the host's mounts as they change: a private copy would keep a build's root
        // filesystem mounted after the build unmounts it (ip netns exec makes one).
        const pids = (await execa('ip', ['netns', 'pids', link.ns])).stdout.split('\n').filter(Boolean);
        seen.mountNamespaces = [...new Set(pids.map((pid) => readlinkSync(`/proc/${pid}/ns/mnt`)))].join(' ');
        const parent = sw.firstPortOid.slice(0, sw.firstPortOid.lastIndexOf('.'));
        seen.walk = (await snmp('snmpwalk', parent)).stdout;
        seen.on = (await snmp('snmpset', `${sw.firstPortOid.replace(/\.1$/, '.3')}`, 'i', '1')).stdout;
        seen.after = (await snmp('snmpwalk', parent)).stdout;
        seen.off = (await snmp('snmpset', `${sw.firstPortOid.replace(/\.1$/, '.3')}`, 'i', '2')).stdout;
        seen.badCommunity = String(
          (
            await execa(...inNetns(link!.ns, 'snmpset', ['-v2c', '-c', 'public', '-t', '1', '-r', '0', link!.switchAddress, sw.firstPortOid, 'i', '1']), {
              reject: false,
            })
          ).exitCode,
        );
        seen.fromHost = String(
          (await execa('snmpwalk', ['-v2c', '-c', 'piseduce', '-t', '1', '-r', '0', link!.switchAddress, parent], { reject: false })).exitCode,
        );
      }),
    ],
    testConfig(dir),
  );
  t.is(link!.switchAddress, '48.48.0.253');
  t.is(seen.mountNamespaces, readlinkSync('/proc/self/ns/mnt'), "snmpd runs in the host's mount namespace");
  t.is(seen.walk, [1, 2, 3, 4].map((p) => `.1.3.6.1.2.1.105.1.1.1.3.1.${p} = INTEGER: 2`).join('\n'), 'four ports, all off');
  t.regex(seen.on!, /\.3 = INTEGER: 1$/);
  t.regex(seen.after!, /\.1\.3 = INTEGER: 1\n/);
  t.regex(seen.off!, /\.3 = INTEGER: 2$/);
  t.deepEqual(power, ['3:on', '3:off']);
  t.deepEqual(
    sw!.events.map((e) => `${e.port}:${e.on}`),
    ['3:true', '3:false'],
  );
  t.not(seen.badCommunity, '0', 'a set with another community is refused');
  t.not(seen.fromHost, '0', "the switch is not reachable from the host's network");
  t.deepEqual(await leftOf(link!.ns), []);
});

test('a run that fails with the switch up leaves no namespace and no snmpd', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let ns = '';
  const failed = await t.throwsAsync(
    runStages(
      [
        stage(async (ctx) => {
          const link = await createClusterLink(ctx, address);
          ns = link.ns;
          await startPoeSwitch(ctx, { link, community: 'piseduce', ports: 2, onPower: () => {} });
          throw new Error('a deliberate failure');
        }),
      ],
      testConfig(dir),
    ),
  );
  t.regex(failed!.message, /a deliberate failure/);
  t.deepEqual(await leftOf(ns), []);
});

test('Ctrl-C with the switch up leaves no namespace and no snmpd', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const child = execa('node', [new URL('../fixtures/switch-child.ts', import.meta.url).pathname, join(dir, 'work')], { reject: false });
  let ns = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      const m = /^ready (\S+)$/m.exec(chunk.toString());
      if (m) {
        ns = m[1]!;
        resolve();
      }
    });
    void child.then(() => reject(new Error('the child ended before it was ready')));
  });
  child.kill('SIGINT');
  const result = await child;
  t.is(result.exitCode, 130, result.stderr);
  t.deepEqual(await leftOf(ns), []);
});
