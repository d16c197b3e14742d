/**
 * fetch, then extract, of a tiny image's archives: over HTTP from a server on 127.0.0.1 (sidecars,
 * redirects, https to http refused, resumed and retried downloads, the OS list), from file:// and
 * from a local file, each verified. Pieces that need no image: test/unit/fetch-parsing.test.ts.
 */
import { copyFileSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import test from 'ava';
import { execa } from 'execa';
import { UserError } from '../../engine/errors.ts';
import { downloadPolicy, downloadToPartial } from '../../lib/sources/download.ts';
import { resolveRelease } from '../../lib/sources/fetch.ts';
import type { PimasterConfig } from '../../pipelines/pimaster/options.ts';
import { extractStage } from '../../stages/extract.ts';
import { fetchStage } from '../../stages/fetch.ts';
import {
  assertCacheHasOnlyParts,
  assertNoWorkImage,
  assertSameSparseImage,
  assertUserError,
  type BaseImages,
  filesUnder,
  IMAGE_NAME,
  makeBaseImages,
  populate,
  sha256File,
  sidecarFor,
} from '../helpers/base-images.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { serveFiles, type TestServer } from '../helpers/http-server.ts';

const build = (config: PimasterConfig) => runStages([fetchStage, extractStage], config);

downloadPolicy.baseDelayMs = 20;

let base: BaseImages;
let xzSha: string;
let zipSha: string;
const fixtures = scratch('fetch-fixtures-');

test.before(async () => {
  base = await makeBaseImages(fixtures);
  xzSha = await sha256File(base.xz);
  zipSha = await sha256File(base.zip);
});
test.after.always(() => rmSync(fixtures, { recursive: true, force: true }));

const XZ_PATH = `/raspios_lite_arm64/images/raspios_lite_arm64-2024-11-19/${IMAGE_NAME}.xz`;

/** A scratch dir and a server for one test. */

test('an .img.xz over HTTP with its .sha256 sidecar: cached, extracted identical and sparse; a second build downloads nothing', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  const { state } = await build(config);

  const cached = join(config.cache, 'downloads', xzSha, `${IMAGE_NAME}.xz`);
  t.deepEqual(state.download, { path: cached, sha256: xzSha, source: server.url(XZ_PATH), url: server.url(XZ_PATH) });
  t.is(await sha256File(cached), xzSha);
  t.deepEqual(filesUnder(join(config.cache, 'downloads')), [`${xzSha}/${IMAGE_NAME}.xz`]);
  t.is(state.image, join(config.work, 'image.img'));
  await assertSameSparseImage(t, state.image!, base);
  t.is(server.gets(XZ_PATH).length, 1);

  // Same cache, new work dir: the sidecar is read again, the image is not.
  const again = await build({ ...config, work: join(dir, 'work2') });
  t.is(again.state.download?.path, cached);
  t.is(server.gets(XZ_PATH).length, 1);
  await assertSameSparseImage(t, again.state.image!, base);

  // With the checksum given, the cache is looked at before any request at all.
  const requests = server.requests.length;
  const third = await build({ ...config, work: join(dir, 'work3'), 'base-sha256': xzSha });
  t.is(third.state.download?.path, cached);
  t.is(server.requests.length, requests);
});

test('a .zip over HTTP with its .sha256 sidecar is extracted identical and sparse', async (t) => {
  const path = `/raspios_lite_armhf/images/x/${IMAGE_NAME.replace('.img', '.zip')}`;
  const { dir, server } = await serveFiles(t, { [path]: { copy: base.zip }, [`${path}.sha256`]: sidecarFor(base.zip, zipSha) });
  const config = testConfig(dir, { base: server.url(path), arch: 'armhf' });
  const { state } = await build(config);
  t.is(state.download?.sha256, zipSha);
  t.is(state.download?.path, join(config.cache, 'downloads', zipSha, IMAGE_NAME.replace('.img', '.zip')));
  await assertSameSparseImage(t, state.image!, base);
  await build({ ...config, work: join(dir, 'work2') });
  t.is(server.gets(path).length, 1);
});

