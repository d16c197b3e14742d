/**
 * The toolkit on an arm64 host: an arm64 Debian guest under QEMU (test/fixtures/arm64-host.ts),
 * with this checkout, an arm64 Node and the tools `.ci/setup-host --list arm64` names, and no
 * qemu-user-static. In it, the README's setup command finds nothing to install, and
 * `build-image customize` of the plain arm64 fixture (an overlay, a setting, a script that runs the
 * image's own programs) runs the image's programs natively: no binfmt handler is registered, the
 * log, --plan and the manifest say `native arm64`, and the image holds what the build put in.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { arm64HostImage, customizeJob, fromJobDisk, runOnArm64Host } from '../fixtures/arm64-host.ts';
import { debianImage } from '../fixtures/debian-image.ts';
import { scratch } from '../helpers/build.ts';
import { inImage } from '../helpers/hostile-image.ts';

// Runs the image's own arm64 programs: dpkg, bash's arithmetic, coreutils.
const SCRIPT = `#!/bin/bash
echo "arch=$(dpkg --print-architecture) machine=$(uname -m) sum=$((6 * 7))" > /etc/built-by-script
`;

test('on an arm64 host, customize runs the image programs natively: no binfmt handler, and says so', async (t) => {
  t.timeout(50 * 60_000);
  const dir = scratch('arm64-host-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await arm64HostImage();
  const job = await runOnArm64Host(dir, customizeJob(await debianImage('arm64'), SCRIPT));
  const read = (file: string) => readFileSync(join(job.results, file), 'utf8');
  t.log(`the guest ran ${job.seconds} s; customize in it took ${read('build.seconds').trim()} s`);
  t.is(job.exitCode, 0, read('job.log'));
  if (existsSync(join(job.results, 'retries'))) t.log(`run again: ${read('retries')}`);
  t.is(read('uname').trim(), 'aarch64');

  // The README's setup command: nothing to install on an arm64 host that has the tools, Node found.
  t.is(read('setup-host.rc').trim(), '0', read('setup-host.log'));
  t.notRegex(read('setup-host.log'), /installing/);
  t.regex(read('setup-host.log'), /setup-host: ready \(node v24\./);

  // doctor says how each architecture runs here; the qemu-user it does not need is skipped.
  t.regex(read('doctor.log'), /^ok {4}arm64 images +native$/m);
  t.regex(read('doctor.log'), /^skip +qemu-aarch64-static/m);

  t.is(read('build.rc').trim(), '0', read('build.log'));
  t.regex(read('plan.log'), /chroot: native arm64/);
  t.regex(read('stages.log'), /\] chroot: native arm64$/m);
  t.notRegex(read('stages.log'), /registering|qemu-aarch64|native-unpack/);
  t.is(JSON.parse(read('native.manifest.json')).chroot, 'native arm64');
  // No emulator anywhere: none installed, no handler for ELF programs registered with binfmt_misc
  // (Debian's python3 registers one for .pyc files, with the magic of its bytecode).
  t.regex(read('qemu-user-static'), /no packages found|not-installed|^$/i);
  const handlers = read('binfmt').split(/^== /m).filter(Boolean);
  t.true(
    handlers.some((h) => h.startsWith('status\n')),
    read('binfmt'),
  );
  for (const handler of handlers) t.notRegex(handler, /qemu|^magic 7f454c46/m, `a binfmt handler for programs: ${handler}`);

  const image = await fromJobDisk(job.disk, '/out/native.img', join(dir, 'native.img'));
  await inImage(image, async (root) => {
    t.is((await root.cat('/etc/hostname')).trim(), 'built-on-arm64');
    t.is(await root.cat('/etc/overlay-mark'), 'from the overlay\n');
    t.is((await root.cat('/etc/built-by-script')).trim(), 'arch=arm64 machine=aarch64 sum=42');
  });
});
