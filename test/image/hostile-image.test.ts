/**
 * Images that lie: an fstab naming a mount point outside the image, links in the image to the
 * host's files and directories. A build follows the image's links as the image itself would
 * (inside its root), so the host's files are never written, mounted over, chowned or read. The
 * chroot and verify on such images: test/system/hostile-image-chroot-verify.test.ts.
 */

import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { attachStage } from '../../stages/attach.ts';
import { finalizeStage } from '../../stages/finalize.ts';
import { growStage } from '../../stages/grow.ts';
import { overlayStage } from '../../stages/overlay.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { hostBait, inImage, plantLinks, plantNode } from '../helpers/hostile-image.ts';
import { detachLoop, loopsOn, mountsUnder } from '../helpers/leaks.ts';

const MiB = 2 ** 20;

/** Run `read` on the image's root filesystem (debugfs: what the image holds, links unfollowed). */

for (const [what, fstabMount, links] of [
  ['a path climbing out of the root', '/../../../tmp/build-image-escape', {}],
  ['a path through a link to a host directory', '/media/fw', { media: 'HOST_DIR' }],
] as const) {
  test(`an fstab mounting the boot partition at ${what} is refused at attach; nothing made or mounted on the host`, async (t) => {
    const dir = scratch();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const { hostDir, untouched } = hostBait(dir);
    const image = join(dir, 'image.img');
    const rootLinks = Object.fromEntries(Object.entries(links).map(([k, v]) => [k, v === 'HOST_DIR' ? hostDir : v]));
    await makeTinyImage(image, { rootFiles: { 'etc/fstab': `/dev/mmcblk0p1 ${fstabMount} vfat defaults 0 2\n/dev/mmcblk0p2 / ext4 defaults 0 1\n` } });
    await plantLinks(image, rootLinks);
    const error = await t.throwsAsync(runStages([attachStage, finalizeStage], testConfig(dir), { image }));
    t.is(
      error!.message,
      `the image's /etc/fstab mounts the boot partition at "${fstabMount}", which is not a plain directory path inside the image (like /boot/firmware: letters, digits, . _ + - and /, no .., no symbolic link): fix the image's fstab`,
    );
    t.false(existsSync(join(dir, 'work', 'root', fstabMount)), 'where a plain join would have made it, on the host');
    untouched(t);
    t.deepEqual(await loopsOn(image), []);
    t.deepEqual(mountsUnder(dir), []);
  });
}

test('an os-release that is a device node naming a host disk is refused at attach: nothing of the disk is read', async (t) => {
  const dir = scratch();
  const disk = join(dir, 'host-disk');
  writeFileSync(disk, 'PRETTY_NAME="the host disk\'s secret"\n'.padEnd(4096, '\n'));
  const { stdout: device } = await execa('losetup', ['--find', '--show', disk]);
  t.teardown(async () => {
    await detachLoop(device);
    rmSync(dir, { recursive: true, force: true });
  });
  const { stdout: numbers } = await execa('stat', ['-c', '%t %T', device]);
  const [major, minor] = numbers.split(' ').map((hex) => Number.parseInt(hex, 16));
  const image = join(dir, 'image.img');
  await makeTinyImage(image);
  await plantNode(image, 'etc/os-release', `b ${major} ${minor}`);
  const error = await t.throwsAsync(runStages([attachStage, finalizeStage], testConfig(dir), { image }));
  t.is(error!.message, "the image's /etc/os-release is not a regular file: the image is damaged or hostile, and is not read");
  const logs = readdirSync(join(dir, 'work', 'logs')).map((f) => readFileSync(join(dir, 'work', 'logs', f), 'utf8'));
  t.notRegex(logs.join('\n'), /secret/, "the disk's content is in no log");
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test("an overlay writes through none of the image's links to the host: templates, files and directories land inside the image", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { hostDir, hostFile, untouched } = hostBait(dir);
  const image = join(dir, 'image.img');
  await makeTinyImage(image);
  await plantLinks(image, { 'etc/x.conf': hostFile, 'etc/y.conf': hostFile, srv: hostDir, lib: 'usr/lib' });
  const overlay = join(dir, 'overlay');
  for (const d of ['rootfs/etc', 'rootfs/srv', 'rootfs/lib/demo']) mkdirSync(join(overlay, d), { recursive: true });
  writeFileSync(join(overlay, 'rootfs/etc/x.conf.tmpl'), 'release={{ codename }}\n');
  writeFileSync(join(overlay, 'rootfs/etc/y.conf'), 'plain\n');
  writeFileSync(join(overlay, 'rootfs/srv/a.txt'), 'served\n');
  writeFileSync(join(overlay, 'rootfs/lib/demo/b.txt'), 'merged usr\n');
  await runStages([growStage, attachStage, overlayStage(), finalizeStage], testConfig(dir, { overlay: [overlay], grow: 16 * MiB }), { image });
  untouched(t);
  t.is((await inImage(image, (r) => r.cat('/etc/x.conf'))).trim(), 'release=bookworm', 'the template replaced the link in the image');
  t.is((await inImage(image, (r) => r.cat('/etc/y.conf'))).trim(), 'plain');
  t.is((await inImage(image, (r) => r.cat(`${hostDir}/a.txt`))).trim(), 'served', 'the link to a directory was followed inside the image');
  t.is((await inImage(image, (r) => r.cat('/usr/lib/demo/b.txt'))).trim(), 'merged usr', 'lib -> usr/lib is followed as the image does');
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});
