import test from 'ava';
import { chrootMode, describeMode, hostArch, plannedMode } from '../../lib/chroot/emulation.ts';

test('the host architecture is Debian-named from Node process.arch', (t) => {
  t.is(hostArch('x64'), 'amd64');
  t.is(hostArch('arm64'), 'arm64');
  t.is(hostArch('arm'), 'armhf');
  t.is(hostArch('riscv64'), 'unknown');
});

test('an image of the host architecture runs natively, never through qemu-user', (t) => {
  t.is(chrootMode('arm64', 'arm64', false), 'native');
  t.is(chrootMode('amd64', 'arm64', true), 'qemu-user');
  t.is(chrootMode('amd64', 'armhf', true), 'qemu-user');
});

test('armhf on an arm64 host is native only where the CPU runs AArch32 with no qemu-arm handler', (t) => {
  t.is(chrootMode('arm64', 'armhf', true), 'native');
  t.is(chrootMode('arm64', 'armhf', false), 'qemu-user');
});

test('the log, the manifest and --plan say which', (t) => {
  t.is(describeMode('native', 'arm64', 'arm64'), 'native arm64');
  t.is(describeMode('qemu-user', 'arm64', 'amd64'), 'qemu-user (arm64 on amd64)');
  t.is(plannedMode('arm64', 'arm64'), 'native arm64');
  t.is(plannedMode('armhf', 'amd64'), 'qemu-user (armhf on amd64)');
  t.regex(plannedMode('armhf', 'arm64'), /^native armhf where this CPU runs AArch32 .*, else qemu-user \(armhf on arm64\)$/);
});
