import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { type Check, formatChecks, type HostFacts, runChecks } from '../../commands/doctor.ts';

/** A binfmt_misc of the test's own: the host's handlers play no part. */
function binfmtDir(t: { teardown(fn: () => void): void }, handlers: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'doctor-binfmt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'status'), 'enabled\n');
  for (const [name, text] of Object.entries(handlers)) writeFileSync(join(dir, name), text);
  return dir;
}

const handler = (interpreter: string) => `enabled\ninterpreter ${interpreter}\nflags: PF\noffset 0\nmagic 7f454c46\n`;

async function doctor(host: Omit<HostFacts, 'runsArmhfNatively'> & { aarch32?: boolean }) {
  let asked = 0;
  const checks = await runChecks(tmpdir(), 0, {
    ...host,
    runsArmhfNatively: async () => {
      asked++;
      return host.aarch32 ?? false;
    },
  });
  const find = (name: string) => checks.find((c) => c.name === name);
  return { checks, find, asked, text: formatChecks(checks) };
}

const line = (text: string, name: string) => text.split('\n').find((l) => l.slice(6).startsWith(`${name} `)) ?? '';

test('on an arm64 host arm64 images run natively: no qemu-aarch64 asked for; armhf natively where the CPU runs AArch32', async (t) => {
  const { find, asked, text } = await doctor({ arch: 'arm64', aarch32: true, kvm: true, binfmt: binfmtDir(t) });
  t.is(asked, 1, 'arch-test -n armhf is asked once');
  t.regex(line(text, 'arm64 images'), /^ok {4}arm64 images +native$/);
  t.regex(line(text, 'armhf images'), /^ok {4}armhf images +native$/);
  for (const name of ['binfmt arm64', 'qemu-aarch64-static', 'binfmt armhf', 'qemu-arm-static']) {
    t.like(find(name), { ok: true, skipped: true }, name);
    t.regex(line(text, name), /^skip .* not needed: /, name);
  }
  t.regex(find('kvm')!.detail, /^\/dev\/kvm opens read-write; verify: arm64 guests on KVM, host CPU, armhf guests on TCG/);
});

test('on an arm64 host whose CPU runs no AArch32 armhf needs qemu-arm, and its handler is checked', async (t) => {
  const { find } = await doctor({ arch: 'arm64', aarch32: false, kvm: false, binfmt: binfmtDir(t) });
  t.like(find('arm64 images'), { ok: true, detail: 'native' });
  t.like(find('binfmt arm64'), { skipped: true });
  t.regex(find('armhf images')!.detail, /^qemu-user \(qemu-arm\)/);
  t.like(find('binfmt armhf'), { ok: false, detail: 'no qemu-arm handler registered' });
  t.false(find('qemu-arm-static')!.skipped ?? false);
  t.regex(find('kvm')!.detail, /verify: arm64 guests on TCG \(software CPU, cortex-a72\)/);
});

test('on an arm64 host a qemu-aarch64 handler is a warning: every arm64 program would run under qemu', async (t) => {
  const { find } = await doctor({ arch: 'arm64', kvm: false, binfmt: binfmtDir(t, { 'qemu-aarch64': handler('/usr/libexec/qemu-binfmt/aarch64-binfmt-P') }) });
  t.like(find('binfmt arm64'), { ok: false, warning: true });
});

test('on an amd64 host nothing runs natively: both handlers and both qemu-user commands are checked, no arch-test asked', async (t) => {
  const binfmt = binfmtDir(t, { 'qemu-aarch64': handler('/usr/bin/qemu-aarch64-static'), 'qemu-arm': handler('/usr/bin/qemu-arm-static') });
  const { checks, find, asked } = await doctor({ arch: 'amd64', kvm: true, binfmt });
  t.is(asked, 0);
  t.false(
    checks.some((c: Check) => c.skipped || / images$/.test(c.name)),
    'no native line, nothing skipped',
  );
  t.like(find('binfmt arm64'), { ok: true, detail: '/usr/bin/qemu-aarch64-static (flags PF)' });
  t.like(find('binfmt armhf'), { ok: true, detail: '/usr/bin/qemu-arm-static (flags PF)' });
  t.regex(find('kvm')!.detail, /arm64 guests on TCG .*\(KVM only for an arm64 guest on an arm64 host\)$/);
});
