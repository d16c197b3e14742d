/**
 * The environment `verify --deploy` puts on the suite's node: the plain Debian fixture made into a
 * deployable image by the real CLI's `customize` (SSH on, a file of its own to find on the node),
 * kept in the test cache under a key that hashes the code that made it.
 */
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { withLock } from '../../engine/lock.ts';
import { debianImage, TEST_CACHE } from '../fixtures/debian-image.ts';
import { codeKey } from './pimaster-build.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;

/** What the environment's /etc/verify-environment holds: the deployed node shows it. */
export const ENVIRONMENT_MARK = 'deployed by build-image verify --deploy';

/**
 * Its settings: no room left in its root (the agent grows it to the card; every byte of the image
 * is streamed, unpacked and written under emulation, within the agent's 400 s), and none added
 * first (the shrink cannot give back all the block groups growth adds: 342 MB with it, 294 without).
 */
const SETTINGS = ['--ssh', 'on', '--grow', '0', '--shrink-margin', '0'];

/** A script of the user's that slims it: nobody reads manuals on a test node. */
const SLIM = 'rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/*\n';

export async function deployEnvironment(): Promise<string> {
  const base = await debianImage('arm64');
  const dir = join(TEST_CACHE, 'environments', `debian-arm64-${codeKey(`environment ${SETTINGS.join(' ')} ${SLIM} ${ENVIRONMENT_MARK}`, base)}`);
  const image = join(dir, 'out', 'verify-environment.img');
  if (existsSync(image)) return image;
  mkdirSync(join(TEST_CACHE, 'environments'), { recursive: true });
  return withLock(`${dir}.lock`, async () => {
    if (existsSync(image)) return image;
    const tmp = `${dir}.partial`;
    await execa('rm', ['-rf', '--one-file-system', tmp]);
    mkdirSync(join(tmp, 'overlay', 'rootfs', 'etc'), { recursive: true });
    writeFileSync(join(tmp, 'overlay', 'rootfs', 'etc', 'verify-environment'), `${ENVIRONMENT_MARK}\n`);
    writeFileSync(join(tmp, 'slim.sh'), SLIM);
    const sha = (await execa('sha256sum', [base])).stdout.split(' ')[0]!;
    const r = await execa(
      'node',
      [
        cli,
        'customize',
        ...['--base', base, '--base-sha256', sha, '--overlay', join(tmp, 'overlay'), '--script', join(tmp, 'slim.sh'), ...SETTINGS],
        ...['--compress', 'none', '--name', 'verify-environment', '--no-cache'],
        ...['--work', join(tmp, 'work'), '--cache', TEST_CACHE, '--out', join(tmp, 'out')],
      ],
      { env: { CI: 'true' }, all: true, reject: false },
    );
    if (r.exitCode !== 0) throw new Error(`customize of the environment failed (exit ${r.exitCode}):\n${(r.all ?? '').split('\n').slice(-30).join('\n')}`);
    await execa('rm', ['-rf', '--one-file-system', join(tmp, 'work')]);
    renameSync(tmp, dir);
    return image;
  });
}
