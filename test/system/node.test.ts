/**
 * `build-image verify --node`: a cluster node boots from the suite's arm64 pimaster over a link
 * the two guests share (U-Boot, the pimaster's DHCP and TFTP, the NFS root), is reached from the
 * pimaster with its root key as the agent does, and is checked; then booted a second time. No
 * QEMU process, loop device or copy is left, and the image is untouched.
 */

import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { TEST_CACHE } from '../fixtures/debian-image.ts';
import { scratch } from '../helpers/build.ts';
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

test.serial('a node boots from the arm64 pimaster: DHCP and TFTP from its dnsmasq, NFS root, SSH from the pimaster; every node check passes', async (t) => {
  const build = await pimasterBuild('bookworm-arm64');
  const image = `${build.image}.zst`;
  const before = statSync(image);
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = await execa('node', [cli, 'verify', image, '--node', '--ssh-key', build.sshKey, '--work', join(dir, 'work'), '--cache', TEST_CACHE], {
    reject: false,
    env: { CI: 'true' },
  });
  t.log(r.stdout);
  t.is(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
  for (const name of [
    'node registered through the agent API',
    "node's TFTP directory /tftpboot/0e5a1c1d/",
    'node boot 1: U-Boot, DHCP, TFTP, NFS root, SSH from the pimaster',
    'node: every unit started, none failed',
    'node: address 48.48.0.10 (the registered one)',
    'node: root is 48.48.0.254:/nfs/raspi over NFS, with the options of cmdline.txt',
    'node: host name nfspi',
    "node: SSH host keys its own, not the pimaster's",
    "node: none of the pimaster's services runs",
    'node: streams an environment from the pimaster with rsh, as a deploy does',
    "dnsmasq's log: the node's lease and its TFTP transfers",
    'node boot 2: U-Boot, DHCP, TFTP, NFS root, SSH from the pimaster',
    'node: the same SSH host keys at its second boot',
    // The host reaches the pimaster through its uplink here: NFS and rpcbind must not answer it.
    'the uplink reaches neither NFS nor rpcbind',
    'firewall: cluster services on eth0 only, nothing forwarded into the cluster',
  ]) {
    t.regex(r.stdout, new RegExp(`^PASS  ${name.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`, 'm'), name);
  }
  t.regex(r.stdout, /^PASS {2}node boot 1: .* SSH answered [\d.]+ s after power-on$/m);
  t.regex(r.stdout, /^PASS {2}node: streams an environment .* tiny-env\.img\.tar\.gz: sha256 [0-9a-f]{64}$/m);
  // Both consoles are kept: the node's shows U-Boot fetching its files, and the kernel booting them.
  const node = readFileSync(join(dir, 'work', 'verify', 'node-console.log'), 'utf8');
  t.regex(node, /build-image verify: node 0e5a1c1d boots from 48\.48\.0\.254/);
  t.regex(node, /verify initrd: eth0 has 48\.48\.0\.10\//);
  t.true(existsSync(join(dir, 'work', 'verify', 'console.log')));

  t.deepEqual(processesNaming(dir), [], 'no QEMU outlives verify');
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
  t.false(existsSync(join(dir, 'work', 'verify', 'guest.img')), 'the throw-away copy is gone');
  t.is(statSync(image).mtimeMs, before.mtimeMs, 'the image is untouched');
});
