/**
 * `build-image flash` against loop devices: an .img.xz with its .bmap (only mapped blocks written,
 * then read back), a .img.zst without one (every byte), and every refusal, each leaving the target
 * untouched.
 */

import { pbkdf2Sync } from 'node:crypto';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { execa, execaSync } from 'execa';
import { readBmap } from '../../lib/image/bmap.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { sha256File } from '../helpers/base-images.ts';
import { scratch } from '../helpers/build.ts';
import { mountsUnder } from '../helpers/leaks.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const flash = (args: string[], dir: string) => execa('node', [cli, 'flash', ...args, '--work', join(dir, 'work')], { reject: false, env: { CI: 'true' } });

let dir: string;
let image: string;
test.before(async () => {
  dir = scratch('flash-fixtures-');
  image = join(dir, 'tiny.img');
  await makeTinyImage(image, { payloadMiB: 6 });
  await execa('bmaptool', ['create', '-o', join(dir, 'tiny.img.bmap'), image]);
  await execa('xz', ['-k', '-T0', '-1', image]);
  await execa('zstd', ['-q', '-k', image, '-o', join(dir, 'plain.img.zst')]);
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** A loop device over a file of `mib` MiB of noise, detached at the end of the test. */
async function loopDisk(t: ExecutionContext, mib: number): Promise<{ device: string; file: string }> {
  const work = scratch();
  const file = join(work, 'disk');
  await execa('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${mib}`, 'status=none']);
  const { stdout } = await execa('losetup', ['--find', '--show', file]);
  const device = stdout.trim();
  t.teardown(async () => {
    await execa('losetup', ['-d', device], { reject: false });
    rmSync(work, { recursive: true, force: true });
  });
  return { device, file };
}

async function bytesAt(path: string, start: number, end: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(end - start);
    await handle.read(buffer, 0, buffer.length, start);
    return buffer;
  } finally {
    await handle.close();
  }
}

test.serial('an .img.xz with its .bmap: only the mapped blocks are written, and read back', async (t) => {
  const { device, file } = await loopDisk(t, 160);
  const r = await flash([`${image}.xz`, device, '--force'], dir);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(
    r.stdout,
    new RegExp(`^${device}: wrote [\\d.]+ MiB of the 108\\.0 MiB image \\(only what tiny\\.img\\.bmap maps\\); read back [\\d.]+ MiB and it matches$`, 'm'),
  );
  const bmap = readBmap(join(dir, 'tiny.img.bmap'));
  for (const range of bmap.ranges) {
    t.true((await bytesAt(file, range.start, range.end)).equals(await bytesAt(image, range.start, range.end)), `bytes ${range.start}-${range.end}`);
  }
  // Unmapped blocks keep the noise: nothing was written there.
  const gap = bmap.ranges.findIndex((r, i) => i > 0 && r.start > bmap.ranges[i - 1]!.end);
  const hole = { start: bmap.ranges[gap - 1]!.end, end: bmap.ranges[gap]!.start };
  t.false((await bytesAt(file, hole.start, hole.end)).equals(Buffer.alloc(hole.end - hole.start)));
  await execa('sfdisk', ['--json', device]); // the partition table is readable
});

test.serial('an image without a .bmap: every byte is written and read back', async (t) => {
  const { device, file } = await loopDisk(t, 128);
  const r = await flash([join(dir, 'plain.img.zst'), device, '--force'], dir);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, /wrote 108\.0 MiB of the 108\.0 MiB image; read back 108\.0 MiB and it matches/);
  // Compared by cmp, streaming: the card's first bytes are the image, byte for byte.
  const compared = await execa('cmp', ['-n', String(statSync(image).size), file, image], { reject: false });
  t.is(compared.exitCode, 0, compared.stdout);
});

test.serial('refusals: one line each, and the disk is left as it was', async (t) => {
  const small = await loopDisk(t, 16);
  const big = await loopDisk(t, 160);
  const notBlock = join(dir, 'not-a-device');
  writeFileSync(notBlock, 'x');
  const cases: Array<[string[], RegExp]> = [
    [[`${image}.xz`, big.device], new RegExp(`^error: ${big.device} is not a removable disk: check it is the right one, then add --force$`)],
    [
      [`${image}.xz`, small.device, '--force'],
      new RegExp(`^error: ${small.device} is smaller than the image \\(16777216 bytes, the image 113246208\\): use a larger card$`),
    ],
    [[`${image}.xz`, notBlock, '--force'], /^error: .*not-a-device is not a block device: give the whole disk to write/],
    [[`${image}.xz`, big.device, '--bmap', join(dir, 'nope.bmap')], /^error: --bmap .*nope\.bmap: no such file$/],
  ];
  const before = [await sha256File(small.file), await sha256File(big.file)];
  for (const [args, message] of cases) {
    const r = await flash(args, dir);
    t.not(r.exitCode, 0, args.join(' '));
    t.regex(
      r.stderr
        .split('\n')
        .filter((l) => l.startsWith('error:'))
        .join('\n'),
      message,
    );
  }

  t.deepEqual([await sha256File(small.file), await sha256File(big.file)], before, 'nothing was written');

  // In use: a filesystem on the disk, mounted.
  await execa('mkfs.ext4', ['-q', big.device]);
  const scratchDir = scratch();
  t.teardown(() => rmSync(scratchDir, { recursive: true, force: true }));
  const mnt = join(scratchDir, 'mnt');
  await execa('mkdir', ['-p', mnt]);
  await execa('mount', [big.device, mnt]);
  const mounted = await flash([`${image}.xz`, big.device, '--force'], dir).finally(() => execa('umount', [mnt]));
  t.regex(mounted.stderr, new RegExp(`error: ${big.device} is in use \\(mounted on ${mnt}\\): unmount it first`));
  t.deepEqual(mountsUnder(mnt), []);
});

test.serial('a disk opened exclusively by another program (as a mounted btrfs or an imported ZFS pool holds it) is refused even with --force', async (t) => {
  const { device, file } = await loopDisk(t, 160);
  const before = await sha256File(file);
  const holder = execa(
    'python3',
    ['-c', `import os, time\nfd = os.open(${JSON.stringify(device)}, os.O_RDONLY | os.O_EXCL)\nprint("held", flush=True)\ntime.sleep(120)`],
    { reject: false },
  );
  await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()));
  const busy = await flash([`${image}.xz`, device, '--force'], dir).finally(() => holder.kill('SIGTERM'));
  await holder;
  t.is(busy.exitCode, 1);
  t.deepEqual(
    busy.stderr.split('\n').filter((l) => l.startsWith('error:')),
    [`error: ${device} is busy: something holds it (a mounted filesystem, a ZFS pool, LVM, RAID, or another program): stop it first`],
  );
  t.is(await sha256File(file), before, 'nothing was written');
});

