/**
 * The pimaster's ExecCondition for dphys-swapfile (overlays/pimaster): on a root without room for
 * the swap file (a card the image's size) the unit is skipped with a line saying why, not failed;
 * with room it runs. Run on a real 100 MiB tmpfs, with its /etc/dphys-swapfile bind-mounted over
 * /etc in a mount namespace of its own.
 */

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { scratch } from '../helpers/build.ts';
import { mountsUnder } from '../helpers/leaks.ts';

const SCRIPT = new URL('../../overlays/pimaster/rootfs/usr/local/sbin/pimaster-swap-room', import.meta.url).pathname;

async function swapRoom(dir: string, conf: string) {
  mkdirSync(join(dir, 'etc'), { recursive: true });
  mkdirSync(join(dir, 'root'), { recursive: true });
  writeFileSync(join(dir, 'etc', 'dphys-swapfile'), conf.replaceAll('ROOT', join(dir, 'root')));
  return execa('unshare', ['-m', 'sh', '-c', `mount -t tmpfs -o size=100m tmpfs "$1/root" && mount --bind "$1/etc" /etc && exec sh "$2"`, 'sh', dir, SCRIPT], {
    reject: false,
  });
}

test('dphys-swapfile: skipped with one line when the swap file would take over half the free space, run otherwise', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const skipped = await swapRoom(dir, 'CONF_SWAPFILE=ROOT/swap\nCONF_SWAPSIZE=512\n');
  t.is(skipped.exitCode, 1, 'exit 1: systemd skips the unit');
  t.regex(
    skipped.stdout,
    /^no swap: \S+\/root has 100 MiB free, too little for a 512 MiB swap file \(the root grows to the card at the first boot unless the image was built with --fixed-size\)$/,
  );
  const computed = await swapRoom(dir, 'CONF_SWAPFILE=ROOT/swap\n');
  t.regex(computed.stdout, /too little for a 2048 MiB swap file/, 'no size set: twice the RAM, at most CONF_MAXSWAP');
  const fits = await swapRoom(dir, 'CONF_SWAPFILE=ROOT/swap\nCONF_SWAPSIZE=40\n');
  t.is(fits.exitCode, 0, fits.stdout);
  t.deepEqual(mountsUnder(dir), [], 'the mounts lived in their own namespace');
});
