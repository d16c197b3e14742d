/** What a build must not leave in an image, put back as the base shipped it (lib/image/as-shipped.ts). */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { recordShipped, restoreShipped } from '../../lib/image/as-shipped.ts';

test('machine ids, logs and caches: put back as shipped, what the build made removed', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'as-shipped-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const put = (path: string, text: string) => {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), text);
  };
  put('etc/machine-id', 'uninitialized\n');
  put('var/log/dpkg.log', 'shipped line\n');
  mkdirSync(join(root, 'var/cache/apt'), { recursive: true });
  const shipped = recordShipped(root);
  t.deepEqual(shipped, {
    ids: { 'etc/machine-id': Buffer.from('uninitialized\n').toString('base64'), 'var/lib/dbus/machine-id': null },
    logs: { 'var/log/dpkg.log': 13 },
  });

  // What a build does: ids written, log lines appended, a package's new log, apt's and ldconfig's caches.
  put('etc/machine-id', '0123456789abcdef0123456789abcdef\n');
  put('var/lib/dbus/machine-id', '0123456789abcdef0123456789abcdef\n');
  put('var/log/dpkg.log', 'shipped line\n2026-12-07 10:00:00 install tree\n');
  put('var/log/apt/history.log', 'Start-Date: 2026-12-07  10:00:00\n');
  put('var/cache/apt/pkgcache.bin', 'cache');
  put('var/cache/ldconfig/aux-cache', 'cache');
  const done = restoreShipped(root, JSON.parse(JSON.stringify(shipped))); // as saved in state.json
  t.is(readFileSync(join(root, 'etc/machine-id'), 'utf8'), 'uninitialized\n');
  t.false(existsSync(join(root, 'var/lib/dbus/machine-id')));
  t.is(readFileSync(join(root, 'var/log/dpkg.log'), 'utf8'), 'shipped line\n');
  t.false(existsSync(join(root, 'var/log/apt/history.log')), 'a log the build made is removed');
  t.false(existsSync(join(root, 'var/cache/apt/pkgcache.bin')));
  t.false(existsSync(join(root, 'var/cache/ldconfig/aux-cache')));
  t.is(done.length, 6, done.join(', '));
  t.deepEqual(restoreShipped(root, shipped), [], 'a second time: nothing to do');
});
