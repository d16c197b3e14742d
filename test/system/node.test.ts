/**
 * `build-image verify --node --deploy ENV`: a cluster node, powered by the agent through the PoE
 * switch stand-in, boots from the suite's arm64 pimaster over the cluster link (U-Boot, the
 * pimaster's DHCP and TFTP, the NFS root), is reached from the pimaster with its root key as the
 * agent does, and is checked; then a user deploys an environment made by `customize` onto its SD
 * card through the agent's API, the node boots it, and the user destroys it. One pimaster boot for
 * all of it, as an 8 GB card. No QEMU process, snmpd, network namespace, loop device or copy is left, and the
 * image is untouched.
 */

import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { DEPLOY_USER } from '../../lib/qemu/deploy.ts';
import { TEST_CACHE } from '../fixtures/debian-image.ts';
import { scratch } from '../helpers/build.ts';
import { deployEnvironment } from '../helpers/deploy-environment.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';
import { pimasterBuild } from '../helpers/pimaster-build.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;

/** Processes whose command line names `dir` (both QEMUs run from there), other than the CLI. */
function processesNaming(dir: string): string[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .flatMap((pid) => {
      try {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
        return cmdline.includes(dir) && !cmdline.includes(cli) ? [`${pid}: ${cmdline.slice(0, 80)}`] : [];
      } catch {
        return [];
      }
    });
}

test.serial('a node boots from the arm64 pimaster, then a user deploys an environment onto its SD card through PiSeduce; every check passes', async (t) => {
  const environment = await deployEnvironment();
  const build = await pimasterBuild('bookworm-arm64');
  const image = `${build.image}.zst`;
  const before = statSync(image);
  const dir = scratch();
  // A failed run keeps its consoles and logs for a look (the test's output names the files).
  t.teardown(() => {
    if (t.passed) rmSync(dir, { recursive: true, force: true });
  });
  const r = await execa(
    'node',
    // The pimaster boots as an 8 GB card: it grows to it, starts its swap, has room for environments.
    [
      cli,
      'verify',
      image,
      '--node',
      '--deploy',
      environment,
      '--card-size',
      '8G',
      '--ssh-key',
      build.sshKey,
      '--work',
      join(dir, 'work'),
      '--cache',
      TEST_CACHE,
    ],
    {
      reject: false,
      env: { CI: 'true' },
    },
  );
  t.log(r.stdout);
  t.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
  for (const name of [
    'systemd: every unit started, none failed',
    'the root grew to the end of its disk at the first boot',
    'swap is on (dphys-swapfile)',
    'room for a 1 GiB environment in /root/environments',
    'node registered through the agent API',
    'PoE switch 48.48.0.253 added through the agent API',
    "node added through the agent API on the switch's port 2, serial 0e5a1c1d",
    "node's TFTP directory /tftpboot/0e5a1c1d/",
    'node boot 1: powered on by the agent over SNMP, U-Boot, DHCP, TFTP, NFS root, SSH from the pimaster',
    "the agent reads the node's port 2 as on from the switch",
    'node: every unit started, none failed',
    'node: address 48.48.0.10 (the registered one)',
    'node: root is 48.48.0.254:/nfs/raspi over NFS, with the options of cmdline.txt',
    'node: host name nfspi',
    "node: SSH host keys its own, not the pimaster's",
    "node: none of the pimaster's services runs",
    'node: streams an environment from the pimaster with rsh, as a deploy does',
    "dnsmasq's log: the node's lease and its TFTP transfers",
    "power cycle 1: the agent's SNMP sets on the switch stand-in turned the node on, then off",
    'environment raspbian_verify registered through the agent API',
    `as ${DEPLOY_USER}: the node reserved, the environment offered in its form, the deploy asked`,
    'node: the same SSH host keys at its second NFS boot (the deploy powered it off and on)',
    'deploy: the agent went through every state in order to deployed',
    "deploy: the stand-in saw the agent's SNMP sets for turn_off and turn_on",
    "deployed node: the SD card holds the environment, its root partition grown to the card's end",
    'deployed node: the root is /dev/mmcblk0p2 (not NFS), its filesystem resized',
    'deployed node: host name verify-node',
    "deployed node: the user's key logs in as root",
    "deploy's cmdline.txt edits: no init= on the card's boot partition, the same file in /tftpboot/<serial>/",
    "destroy: the agent's states in order, the node's port off, its TFTP directory removed",
    // The host reaches the pimaster through its uplink here: NFS and rpcbind must not answer it.
    'the uplink reaches neither NFS nor rpcbind',
    'firewall: cluster services on eth0 only, nothing forwarded into the cluster',
  ]) {
    t.regex(r.stdout, new RegExp(`^PASS  ${name.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`, 'm'), name);
  }
  t.regex(r.stdout, /^PASS {2}node boot 1: .* SSH answered [\d.]+ s after the agent's turn_on$/m);
  t.regex(r.stdout, /^PASS {2}power cycle 1: .* {2}port 2 on, port 2 off; QEMU exit code 0$/m, "QEMU ends at once on the stand-in's SIGTERM");
  t.regex(r.stdout, /^PASS {2}deploy: the agent went through every state .*boot_conf \+0s, turn_off .*, user_conf \+\d+s, deployed \+\d+s$/m);
  t.regex(r.stdout, /^PASS {2}deployed node: the user's key logs in as root +root@verify-node$/m);
  t.regex(r.stdout, /^PASS {2}node: streams an environment .* tiny-env\.img\.tar\.gz: sha256 [0-9a-f]{64}$/m);
  // Both consoles are kept: the node's shows U-Boot fetching its files, and the kernel booting them.
  const node = readFileSync(join(dir, 'work', 'verify', 'node-console.log'), 'utf8');
  t.regex(node, /build-image verify: node 0e5a1c1d boots from 48\.48\.0\.254/);
  t.regex(node, /verify initrd: eth0 has 48\.48\.0\.10\//);
  t.regex(node, /build-image verify: bootargs .*nfsroot=48\.48\.0\.254:\/nfs\/raspi.* console=ttyAMA0/, "U-Boot boots with the node's cmdline.txt");
  const poe = readFileSync(
    join(dir, 'work', 'verify', readdirSync(join(dir, 'work', 'verify')).find((d) => d.startsWith('cluster-'))!, 'poe-switch.log'),
    'utf8',
  );
  t.regex(poe, /set \.1\.3\.6\.1\.2\.1\.105\.1\.1\.1\.3\.1\.2 integer 1 -> DONE/, "the stand-in's log shows the agent's set");
  t.true(existsSync(join(dir, 'work', 'verify', 'console.log')));

  t.deepEqual(processesNaming(dir), [], 'no QEMU or snmpd outlives verify');
  t.deepEqual(
    (await execa('ip', ['netns', 'list'])).stdout.split('\n').filter((l) => l.startsWith('build-image-')),
    [],
    'no cluster link is left',
  );
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
  t.false(existsSync(join(dir, 'work', 'verify', 'guest.img')), 'the throw-away copy is gone');
  t.false(existsSync(join(dir, 'work', 'verify', 'node-sd-card.img')), "the node's SD card is gone");
  t.is(statSync(image).mtimeMs, before.mtimeMs, 'the image is untouched');
});