test.serial('an image that does not match its .bmap is refused as damaged', async (t) => {
  const { device } = await loopDisk(t, 160);
  const bmap = readFileSync(join(dir, 'tiny.img.bmap'), 'utf8').replace(/chksum="[0-9a-f]{8}/, 'chksum="00000000');
  writeFileSync(join(dir, 'bad.bmap'), bmap);
  const r = await flash([`${image}.xz`, device, '--force', '--bmap', join(dir, 'bad.bmap')], dir);
  t.is(r.exitCode, 1);
  t.regex(r.stderr, /error: image tiny\.img\.xz: bytes 0-\d+ do not match the block map's sha256: the image or its \.bmap is damaged/);
});

/** The card's settings inputs: a key pair, a password file, a Wi-Fi passphrase file. */
function settingsInputs(t: ExecutionContext): { dir: string; pub: string; password: string; psk: string } {
  const inputs = scratch();
  t.teardown(() => rmSync(inputs, { recursive: true, force: true }));
  execaSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'alice@laptop', '-f', join(inputs, 'alice')]);
  writeFileSync(join(inputs, 'password'), 'not-a-real-password\n');
  writeFileSync(join(inputs, 'psk'), 'correct horse battery\n');
  return { dir: inputs, pub: readFileSync(join(inputs, 'alice.pub'), 'utf8').trim(), password: join(inputs, 'password'), psk: join(inputs, 'psk') };
}

