/**
 * fetch's pieces that need no image: a missing file on a local HTTP server on 127.0.0.1, sha256sum
 * files, Raspberry Pi Imager's OS-list entries, and each stage's --plan line. No root.
 */
import test from 'ava';
import { UserError } from '../../engine/errors.ts';
import { downloadPolicy } from '../../lib/sources/download.ts';
import { fileNameOf, parseSha256File } from '../../lib/sources/fetch.ts';
import { classify, osListItems, pickRelease, walkOsList } from '../../lib/sources/imager-os-list.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { extractStage } from '../../stages/extract.ts';
import { fetchStage } from '../../stages/fetch.ts';
import { assertCacheHasOnlyParts, assertNoWorkImage, assertUserError } from '../helpers/base-images.ts';
import { runStages, testConfig } from '../helpers/build.ts';
import { serveFiles } from '../helpers/http-server.ts';

const build = (config: PimasterConfig) => runStages([fetchStage, extractStage], config);

downloadPolicy.baseDelayMs = 20;

/** A scratch dir and a server for one test. */

test('a missing file fails at once with one line', async (t) => {
  const { dir, server } = await serveFiles(t, {});
  const config = testConfig(dir, { base: server.url('/nothing.img.xz') });
  await assertUserError(t, build(config), /^cannot reach http:\/\/127\.0\.0\.1:\d+\/nothing\.img\.xz: HTTP 404/);
  t.is(server.requests.length, 1);
  assertCacheHasOnlyParts(t, config.cache);
  assertNoWorkImage(t, config.work);
});

test('sha256sum files: GNU, binary-mode, bare and BSD lines; the right line of several', (t) => {
  const a = 'a'.repeat(64);
  const b = 'B'.repeat(64);
  t.is(parseSha256File(`${a}  x.img.xz\n`, 'x.img.xz', 's'), a);
  t.is(parseSha256File(`${a} *x.img.xz\n`, 'x.img.xz', 's'), a);
  t.is(parseSha256File(`${a}\n`, 'x.img.xz', 's'), a);
  t.is(parseSha256File(`SHA256 (x.img.xz) = ${a}\n`, 'x.img.xz', 's'), a);
  t.is(parseSha256File(`${a}  y.img.xz\n${b}  x.img.xz\n`, 'x.img.xz', 's'), 'b'.repeat(64));
  t.throws(() => parseSha256File(`${a}  y\n${b}  z\n`, 'x.img.xz', 's'), { instanceOf: UserError, message: /has no line for x\.img\.xz/ });
  t.throws(() => parseSha256File('<html>404</html>', 'x.img.xz', 's'), { instanceOf: UserError, message: /not in sha256sum format/ });
  t.is(fileNameOf('https://h/a/b/2024%20x.img.xz?x=1'), '2024_x.img.xz');
  t.is(fileNameOf('https://h/'), 'download');
});

test('OS-list entries are classified by their URLs', (t) => {
  t.like(classify('https://downloads.raspberrypi.com/raspios_lite_arm64/images/raspios_lite_arm64-2024-11-19/2024-11-19-raspios-bookworm-arm64-lite.img.xz'), {
    codename: 'bookworm',
    arch: 'arm64',
    lite: true,
  });
  t.like(
    classify(
      'https://downloads.raspberrypi.com/raspios_oldstable_lite_armhf/images/raspios_oldstable_lite_armhf-2024-10-28/2024-10-22-raspios-bullseye-armhf-lite.img.xz',
    ),
    { codename: 'bullseye', arch: 'armhf', lite: true },
  );
  t.like(classify('https://downloads.raspberrypi.org/raspios_arm64/images/raspios_arm64-2025-10-02/2025-10-01-raspios-trixie-arm64.img.xz'), {
    codename: 'trixie',
    arch: 'arm64',
    lite: false,
  });
  t.like(classify('https://downloads.raspberrypi.org/raspbian_lite/images/raspbian_lite-2020-02-14/2020-02-13-raspbian-buster-lite.zip'), {
    codename: 'buster',
    arch: 'armhf',
    lite: true,
  });
  t.like(classify('https://example.com/ubuntu-24.04-preinstalled-server-arm64+raspi.img.xz'), { raspios: false });
  const { images, subLists } = walkOsList(
    osListItems(
      {
        os_list: [
          { subitems: [{ url: 'https://h/raspios_lite_arm64/2024-01-01-raspios-bookworm-arm64-lite.img.xz', release_date: '2024-01-01' }] },
          { subitems_url: 'sub.json' },
        ],
      },
      'l',
    ),
    'https://h/list.json',
  );
  t.is(images.length, 1);
  t.deepEqual(subLists, ['https://h/sub.json']);
  t.is(pickRelease(images, 'bookworm', 'armhf'), undefined);
  t.is(pickRelease(images, 'latest', 'arm64')?.releaseDate, '2024-01-01');
  t.throws(() => osListItems({ nope: 1 }, 'x'), { instanceOf: UserError });
});

test('each stage describes itself in one line for --plan', (t) => {
  const config = testConfig('/tmp/plan');
  const lines = ['bookworm', 'latest', 'https://h/x.img.xz', '/data/x.img', 'file:///data/x.img', 'ftp://h/x'].map((b) =>
    fetchStage.describe({ ...config, base: b }),
  );
  for (const line of lines) t.false(line.includes('\n'));
  t.is(
    lines[0],
    'download the newest Raspberry Pi OS Lite bookworm (arm64) from https://downloads.raspberrypi.com/os_list_imagingutility_v4.json, verified against its .sha256 sidecar or the OS list, cached in /tmp/plan/cache/downloads',
  );
  t.is(lines[2], 'download https://h/x.img.xz, verified against its .sha256 sidecar, cached in /tmp/plan/cache/downloads');
  t.is(lines[3], 'use /data/x.img in place, verified against its .sha256 file');
  t.is(lines[4], lines[3]);
  t.is(lines[5], 'get the base image: --base ftp://h/x: only http(s) and file URLs are supported');
  t.is(
    fetchStage.describe({ ...config, base: '/data/x.img', 'base-sha256': 'ab'.repeat(32) }),
    'use /data/x.img in place, verified against --base-sha256 abababababab…',
  );
  t.is(
    fetchStage.describe({ ...config, base: 'https://h/x.img.xz', 'insecure-no-verify': true }),
    'download https://h/x.img.xz, verified against its .sha256 sidecar if any (--insecure-no-verify), cached in /tmp/plan/cache/downloads',
  );
  t.is(extractStage.describe(config), 'decompress the base image (xz, gzip, zstd, zip or raw) into /tmp/plan/work/image.img, sparse');
});