test('a zip whose URL does not say so is extracted once it is all here (it is read from its end)', async (t) => {
  const { dir, server } = await serveFiles(t, { '/raspios_lite_latest': { copy: base.zip } });
  server.pace('/raspios_lite_latest', statSync(base.zip).size / 2);
  const config = testConfig(dir, { base: server.url('/raspios_lite_latest'), 'base-sha256': zipSha });
  const { state } = await build(config);
  t.is(state.download?.path, join(config.cache, 'downloads', zipSha, 'raspios_lite_latest'));
  await assertSameSparseImage(t, state.image!, base);
});

test("a redirect to a mirror is followed; the checksum is the origin's sidecar, never the mirror's", async (t) => {
  const mirror = `/mirror${XZ_PATH}`;
  const { dir, server } = await serveFiles(t, { [mirror]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  server.redirect(XZ_PATH, mirror);
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  const { state } = await build(config);
  t.is(state.download?.url, server.url(mirror));
  t.is(state.download?.path, join(config.cache, 'downloads', xzSha, `${IMAGE_NAME}.xz`));
  t.is(state.download?.source, server.url(XZ_PATH));
  t.false(
    server.requests.some((r) => r.path === `${mirror}.sha256`),
    "the mirror's sidecar is not asked for",
  );
  await assertSameSparseImage(t, state.image!, base);

  // A mirror that offers its own sidecar (it could say anything) while the origin has none: no checksum.
  const other = await serveFiles(t, { [mirror]: { copy: base.xz }, [`${mirror}.sha256`]: sidecarFor(base.xz, xzSha) });
  other.server.redirect(XZ_PATH, mirror);
  await assertUserError(
    t,
    build(testConfig(other.dir, { base: other.server.url(XZ_PATH) })),
    new RegExp(
      `^no checksum for base image ${other.server.url(XZ_PATH).replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: no --base-sha256, no ${IMAGE_NAME}\\.xz\\.sha256 next to it; give --base-sha256 HEX, or --insecure-no-verify`,
    ),
  );
  t.is(other.server.gets(mirror).length, 0, 'nothing downloaded');
});

test('a damaged download in the cache is found by hashing it again: removed, downloaded again', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  const { state } = await build(config);
  const cached = state.download!.path;
  const bytes = readFileSync(cached);
  bytes[1000] = bytes[1000]! ^ 0xff;
  writeFileSync(cached, bytes);
  const again = await build({ ...config, work: join(dir, 'work2') });
  t.is(again.state.download?.path, cached);
  t.is(await sha256File(cached), xzSha);
  t.is(server.gets(XZ_PATH).length, 2, 'downloaded again');
  await assertSameSparseImage(t, again.state.image!, base);
});

test('https that redirects to plain http is refused, nothing downloaded', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  // A real TLS server on 127.0.0.1 with a certificate made for it, trusted by the build through NODE_EXTRA_CA_CERTS.
  const [key, cert] = [join(dir, 'key.pem'), join(dir, 'cert.pem')];
  await execa('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '1',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
  ]);
  const tls = createHttpsServer({ key: readFileSync(key), cert: readFileSync(cert) }, (req, res) => {
    res.writeHead(302, { location: server.url(req.url ?? '/') });
    res.end();
  });
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => tls.close(() => resolve())));
  const url = `https://127.0.0.1:${(tls.address() as { port: number }).port}${XZ_PATH}`;
  const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
  const r = await execa(
    'node',
    [cli, 'customize', '--base', url, '--base-sha256', xzSha, '--work', join(dir, 'work'), '--cache', join(dir, 'cache'), '--out', join(dir, 'out')],
    { reject: false, env: { CI: 'true', NODE_EXTRA_CA_CERTS: cert } },
  );
  t.is(r.exitCode, 1, r.stderr);
  t.deepEqual(
    r.stderr.split('\n').filter((l) => l.startsWith('error:')),
    [
      `error: ${url} redirects to ${server.url(XZ_PATH)}: from https to plain http, where anyone on the way could change it; refused (use a URL that stays on https)`,
    ],
  );
  t.is(server.requests.length, 0, 'nothing asked over plain http');
});

