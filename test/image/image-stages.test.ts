/** grow, attach, overlay, finalize and shrink on a real image: real loop devices, ext4 and FAT. */

import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import type { Stage } from '../../engine/stage.ts';
import { parseExt4Header } from '../../lib/image/ext4-fit.ts';
import { attachStage } from '../../stages/attach.ts';
import { finalizeStage } from '../../stages/finalize.ts';
import { growStage } from '../../stages/grow.ts';
import { overlayStage } from '../../stages/overlay.ts';
import { shrink, shrinkStage } from '../../stages/shrink.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { sha256File } from '../helpers/base-images.ts';
import { runStages, scratch, smallDisk, testConfig } from '../helpers/build.ts';
import { detachLoop, loopsOn, mountsUnder } from '../helpers/leaks.ts';

const MiB = 2 ** 20;
const stages = [growStage, attachStage, overlayStage(), finalizeStage, shrinkStage];

async function debugfs(image: string, offset: number, size: number, request: string): Promise<string> {
  const { stdout: dev } = await execa('losetup', ['--find', '--show', '--read-only', '--offset', String(offset), '--sizelimit', String(size), image]);
  try {
    return (await execa('debugfs', ['-R', request, dev.trim()])).stdout;
  } finally {
    await execa('losetup', ['-d', dev.trim()]);
  }
}

/** The shrunk root as e2fsprogs sees it (a read-only loop device): sizes in bytes, and e2fsck's verdict. */
async function rootFacts(image: string, offset: number, size: number) {
  const { stdout: dev } = await execa('losetup', ['--find', '--show', '--read-only', '--offset', String(offset), '--sizelimit', String(size), image]);
  try {
    const fs = parseExt4Header((await execa('dumpe2fs', ['-h', dev.trim()])).stdout);
    const estimate = Number(/minimum size of the filesystem: (\d+)/.exec((await execa('resize2fs', ['-P', dev.trim()])).stdout)![1]);
    const fsck = await execa('e2fsck', ['-f', '-n', dev.trim()], { reject: false });
    return {
      bytes: fs.blockCount * fs.blockSize,
      used: (fs.blockCount - fs.freeBlocks) * fs.blockSize,
      estimate: estimate * fs.blockSize,
      fsck: fsck.exitCode,
    };
  } finally {
    await detachLoop(dev.trim());
  }
}

async function partitions(image: string) {
  const { stdout } = await execa('sfdisk', ['--json', image]);
  return (JSON.parse(stdout) as { partitiontable: { partitions: Array<{ start: number; size: number }> } }).partitiontable.partitions;
}

function overlayDir(dir: string): string {
  const overlay = join(dir, 'overlay');
  mkdirSync(join(overlay, 'rootfs/etc/demo'), { recursive: true });
  mkdirSync(join(overlay, 'rootfs/root/.ssh'), { recursive: true });
  mkdirSync(join(overlay, 'rootfs/usr/local/bin'), { recursive: true });
  mkdirSync(join(overlay, 'boot'), { recursive: true });
  writeFileSync(join(overlay, 'rootfs/etc/demo/plain.conf'), 'plain\n');
  writeFileSync(join(overlay, 'rootfs/etc/demo/rendered.conf.tmpl'), 'arch={{ arch }} release={{codename}}\n');
  writeFileSync(join(overlay, 'rootfs/usr/local/bin/hello'), '#!/bin/sh\necho hello\n');
  chmodSync(join(overlay, 'rootfs/usr/local/bin/hello'), 0o775);
  writeFileSync(join(overlay, 'rootfs/root/.ssh/authorized_keys'), 'ssh-ed25519 AAAA test\n');
  symlinkSync('plain.conf', join(overlay, 'rootfs/etc/demo/link.conf'));
  writeFileSync(join(overlay, 'boot/ssh'), '');
  writeFileSync(join(overlay, 'boot/config.txt'), '# replaced\n');
  writeFileSync(join(overlay, 'modes.txt'), 'rootfs/root/.ssh 0700\nrootfs/root/.ssh/authorized_keys 0600\n');
  return overlay;
}

