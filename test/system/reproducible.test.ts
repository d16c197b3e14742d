/**
 * Reproducible images: `customize --no-cache` run twice on the same inputs (Debian bookworm
 * arm64, an overlay, settings, packages from the apt cache, a script), in two work
 * directories at two times, gives byte-identical outputs. When they differ, `build-image diff`
 * says where, in the failure message.
 */

import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { debianImage } from '../fixtures/debian-image.ts';
import { scratch } from '../helpers/build.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const run = (args: string[]) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' } });

const OUTPUTS = ['img', 'img.xz', 'img.zst', 'img.bmap', 'manifest.json', 'cdx.json', 'img.sha256', 'img.xz.sha256', 'img.zst.sha256'];

test('customize twice, --no-cache, in two work directories at two times: byte-identical .img, .xz, .zst, .bmap, manifest and SBOM', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // The smallest arm64 fixture: xz -6 of the image twice is most of this test's time.
  const base = await debianImage('arm64');
  const baseSha = (await execa('sha256sum', [base])).stdout.split(' ')[0]!;

  // Inputs a user keeps beside a release: a key, a password hash, an overlay, a script.
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ops@lab', '-f', join(dir, 'ops')]);
  const hash = (await execa('openssl', ['passwd', '-6', '-salt', 'Xk3vN8qLrT2p', 'a-password-of-ops'])).stdout.trim();
  const overlay = join(dir, 'site');
  mkdirSync(join(overlay, 'rootfs/etc/lab'), { recursive: true });
  writeFileSync(join(overlay, 'rootfs/etc/lab/site.conf'), 'site=lab\n');
  const script = join(dir, '50-site.sh');
  // Installs nothing; writes files, a link, a mode, and a system user (/etc/shadow's change day).
  writeFileSync(
    script,
    '#!/bin/bash\nset -e\nmkdir -p /opt/lab\necho "made by a script" > /opt/lab/note\nln -s note /opt/lab/readme\nchmod 0750 /opt/lab\nuseradd -r -M -s /usr/sbin/nologin labsvc\n',
  );
  chmodSync(script, 0o755);

  const build = async (name: string) => {
    const out = join(dir, `out-${name}`);
    const r = await run([
      'customize',
      ...['--base', base, '--base-sha256', baseSha],
      ...['--overlay', overlay, '--script', script],
      ...['--hostname', 'lab-pi', '--user', 'ops', '--password-hash', hash, '--ssh-key', join(dir, 'ops.pub')],
      ...['--timezone', 'Europe/Paris', '--locale', 'fr_FR.UTF-8', '--packages', 'locales,tree'],
      ...['--compress', 'none', '--compress', 'xz', '--compress', 'zstd', '--name', 'lab'],
      ...['--no-cache', '--work', join(dir, `work-${name}`), '--cache', join(dir, 'cache'), '--out', out],
    ]);
    t.is(r.exitCode, 0, `build ${name}: ${r.stderr}`);
    return out;
  };
  const one = await build('one');
  const two = await build('two');

  const differing: string[] = [];
  for (const ext of OUTPUTS) {
    const [a, b] = [one, two].map((out) => readFileSync(join(out, `lab.${ext}`)));
    if (!a!.equals(b!)) differing.push(`lab.${ext}`);
  }
  let why = '';
  if (differing.length) why = (await run(['diff', join(one, 'lab.img'), join(two, 'lab.img')])).stdout;
  t.deepEqual(differing, [], `build-image diff of the two images:\n${why}`);

  const manifest = JSON.parse(readFileSync(join(one, 'lab.manifest.json'), 'utf8'));
  t.is(typeof manifest.source_date_epoch, 'number');
  t.is(Date.parse(manifest.created), manifest.source_date_epoch * 1000, 'created is the source date');
  t.is(manifest.timings, undefined, 'no per-run timings in the manifest');
  t.is((await run(['diff', join(one, 'lab.img'), join(two, 'lab.img')])).exitCode, 0, 'diff agrees: exit code 0');
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
});