test('a download cut half way is resumed with Range', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  const size = statSync(base.xz).size;
  const half = Math.floor(size / 2);
  server.cutAfter(XZ_PATH, half);
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  const { state } = await build(config);
  const gets = server.gets(XZ_PATH);
  t.is(gets.length, 2);
  t.is(gets[0]!.range, undefined);
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(gets[1]!.range ?? '')?.[1]);
  t.true(resumedAt > 0 && resumedAt <= half, `resumed at ${resumedAt} of ${size}`);
  t.is(gets[1]!.status, 206);
  t.is(state.download?.sha256, xzSha);
  t.deepEqual(filesUnder(join(config.cache, 'downloads')), [`${xzSha}/${IMAGE_NAME}.xz`]);
  await assertSameSparseImage(t, state.image!, base);
});

test('two builds sharing a cache download the same file at once: each gets it whole and verified', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  // Slow enough that the two downloads overlap (they wrote into one part file, and each failed).
  server.pace(XZ_PATH, statSync(base.xz).size);
  const config = (name: string) => ({ ...testConfig(join(dir, name), { base: server.url(XZ_PATH) }), cache: join(dir, 'cache') });
  const [one, two] = await Promise.all([build(config('one')), build(config('two'))]);
  t.is(one.state.download?.sha256, xzSha);
  t.is(two.state.download?.sha256, xzSha);
  t.is(server.gets(XZ_PATH).length, 2, 'both downloaded it');
  t.deepEqual(filesUnder(join(dir, 'cache', 'downloads')), [`${xzSha}/${IMAGE_NAME}.xz`], 'one file in the cache, no part or lock left');
  await assertSameSparseImage(t, one.state.image!, base);
  await assertSameSparseImage(t, two.state.image!, base);
});

test('extraction starts with the first bytes of a download, and counts only once the download is verified', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  const size = statSync(base.xz).size;
  server.pace(XZ_PATH, size / 2); // two seconds
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  const downloading = join(config.cache, 'downloads', 'partial', `${xzSha}.part`);
  const extracting = join(config.work, 'image.img.part');
  let overlapped = 0;
  const watch = setInterval(() => {
    const [d, e] = [downloading, extracting].map((p) => (existsSync(p) ? statSync(p) : undefined));
    if (d && e && d.size < size && e.blocks > 0) overlapped++;
  }, 20);
  const { state } = await build(config).finally(() => clearInterval(watch));
  t.true(overlapped > 0, 'the image was being written while the download was still arriving');
  t.deepEqual(state.download, {
    path: join(config.cache, 'downloads', xzSha, `${IMAGE_NAME}.xz`),
    sha256: xzSha,
    source: server.url(XZ_PATH),
    url: server.url(XZ_PATH),
  });
  await assertSameSparseImage(t, state.image!, base);
  t.false(existsSync(downloading));
});

test('a server answering a Range request with 200 makes the download start over', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  server.ignoreRange = true;
  server.cutAfter(XZ_PATH, Math.floor(statSync(base.xz).size / 2));
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  const { state } = await build(config);
  const gets = server.gets(XZ_PATH);
  t.is(gets.length, 2);
  t.regex(gets[1]!.range ?? '', /^bytes=\d+-$/);
  t.is(gets[1]!.status, 200);
  t.is(await sha256File(state.download!.path), xzSha);
  await assertSameSparseImage(t, state.image!, base);
});

test('a build that runs out of attempts keeps the part, and the next build resumes it', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  const size = statSync(base.xz).size;
  server.cutAfter(XZ_PATH, Math.floor(size / 10), downloadPolicy.attempts);
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  await assertUserError(t, build(config), new RegExp(`cannot download ${server.url(XZ_PATH)}: .*\\(after ${downloadPolicy.attempts} attempts\\)`));
  t.is(server.gets(XZ_PATH).length, downloadPolicy.attempts);
  const parts = filesUnder(join(config.cache, 'downloads'));
  t.deepEqual(parts, [`partial/${xzSha}.part`]);
  const kept = statSync(join(config.cache, 'downloads', parts[0]!)).size;
  t.true(kept > 0 && kept < size);
  assertCacheHasOnlyParts(t, config.cache);
  assertNoWorkImage(t, config.work);

  const { state } = await build(config);
  const resumed = server.gets(XZ_PATH).at(-1)!;
  t.is(resumed.range, `bytes=${kept}-`);
  t.is(resumed.status, 206);
  t.deepEqual(filesUnder(join(config.cache, 'downloads')), [`${xzSha}/${IMAGE_NAME}.xz`]);
  await assertSameSparseImage(t, state.image!, base);
});