const BOOT_AT = 8192 * 512; // the tiny image's boot partition
const mtype = async (device: string, file: string) =>
  (await execa('mtype', ['-i', `${device}@@${BOOT_AT}`, `::/${file}`], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;

test.serial("flash with settings: firstrun.sh on the card, in Imager's format, run from the command line; the image file unchanged", async (t) => {
  const { device } = await loopDisk(t, 160);
  const inputs = settingsInputs(t);
  const before = await sha256File(`${image}.xz`);
  const r = await flash(
    [
      `${image}.xz`,
      device,
      '--force',
      '--hostname',
      'pi-07',
      '--user',
      'alice',
      '--password-file',
      inputs.password,
      '--ssh-key',
      join(inputs.dir, 'alice.pub'),
      '--wifi-ssid',
      'lab-uplink',
      '--wifi-psk-file',
      inputs.psk,
      '--wifi-country',
      'fr',
      '--timezone',
      'Europe/Paris',
      '--keymap',
      'fr',
    ],
    dir,
  );
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`^${device}: first-boot settings \\(init_format systemd\\) in firstrun\\.sh, cmdline\\.txt on its boot partition$`, 'm'));
  t.is(await sha256File(`${image}.xz`), before, 'the image file is unchanged');
  const script = await mtype(device, 'firstrun.sh');
  await execa('sh', ['-n'], { input: script }); // valid shell
  const psk = pbkdf2Sync('correct horse battery', 'lab-uplink', 4096, 32, 'sha1').toString('hex');
  const hash = /userconf alice '(\$6\$[^']+)'/.exec(script)?.[1] ?? '';
  t.truthy(hash, 'the password as a SHA-512 crypt hash');
  const salt = hash.split('$')[2] ?? '';
  t.is((await execa('openssl', ['passwd', '-6', '-salt', salt, 'not-a-real-password'])).stdout.trim(), hash, 'of the password in the file');
  t.false(script.includes('not-a-real-password'), 'never the password itself');
  // What Imager's firstrun.sh does, in its order (its fallbacks for images without imager_custom in between).
  const steps = [
    '/usr/lib/raspberrypi-sys-mods/imager_custom set_hostname pi-07',
    `/usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh -k '${inputs.pub}'`,
    `/usr/lib/userconf-pi/userconf alice '${hash}'`,
    `/usr/lib/raspberrypi-sys-mods/imager_custom set_wlan lab-uplink ${psk} FR`,
    '/usr/lib/raspberrypi-sys-mods/imager_custom set_keymap fr',
    '/usr/lib/raspberrypi-sys-mods/imager_custom set_timezone Europe/Paris',
    'rm -f /boot/firmware/firstrun.sh',
    "sed -i 's| systemd\\.run.*||g' /boot/firmware/cmdline.txt",
  ];
  const at = steps.map((step) => script.indexOf(`${step}\n`));
  t.deepEqual(
    at.map((i) => i >= 0),
    steps.map(() => true),
    `every step is there:\n${script}`,
  );
  t.deepEqual(
    [...at].sort((a, b) => a - b),
    at,
    'in order',
  );
  t.regex(
    await mtype(device, 'cmdline.txt'),
    / init=\S+ systemd\.run=\/boot\/firmware\/firstrun\.sh systemd\.run_success_action=reboot systemd\.unit=kernel-command-line\.target$/,
  );
});