test('grow, overlay, shrink: files land with their modes, boot is written back, the image ends up shrunk', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { payloadMiB: 24, rootMiB: 96 });
  const config = testConfig(dir, { overlay: [overlayDir(dir)], grow: 200 * MiB, 'expand-on-boot': true });
  await runStages(stages, config, { image });

  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
  const [boot, root] = await partitions(image);
  const rootOffset = root!.start * 512;
  const rootSize = root!.size * 512;
  t.is(statSync(image).size, rootOffset + rootSize, 'the file ends with the root partition');

  const fs = (request: string) => debugfs(image, rootOffset, rootSize, request);
  t.regex(await fs('cat /etc/demo/rendered.conf'), /^arch=arm64 release=bookworm$/);
  t.is(await fs('cat /etc/demo/plain.conf'), 'plain');
  t.regex(await fs('stat /usr/local/bin/hello'), /Mode:\s+0755/);
  t.regex(await fs('stat /etc/demo/plain.conf'), /Mode:\s+0644[\s\S]*User:\s+0\s+Group:\s+0\b/);
  t.regex(await fs('stat /root/.ssh'), /Mode:\s+0700/);
  t.regex(await fs('stat /root/.ssh/authorized_keys'), /Mode:\s+0600/);
  t.regex(await fs('stat /etc/demo/link.conf'), /Type: symlink[\s\S]*Fast link dest: "plain.conf"/);
  t.notRegex(await fs('ls /etc/demo'), /\.tmpl/, 'templates lose their suffix');

  const bootAt = `${image}@@${boot!.start * 512}`;
  const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
  t.is((await execa('mtype', ['-i', bootAt, '::/config.txt'], { env })).stdout, '# replaced');
  t.is((await execa('mdir', ['-b', '-i', bootAt, '::/ssh'], { env })).stdout.trim(), '::/ssh');
  t.regex((await execa('mtype', ['-i', bootAt, '::/cmdline.txt'], { env })).stdout, /init=\/usr\/lib\/raspberrypi-sys-mods\/firstboot$/);
  const info = (await execa('minfo', ['-i', bootAt, '::'], { env })).stdout;
  t.regex(info, /serial number: 1A2B3C4D/i, 'volume ID kept');
  t.regex(info, /disk type="FAT32\s*"/, 'still FAT32');

  // Shrunk: the filesystem holds its data plus the margin, and free blocks are holes.
  const stats = await fs('stats');
  const fsBytes = Number(/Block count:\s+(\d+)/.exec(stats)![1]) * Number(/Block size:\s+(\d+)/.exec(stats)![1]);
  const rootFs = await rootFacts(image, rootOffset, rootSize);
  t.is(rootFs.fsck, 0, 'e2fsck -fn finds it clean');
  t.is(rootFs.bytes, fsBytes);
  t.true(fsBytes <= (rootFs.used + config['shrink-margin']) * 1.05, `shrunk to ${fsBytes} bytes for ${rootFs.used} in use`);
  t.true(fsBytes < rootFs.estimate + config['shrink-margin'], `below resize2fs's estimate ${rootFs.estimate} + the margin`);
  t.true(fsBytes < 96 * MiB + 200 * MiB - 64 * MiB, 'smaller than it was grown to');
  const { stdout: du } = await execa('du', ['--block-size=1', image]);
  t.true(Number(du.split('\t')[0]) < statSync(image).size, 'sparse');
});