test('a 503 is retried with backoff', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz } });
  server.failWith(XZ_PATH, 503, 2);
  const config = testConfig(dir, { base: server.url(XZ_PATH), 'base-sha256': xzSha });
  const { state } = await build(config);
  t.deepEqual(
    server.gets(XZ_PATH).map((r) => r.status),
    [503, 503, 200],
  );
  await assertSameSparseImage(t, state.image!, base);
});

test('a wrong --base-sha256: expected and got in the error, nothing kept in the cache', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, xzSha) });
  const wrong = 'ab'.repeat(32);
  const config = testConfig(dir, { base: server.url(XZ_PATH), 'base-sha256': wrong });
  await assertUserError(t, build(config), new RegExp(`expected sha256 ${wrong} \\(from --base-sha256\\), got ${xzSha}: nothing was kept; check --base-sha256`));
  t.deepEqual(filesUnder(config.cache), []);
  assertNoWorkImage(t, config.work);
  t.is(await sha256File(join(dir, 'www', XZ_PATH)), xzSha);
});

test('a sidecar that does not match: expected and got, nothing kept', async (t) => {
  const wrong = 'cd'.repeat(32);
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: sidecarFor(base.xz, wrong) });
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  const error = await assertUserError(t, build(config), new RegExp(`expected sha256 ${wrong} \\(from ${server.url(XZ_PATH)}\\.sha256\\), got ${xzSha}`));
  t.regex(error.message, /run the build again$/);
  t.deepEqual(filesUnder(config.cache), []);
  assertNoWorkImage(t, config.work);
});

test('no checksum anywhere is an error before downloading; --insecure-no-verify downloads it', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz } });
  const config = testConfig(dir, { base: server.url(XZ_PATH) });
  await assertUserError(
    t,
    build(config),
    /^no checksum for .*: no --base-sha256, no .*\.img\.xz\.sha256 next to it; give --base-sha256 HEX, or --insecure-no-verify/,
  );
  t.is(server.gets(XZ_PATH).length, 0);
  t.deepEqual(filesUnder(config.cache), []);
  assertNoWorkImage(t, config.work);

  const { state } = await build({ ...config, 'insecure-no-verify': true });
  t.is(state.download?.sha256, xzSha);
  t.is(state.download?.path, join(config.cache, 'downloads', xzSha, `${IMAGE_NAME}.xz`));
  await assertSameSparseImage(t, state.image!, base);
});

/** An OS list like Raspberry Pi Imager's, with the arm64 Lite images in a sub-list. */
function osList(server: TestServer, imageSha: string, extractSha: string) {
  const u = (p: string) => server.url(p);
  const root = {
    imager: { latest_version: '1.9.0' },
    os_list: [
      {
        name: 'Raspberry Pi OS (64-bit)',
        url: u('/raspios_arm64/images/raspios_arm64-2025-12-01/2025-12-01-raspios-trixie-arm64.img.xz'),
        release_date: '2025-12-01',
      },
      {
        name: 'Raspberry Pi OS (other)',
        subitems: [
          {
            name: 'Raspberry Pi OS Lite (32-bit)',
            url: u('/raspios_lite_armhf/images/raspios_lite_armhf-2024-11-19/2024-11-19-raspios-bookworm-armhf-lite.img.xz'),
            release_date: '2024-11-19',
          },
          {
            name: 'Raspberry Pi OS Lite (Legacy, 64-bit)',
            url: u('/raspios_oldstable_lite_arm64/images/raspios_oldstable_lite_arm64-2023-05-03/2023-05-03-raspios-bullseye-arm64-lite.img.xz'),
            release_date: '2023-05-03',
          },
          { name: 'Lite images', subitems_url: 'lists/lite.json' },
        ],
      },
      { name: 'Somebody else', subitems_url: 'http://192.0.2.1/other.json' },
      { name: 'Erase', url: 'internal://format' },
    ],
  };
  const lite = {
    os_list: [
      {
        name: 'Raspberry Pi OS Lite (64-bit)',
        url: u(XZ_PATH),
        release_date: '2024-11-19',
        image_download_sha256: imageSha,
        extract_sha256: extractSha,
        extract_size: base.imgSize,
        image_download_size: 1,
      },
      {
        name: 'Raspberry Pi OS Lite (64-bit)',
        url: u('/raspios_lite_arm64/images/raspios_lite_arm64-2024-07-04/2024-07-04-raspios-bookworm-arm64-lite.img.xz'),
        release_date: '2024-07-04',
      },
      {
        name: 'Raspberry Pi OS Lite (64-bit)',
        url: u('/raspios_lite_arm64/images/raspios_lite_arm64-2025-10-01/2025-10-01-raspios-trixie-arm64-lite.img.xz'),
        release_date: '2025-10-01',
      },
    ],
  };
  return { '/os_list_imagingutility_v4.json': JSON.stringify(root), '/lists/lite.json': JSON.stringify(lite) };
}

