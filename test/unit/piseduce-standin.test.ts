/**
 * The PiSeduce stand-ins on the host's Debian python3: databases, web UI login, agent token and key
 * checks, agent executor. Needs python3-flask python3-flask-login python3-sqlalchemy
 * python3-cryptography python3-werkzeug (PISEDUCE_TEST_PYTHON picks another interpreter).
 */

import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import { execa, type ResultPromise } from 'execa';
import { freePort } from '../../lib/qemu/guest.ts';
import { ADMIN_EMAIL, ADMIN_HASH, ADMIN_PASSWORD, DEFAULT_AGENT_TOKEN, makePiseduceStandins, type PiseduceStandins } from '../fixtures/piseduce-standin.ts';
import { scratch } from '../helpers/build.ts';

const PYTHON = process.env.PISEDUCE_TEST_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');
const base = scratch('piseduce-standin-');
let src: PiseduceStandins;

test.before(async () => {
  const probe = await execa(PYTHON, ['-c', 'import flask, flask_login, sqlalchemy, cryptography, werkzeug'], { reject: false });
  if (probe.exitCode !== 0) {
    throw new Error(
      `${PYTHON} lacks the PiSeduce dependencies (apt-get install python3-flask python3-flask-login python3-sqlalchemy python3-cryptography python3-werkzeug):\n${probe.stderr}`,
    );
  }
  src = await makePiseduceStandins(join(base, 'src'));
});

test.after.always(() => rmSync(base, { recursive: true, force: true }));

/** A clone of a stand-in at its ref, the way the pimaster build gets it. */
async function checkout(url: string, ref: string, name: string): Promise<string> {
  const dir = join(base, name);
  await execa('git', ['clone', '-q', url, dir]);
  await execa('git', ['-c', 'advice.detachedHead=false', 'checkout', '-q', ref], { cwd: dir });
  return dir;
}

async function sqlite(db: string, sql: string): Promise<unknown[][]> {
  const code = 'import json, sqlite3, sys; print(json.dumps(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchall()))';
  return JSON.parse((await execa(PYTHON, ['-c', code, db, sql])).stdout) as unknown[][];
}

function editJson(file: string, changes: Record<string, unknown>): void {
  writeFileSync(file, JSON.stringify({ ...(JSON.parse(readFileSync(file, 'utf8')) as object), ...changes }, null, 4));
}

interface Running {
  child: ResultPromise;
  output(): string;
  exited(): boolean;
  stop(): Promise<void>;
}

/** Start a Python program; stop() signals that child (by its pid), SIGKILL after 5 s. */
function start(cwd: string, args: string[]): Running {
  const child = execa(PYTHON, args, { cwd, reject: false, env: { PYTHONUNBUFFERED: '1' } });
  let output = '';
  let done = false;
  child.stdout.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  child.stderr.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  void child.then(() => {
    done = true;
  });
  return {
    child,
    output: () => output,
    exited: () => done,
    async stop() {
      if (!done) child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (!done) child.kill('SIGKILL');
      }, 5000);
      await child;
      clearTimeout(timer);
    },
  };
}

