/**
 * Credentials and host paths stay out of what leaves the build: a git source fetched with a token
 * in its URL (over HTTP from a local server), the logs, the settings a manifest publishes.
 */

import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { publishedSettings, redactCredentials } from '../../engine/redact.ts';
import { pimasterConfigSchema } from '../../pipelines/pimaster/options.ts';
import { filesStage } from '../../stages/files.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { startServer } from '../helpers/http-server.ts';

const TOKEN = 'ghp_s3cr3tT0ken';

test('a git source fetched with a token: the image gets the URL without it; the logs have none and only root reads them', async (t) => {
  const dir = scratch();
  // A repository served the way git's dumb HTTP protocol reads one: plain files.
  const src = join(dir, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'app.py'), 'print("hello")\n');
  const git = (args: string[], cwd: string) => execa('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], { cwd });
  await git(['init', '-q', '-b', 'main'], src);
  await git(['add', '.'], src);
  await git(['commit', '-q', '-m', 'one'], src);
  mkdirSync(join(dir, 'www'));
  await execa('git', ['clone', '-q', '--bare', src, join(dir, 'www', 'webui.git')]);
  await execa('git', ['update-server-info'], { cwd: join(dir, 'www', 'webui.git') });
  const server = await startServer(join(dir, 'www'));
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const url = server.url('webui.git').replace('http://', `http://builder:${TOKEN}@`);

  const config = testConfig(dir, { 'piseduce-webui': url });
  const { state } = await runStages([filesStage({ git: { webui: 'piseduce-webui' } })], config);
  t.true(
    server.requests.some((r) => r.path.startsWith('/webui.git/')),
    'fetched over HTTP',
  );
  const origin = (await execa('git', ['-C', join(dir, 'work', 'files', 'webui'), 'remote', 'get-url', 'origin'])).stdout;
  t.is(origin, server.url('webui.git'), 'origin without the credentials');
  t.notRegex(readFileSync(join(dir, 'work', 'files', 'webui', '.git', 'config'), 'utf8'), new RegExp(TOKEN));
  t.is(state.sources?.webui?.repo, server.url('webui.git'));

  const logs = join(dir, 'work', 'logs');
  t.is(statSync(logs).mode & 0o777, 0o700);
  const text = readdirSync(logs)
    .map((f) => {
      t.is(statSync(join(logs, f)).mode & 0o777, 0o600, f);
      return readFileSync(join(logs, f), 'utf8');
    })
    .join('');
  t.regex(text, /git clone --quiet --mirror http:\/\/\*\*\*@127\.0\.0\.1:\d+\/webui\.git/, 'the command is logged, its credentials hidden');
  t.notRegex(text, new RegExp(TOKEN));
});

test('the settings a manifest publishes: no credentials, no path of the build machine', (t) => {
  const settings = publishedSettings(
    pimasterConfigSchema,
    testConfig('/home/me/site', {
      base: '/home/me/images/2024-11-19-raspios-bookworm-arm64-lite.img.xz',
      overlay: ['/home/me/site/overlay', './more'],
      script: ['/home/me/site/setup.sh'],
      'ssh-key': ['/home/me/.ssh/id_ed25519.pub'],
      'piseduce-webui': `https://me:${TOKEN}@github.com/me/piseduce_webui.git#main`,
      'piseduce-agent': '/home/me/src/piseduce_agent#v2',
      environment: ['bookworm=/home/me/images/env.img.xz', `trixie=https://u:${TOKEN}@example.org/trixie.img.xz`],
      'apt-proxy': `http://proxy:${TOKEN}@10.0.0.1:3142`,
      ip: '10.0.42.254/24',
    }),
  );
  t.like(settings, {
    base: '2024-11-19-raspios-bookworm-arm64-lite.img.xz',
    overlay: ['overlay', 'more'],
    script: ['setup.sh'],
    'ssh-key': ['id_ed25519.pub'],
    'piseduce-webui': 'https://github.com/me/piseduce_webui.git#main',
    'piseduce-agent': 'piseduce_agent#v2',
    environment: ['bookworm=env.img.xz', 'trixie=https://example.org/trixie.img.xz'],
    'apt-proxy': 'http://10.0.0.1:3142',
    ip: '10.0.42.254/24',
  });
  for (const key of ['work', 'cache', 'out']) t.false(key in settings, key);
  t.notRegex(JSON.stringify(settings), new RegExp(`${TOKEN}|/home/me`));
  t.is(redactCredentials(`$ git clone https://me:${TOKEN}@host/x.git and ftp://u@h/f`), '$ git clone https://***@host/x.git and ftp://***@h/f');
});