// Serial: one more concurrent build would pass Node's 10 SIGINT listeners warning.
test.serial("the build's one time: --source-date, else the root's newest file; the boot files written back are none newer", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { payloadMiB: 4 });
  const epoch = 1704067200; // 2024-01-01T00:00:00Z: older than any file the build writes
  const config = testConfig(dir, { overlay: [overlayDir(dir)], 'source-date': epoch });
  const { state } = await runStages([attachStage, overlayStage(), finalizeStage], config, { image });
  t.is(state.sourceDateEpoch, epoch);
  const logs = readdirSync(join(config.work, 'logs')).map((f) => readFileSync(join(config.work, 'logs', f), 'utf8'));
  t.true(
    logs.some((l) => l.includes('source date: 2024-01-01T00:00:00Z (SOURCE_DATE_EPOCH 1704067200, from --source-date)')),
    'one log line',
  );
  const [boot] = await partitions(image);
  const bootAt = `${image}@@${boot!.start * 512}`;
  const env = { ...process.env, MTOOLS_SKIP_CHECK: '1', TZ: 'UTC' };
  for (const file of ['config.txt', 'ssh']) t.regex((await execa('mdir', ['-i', bootAt, `::/${file}`], { env })).stdout, /2024-01-01/, file);

  // Without the option: the newest file time of the root filesystem as the base image has it.
  const again = join(dir, 'again.img');
  await makeTinyImage(again, { payloadMiB: 4 });
  const plain = testConfig(join(dir, 'plain'), { 'source-date': undefined });
  const { state: found } = await runStages([attachStage, finalizeStage], plain, { image: again });
  t.true(Number.isInteger(found.sourceDateEpoch), String(found.sourceDateEpoch));
  t.true(found.sourceDateEpoch! > epoch && found.sourceDateEpoch! <= Date.now() / 1000, 'made just now by the fixture');
});

test("first-boot expansion: a pipeline's default arms it, --fixed-size disarms it, both flags are refused", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { payloadMiB: 4, rootMiB: 64 });
  const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
  const cmdline = async () => {
    const [boot] = await partitions(image);
    return (await execa('mtype', ['-i', `${image}@@${boot!.start * 512}`, '::/cmdline.txt'], { env })).stdout;
  };
  const growing = shrink({ armFirstBoot: true });
  await runStages([attachStage, growing], testConfig(dir, { 'fixed-size': true }), { image });
  t.notRegex(await cmdline(), /init=/, '--fixed-size');
  await runStages([attachStage, growing], testConfig(dir, {}), { image });
  t.regex(await cmdline(), / init=\/usr\/lib\/raspberrypi-sys-mods\/firstboot$/, "armed by default, with bookworm's own mechanism");
  await t.throwsAsync(growing.check!(testConfig(dir, { 'fixed-size': true, 'expand-on-boot': true })), {
    message: '--expand-on-boot and --fixed-size: give one or the other',
  });
  t.deepEqual(await loopsOn(image), []);
});

test('the root is written anew from its tree: the same tree gives the same bytes, every time at the build time or earlier', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const base = join(dir, 'base.img');
  await makeTinyImage(base, { payloadMiB: 8, rootMiB: 96 });
  const epoch = 1_750_000_000; // 2025-06-15, after the tiny image's files, before this run
  const build = async (name: string) => {
    const image = join(dir, `${name}.img`);
    await execa('cp', ['--sparse=always', base, image]);
    const work = join(dir, `work-${name}`);
    // What a build does to the tree: a new file, a changed one, a chmod (ctime), reads (atime).
    const overlay = join(dir, `overlay-${name}`);
    mkdirSync(join(overlay, 'rootfs/etc'), { recursive: true });
    writeFileSync(join(overlay, 'rootfs/etc/added.conf'), 'added\n');
    await runStages([attachStage, overlayStage(), finalizeStage, shrinkStage], testConfig(work, { overlay: [overlay], 'source-date': epoch }), { image });
    return image;
  };
  const one = await build('one');
  await new Promise((resolve) => setTimeout(resolve, 1100)); // another second on the clock
  const two = await build('two');
  t.is(await sha256File(one), await sha256File(two), 'byte-identical images');

  const [, root] = await partitions(one);
  const fs = (request: string) => debugfs(one, root!.start * 512, root!.size * 512, request);
  const times = (stat: string) => [...stat.matchAll(/^ *(?:a|m|c|cr)time: 0x([0-9a-f]+)/gm)].map((m) => Number.parseInt(m[1]!, 16));
  for (const path of ['/', '/etc', '/etc/added.conf', '/lost+found']) {
    const found = times(await fs(`stat ${path}`));
    t.is(found.length, 4, path);
    t.true(
      found.every((s) => s <= epoch),
      `${path}: ${found.join(', ')}`,
    );
  }
  t.regex(await fs('stats'), /Last write time:\s+\S+ (Jun 15|Jun 16|Jun 14)/, 'the superblock at the build time');
  t.deepEqual(
    readdirSync(dir).filter((f) => /\.(root|tree|debugfs|mke2fs\.conf)$/.test(f)),
    [],
    'nothing left beside the images',
  );
  t.deepEqual(await loopsOn(one), []);
});

