import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { accelerationFor, kvmUsable } from '../../lib/qemu/guest.ts';

test('an arm64 guest on an arm64 host with a usable /dev/kvm runs on KVM with the host CPU', (t) => {
  const a = accelerationFor('arm64', 'arm64', true);
  t.deepEqual(a.args, ['-M', 'virt,gic-version=max', '-accel', 'kvm', '-cpu', 'host']);
  t.is(a.line, 'QEMU: KVM, host CPU');
});

test('without KVM, or on another host, the guest runs on TCG with a software CPU, said so', (t) => {
  for (const [host, kvm] of [
    ['arm64', false],
    ['amd64', true],
    ['amd64', false],
  ] as const) {
    const a = accelerationFor(host, 'arm64', kvm);
    t.deepEqual(a.args, ['-M', 'virt', '-accel', 'tcg', '-cpu', 'cortex-a72'], `${host}, kvm ${kvm}`);
    t.is(a.line, 'QEMU: TCG (software CPU, cortex-a72)');
  }
});

test('an armhf guest stays on TCG, even on an arm64 host with KVM', (t) => {
  for (const host of ['arm64', 'amd64', 'armhf'] as const) {
    const a = accelerationFor(host, 'armhf', true);
    t.deepEqual(a.args, ['-M', 'virt,highmem=off', '-accel', 'tcg', '-cpu', 'cortex-a15'], host);
    t.is(a.line, 'QEMU: TCG (software CPU, cortex-a15)');
  }
});

test('KVM is usable only when the device opens read-write', (t) => {
  t.false(kvmUsable('/nonexistent/kvm'));
  const file = join(tmpdir(), `kvm-${process.pid}`);
  writeFileSync(file, '', { mode: 0o444 });
  t.teardown(() => rmSync(file, { force: true }));
  t.is(kvmUsable(file), process.getuid?.() === 0, 'a read-only file opens read-write for root only');
});