test.serial('flash with settings onto a trixie-style card: a cloud-init seed with a fresh instance id named on the command line', async (t) => {
  const { device } = await loopDisk(t, 160);
  const inputs = settingsInputs(t);
  const work = scratch();
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const seeded = join(work, 'seeded.img');
  await execa('cp', ['--sparse=always', image, seeded]);
  writeFileSync(join(work, 'meta-data'), 'dsmode: local\ninstance_id: rpios-image\n');
  await execa('mcopy', ['-i', `${seeded}@@${BOOT_AT}`, join(work, 'meta-data'), '::/meta-data'], { env: { MTOOLS_SKIP_CHECK: '1' } });
  const r = await flash(
    [
      seeded,
      device,
      '--force',
      '--no-bmap',
      '--hostname',
      'pi-08',
      '--user',
      'alice',
      '--ssh-key',
      join(inputs.dir, 'alice.pub'),
      '--wifi-ssid',
      'lab-uplink',
      '--wifi-psk-file',
      inputs.psk,
      '--wifi-country',
      'FR',
      '--wifi-hidden',
    ],
    work,
  );
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, /first-boot settings \(init_format cloudinit-rpi\) in user-data, meta-data, network-config, cmdline\.txt on its boot partition$/m);
  const userData = await mtype(device, 'user-data');
  t.regex(userData, /^#cloud-config\n/);
  for (const line of [
    'hostname: "pi-08"',
    'manage_etc_hosts: true',
    'user:',
    '  name: "alice"',
    '  lock_passwd: true',
    `    - ${JSON.stringify(inputs.pub)}`,
    'ssh_pwauth: false',
    '  - [ "systemctl", "enable", "--now", "ssh" ]',
  ]) {
    t.true(userData.split('\n').includes(line), `user-data has "${line}"`);
  }
  const network = await mtype(device, 'network-config');
  t.regex(network, /ethernets:\n {4}eth0:\n {6}dhcp4: true/, 'eth0 keeps DHCP');
  t.regex(
    network,
    new RegExp(`"lab-uplink":\\n {10}hidden: true\\n {10}password: "${pbkdf2Sync('correct horse battery', 'lab-uplink', 4096, 32, 'sha1').toString('hex')}"`),
  );
  t.regex(network, /regulatory-domain: "FR"/);
  const id = /^instance_id: "(\S+)"$/m.exec(await mtype(device, 'meta-data'))?.[1];
  t.truthy(id);
  t.not(id, 'rpios-image', 'a fresh instance: cloud-init runs again for this card');
  t.true((await mtype(device, 'cmdline.txt')).endsWith(` ds=nocloud;i=${id}`));
});

