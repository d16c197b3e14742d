/**
 * pimaster-firstboot on two copies of one pimaster image, run inside each (qemu-user chroot) as
 * its first boot would: everything unique to a device is made, differs between the two, and a
 * second run changes nothing. Booting the image itself is the verify tests' job.
 */

import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { attachStage } from '../../stages/attach.ts';
import { chrootStage } from '../../stages/chroot.ts';
import { finalizeStage } from '../../stages/finalize.ts';
import { growStage } from '../../stages/grow.ts';
import { overlayStage } from '../../stages/overlay.ts';
import { TEST_CACHE } from '../fixtures/debian-image.ts';
import { ADMIN_HASH } from '../fixtures/piseduce-repos.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { ImageReader } from '../helpers/image-reader.ts';
import { pimasterBuild } from '../helpers/pimaster-build.ts';

interface Secrets {
  hostKeys: string;
  nfsHostKeys: string;
  rootKey: string;
  nfsRootKey: string;
  authorized: string;
  nfsAuthorized: string;
  secretWebui: string;
  secretAgent: string;
  pwdSecretKey: string;
  authToken: string;
  adminHash: string;
  adminPassword: string;
  machineId: string;
  nfsMachineId: string;
  state: string[];
  enabled: boolean;
}

async function secrets(image: string): Promise<Secrets> {
  const r = await ImageReader.open(image);
  const tmp = mkdtempSync(join(tmpdir(), 'firstboot-'));
  try {
    const hostKeys = async (root: string) =>
      (
        await Promise.all(
          (
            await r.ls(`${root}/etc/ssh`)
          )
            .filter((f) => f.endsWith('.pub'))
            .sort()
            .map((f) => r.cat(`${root}/etc/ssh/${f}`)),
        )
      ).join('');
    await r.dump('/root/piseduce_webui/test-ui.db', join(tmp, 'ui.db'));
    const adminHash = (
      await execa('python3', [
        '-c',
        'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select password from user where email=\'admin@piseduce.fr\'").fetchone()[0])',
        join(tmp, 'ui.db'),
      ])
    ).stdout;
    return {
      hostKeys: await hostKeys(''),
      nfsHostKeys: await hostKeys('/nfs/raspi'),
      rootKey: await r.cat('/root/.ssh/id_rsa.pub'),
      nfsRootKey: await r.cat('/nfs/raspi/root/.ssh/id_rsa.pub'),
      authorized: await r.cat('/root/.ssh/authorized_keys'),
      nfsAuthorized: await r.cat('/nfs/raspi/root/.ssh/authorized_keys'),
      secretWebui: await r.cat('/root/piseduce_webui/secret.key'),
      secretAgent: await r.cat('/root/piseduce_agent/secret.key'),
      pwdSecretKey: (JSON.parse(await r.cat('/root/piseduce_webui/config_webui.json')) as { pwd_secret_key: string }).pwd_secret_key,
      authToken: (JSON.parse(await r.cat('/root/piseduce_agent/config_agent.json')) as { auth_token: string[] }).auth_token.join(),
      adminHash,
      adminPassword: (await r.cat('/root/piseduce-admin-password')).trim(),
      machineId: (await r.cat('/etc/machine-id')).trim(),
      nfsMachineId: (await r.cat('/nfs/raspi/etc/machine-id')).trim(),
      state: await r.ls('/var/lib/pimaster/firstboot'),
      enabled: (await r.ls('/etc/systemd/system/multi-user.target.wants')).includes('pimaster-firstboot.service'),
    };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
    await r.close();
  }
}

