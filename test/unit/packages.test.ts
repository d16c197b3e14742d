/**
 * --packages takes Debian package names and nothing of apt's own syntax: no trailing - (apt's
 * "remove"), no trailing +, no regular expression, version, release or architecture. Refused at
 * option-parse time, one line, before any work.
 */

import test from 'ava';
import { execa } from 'execa';
import { removedPackages } from '../../lib/image/packages.ts';
import { aptInstallArgs } from '../../settings/in-image.ts';
import { parsePackages } from '../../settings/rules.ts';

const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;

test('plain Debian package names are taken as they are', (t) => {
  t.deepEqual(parsePackages('tree, htop,libstdc++6,python3.11,network-manager'), ['tree', 'htop', 'libstdc++6', 'python3.11', 'network-manager']);
});

for (const raw of [
  'toilet.,nano-',
  'nano-',
  'tree+',
  'tree:arm64',
  'tree=2.1.0-1',
  'tree/bookworm',
  'tr*ee',
  'tr.e?',
  'a',
  '-tree',
  'Tree',
  '^tree$',
  '?installed',
  '~i',
]) {
  test(`--packages ${raw} is refused`, (t) => {
    t.throws(() => parsePackages(raw), { any: true });
  });
}

test('--packages with apt syntax: one line naming the bad name and the rule, exit 2', async (t) => {
  const r = await execa('node', [cli, 'customize', '--plan', '--packages', 'toilet.,nano-'], { reject: false, env: { CI: 'true' } });
  t.is(r.exitCode, 2, r.stderr);
  t.is(r.stderr.trim().split('\n').length, 1);
  t.regex(r.stderr, /^error: --packages "toilet\.,nano-" is invalid: expected Debian package names.*"nano-"/);
});

test('apt gets exact names after --, never a pattern it would widen to a regular expression', (t) => {
  const args = aptInstallArgs(['tree', 'python3.11']);
  t.deepEqual(args.slice(-3), ['--', 'tree', 'python3.11']);
  t.is(args[0], 'apt-get');
  t.true(args.includes('APT::Cmd::Pattern-Only=true'));
});

test('what an install removed, from the dpkg status before and after', (t) => {
  const status = (...names: string[]) => names.map((n) => `Package: ${n}\nStatus: install ok installed\nVersion: 1\nArchitecture: arm64\n`).join('\n');
  const before = status('bash', 'nano', 'vim-tiny');
  t.deepEqual(removedPackages(before, status('bash', 'vim-tiny', 'toilet', 'toilet-fonts')), ['nano']);
  t.deepEqual(removedPackages(before, status('bash', 'nano', 'vim-tiny', 'tree')), []);
});