const BAD_SETTINGS: [string[], RegExp][] = [
  [['--hostname', 'pi_07'], /^error: --hostname "pi_07" is invalid: expected an RFC 1123 host name of one label/],
  [['--hostname=-pi'], /^error: --hostname "-pi" is invalid: expected an RFC 1123 host name of one label/],
  [['--user', 'Alice'], /^error: --user "Alice" is invalid: expected a user name/],
  [['--user', 'root'], /^error: --user "root" is invalid: expected a user name: .*not root$/],
  [['--password-hash', '$6$salt$hash'], /^error: --password-hash\/--password-file: give --user NAME too/],
  [
    ['--user', 'alice', '--password-hash', 'plain-text'],
    /^error: --password-hash \(its value not shown\) is invalid: expected a crypt\(3\) hash \(make one with: openssl passwd -6\)$/,
  ],
  [['--user', 'alice', '--password-file', '/no/such/file'], /^error: --password-file "\/no\/such\/file" is invalid: expected an existing file$/],
  [['--ssh-key', '/etc/hostname'], /^error: --ssh-key "\/etc\/hostname" is invalid: expected OpenSSH public keys, one a line/],
  [['--wifi-ssid', 'lab'], /^error: --wifi-ssid: give --wifi-psk-file FILE too/],
  [
    ['--wifi-ssid', 'x'.repeat(33), '--wifi-psk-file', '/etc/hostname', '--wifi-country', 'FR'],
    /^error: --wifi-ssid "x+" is invalid: expected an SSID of 1 to 32 bytes/,
  ],
  [
    ['--wifi-ssid', 'lab', '--wifi-psk-file', '/etc/hostname', '--wifi-country', 'FR'],
    /^error: --wifi-psk-file \/etc\/hostname: a passphrase is 8 to 63 printable ASCII characters/,
  ],
  [['--wifi-country', 'XX'], /^error: --wifi-country "XX" is invalid: expected an ISO 3166 country code/],
  [
    ['--timezone', 'Europe/Atlantis'],
    /^error: --timezone "Europe\/Atlantis" is invalid: expected a time zone: Area\/City, e\.g\. Europe\/Paris, or UTC \(a zone, not a folder/,
  ],
  [['--timezone', '../../etc/passwd'], /^error: --timezone "..\/..\/etc\/passwd" is invalid: expected a time zone/],
  [['--keymap', 'fr; reboot'], /^error: --keymap "fr; reboot" is invalid: expected a keyboard layout/],
  [['--settings', '/etc/hostname'], /^error: --settings \/etc\/hostname: not a readable JSON object/],
];

test.serial('bad settings: one line and exit 2 before anything is written to the card', async (t) => {
  const { device, file } = await loopDisk(t, 160);
  const before = await sha256File(file);
  const json = join(dir, 'settings.json');
  writeFileSync(json, JSON.stringify({ hostname: 'pi-07', wifi: 'lab' }));
  for (const [args, message] of [
    ...BAD_SETTINGS,
    [['--settings', json], /^error: --settings \S+: unknown key "wifi" \(keys: hostname, user, /] as [string[], RegExp],
  ]) {
    const r = await flash([`${image}.xz`, device, '--force', ...args], dir);
    t.is(r.exitCode, 2, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  }
  t.is(await sha256File(file), before, 'the card is untouched');
});

/** The card's root as a read-only loop device of its own (by offset), detached at the end of the test. */
async function rootOf(t: ExecutionContext, card: string): Promise<{ device: string; end: number; size: number }> {
  const table = JSON.parse((await execa('sfdisk', ['--json', card])).stdout) as { partitiontable: { partitions: Array<{ start: number; size: number }> } };
  const root = table.partitiontable.partitions.at(-1)!;
  const { stdout } = await execa('losetup', ['--find', '--show', '--read-only', '-o', String(root.start * 512), '--sizelimit', String(root.size * 512), card]);
  t.teardown(() => execa('losetup', ['-d', stdout.trim()], { reject: false }));
  return { device: stdout.trim(), end: root.start + root.size, size: root.size * 512 };
}

/** Loop devices whose backing file is `path` (a loop over a loop device names the device). */
async function loopsOver(path: string): Promise<string[]> {
  const { stdout } = await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  return stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([, back]) => back === path)
    .map(([name]) => name!);
}

for (const label of ['dos', 'gpt'] as const) {
  test.serial(`--expand (${label}): the root partition and its filesystem fill the card, and e2fsck -fn passes`, async (t) => {
    const source = join(dir, `expand-${label}.img`);
    await makeTinyImage(source, { label, payloadMiB: 6 });
    const { device, file } = await loopDisk(t, 256);
    const r = await flash([source, device, '--force', '--expand'], dir);
    t.is(r.exitCode, 0, r.stderr);
    t.regex(r.stdout, new RegExp(`^${device}: root filesystem grown from [\\d.]+ MiB to [\\d.]+ MiB, to the card's end$`, 'm'));
    const sectors = (256 * 2 ** 20) / 512;
    const root = await rootOf(t, file);
    t.true(root.end <= sectors - (label === 'gpt' ? 33 : 0) && root.end > sectors - 41, `the root ends at sector ${root.end} of ${sectors}`);
    const verified = await execa('sfdisk', ['--verify', file], { reject: false });
    t.is(verified.exitCode, 0, `the partition table is sound (a GPT's backup header at the card's end): ${verified.stdout}`);
    const fsck = await execa('e2fsck', ['-fn', root.device], { reject: false });
    t.is(fsck.exitCode, 0, fsck.stdout);
    const head = (await execa('dumpe2fs', ['-h', root.device])).stdout;
    const blocks = Number(/^Block count:\s+(\d+)/m.exec(head)![1]) * Number(/^Block size:\s+(\d+)/m.exec(head)![1]);
    t.true(root.size - blocks < 4096, `the filesystem (${blocks} bytes) fills its partition (${root.size})`);
    t.deepEqual(await loopsOver(device), [], 'no loop device of the expand is left on the card');
  });
}

test.serial('--expand onto a card the size of the image: nothing to grow, said so', async (t) => {
  const { device } = await loopDisk(t, statSync(image).size / 2 ** 20);
  const r = await flash([image, device, '--force', '--expand'], dir);
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`^${device}: root filesystem of [\\d.]+ MiB already reaches the card's end$`, 'm'));
});

test.serial('--expand of an image whose root is not ext4: one line, and the card keeps the image as written', async (t) => {
  const source = join(dir, 'fat-root.img');
  await makeTinyImage(source, { rootFs: 'vfat', payloadMiB: 1 });
  const { device, file } = await loopDisk(t, 160);
  const r = await flash([source, device, '--force', '--expand'], dir);
  t.is(r.exitCode, 1);
  t.deepEqual(
    r.stderr.split('\n').filter((l) => l.startsWith('error:')),
    [
      `error: ${device} holds the image, written and read back, but --expand cannot grow it: ${device}: expected one ext4 root partition, found 0 (partitions: 1:vfat, 2:vfat); only ext4 roots are supported`,
    ],
  );
  const compared = await execa('cmp', ['-n', String(statSync(source).size), file, source], { reject: false });
  t.is(compared.exitCode, 0, 'the card holds the image, byte for byte');
});