/** Copy the built image, put `bootFiles` on its boot partition, and run first boot in it twice. */
async function firstBoot(dir: string, built: string, bootFiles: Record<string, string>): Promise<{ image: string; once: Secrets; twice: Secrets }> {
  const image = join(dir, 'image.img');
  await execa('cp', ['--sparse=always', built, image]);
  const overlay = join(dir, 'boot-files');
  mkdirSync(join(overlay, 'boot'), { recursive: true });
  for (const [name, content] of Object.entries(bootFiles)) writeFileSync(join(overlay, 'boot', name), content);
  const boot = join(dir, 'firstboot.sh');
  writeFileSync(boot, 'PIMASTER_CONSOLE=/dev/null /usr/local/sbin/pimaster-firstboot\n');
  const stages = [growStage, attachStage, overlayStage(), chrootStage(), finalizeStage];
  const config = testConfig(dir, { cache: TEST_CACHE, grow: 64 * 2 ** 20, script: [boot], overlay: Object.keys(bootFiles).length ? [overlay] : [] });
  // A first boot run through the build's stages: nothing is put back as shipped at finalize (the
  // machine ids pimaster-firstboot makes are what this test checks).
  const asBooted = { image, shipped: { ids: {}, logs: {} } };
  await runStages(stages, config, asBooted);
  const once = await secrets(image);
  rmSync(join(dir, 'work'), { recursive: true, force: true });
  // A second run (the unit is disabled by then, but a user may start it by hand) changes nothing.
  writeFileSync(boot, 'rm -f /var/lib/pimaster/firstboot/done\nPIMASTER_CONSOLE=/dev/null /usr/local/sbin/pimaster-firstboot\n');
  await runStages(stages, { ...config, overlay: [] }, asBooted);
  return { image, once, twice: await secrets(image) };
}

test('first boot makes every per-device secret, two pimasters share none, and a second run changes nothing', async (t) => {
  const build = await pimasterBuild('bookworm-arm64');
  const a = scratch();
  const b = scratch();
  t.teardown(() => {
    rmSync(a, { recursive: true, force: true });
    rmSync(b, { recursive: true, force: true });
  });
  const dropped = readFileSync(`${build.sshKey}.pub`, 'utf8').replace('build-image-test', 'dropped-on-boot');
  const first = await firstBoot(a, build.image, { 'admin-password': 'chosen-by-the-site\n', authorized_keys: dropped });
  const second = await firstBoot(b, build.image, {});
  const [one, two] = [first.once, second.once];

  for (const key of Object.keys(one) as Array<keyof Secrets>) {
    if (key === 'state' || key === 'enabled' || key === 'authorized') continue;
    t.truthy(one[key], `${key} was made`);
    t.not(one[key], two[key], `${key} differs between the two pimasters`);
  }
  t.is(one.secretWebui, one.secretAgent, 'one secret.key for both apps');
  t.regex(one.secretWebui, /^[A-Za-z0-9_-]{43}=$/, 'a Fernet key');
  t.not(one.adminHash, ADMIN_HASH, 'the published default password is gone');
  t.is(one.adminPassword, 'chosen-by-the-site', 'taken from the boot partition');
  t.regex(two.adminPassword, /^\S{12,}$/, 'random when none was given');
  const check = (hash: string, password: string) =>
    execa(
      '/usr/bin/python3',
      ['-c', 'import sys; from werkzeug.security import check_password_hash as c; sys.exit(0 if c(sys.argv[1], sys.argv[2]) else 1)', hash, password],
      { reject: false },
    );
  t.is((await check(one.adminHash, 'chosen-by-the-site')).exitCode, 0);
  t.is((await check(two.adminHash, two.adminPassword)).exitCode, 0);
  t.is((await check(two.adminHash, 'piseduceadmin')).exitCode, 1);

  // Cross-authorization: each root may log in to the other; the build's key and the dropped one stay.
  t.true(one.authorized.split('\n').includes(`from="48.48.0.0/24" ${one.nfsRootKey.trim()}`), "the nodes' key, from the cluster subnet only");
  t.is(one.nfsAuthorized.trim(), one.rootKey.trim());
  t.true(one.authorized.includes('build-image-test'));
  t.true(one.authorized.includes('dropped-on-boot'));
  const reader = await ImageReader.open(first.image);
  t.false((await reader.bootFiles()).includes('admin-password'), 'the password file is removed from the boot partition');
  t.false((await reader.bootFiles()).includes('authorized_keys'));
  t.like(await reader.stat('/root/piseduce-admin-password'), { mode: 0o600 });
  await reader.close();

  t.false(one.enabled, 'the unit disabled itself');
  t.true(one.state.includes('done'));
  t.deepEqual(first.twice, { ...first.once, state: first.twice.state }, 'a second run changes nothing');
});