async function until(what: string, run: Running, ready: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await ready()) return;
    if (run.exited()) throw new Error(`exited before ${what}:\n${run.output()}`);
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}:\n${run.output()}`);
}

/** Start a web app of the stand-ins and wait until it answers at `origin`; stopped after the test. */
async function serve(t: ExecutionContext, dir: string, args: string[], what: string, origin: string): Promise<Running> {
  const app = start(dir, args);
  t.teardown(() => app.stop());
  await until(what, app, () => serving(origin));
  return app;
}

async function serving(origin: string): Promise<boolean> {
  try {
    await fetch(origin);
    return true;
  } catch {
    return false;
  }
}

test('the stand-ins are git repositories with the upstream files, at fixed commits', async (t) => {
  t.regex(src.webuiRef, /^[0-9a-f]{40}$/);
  t.regex(src.agentRef, /^[0-9a-f]{40}$/);
  t.is((await execa('git', ['rev-parse', 'HEAD'], { cwd: src.webui })).stdout, src.webuiRef);
  t.is((await execa('git', ['rev-parse', 'HEAD'], { cwd: src.agent })).stdout, src.agentRef);
  const files = async (dir: string) => (await execa('git', ['ls-files'], { cwd: dir })).stdout.split('\n');
  t.deepEqual(await files(src.webui), [
    'README.md',
    'admin/webui.service',
    'config_webui.json',
    'generate_password_key.py',
    'init_database.py',
    'standin_db.py',
    'webui.py',
  ]);
  t.deepEqual(await files(src.agent), [
    'README.md',
    'admin/agent_api.service',
    'admin/agent_exec.service',
    'agent_api.py',
    'agent_exec.py',
    'config_agent.json',
    'init_database.py',
    'standin_db.py',
  ]);
  t.deepEqual(JSON.parse(readFileSync(join(src.webui, 'config_webui.json'), 'utf8')), {
    port_number: 9000,
    pwd_secret_key: 'oneSecretKey',
    db_url: 'sqlite:///test-ui.db',
  });
  t.deepEqual(JSON.parse(readFileSync(join(src.agent, 'config_agent.json'), 'utf8')), {
    auth_token: [DEFAULT_AGENT_TOKEN],
    port_number: 8090,
    node_type: 'raspberry',
    key_file: 'secret.key',
    db_url: 'sqlite:///test-agent.db',
    env_path: '/root/environments/',
  });
  t.is(
    readFileSync(join(src.webui, 'admin/webui.service'), 'utf8'),
    '[Unit]\nDescription=PiSeduce WebUI\n \n[Service]\nType=simple\nUser=root\nGroup=root\nWorkingDirectory=/root/piseduce_webui\nExecStart=/usr/bin/python3 webui.py config_webui.json\nTimeoutStopSec=20\nRestart=on-failure\n \n[Install]\nWantedBy=multi-user.target\n',
  );
  t.regex(
    readFileSync(join(src.agent, 'admin/agent_api.service'), 'utf8'),
    /^WorkingDirectory=\/root\/piseduce_agent\nExecStart=\/usr\/bin\/python3 agent_api\.py config_agent\.json$/m,
  );
  t.regex(readFileSync(join(src.agent, 'admin/agent_exec.service'), 'utf8'), /^ExecStart=\/usr\/bin\/python3 agent_exec\.py config_agent\.json$/m);
  t.regex(readFileSync(join(src.webui, 'README.md'), 'utf8'), /test stand-in/);
  // Same content, author and date: the same commits again.
  const again = await makePiseduceStandins(join(base, 'again'));
  t.is(again.webuiRef, src.webuiRef);
  t.is(again.agentRef, src.agentRef);
});

test('webui: init_database.py creates the admin user, webui.py checks passwords', async (t) => {
  const dir = await checkout(src.webui, src.webuiRef, 'webui');
  const init = await execa(PYTHON, ['init_database.py'], { cwd: dir });
  t.regex(init.stdout, /Database initialization complete/);
  const db = join(dir, 'test-ui.db');
  t.deepEqual(
    (await sqlite(db, "PRAGMA table_info('user')")).map(([, name, type, , , pk]) => [name, type, pk]),
    [
      ['email', 'TEXT', 1],
      ['password', 'VARCHAR', 0],
      ['ssh_key', 'TEXT', 0],
      ['email_token', 'TEXT', 0],
      ['confirmed_email', 'BOOLEAN', 0],
      ['is_authorized', 'BOOLEAN', 0],
      ['is_admin', 'BOOLEAN', 0],
    ],
  );
  t.deepEqual(await sqlite(db, 'SELECT email, password, is_authorized, is_admin FROM user'), [[ADMIN_EMAIL, ADMIN_HASH, 1, 1]]);

  await execa(PYTHON, ['generate_password_key.py'], { cwd: dir });
  t.regex(readFileSync(join(dir, 'secret.key'), 'utf8'), /^[A-Za-z0-9_-]{43}=$/);

  const port = await freePort();
  editJson(join(dir, 'config_webui.json'), { port_number: port, pwd_secret_key: 'test-secret' });
  const origin = `http://127.0.0.1:${port}`;
  const webui = await serve(t, dir, ['webui.py', 'config_webui.json'], 'the web UI', origin);

  const home = await fetch(`${origin}/`);
  t.is(home.status, 200);
  t.regex(await home.text(), /PiSeduce/);
  const login = (path: string, fields: Record<string, string>) =>
    fetch(`${origin}${path}`, { method: 'POST', body: new URLSearchParams(fields), redirect: 'manual' });
  const good = await login('/login', { email: ADMIN_EMAIL, password: ADMIN_PASSWORD });
  t.is(good.status, 200);
  const cookies = good.headers
    .getSetCookie()
    .map((c) => c.split(';')[0]!)
    .join('; ');
  t.regex(cookies, /session=/);
  // The session cookie, signed with pwd_secret_key, is accepted back.
  t.regex(await (await fetch(`${origin}/`, { headers: { cookie: cookies } })).text(), /Logged in as admin@piseduce\.fr/);
  t.is((await login('/login', { email: ADMIN_EMAIL, password: 'wrong-password' })).status, 401);
  t.is((await login('/login', { email: 'nobody@piseduce.fr', password: ADMIN_PASSWORD })).status, 401);
  t.is((await login('/login', { email: ADMIN_EMAIL, password: '' })).status, 401);
  t.is((await login('/login-post', { email: ADMIN_EMAIL, pwd: ADMIN_PASSWORD })).status, 200);

  await webui.stop();
  t.true(webui.exited());
});