test("a release name is resolved through the OS list and its subitems_url, verified with the list's checksums", async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz } });
  populate(join(dir, 'www'), osList(server, xzSha, base.imgSha));
  const config = testConfig(dir, { base: 'bookworm', 'os-list': server.url('/os_list_imagingutility_v4.json') });
  const { state } = await build(config);
  t.deepEqual(state.download, {
    path: join(config.cache, 'downloads', xzSha, `${IMAGE_NAME}.xz`),
    sha256: xzSha,
    source: 'bookworm',
    url: server.url(XZ_PATH),
    extractSha256: base.imgSha,
    extractSize: base.imgSize,
    releaseDate: '2024-11-19',
  });
  await assertSameSparseImage(t, state.image!, base);
  t.true(server.requests.some((r) => r.path === '/lists/lite.json'));
  t.is(server.gets(XZ_PATH).length, 1);

  // The other names, and what is not there.
  const net = { signal: new AbortController().signal, log: () => {}, status: () => {} };
  const url = (release: 'latest' | 'bullseye' | 'buster', arch: 'arm64' | 'armhf' = 'arm64') =>
    resolveRelease(release, { ...config, arch }, net).then((i) => i.url);
  t.regex(await url('latest'), /2025-10-01-raspios-trixie-arm64-lite\.img\.xz$/);
  t.regex(await url('bullseye'), /2023-05-03-raspios-bullseye-arm64-lite\.img\.xz$/);
  t.regex(await url('latest', 'armhf'), /2024-11-19-raspios-bookworm-armhf-lite\.img\.xz$/);
  const error = await t.throwsAsync(url('buster'), { instanceOf: UserError });
  t.regex(
    error.message,
    /^no Raspberry Pi OS Lite buster for arm64 in the OS list .* \(it has: bookworm arm64 \(2024-07-04\), bookworm arm64 \(2024-11-19\), bookworm armhf \(2024-11-19\), bullseye arm64 \(2023-05-03\), trixie arm64 \(2025-10-01\)\): give the image's URL with --base$/,
  );
});

test("the OS list's checksum comes before the origin's sidecar (a stale or forged sidecar does not count)", async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz }, [`${XZ_PATH}.sha256`]: `${'0'.repeat(64)}  ${IMAGE_NAME}.xz\n` });
  populate(join(dir, 'www'), osList(server, xzSha, base.imgSha));
  const { state } = await build(testConfig(dir, { base: 'bookworm', 'os-list': server.url('/os_list_imagingutility_v4.json') }));
  t.is(state.download?.sha256, xzSha);
  t.false(
    server.requests.some((r) => r.path === `${XZ_PATH}.sha256`),
    'the sidecar is not even asked for',
  );
});

test('a release whose OS-list checksum does not match fails with expected and got', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz } });
  populate(join(dir, 'www'), osList(server, 'ef'.repeat(32), base.imgSha));
  const config = testConfig(dir, { base: 'bookworm', 'os-list': server.url('/os_list_imagingutility_v4.json') });
  await assertUserError(t, build(config), new RegExp(`expected sha256 ${'ef'.repeat(32)} \\(from the OS list .*\\), got ${xzSha}`));
  t.deepEqual(filesUnder(config.cache), []);
  assertNoWorkImage(t, config.work);
});

