/**
 * For the record: the same `build-image customize` (the plain arm64 fixture, an overlay,
 * --hostname, and a script that spends its time in the image's own programs: dpkg-query and
 * sha256sum over /usr) run twice: on this host, where the image's programs run under qemu-user,
 * and inside an arm64 Debian guest under QEMU (test/fixtures/arm64-host.ts), where they run
 * natively but the whole machine is emulated (TCG). Prints each run's settings and chroot stage
 * times from its work directory's state.json. Neither is a real arm64 machine's figure: that
 * needs one (a Pi 5, an arm64 runner). Needs root; about a quarter of an hour on two cores.
 *
 *   node bench/arm64-host.ts
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { hostArch } from '../lib/chroot/emulation.ts';
import { CUSTOMIZE_ARGS, customizeJob, runOnArm64Host } from '../test/fixtures/arm64-host.ts';
import { debianImage } from '../test/fixtures/debian-image.ts';

const SCRIPT = `#!/bin/bash
for i in $(seq 200); do dpkg-query -W > /dev/null; done
find /usr/bin /usr/lib -type f -size -2M -print0 | xargs -0 sha256sum > /dev/null
`;

interface Run {
  mode: string;
  timings: Record<string, number>;
}

/** A build's mode and stage times, from its work directory's state.json (the manifest holds no times of the run). */
function fromState(file: string): Run {
  const state = JSON.parse(readFileSync(file, 'utf8')) as { chroot: string; timings: Record<string, number> };
  return { mode: state.chroot, timings: state.timings };
}

async function onThisHost(dir: string, fixture: string): Promise<Run> {
  const [overlay, script] = [join(dir, 'overlay'), join(dir, 'script.sh')];
  mkdirSync(join(overlay, 'rootfs', 'etc'), { recursive: true });
  writeFileSync(join(overlay, 'rootfs', 'etc', 'overlay-mark'), 'from the overlay\n');
  writeFileSync(script, SCRIPT);
  const bin = new URL('../bin/build-image.js', import.meta.url).pathname;
  const out = join(dir, 'out');
  await execa(process.execPath, [bin, ...CUSTOMIZE_ARGS(fixture, overlay, script, out, join(dir, 'cache')), '--work', join(dir, 'work')]);
  return fromState(join(dir, 'work', 'state.json'));
}

async function inTheGuest(dir: string, fixture: string): Promise<Run> {
  const job = await runOnArm64Host(dir, customizeJob(fixture, SCRIPT));
  if (job.exitCode !== 0) throw new Error(`the job failed in the guest: ${readFileSync(join(job.results, 'job.log'), 'utf8')}`);
  return fromState(join(job.results, 'state.json'));
}

const fixture = await debianImage('arm64');
const dir = mkdtempSync(join(tmpdir(), 'arm64-host-bench-'));
try {
  const rows: Array<[string, Run]> = [
    [`this ${hostArch()} host`, await onThisHost(join(dir, 'host'), fixture)],
    ['an arm64 guest (QEMU TCG)', await inTheGuest(join(dir, 'guest'), fixture)],
  ];
  process.stdout.write('\nbuild-image customize of the arm64 fixture with a script busy in the image (seconds)\n\n');
  process.stdout.write(`  ${'where'.padEnd(28)} ${'chroot'.padEnd(28)} ${'settings'.padStart(9)} ${'chroot'.padStart(7)} ${'all'.padStart(6)}\n`);
  for (const [where, run] of rows) {
    const all = Object.values(run.timings).reduce((a, b) => a + b, 0);
    const cell = (s: number | undefined, width: number) => (s === undefined ? '-' : s.toFixed(0)).padStart(width);
    process.stdout.write(`  ${where.padEnd(28)} ${run.mode.padEnd(28)} ${cell(run.timings.settings, 9)} ${cell(run.timings.chroot, 7)} ${cell(all, 6)}\n`);
  }
  process.stdout.write("\n  The guest emulates the whole machine: its figure is no real arm64 host's (a Pi 5 or an arm64 runner runs it far faster).\n");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