test('agent: init_database.py creates the tables, agent_api.py checks its key and tokens', async (t) => {
  // Fetch the pinned commit by hash, as a build may do.
  const dir = join(base, 'agent');
  await execa('git', ['init', '-q', dir]);
  await execa('git', ['fetch', '-q', src.agent, src.agentRef], { cwd: dir });
  await execa('git', ['-c', 'advice.detachedHead=false', 'checkout', '-q', 'FETCH_HEAD'], { cwd: dir });

  const init = await execa(PYTHON, ['init_database.py', 'config_agent.json'], { cwd: dir });
  t.regex(init.stdout, /Database initialization complete/);
  const db = join(dir, 'test-agent.db');
  const tables = (await sqlite(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")).map(([name]) => name);
  t.deepEqual(tables, ['action', 'action_prop', 'rasp_environment', 'rasp_node', 'rasp_switch', 'schedule']);
  t.deepEqual(
    (await sqlite(db, "PRAGMA table_info('rasp_environment')")).map(([, name, type, notnull, , pk]) => [name, type, notnull, pk]),
    [
      ['name', 'TEXT', 1, 1],
      ['img_name', 'TEXT', 0, 0],
      ['img_size', 'INTEGER', 0, 0],
      ['sector_start', 'INTEGER', 0, 0],
      ['ssh_user', 'TEXT', 0, 0],
      ['web', 'BOOLEAN', 0, 0],
      ['state', 'TEXT', 1, 0],
    ],
  );
  // Register an environment the way the pimaster build does (the sqlite() helper does not commit).
  await execa(PYTHON, [
    '-c',
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO rasp_environment VALUES ('raspbian_buster_32bit', '2020-08-20-raspios-buster-armhf-lite.img.tar.gz', 1845493760, 532480, 'root', 0, 'available')\"); c.commit()",
    db,
  ]);

  const port = await freePort();
  editJson(join(dir, 'config_agent.json'), { port_number: port });
  const refuses = async (why: string) => {
    const r = await execa(PYTHON, ['agent_api.py', 'config_agent.json'], { cwd: dir, reject: false, timeout: 30_000 });
    t.is(r.exitCode, 13, `${why}: ${r.stdout}${r.stderr}`);
    return r.stderr;
  };
  t.regex(await refuses('no secret.key'), /secret\.key/);
  writeFileSync(join(dir, 'secret.key'), 'oneSecretKey\n');
  t.regex(await refuses('not a Fernet key'), /Fernet/);
  // The web UI's generator writes the key the agent shares.
  await execa(PYTHON, [join(src.webui, 'generate_password_key.py')], { cwd: dir });
  editJson(join(dir, 'config_agent.json'), { auth_token: ['short'] });
  t.regex(await refuses('token too short'), /at least 10 characters/);
  editJson(join(dir, 'config_agent.json'), { auth_token: ['a-test-token-0123'], env_path: '/root/environments' });
  t.regex(await refuses('env_path without /'), /must end with/);
  editJson(join(dir, 'config_agent.json'), { env_path: '/root/environments/' });
  t.is((await execa(PYTHON, ['agent_api.py'], { cwd: dir, reject: false })).exitCode, 2);

  const origin = `http://127.0.0.1:${port}`;
  const agent = await serve(t, dir, ['agent_api.py', 'config_agent.json'], 'the agent API', origin);

  const home = await fetch(`${origin}/`);
  t.is(home.status, 200);
  t.regex(await home.text(), /PiSeduce agent/);
  const envs = `${origin}/v1/user/environment/list`;
  t.is((await fetch(envs)).status, 401);
  t.is((await fetch(envs, { headers: { token: DEFAULT_AGENT_TOKEN } })).status, 401);
  const ok = await fetch(envs, { headers: { token: 'a-test-token-0123' } });
  t.is(ok.status, 200);
  t.deepEqual(await ok.json(), ['raspbian_buster_32bit']);
  // The upstream clients send the token in a JSON body.
  const post = await fetch(envs, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'a-test-token-0123' }) });
  t.is(post.status, 200);
  t.deepEqual(await post.json(), ['raspbian_buster_32bit']);
  const nodes = await fetch(`${origin}/v1/user/node/list`, { headers: { token: 'a-test-token-0123' } });
  t.deepEqual(await nodes.json(), []);

  await agent.stop();
  t.true(agent.exited());
});

test('agent: agent_exec.py logs, and stops when execstop appears', async (t) => {
  const dir = await checkout(src.agent, src.agentRef, 'agent-exec');
  await execa(PYTHON, ['init_database.py', 'config_agent.json'], { cwd: dir });
  const exec = start(dir, ['agent_exec.py', 'config_agent.json']);
  t.teardown(() => exec.stop());
  await until('the first log line', exec, () => /alive: 0 node\(s\)/.test(exec.output()));
  if (!existsSync('/etc/dnsmasq.conf')) t.regex(exec.output(), /\/etc\/dnsmasq\.conf is missing/);
  t.false(exec.exited());
  writeFileSync(join(dir, 'execstop'), '');
  const result = await Promise.race([exec.child, sleep(10_000).then(() => undefined)]);
  t.is(result?.exitCode, 0, exec.output());
  t.regex(exec.output(), /execstop found/);
});
