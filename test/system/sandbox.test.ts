/**
 * The image's own programs run in a sandbox (lib/chroot/sandbox.ts). A base image whose bash was
 * replaced by a probe is built with a plain `--hostname`: the probe reports, from inside, what it
 * can see (processes, /dev, mounts, capabilities) and tries every way out it can name.
 */

import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import type { Stage } from '../../engine/stage.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { attachStage } from '../../stages/attach.ts';
import { finalizeStage } from '../../stages/finalize.ts';
import { settingsStage } from '../../stages/settings.ts';
import { debianImage } from '../fixtures/debian-image.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { loopsOn, mountsUnder } from '../helpers/leaks.ts';

/** The root partition of `image` mounted at `<dir>/mnt` while `use` runs. */
async function withRoot(dir: string, image: string, use: (root: string) => void): Promise<void> {
  const { stdout } = await execa('sfdisk', ['--json', image]);
  const part = (JSON.parse(stdout) as { partitiontable: { partitions: Array<{ start: number; size: number }> } }).partitiontable.partitions[1]!;
  const root = join(dir, 'mnt');
  mkdirSync(root, { recursive: true });
  const { stdout: dev } = await execa('losetup', ['--find', '--show', '--offset', String(part.start * 512), '--sizelimit', String(part.size * 512), image]);
  try {
    await execa('mount', ['-t', 'ext4', dev, root]);
    try {
      use(root);
    } finally {
      await execa('umount', [root]);
    }
  } finally {
    await execa('losetup', ['-d', dev]);
  }
}

const probe = (hostFile: string) => `#!/bin/sh
# Planted as the image's bash: what a hostile image's program sees and tries, then bash itself.
{
  echo "pids: $(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ')"
  echo "dev: $(ls -A /dev | tr '\\n' ' ')"
  echo "hostname: $(cat /proc/sys/kernel/hostname)"
  grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status
  while read -r id parent dev root point options rest; do echo "mount: $point $options"; done < /proc/self/mountinfo
  for p in /proc/[0-9]*; do
    for way in root cwd; do echo planted 2>/dev/null > "$p/$way${hostFile}" && echo "escaped: wrote $p/$way${hostFile}"; done
  done
  mknod /tmp/vda b 254 0 2>/dev/null; mknod /tmp/loop0 b 7 0 2>/dev/null
  for d in /tmp/vda /tmp/loop0; do head -c 512 "$d" >/dev/null 2>&1 && echo "escaped: read the host's $d"; rm -f "$d"; done
  mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>/dev/null && { echo "escaped: mounted a filesystem"; umount /tmp/m; }
  [ -w /sys/kernel/profiling ] && echo "escaped: /sys can be written"
  [ -e /proc/sys/fs/binfmt_misc/register ] && echo "escaped: binfmt_misc can be registered"
  echo "probe done"
} >> /root/sandbox-report 2>&1
exec /usr/bin/bash.real "$@"
`;

test.serial(
  "a planted program sees only the sandbox: its own processes, a minimal /dev, the image's mounts, few capabilities; no way to the host",
  async (t) => {
    const dir = scratch();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const image = join(dir, 'image.img');
    await execa('cp', ['--sparse=always', await debianImage('arm64'), image]);
    const hostFile = join(dir, 'written-from-the-image');
    await withRoot(dir, image, (root) => {
      renameSync(join(root, 'usr/bin/bash'), join(root, 'usr/bin/bash.real'));
      writeFileSync(join(root, 'usr/bin/bash'), probe(hostFile), { mode: 0o755 });
    });

    const config = testConfig(dir, { hostname: 'lab-pi' } as Partial<PimasterConfig>);
    const stages = [attachStage, settingsStage(['hostname']), finalizeStage] as unknown as Stage<PimasterConfig>[];
    await runStages(stages, config, { image });
    t.false(existsSync(hostFile), 'no host file was written from the image');
    t.deepEqual(mountsUnder(dir), []);
    t.deepEqual(await loopsOn(image), []);

    let report = '';
    await withRoot(dir, image, (root) => {
      report = readFileSync(join(root, 'root/sandbox-report'), 'utf8');
    });
    t.log(report);
    t.regex(report, /probe done/);
    t.notRegex(report, /escaped/);
    const pids = /^pids: (.*)$/m.exec(report)![1]!.trim().split(' ').map(Number);
    t.true(
      pids.every((pid) => pid < 20),
      `only the sandbox's processes: ${pids}`,
    );
    t.deepEqual(/^dev: (.*)$/m.exec(report)![1]!.trim().split(' ').sort(), [
      'core',
      'fd',
      'full',
      'null',
      'ptmx',
      'pts',
      'random',
      'shm',
      'stderr',
      'stdin',
      'stdout',
      'tty',
      'urandom',
      'zero',
    ]);
    // No CAP_SYS_ADMIN (21), CAP_SYS_PTRACE (19), CAP_SYS_MODULE (16), CAP_NET_ADMIN (12), CAP_DAC_READ_SEARCH (2).
    const effective = BigInt(`0x${/^CapEff:\s*(\S+)/m.exec(report)![1]}`);
    for (const bit of [2n, 12n, 16n, 19n, 21n]) t.is((effective >> bit) & 1n, 0n, `capability ${bit} is not held`);
    t.regex(report, /^NoNewPrivs:\s*1$/m);
    const mounts = [...report.matchAll(/^mount: (\S+) (\S+)$/gm)].map(([, point, options]) => ({ point: point!, options: options! }));
    const points = mounts.map((m) => m.point);
    const expected = ['/', '/dev', '/proc', '/run', '/run/build-image/files', '/sys', '/var/cache/apt/archives'];
    t.deepEqual(
      [...new Set(points.filter((p) => !/^\/(dev|proc|sys|boot)\//.test(p)))].sort(),
      expected.filter((p) => p !== '/run/build-image/files' || points.includes(p)),
      "the image, the sandbox's /dev and /proc, the host's /sys, the build's /run, staged files and apt archives: nothing else",
    );
    t.true(points.filter((p) => p.startsWith('/boot/')).length <= 1, 'and the boot partition');
    const readOnly = mounts.filter((m) => /^\/(sys$|sys\/|proc\/)/.test(m.point));
    for (const m of readOnly) t.regex(m.options, /^ro\b/, `${m.point} is read-only`);
    for (const m of mounts.filter((m) => m.point === '/' || m.point === '/run')) t.regex(m.options, /\bnodev\b/, `${m.point} opens no device`);
    t.not(/^hostname: (.*)$/m.exec(report)![1], hostname(), "the host's name is not the sandbox's");
  },
);