test('no room beside the image for the rewritten root: one line naming the fix, the image as it was, nothing left', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const small = await smallDisk(t, dir, 40);
  const image = join(small, 'image.img');
  await makeTinyImage(image, { payloadMiB: 24, rootMiB: 64 });
  const before = await sha256File(image);
  const error = await t.throwsAsync(runStages([shrinkStage], testConfig(dir, { 'shrink-margin': 4 * MiB }), { image }));
  t.regex(
    error!.message,
    /^shrink: no room for the rewritten root filesystem \(.*\) beside the image: free space under .* or pass --work DIR on a larger disk$/,
  );
  t.is(await sha256File(image), before, 'the image is as it was');
  t.deepEqual(readdirSync(small).sort(), ['image.img', 'lost+found'].sort());
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(
    mountsUnder(dir).filter((m) => m !== small),
    [],
  );
});

test('shrinking a shrunk image changes nothing', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { payloadMiB: 8, rootMiB: 128 });
  const config = testConfig(dir);
  await runStages([shrinkStage], config, { image });
  const first = { size: statSync(image).size, table: (await execa('sfdisk', ['-d', image])).stdout };
  await runStages([shrinkStage], config, { image });
  t.deepEqual({ size: statSync(image).size, table: (await execa('sfdisk', ['-d', image])).stdout }, first);
  t.true(first.size < 4 * MiB + 40 * MiB + 128 * MiB, 'the first run did shrink');
});

test('a GPT image is grown and shrunk with its backup header moved', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { label: 'gpt', release: 'bullseye', payloadMiB: 4 });
  const config = testConfig(dir, { grow: 64 * MiB });
  await runStages([growStage, attachStage, finalizeStage, shrinkStage], config, { image });
  const { stdout, stderr } = await execa('sfdisk', ['--verify', image]);
  t.regex(stdout + stderr, /No errors detected/);
  const [, root] = await partitions(image);
  t.is(statSync(image).size, (root!.start + root!.size + 33) * 512);
});

test('a root that is not ext4 is refused with one line, and nothing is left behind', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { rootFs: 'vfat' });
  const before = await sha256File(image);
  const error = await t.throwsAsync(runStages(stages, testConfig(dir), { image }));
  t.regex(error!.message, /expected one ext4 root partition, found 0.*only ext4 roots are supported/);
  t.notRegex(error!.message, /\n/);
  t.is(await sha256File(image), before);
  t.deepEqual(await loopsOn(image), []);
});