test('a file:// OS list works too', async (t) => {
  const { dir, server } = await serveFiles(t, {});
  const lists = osList(server, xzSha, base.imgSha);
  const listDir = join(dir, 'lists-root');
  populate(listDir, lists);
  const config = testConfig(dir, { 'os-list': pathToFileURL(join(listDir, 'os_list_imagingutility_v4.json')).href });
  const net = { signal: new AbortController().signal, log: () => {}, status: () => {} };
  // The sub-list URL is relative: resolved against the file URL, it is found next to the list.
  t.is((await resolveRelease('bookworm', config, net)).url, server.url(XZ_PATH));
});

test('a local file is used in place: verified by its .sha256, never copied or changed', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const local = join(dir, 'mine.img.xz');
  copyFileSync(base.xz, local);
  writeFileSync(`${local}.sha256`, sidecarFor(local, xzSha));
  const before = statSync(local);
  const config = testConfig(dir, { base: local });
  const { state } = await build(config);
  t.deepEqual(state.download, { path: local, sha256: xzSha, source: local });
  t.false(existsSync(join(config.cache, 'downloads')));
  await assertSameSparseImage(t, state.image!, base);
  const after = statSync(local);
  t.is(after.mtimeMs, before.mtimeMs);
  t.is(after.ino, before.ino);
  t.is(await sha256File(local), xzSha);

  // As a file:// URL, with the checksum given.
  const viaUrl = await build({ ...config, base: pathToFileURL(local).href, 'base-sha256': xzSha, work: join(dir, 'work2') });
  t.is(viaUrl.state.download?.path, local);
});

test('a local file without a checksum, or with the wrong one, is refused and left alone', async (t) => {
  const dir = scratch();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const local = join(dir, 'mine.img.xz');
  copyFileSync(base.xz, local);
  const config = testConfig(dir, { base: local });
  await assertUserError(
    t,
    build(config),
    /^base image .*mine\.img\.xz has no checksum: no --base-sha256 and no mine\.img\.xz\.sha256 next to it; give --base-sha256 HEX, or --insecure-no-verify/,
  );
  const wrong = '01'.repeat(32);
  await assertUserError(t, build({ ...config, 'base-sha256': wrong }), new RegExp(`expected sha256 ${wrong} \\(from --base-sha256\\), got ${xzSha}`));
  writeFileSync(`${local}.sha256`, `${wrong}  mine.img.xz\n`);
  await assertUserError(t, build(config), new RegExp(`expected sha256 ${wrong} \\(from .*mine\\.img\\.xz\\.sha256\\), got ${xzSha}`));
  await assertUserError(t, build({ ...config, base: join(dir, 'absent.img') }), /^base image .*absent\.img does not exist: check --base$/);
  t.is(await sha256File(local), xzSha);
  t.false(existsSync(join(config.cache, 'downloads')));
  assertNoWorkImage(t, config.work);

  // A checksum that is there is checked even with --insecure-no-verify.
  await assertUserError(t, build({ ...config, 'insecure-no-verify': true }), /failed verification/);
  rmSync(`${local}.sha256`);
  const { state } = await build({ ...config, 'insecure-no-verify': true });
  t.is(state.download?.sha256, xzSha);
  t.is(await sha256File(local), xzSha);
});

test('an abort of the build stops a download at once, keeps its part, and does not retry', async (t) => {
  const { dir, server } = await serveFiles(t, { [XZ_PATH]: { copy: base.xz } });
  const reason = new Error('stopped');
  const controller = new AbortController();
  let updates = 0;
  const net = { signal: controller.signal, log: () => {}, status: () => ++updates === 3 && controller.abort(reason) };
  const partial = join(dir, 'parts', 'x.part');
  t.is(await t.throwsAsync(downloadToPartial(server.url(XZ_PATH), partial, net)), reason);
  t.is(server.gets(XZ_PATH).length, 1);
  const kept = statSync(partial).size;
  t.true(kept > 0 && kept < statSync(base.xz).size);

  // Aborted while waiting to try again.
  server.failWith('/busy', 503, 10);
  const waiting = new AbortController();
  const busy = { signal: waiting.signal, log: () => waiting.abort(reason), status: () => {} };
  t.is(await t.throwsAsync(downloadToPartial(server.url('/busy'), join(dir, 'parts', 'y.part'), busy)), reason);
  t.is(server.gets('/busy').length, 1);
});
