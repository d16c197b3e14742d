/**
 * Images that lie, where the image is run: links in the image to the host's files and directories
 * while the chroot (qemu-user) is entered, and while verify reads the image's facts and boots a
 * copy in QEMU. Each follows the image's links as the image itself would (inside its root), so the
 * host's files are never written, mounted over, chowned or read.
 */

import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { attachStage } from '../../stages/attach.ts';
import { chrootStage } from '../../stages/chroot.ts';
import { finalizeStage } from '../../stages/finalize.ts';
import { TEST_CACHE } from '../fixtures/debian-image.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { hostBait, inImage, plantLinks } from '../helpers/hostile-image.ts';
import { loopsOn, mountsUnder } from '../helpers/leaks.ts';

/** Run `read` on the image's root filesystem (debugfs: what the image holds, links unfollowed). */

test("the chroot's mounts and swapped files stay inside the image: a `run -> /run` link is refused, a link to a host directory is followed inside the image", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { hostDir, untouched } = hostBait(dir);
  const script = join(dir, '10-any.sh');
  writeFileSync(script, '#!/bin/sh\ntrue\n');
  const hostRun = readdirSync('/run').sort();

  const looping = join(dir, 'looping.img');
  await makeTinyImage(looping);
  await plantLinks(looping, { run: '/run' });
  const error = await t.throwsAsync(runStages([attachStage, chrootStage(), finalizeStage], testConfig(dir, { script: [script] }), { image: looping }));
  t.is(error!.message, '/run: too many levels of symbolic links in the image');
  t.deepEqual(readdirSync('/run').sort(), hostRun, "the host's /run is neither hidden nor written");
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsOn(looping), []);

  // etc/dpkg is where the build's dpkg settings go: written inside the image, the host directory stays empty.
  const image = join(dir, 'image.img');
  await makeTinyImage(image);
  await plantLinks(image, { 'etc/dpkg': hostDir });
  await t.throwsAsync(runStages([attachStage, chrootStage(), finalizeStage], testConfig(dir, { script: [script] }), { image }));
  untouched(t);
  t.is((await inImage(image, (r) => r.stat('/etc/dpkg'))).type, 'symlink', "the image's link is still there");
  t.true((await inImage(image, (r) => r.ls(hostDir))).includes('dpkg.cfg.d'), 'the settings went inside the image');
  t.false((await inImage(image, (r) => r.ls(`${hostDir}/dpkg.cfg.d`))).includes('zz-build-image'), 'and were removed there at the end');
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsOn(image), []);
});

test.serial("verify reads the image's facts and authorizes its key inside the image: no host file read, chowned or written", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { hostDir, hostFile, untouched } = hostBait(dir);
  writeFileSync(hostFile, 'host-secret-name\n', { mode: 0o600 });
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { rootFiles: { 'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\npi:x:1000:1000::/home/pi:/bin/sh\n' } });
  await plantLinks(image, { 'home/pi/.ssh': hostDir, 'etc/hostname': hostFile });
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'key')]);
  const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
  const r = await execa(
    'node',
    [
      cli,
      'verify',
      image,
      '--ssh-key',
      join(dir, 'key'),
      '--authorize',
      '--user',
      'pi',
      '--work',
      join(dir, 'work'),
      '--cache',
      TEST_CACHE,
      '--timeout',
      '120',
    ],
    { reject: false, env: { CI: 'true' } },
  );
  t.is(r.exitCode, 1, 'the tiny image does not boot');
  t.regex(r.stderr, /has no \/sbin\/init/, 'it got as far as booting the copy');
  t.is(readFileSync(hostFile, 'utf8'), 'host-secret-name\n');
  writeFileSync(hostFile, "the host's own\n", { mode: 0o600 }); // what untouched() compares
  const prepared = readFileSync(join(dir, 'work', 'verify', 'logs', '02-prepare.log'), 'utf8');
  t.notRegex(`${prepared}${r.stdout}${r.stderr}`, /host-secret-name/, "the host file's content is nowhere in the output");
  t.regex(prepared, /"hostname":"localhost"/, 'the link pointed at nothing inside the image');
  untouched(t);
  t.deepEqual(mountsUnder(dir), []);
});