test('an unknown template variable is an error naming it; the image is detached', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image);
  const overlay = join(dir, 'bad');
  mkdirSync(join(overlay, 'rootfs/etc'), { recursive: true });
  writeFileSync(join(overlay, 'rootfs/etc/x.conf.tmpl'), 'value={{ nope }}\n');
  const error = await t.throwsAsync(runStages(stages, testConfig(dir, { overlay: [overlay] }), { image }));
  t.regex(error!.message, /rootfs\/etc\/x\.conf\.tmpl: unknown template variable \{\{ nope \}\}/);
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test('an image whose os-release names a release that is no name (a path) is refused before it names a cache directory', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { rootFiles: { 'etc/os-release': 'ID=debian\nVERSION_CODENAME=../../../../tmp/escape\n' } });
  const error = await t.throwsAsync(runStages([attachStage, finalizeStage], testConfig(dir), { image }));
  t.is(
    error!.message,
    'the image\'s os-release gives the release "../../../../tmp/escape", which is not a release name (lower-case letters, digits, "-"): is this a Raspberry Pi OS or Debian image?',
  );
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test('an image whose architecture does not match --arch is refused, from its own /bin/sh', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { arch: 'armhf' });
  const error = await t.throwsAsync(runStages([attachStage, finalizeStage], testConfig(dir, { arch: 'arm64' }), { image }));
  t.is(error!.message, 'the image is armhf (from its /bin/sh) but --arch is arm64: pass --arch armhf, or an image for arm64');
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test('a root filesystem the build damaged (a write gone wrong under it) stops the build at finalize with one line', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image.img');
  await makeTinyImage(image);
  // Behind the mounted filesystem's back, as a failing disk would: /etc/hostname's inode zeroed on
  // disk, after a read-only remount so that nothing of the kernel's writes it back.
  const damage: Stage = {
    name: 'damage',
    describe: () => 'zero an inode of the mounted root on disk',
    options: [],
    async run(ctx) {
      const root = join(ctx.paths.work, 'root');
      const inode = statSync(join(root, 'etc/hostname')).ino;
      await execa('mount', ['-o', 'remount,ro', root]);
      const [, rootPart] = await partitions(image);
      const offset = rootPart!.start * 512;
      const { stdout: dev } = await execa('losetup', [
        '--find',
        '--show',
        '--read-only',
        '--offset',
        String(offset),
        '--sizelimit',
        String(rootPart!.size * 512),
        image,
      ]);
      let where: string;
      let blockSize: number;
      try {
        where = (await execa('debugfs', ['-R', `imap <${inode}>`, dev.trim()])).stdout;
        blockSize = Number(/Block size:\s+(\d+)/.exec((await execa('dumpe2fs', ['-h', dev.trim()])).stdout)![1]);
      } finally {
        await execa('losetup', ['-d', dev.trim()]);
      }
      const [, block, at] = /located at block (\d+), offset (0x[0-9a-f]+)/.exec(where)!;
      await execa('dd', [
        'if=/dev/zero',
        `of=${image}`,
        'bs=1',
        'count=128',
        `seek=${offset + Number(block) * blockSize + Number(at)}`,
        'conv=notrunc',
        'status=none',
      ]);
    },
  };
  const error = await t.throwsAsync(runStages([attachStage, damage, finalizeStage], testConfig(dir), { image }));
  t.regex(
    error!.message,
    /^the root filesystem the build wrote had errors \(e2fsck repaired them: .*\): the disk under the work directory may be full or failing; nothing was written to --out \(see the finalize log\)$/,
  );
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(dir), []);
});

test('a disk without room for what the build may write into its sparse working image is refused at grow, before anything is written', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const small = await smallDisk(t, dir, 160);
  const image = join(small, 'image.img');
  await makeTinyImage(image, { payloadMiB: 4 }); // ~104 MiB, sparse: a few MiB on disk
  const before = await sha256File(image);
  const error = await t.throwsAsync(runStages(stages, testConfig(dir, { work: join(small, 'work'), grow: 256 * MiB }), { image }));
  t.regex(
    error!.message,
    new RegExp(
      `^not enough space in ${small}: the working image may take [\\d.]+ MiB more as the build writes it, and the disk has [\\d.]+ MiB free; free some space or pass --work DIR on a larger disk$`,
    ),
  );
  t.is(await sha256File(image), before, 'not grown');
  t.deepEqual(await loopsOn(image), []);
  t.deepEqual(mountsUnder(join(small, 'work')), []);
});
