/**
 * `build-image flash`'s pure pieces: a disk's holders read from a copy of sysfs, the disk the system
 * runs from found under its mounts, the block map parsed, the size --expand gives the root. No root,
 * no loop device.
 */

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execaSync } from 'execa';
import { parseMountinfo } from '../../engine/mounts.ts';
import { sectorsToEnd } from '../../lib/card/expand.ts';
import { disksUnder, holdersOf, majorMinor, mountDisks, refusals, systemDisks } from '../../lib/card/target.ts';
import { parseBmap } from '../../lib/image/bmap.ts';
import { scratch } from '../helpers/build.ts';

test('holders: device mapper or md on a disk or one of its partitions, read from sysfs (this kernel has neither, so a copy of the layout)', (t) => {
  const sys = scratch();
  t.teardown(() => rmSync(sys, { recursive: true, force: true }));
  for (const d of ['sdb/holders', 'sdb/sdb1/holders', 'sdb/sdb2/holders/dm-0', 'sdc/holders/md0', 'sdd/holders', 'sdd/queue'])
    mkdirSync(join(sys, d), { recursive: true });
  for (const p of ['sdb/sdb1', 'sdb/sdb2']) writeFileSync(join(sys, p, 'partition'), '1\n');
  t.deepEqual(holdersOf('sdb', sys), ['dm-0']);
  t.deepEqual(holdersOf('sdc', sys), ['md0']);
  t.deepEqual(holdersOf('sdd', sys), []);
  t.deepEqual(
    refusals({ path: '/dev/loop0', name: 'loop0', size: 1, removable: true }, 1, true).filter((r) => r.includes('held by')),
    [],
    'a real loop device has no holders',
  );
});

test('the disk the system runs from is found under its mounts', (t) => {
  const { stdout } = execaSync('findmnt', ['-no', 'MAJ:MIN', '/']);
  const rootDisks = disksUnder(stdout.trim());
  // Either / is on a disk and that disk is the system's, or / is on no block device at all
  // (major 0: overlay, tmpfs in a container), and then there is no disk to find.
  if (stdout.trim().startsWith('0:')) t.deepEqual(rootDisks, []);
  else t.not(rootDisks.length, 0, `the disk under / (${stdout.trim()})`);
  for (const disk of rootDisks) t.true(systemDisks().has(disk), disk);
  t.deepEqual(parseMountinfo('36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n'), [
    { majMin: '98:0', target: '/mnt/a b', source: '/dev/root' },
  ]);
  t.deepEqual(parseMountinfo('40 1 0:45 / /data rw,relatime shared:1 - btrfs /dev/sdb1 rw,space_cache=v2\n'), [
    { majMin: '0:45', target: '/data', source: '/dev/sdb1' },
  ]);
  t.is(majorMinor(0x0801), '8:1');
  // A btrfs mount's 0:N names no disk; its source does.
  const dev = execaSync('findmnt', ['-no', 'SOURCE', '/']).stdout.trim();
  if (dev.startsWith('/dev/')) t.deepEqual(mountDisks({ majMin: '0:999', target: '/', source: dev }), rootDisks);
  t.is(majorMinor((259 << 8) | 3), '259:3');
});

test('bmap parsing: ranges in bytes, the last one cut at the image size', (t) => {
  const xml =
    '<bmap version="2.0"><ImageSize> 10000 </ImageSize><BlockSize> 4096 </BlockSize><ChecksumType> sha256 </ChecksumType><BlockMap><Range chksum="ab"> 0-1 </Range><Range chksum="cd"> 2 </Range></BlockMap></bmap>';
  t.deepEqual(parseBmap(xml).ranges, [
    { start: 0, end: 8192, sha256: 'ab' },
    { start: 8192, end: 10000, sha256: 'cd' },
  ]);
  t.throws(() => parseBmap('<x/>', 'f.bmap'), { message: /f\.bmap is not a bmap \(no <ImageSize>\)/ });
});

test("--expand: the root to the card's end in whole 4 KiB, less a GPT's backup; an MBR's entry caps it", (t) => {
  const layout = (label: 'dos' | 'gpt') => ({
    label,
    sectorSize: 512,
    fileSize: 0,
    boot: 1,
    root: 2,
    partitions: [
      { number: 1, startSector: 8192, sectors: 524288, type: 'c', fs: 'vfat' as const, offset: 0, size: 0 },
      { number: 2, startSector: 532480, sectors: 4000000, type: '83', fs: 'ext4' as const, offset: 0, size: 0 },
    ],
  });
  const card = 7_948_206_080; // a "8 GB" card: 15523840 sectors
  t.is(sectorsToEnd(layout('dos'), card), 15523840 - 532480);
  t.is(sectorsToEnd(layout('gpt'), card), 15523840 - 33 - 532480 - ((15523840 - 33 - 532480) % 8));
  t.is(sectorsToEnd(layout('dos'), card + 512), 15523840 - 532480, 'a sector that makes no whole 4 KiB is left');
  t.is(sectorsToEnd(layout('dos'), 4 * 2 ** 40), 2 ** 32 - 1 - 532480 - ((2 ** 32 - 1 - 532480) % 8), 'MBR: 2 TiB at most');
});
