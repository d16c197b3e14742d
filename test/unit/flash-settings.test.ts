/**
 * What flash writes for a card's first boot, and what it refuses before writing anything: a boot
 * mount point from the card's fstab that is no plain path, SSH keys past the argument limit, a
 * malformed manifest beside the image; and where the arguments go in a multi-line cmdline.txt.
 */

import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execaSync } from 'execa';
import { withArguments } from '../../lib/image/cmdline.ts';
import { flashPipeline } from '../../pipelines/flash.ts';
import { cmdlineArguments, firstBootSettings, firstrunScript } from '../../settings/first-boot.ts';
import { scratch } from '../helpers/build.ts';

test('the arguments go on the first line of cmdline.txt, the only one the firmware reads', (t) => {
  t.is(withArguments('console=tty1 root=PARTUUID=1-02 rootwait\n', ' a=1'), 'console=tty1 root=PARTUUID=1-02 rootwait a=1\n');
  t.is(withArguments('console=tty1 rootwait\n# a comment the firmware ignores\n\n', ' a=1'), 'console=tty1 rootwait a=1\n# a comment the firmware ignores\n');
  t.is(withArguments('console=tty1 rootwait\r\nsecond\r\n', ' a=1'), 'console=tty1 rootwait a=1\nsecond\n');
});

test("a boot mount point from the card's fstab that is no plain path is refused, never put in firstrun.sh or cmdline.txt", (t) => {
  const s = { hostname: 'pi-07', packages: [], enable: [], disable: [] };
  for (const mount of ['/boot/firmware;reboot', '/boot/$(reboot)', '/boot/../etc', 'boot', '/', "/boot/it's"]) {
    t.throws(() => firstrunScript(s, mount), { message: /fstab mounts the boot partition at .*fix the image's fstab/ }, mount);
    t.throws(() => cmdlineArguments('systemd', mount, 'id'), { message: /fstab mounts the boot partition at/ }, mount);
  }
  t.notThrows(() => firstrunScript(s, '/boot/firmware'));
  t.notThrows(() => firstrunScript(s, '/boot'));
});

test('SSH keys past the limit of one argument (MAX_ARG_STRLEN) are refused before anything is written', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  execaSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'k', '-f', join(dir, 'k')]);
  const key = readFileSync(join(dir, 'k.pub'), 'utf8').trim();
  writeFileSync(join(dir, 'few.pub'), `${key}\n`.repeat(10));
  writeFileSync(join(dir, 'many.pub'), Array.from({ length: 1600 }, (_, i) => `${key}-${i}`).join('\n'));
  t.truthy((await firstBootSettings({ 'ssh-key': [join(dir, 'few.pub')] }))?.sshKeys);
  await t.throwsAsync(firstBootSettings({ 'ssh-key': [join(dir, 'many.pub')] }), { message: /^--ssh-key: .* over the 131072 bytes .*MAX_ARG_STRLEN/ });
});

test('a malformed manifest beside the image is refused before the card is written', (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'pi.img.xz');
  writeFileSync(image, '');
  const settings = { hostname: 'pi-07', packages: [], enable: [], disable: [] };
  const pipeline = () => flashPipeline({ image, device: '/dev/null', force: false, settings });
  for (const text of ['{"init_format": "systemd",', '[]', '{"init_format": "upstart"}', '{"init_format": 3}']) {
    writeFileSync(join(dir, 'pi.manifest.json'), text);
    t.throws(pipeline, { message: /pi\.manifest\.json/ }, text);
  }
  for (const text of ['{"init_format": "systemd"}', '{"init_format": "cloudinit-rpi"}', '{"name": "pi"}']) {
    writeFileSync(join(dir, 'pi.manifest.json'), text);
    t.notThrows(pipeline, text);
  }
  rmSync(join(dir, 'pi.manifest.json'));
  t.notThrows(pipeline, 'no manifest');
});
