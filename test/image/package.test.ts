/**
 * The npm package as its users get it: `npm pack` of this tree, the tarball installed into an
 * empty project (`npx build-image`) and into an empty global prefix, then `--help`, `--version`,
 * `doctor` and a small `customize` run by the installed command, as a user would type them.
 */

import { mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { execa } from 'execa';
import { copyCheckout } from '../fixtures/checkout.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { scratch } from '../helpers/build.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { name: string; version: string };

/** This tree's files (what git would commit), copied: packing writes JavaScript beside the TypeScript, out of the other tests' way. */
async function copyOfTree(to: string): Promise<void> {
  await copyCheckout(to);
  symlinkSync(join(repo, 'node_modules'), join(to, 'node_modules')); // tsc, for the build at pack time
}

test('npm pack, installed locally and globally: --help, --version, doctor and customize run from the package', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await makeTinyImage(join(dir, 'base.img'));
  writeFileSync(join(dir, 'base.img.sha256'), (await execa('sha256sum', ['base.img'], { cwd: dir })).stdout);
  const src = join(dir, 'src');
  await copyOfTree(src);
  const commit = (await execa('git', ['rev-parse', 'HEAD'], { cwd: repo })).stdout;

  const packed = await execa('npm', ['pack', '--json', '--pack-destination', dir], { cwd: src, env: { BUILD_IMAGE_COMMIT: commit } });
  const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as Array<{
    filename: string;
    size: number;
    unpackedSize: number;
    files: Array<{ path: string }>;
  }>;
  t.log(`${info!.filename}: ${(info!.size / 1024).toFixed(0)} KiB packed, ${(info!.unpackedSize / 1024).toFixed(0)} KiB unpacked, ${info!.files.length} files`);
  const paths = info!.files.map((f) => f.path);
  t.true(paths.includes('commands/cli.js') && paths.includes('bin/build-image.js') && paths.includes('engine/commit.txt'));
  t.true(
    paths.some((p) => p.startsWith('overlays/pimaster/')),
    "the pimaster's overlay",
  );
  t.deepEqual(
    paths.filter((p) => p.endsWith('.ts') || p.startsWith('test/') || p.startsWith('bench/')),
    [],
    'no TypeScript, tests or benches',
  );
  t.deepEqual(
    readdirSync(join(src, 'commands')).filter((f) => f.endsWith('.js')),
    [],
    'the tree is as before once packed',
  );

  const tarball = join(dir, info!.filename);
  const project = join(dir, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), '{ "name": "a-user-project", "private": true }\n');
  await execa('npm', ['install', '--no-audit', '--no-fund', tarball], { cwd: project });
  await execa('npm', ['install', '--global', '--no-audit', '--no-fund', '--prefix', join(dir, 'global'), tarball]);
  const local = (args: string[]) => execa('npx', ['build-image', ...args], { cwd: project, reject: false, env: { CI: 'true' } });
  const global = (args: string[]) => execa(join(dir, 'global', 'bin', 'build-image'), args, { cwd: dir, reject: false, env: { CI: 'true' } });

  for (const [how, run] of [
    ['local', local],
    ['global', global],
  ] as const) {
    const help = await run(['--help']);
    t.is(help.exitCode, 0, `${how}: ${help.stderr}`);
    t.regex(help.stdout, /customize/);
    t.is((await run(['--version'])).stdout, `${pkg.version} (commit ${commit})`, how);
  }
  const doctor = await global(['doctor', '--work', join(dir, 'work')]);
  t.is(doctor.exitCode, 0, doctor.stdout);
  t.regex(doctor.stdout, /mcopy/);

  mkdirSync(join(dir, 'site', 'rootfs', 'etc'), { recursive: true });
  writeFileSync(join(dir, 'site', 'rootfs', 'etc', 'motd'), 'from the package\n');
  const out = join(dir, 'out');
  const built = await local([
    'customize',
    ...['--base', join(dir, 'base.img'), '--overlay', join(dir, 'site'), '--compress', 'none', '--name', 'packaged'],
    ...['--work', join(dir, 'work'), '--cache', join(dir, 'cache'), '--out', out],
  ]);
  t.is(built.exitCode, 0, built.stderr);
  const manifest = JSON.parse(readFileSync(join(out, 'packaged.manifest.json'), 'utf8')) as { toolkit: unknown };
  t.deepEqual(manifest.toolkit, { name: pkg.name, version: pkg.version, commit });
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
});
