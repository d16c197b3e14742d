/** build-image doctor on a host set up for the whole suite (root, loop devices, qemu-user registered for arm64 and armhf, every tool). */
import test from 'ava';
import { execa } from 'execa';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
const run = (args: string[], options: { cwd?: string } = {}) => execa('node', [cli, ...args], { reject: false, env: { CI: 'true' }, ...options });

test('doctor checks the host, one line per check with its fix', async (t) => {
  const result = await run(['doctor']);
  t.is(result.exitCode, 0, result.stdout);
  for (const name of ['root', 'node', 'loop devices', 'binfmt arm64', 'binfmt armhf', 'sfdisk', 'mcopy', 'resize2fs', 'mke2fs', 'bmaptool', 'disk']) {
    t.regex(result.stdout, new RegExp(`^ok\\s+${name}\\s`, 'm'));
  }
});
