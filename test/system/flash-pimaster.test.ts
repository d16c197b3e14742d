/** The pimasters the suite builds, each flashed by `build-image flash` to a loop device with its .bmap and read back. */

import { rmSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { scratch } from '../helpers/build.ts';
import { pimasterBuild } from '../helpers/pimaster-build.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const flash = (args: string[], dir: string) => execa('node', [cli, 'flash', ...args, '--work', join(dir, 'work')], { reject: false, env: { CI: 'true' } });

for (const base of ['bookworm-arm64', 'bookworm-armhf'] as const) {
  test.serial(`${base} pimaster: the built .img.zst flashed to a loop device with its .bmap reads back as the image`, async (t) => {
    const build = await pimasterBuild(base);
    const work = scratch();
    t.teardown(() => rmSync(work, { recursive: true, force: true }));
    const file = join(work, 'card');
    await execa('truncate', ['-s', '4G', file]); // a blank card: unmapped blocks read as the image's zeros
    const device = (await execa('losetup', ['--find', '--show', file])).stdout.trim();
    t.teardown(() => execa('losetup', ['-d', device], { reject: false }));
    const r = await flash([`${build.image}.zst`, device, '--force'], work);
    t.log(r.stdout);
    t.is(r.exitCode, 0, r.stderr);
    t.regex(r.stdout, new RegExp(`only what pimaster-${base}\\.img\\.bmap maps\\); read back [\\d.]+ [MG]iB and it matches`));
    // Independently of the tool: the card's first bytes are the image the build describes.
    const image = build.manifest.image as { size: number; sha256: string };
    const { stdout } = await execa('bash', ['-o', 'pipefail', '-c', `head -c ${image.size} ${device} | sha256sum`]);
    t.is(stdout.split(' ')[0], image.sha256);
  });
}
