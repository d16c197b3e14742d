// The pure parts of `build-image verify`: what the image says, the kernel choice, QEMU's network.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { formatResults, lastLine, readChecksFile, systemChecks } from '../../lib/qemu/checks.ts';
import { DEPLOY_STATES, statesFromLog } from '../../lib/qemu/deploy.ts';
import { dhcpcdStatic, natUplink, nmStatic, readFacts } from '../../lib/qemu/facts.ts';
import { userNetwork } from '../../lib/qemu/guest.ts';
import { bootsUnderVirt, ownKernel } from '../../lib/qemu/kernel.ts';
import { nodeBootScript } from '../../lib/qemu/node.ts';

const temp = (t: { teardown(fn: () => void): void }) => {
  const dir = mkdtempSync(join(tmpdir(), 'verify-units-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};

test('dhcpcd.conf: the static address of the last interface block that has one', (t) => {
  const conf = '# a comment\nhostname\ninterface wlan0\n#static ip_address=10.0.0.9/8\n\ninterface eth0\nstatic ip_address=48.48.0.254/24\n';
  t.like(dhcpcdStatic(conf), { interface: 'eth0', address: '48.48.0.254', prefix: 24, network: '48.48.0.0' });
  t.is(dhcpcdStatic('interface eth0\n# static ip_address=1.2.3.4/24\n'), undefined);
  t.is(dhcpcdStatic('static ip_address=1.2.3.4/24\n'), undefined, 'not bound to an interface');
});

test('NetworkManager keyfile: a manual address bound to an interface', (t) => {
  const nm = '[connection]\nid=x\ninterface-name=eth0\n\n[ipv4]\nmethod=manual\naddress1=10.1.2.3/16,10.1.0.1\n';
  t.like(nmStatic(nm), { interface: 'eth0', address: '10.1.2.3', prefix: 16, network: '10.1.0.0' });
  t.is(nmStatic(nm.replace('method=manual', 'method=auto')), undefined);
});

test('the NAT unit names its uplink', (t) => {
  t.is(natUplink("ExecStart=/bin/sh -c '... || /usr/sbin/iptables -t nat -A POSTROUTING -o wlan1 -j MASQUERADE'"), 'wlan1');
  t.is(natUplink(''), undefined);
});

test('facts from an image tree: host name, address, pimaster or not', (t) => {
  const root = temp(t);
  mkdirSync(join(root, 'etc/NetworkManager/system-connections'), { recursive: true });
  writeFileSync(join(root, 'etc/hostname'), 'node7\n');
  writeFileSync(join(root, 'etc/NetworkManager/system-connections/a.nmconnection'), 'interface-name=eth0\n[ipv4]\nmethod=manual\naddress1=192.168.5.2/24\n');
  t.deepEqual(readFacts(root), {
    hostname: 'node7',
    address: { address: '192.168.5.2', prefix: 24, network: '192.168.5.0', netmask: '255.255.255.0', interface: 'eth0' },
    pimaster: undefined,
    swap: [],
  });
  mkdirSync(join(root, 'usr/local/sbin'), { recursive: true });
  writeFileSync(join(root, 'usr/local/sbin/pimaster-firstboot'), '');
  t.deepEqual(readFacts(root).pimaster, { uplink: 'wlan0' });
});

test('facts: the swap an image sets up at boot, by what its files enable', (t) => {
  const root = temp(t);
  const put = (path: string, text = '') => {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), text);
  };
  put('etc/fstab', '# /swapfile none swap sw 0 0\nPARTUUID=1-02 / ext4 defaults 0 1\n');
  put('etc/dphys-swapfile', 'CONF_SWAPSIZE=512\n');
  put('usr/lib/systemd/system-generators/zram-generator');
  t.deepEqual(readFacts(root).swap, [], 'installed but not enabled, or no config: none');
  put('etc/rc2.d/S01dphys-swapfile');
  put('usr/lib/systemd/zram-generator.conf', '[zram0]\n');
  put('lib/systemd/system-generators/rpi-swap-generator');
  put('etc/fstab', '/swapfile none swap sw 0 0\n');
  t.deepEqual(readFacts(root).swap, ['dphys-swapfile', 'zram-generator', 'rpi-swap', 'fstab']);
});

const VIRT = 'CONFIG_PCI_HOST_GENERIC=y\nCONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_NET=m\nCONFIG_SERIAL_AMBA_PL011_CONSOLE=y\n';

test("the image's own kernel is used only when its config boots under virt and it has an initrd", (t) => {
  t.true(bootsUnderVirt(VIRT));
  t.false(bootsUnderVirt(VIRT.replace('CONFIG_VIRTIO_BLK=y', '# CONFIG_VIRTIO_BLK is not set')), 'a Raspberry Pi kernel has no virtio');
  const root = temp(t);
  t.is(ownKernel(root), undefined, 'no /boot');
  mkdirSync(join(root, 'boot'));
  for (const v of ['6.1.0-9-arm64', '6.1.0-10-arm64']) {
    writeFileSync(join(root, 'boot', `vmlinuz-${v}`), '');
    writeFileSync(join(root, 'boot', `config-${v}`), VIRT);
  }
  t.is(ownKernel(root), undefined, 'no initrd');
  writeFileSync(join(root, 'boot', 'initrd.img-6.1.0-9-arm64'), '');
  t.is(ownKernel(root)?.version, '6.1.0-9-arm64');
  writeFileSync(join(root, 'boot', 'initrd.img-6.1.0-10-arm64'), '');
  t.is(ownKernel(root)?.version, '6.1.0-10-arm64', 'the newest');
});

test("QEMU's user network is the image's subnet, its own addresses kept off the guest's", (t) => {
  const at = (address: string, prefix = 24) => ({ address, prefix, network: address.replace(/\.\d+$/, '.0'), netmask: '', interface: 'eth0' });
  t.deepEqual(userNetwork(undefined), []);
  t.deepEqual(userNetwork(at('48.48.0.254')), ['net=48.48.0.0/24', 'host=48.48.0.2', 'dns=48.48.0.3']);
  t.deepEqual(userNetwork(at('48.48.0.2')), ['net=48.48.0.0/24', 'host=48.48.0.3', 'dns=48.48.0.4']);
});

test('a --checks file: one command a line, comments and blank lines skipped; an empty one refused', (t) => {
  const dir = temp(t);
  writeFileSync(join(dir, 'c'), '# mine\n\ntest -d /nfs\n  systemctl is-active ssh  \n');
  t.deepEqual(
    readChecksFile(join(dir, 'c')).map((c) => c.command),
    ['test -d /nfs', 'systemctl is-active ssh'],
  );
  writeFileSync(join(dir, 'e'), '# nothing\n');
  t.throws(() => readChecksFile(join(dir, 'e')), { message: /holds no command/ });
  t.throws(() => readChecksFile(join(dir, 'missing')), { message: /cannot read it \(ENOENT\)/ });
});

test('checks: the address check is there only for a static address; growth and swap only on a larger disk; results one line each', (t) => {
  t.is(systemChecks({ hostname: 'h', swap: ['dphys-swapfile'] }).length, 3);
  t.regex(
    systemChecks({ hostname: 'h', swap: [], address: { address: '1.2.3.4', prefix: 8, network: '1.0.0.0', netmask: '', interface: 'eth0' } })[3]!.name,
    /eth0 has 1\.2\.3\.4\/8/,
  );
  t.deepEqual(
    systemChecks({ hostname: 'h', swap: ['dphys-swapfile', 'zram-generator'] }, true)
      .slice(3)
      .map((c) => c.name),
    ['the root grew to the end of its disk at the first boot', 'swap is on (dphys-swapfile, zram-generator)'],
  );
  t.is(systemChecks({ hostname: 'h', swap: [] }, true).length, 4, 'no swap check for an image without swap');
  t.is(lastLine('a\nb\n\n'), 'b');
  t.is(lastLine(''), '(no output)');
  t.is(
    formatResults([
      { name: 'one', ok: true, saw: 'x' },
      { name: 'three', ok: false, saw: 'y' },
    ]),
    'PASS  one    x\nFAIL  three  y',
  );
});

test("the agent's log gives the deploy's states in order, with their times; other nodes' lines are not its", (t) => {
  const log = [
    '2026-12-06 18:01:02 INFO     [verify-node] starts the deploy process (start date: 2026-12-06 18:00:00)',
    "2026-12-06 18:01:02 INFO     [verify-node] changes to the 'boot_conf' state",
    "2026-12-06 18:01:05 INFO     [other-node] changes to the 'turn_off' state",
    "2026-12-06 18:01:05 INFO     [verify-node] changes to the 'turn_off' state",
    "2026-12-06 18:01:08 INFO     [verify-node] successfully executes 'turn_off_exec'",
    "2026-12-06 18:01:08 INFO     [verify-node] changes to the 'turn_on' state",
    "2026-12-06 18:02:00 INFO     [verify-node] successfully executes 'destroying_exec'",
    "2026-12-06 18:02:03 INFO     [verify-node] changes to the 'turn_off' state",
  ].join('\n');
  t.deepEqual(statesFromLog(log, 'verify-node'), [
    { state: 'boot_conf', at: '2026-12-06 18:01:02' },
    { state: 'turn_off', at: '2026-12-06 18:01:05' },
    { state: 'turn_on', at: '2026-12-06 18:01:08' },
    { state: 'destroying', at: '2026-12-06 18:02:00' },
    { state: 'turn_off', at: '2026-12-06 18:02:03' },
  ]);
  t.is(DEPLOY_STATES.indexOf('env_copy'), 4, "the agent's order (raspberry/states.py)");
});

test("the node's U-Boot script boots the kernel, initrd and cmdline.txt of the node's own TFTP directory", (t) => {
  const script = nodeBootScript();
  t.regex(script, /^tftpboot \$\{kernel_addr_r\} 0e5a1c1d\/vmlinuz-verify$/m);
  t.regex(script, /^tftpboot \$\{pxefile_addr_r\} 0e5a1c1d\/cmdline\.txt\nsetexpr\.s bootargs \*\$\{pxefile_addr_r\}$/m);
  t.regex(script, /^booti /m);
});
