/**
 * One pimaster build per Raspberry Pi OS Lite look-alike (bookworm arm64 and armhf, trixie arm64),
 * shared by every test that inspects or boots it: made by the real CLI from the fixture served
 * over HTTP on 127.0.0.1, with the real PiSeduce repositories at their pinned refs, and kept in the test cache under a
 * key that hashes the code that made it.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import { withLock } from '../../engine/lock.ts';
import { DEBIAN_MIRROR, TEST_CACHE } from '../fixtures/debian-image.ts';
import { piseduceRepos } from '../fixtures/piseduce-repos.ts';
import { type LiteRelease, raspiosLite } from '../fixtures/raspios-image.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { startServer } from './http-server.ts';

const repo = new URL('../../', import.meta.url).pathname;
const cli = join(repo, 'commands/cli.ts');

/** The base a build starts from: the Lite look-alike of this release and arch. */
export type PimasterBase = 'bookworm-arm64' | 'bookworm-armhf' | 'trixie-arm64';

export interface PimasterBuild {
  dir: string;
  release: LiteRelease;
  arch: 'arm64' | 'armhf';
  /** The raw output image and its manifest. */
  image: string;
  manifest: Record<string, unknown>;
  /** The key pair given with --ssh-key (the private half logs in to the booted image). */
  sshKey: string;
  webuiRef: string;
  agentRef: string;
  /** bootcode.bin of the base image, and the environment's raw image. */
  baseBootcodeSha256: string;
  environment: { name: string; img: string };
  log: string;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

/**
 * A hash of everything a build's result depends on: the code, the overlays, the scripts, the
 * PiSeduce refs and environment image it is given (the base image by its file name, which
 * holds the hash of its recipe).
 */
export function codeKey(base: string, fixture: string): string {
  const hash = createHash('sha256').update(`${base}\n${basename(fixture)}\n`);
  // What boots, checks or writes an image (verify, flash) does not make it: a change there keeps the build.
  const notBuild = ['lib/qemu/', 'lib/card/', 'pipelines/verify.ts', 'pipelines/flash.ts', 'pipelines/pimaster/checks.ts'];
  for (const dir of [
    'engine',
    'lib',
    'settings',
    'stages',
    'pipelines',
    'overlays',
    'scripts',
    'test/fixtures/piseduce-repos.ts',
    'test/fixtures/tiny-image.ts',
    'test/helpers/pimaster-build.ts',
  ]) {
    const path = join(repo, dir);
    for (const file of statSync(path).isDirectory() ? filesUnder(path) : [path]) {
      const name = file.slice(repo.length);
      if (!notBuild.some((prefix) => name.startsWith(prefix))) hash.update(name).update(readFileSync(file));
    }
  }
  return hash.digest('hex').slice(0, 16);
}

/** The settings the bookworm-arm64 pimaster is built with (the settings stage of its user layer). */
export const PIMASTER_SETTINGS = ['--timezone', 'Europe/Paris', '--packages', 'tree', '--disable', 'apt-daily.timer'];

export async function pimasterBuild(base: PimasterBase): Promise<PimasterBuild> {
  const [release, arch] = base.split('-') as [LiteRelease, 'arm64' | 'armhf'];
  const fixture = await raspiosLite(release, arch);
  const key = codeKey(base, fixture);
  const root = join(TEST_CACHE, 'pimaster');
  const dir = join(root, `${base}-${key}`);
  const name = `pimaster-${base}`;
  const result = () => JSON.parse(readFileSync(join(dir, 'build.json'), 'utf8')) as PimasterBuild;
  if (existsSync(join(dir, 'build.json'))) return result();
  mkdirSync(root, { recursive: true });
  return withLock(join(root, `.lock-${base}`), async () => {
    if (existsSync(join(dir, 'build.json'))) return result();
    // A build killed (SIGKILL) may have left its mounts, the host's /dev bound among them: never
    // remove across a mount point.
    for (const old of readdirSync(root)) if (old.startsWith(`${base}-`)) await execa('rm', ['-rf', '--one-file-system', join(root, old)]);
    const tmp = `${dir}.partial`;
    await execa('rm', ['-rf', '--one-file-system', tmp]);
    mkdirSync(join(tmp, 'serve'), { recursive: true });

    // The base image, served over HTTP with its sha256 sidecar; a tiny image as a deployable environment.
    const served = join(tmp, 'serve', basename(fixture));
    await execa('ln', ['-s', fixture, served]);
    const sha = (await execa('sha256sum', [fixture])).stdout.split(' ')[0]!;
    writeFileSync(`${served}.sha256`, `${sha}  ${basename(fixture)}\n`);
    const envImg = join(tmp, 'serve', 'tiny-env.img');
    await makeTinyImage(envImg, { payloadMiB: 2, arch });
    await execa('xz', ['-T0', '-1', '-k', envImg]);
    writeFileSync(`${envImg}.xz.sha256`, `${(await execa('sha256sum', [`${envImg}.xz`])).stdout.split(' ')[0]}  tiny-env.img.xz\n`);
    const piseduce = await piseduceRepos();
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'build-image-test', '-f', join(tmp, 'id_ed25519')]);
    const bootcode = (await execa('sh', ['-c', `MTOOLS_SKIP_CHECK=1 mtype -i ${fixture}@@${16384 * 512} ::/bootcode.bin | sha256sum`])).stdout.split(' ')[0]!;

    const server = await startServer(join(tmp, 'serve'));
    let log = '';
    try {
      const build = await execa(
        'node',
        [
          cli,
          '--arch',
          arch,
          '--base',
          server.url(basename(fixture)),
          '--piseduce-webui',
          `${piseduce.webui}#${piseduce.webuiRef}`,
          '--piseduce-agent',
          `${piseduce.agent}#${piseduce.agentRef}`,
          '--ssh-key',
          join(tmp, 'id_ed25519.pub'),
          '--environment',
          `tiny_env=${server.url('tiny-env.img.xz')}`,
          '--compress',
          'none,zstd',
          '--name',
          name,
          // The distribution archive (Debian's, or on armhf Raspbian's, unreachable here) at the test mirror.
          '--apt-mirror',
          DEBIAN_MIRROR,
          // Build-time settings on a pimaster (its user layer): checked by pimaster-checks.
          ...(base === 'bookworm-arm64' ? PIMASTER_SETTINGS : []),
          // The suite's builds are made once per code change: snapshots would only fill the disk.
          '--work',
          join(tmp, 'work'),
          '--cache',
          TEST_CACHE,
          '--no-cache',
          '--out',
          join(tmp, 'out'),
        ],
        { env: { CI: 'true' }, all: true, reject: false },
      );
      log = build.all ?? '';
      writeFileSync(join(tmp, 'build.log'), log);
      if (build.exitCode !== 0) throw new Error(`the pimaster build failed (exit ${build.exitCode}):\n${log.split('\n').slice(-40).join('\n')}`);
    } finally {
      await server.close();
    }
    await execa('rm', ['-rf', '--one-file-system', join(tmp, 'work')]);
    renameSync(tmp, dir);
    const out = join(dir, 'out');
    const built: PimasterBuild = {
      dir,
      release,
      arch,
      image: join(out, `${name}.img`),
      manifest: JSON.parse(readFileSync(join(out, `${name}.manifest.json`), 'utf8')) as Record<string, unknown>,
      sshKey: join(dir, 'id_ed25519'),
      webuiRef: piseduce.webuiRef,
      agentRef: piseduce.agentRef,
      baseBootcodeSha256: bootcode,
      environment: { name: 'tiny_env', img: join(dir, 'serve', 'tiny-env.img') },
      log: join(dir, 'build.log'),
    };
    writeFileSync(join(dir, 'build.json'), JSON.stringify(built, null, 2));
    return built;
  });
}
