/**
 * extract on a tiny image and its archives (raw, xz, gzip, zstd, zip, tar.gz): identical, sparse
 * results; damaged, truncated or mismatched inputs refused in one line, leaving no image; a full
 * disk; a stale image replaced. Refusals that need no image: test/unit/extract-refusals.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { execa } from 'execa';
import { MARKER } from '../../engine/work-dir.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { assertSameSparseImage, type BaseImages, IMAGE_NAME, makeBaseImages, sha256File } from '../helpers/base-images.ts';
import { scratch, smallDisk as smallFilesystem, testConfig } from '../helpers/build.ts';
import { assertRefused, bootSignedDisk, extract, makeZip, setup } from '../helpers/extract.ts';

let base: BaseImages;
const fixtures = scratch('extract-fixtures-');

test.before(async () => {
  base = await makeBaseImages(fixtures);
  await execa('pigz', ['-k', '-1', '-f', base.img]);
  await execa('zstd', ['-q', '-k', '-1', '-f', base.img]);
  // As our tar.gz output and PiSeduce environments are: a tar of the one .img, gzipped.
  await execa('tar', ['-czf', `${base.img}.tar.gz`, '-C', fixtures, '--transform', 's,.*,disk.img,', base.img.slice(fixtures.length + 1)]);
});
test.after.always(() => rmSync(fixtures, { recursive: true, force: true }));

for (const [format, file] of [
  ['raw', () => base.img],
  ['xz', () => base.xz],
  ['gzip', () => `${base.img}.gz`],
  ['zstd', () => `${base.img}.zst`],
  ['zip', () => base.zip],
  ['tar.gz', () => `${base.img}.tar.gz`],
] as const) {
  test(`a ${format} base image becomes an identical, sparse image.img; the input is untouched`, async (t) => {
    const { config } = await setup(t);
    const input = file();
    const before = await sha256File(input);
    const { state } = await extract(config, input);
    t.is(state.image, join(config.work, 'image.img'));
    await assertSameSparseImage(t, state.image!, base);
    t.false(existsSync(`${state.image}.part`));
    t.is(await sha256File(input), before);
  });
}

test('extract_sha256 from the OS list is checked: a match passes, a mismatch fails and keeps no image', async (t) => {
  const { config } = await setup(t);
  const { state } = await extract(config, base.xz, { extractSha256: base.imgSha, extractSize: base.imgSize });
  await assertSameSparseImage(t, state.image!, base);
  const wrong = '12'.repeat(32);
  const { config: other } = await setup(t);
  await assertRefused(
    t,
    other,
    base.xz,
    new RegExp(
      `^the image in ${IMAGE_NAME}\\.xz failed verification: expected sha256 ${wrong} \\(extract_sha256 of the OS list\\), got ${base.imgSha}: download it again$`,
    ),
    { extractSha256: wrong },
  );
  const { config: third } = await setup(t);
  await assertRefused(t, third, base.xz, new RegExp(`is ${base.imgSize} bytes, the OS list says 1234`), { extractSize: 1234 });
});

test('a truncated .img.xz is a one-line error saying so', async (t) => {
  const { dir, config } = await setup(t);
  const input = join(dir, `${IMAGE_NAME}.xz`);
  copyFileSync(base.xz, input);
  truncateSync(input, Math.floor(statSync(input).size / 2));
  await assertRefused(
    t,
    config,
    input,
    new RegExp(`^base image ${IMAGE_NAME}\\.xz is truncated or corrupt \\(xz: Unexpected end of input\\): download it again$`),
  );
});

test('a corrupt .img.xz is a one-line error saying so', async (t) => {
  const { dir, config } = await setup(t);
  const input = join(dir, `${IMAGE_NAME}.xz`);
  const data = readFileSync(base.xz);
  for (let i = 0; i < 64; i++) data[Math.floor(data.length / 2) + i * 97] ^= 0x5a;
  writeFileSync(input, data);
  await assertRefused(
    t,
    config,
    input,
    new RegExp(`^base image ${IMAGE_NAME}\\.xz is truncated or corrupt \\(xz: (Compressed data is corrupt|File is corrupt)\\): download it again$`),
  );
});

test('truncated .gz and .zst files are one-line errors too', async (t) => {
  const { dir, config } = await setup(t);
  for (const ext of ['gz', 'zst']) {
    const input = join(dir, `${IMAGE_NAME}.${ext}`);
    copyFileSync(`${base.img}.${ext}`, input);
    truncateSync(input, Math.floor(statSync(input).size / 2));
    await assertRefused(
      t,
      config,
      input,
      new RegExp(
        `^base image ${IMAGE_NAME}\\.${ext} is truncated or corrupt \\((pigz: corrupted -- incomplete deflate data|zstd: Read error \\(\\d+\\): premature end)\\): download it again$`,
      ),
    );
  }
});

test('a download in the cache that is corrupt says which cache directory to remove', async (t) => {
  const { config } = await setup(t);
  const dir = join(config.cache, 'downloads', 'ab'.repeat(32));
  mkdirSync(dir, { recursive: true });
  const input = join(dir, `${IMAGE_NAME}.xz`);
  copyFileSync(base.xz, input);
  truncateSync(input, 4096);
  await assertRefused(t, config, input, new RegExp(`: download it again \\(remove ${dir} first\\)$`));
});

test('a truncated zip, and a zip whose data is damaged, are refused', async (t) => {
  const { dir, config } = await setup(t);
  const truncated = join(dir, 'truncated.zip');
  copyFileSync(base.zip, truncated);
  truncateSync(truncated, Math.floor(statSync(truncated).size / 2));
  await assertRefused(t, config, truncated, /^base image truncated\.zip is truncated or corrupt \(zip: .*\): download it again$/);

  const damaged = join(dir, 'damaged.zip');
  const zip = join(dir, 'stored.zip');
  await makeZip(join(dir, 'src'), zip, { 'disk.img': bootSignedDisk() });
  await execa('zip', ['-q', '-0', damaged, 'disk.img'], { cwd: join(dir, 'src') });
  const data = readFileSync(damaged);
  data[100_000] ^= 0xff; // inside the random bytes of the stored entry
  writeFileSync(damaged, data);
  await assertRefused(t, config, damaged, /^base image damaged\.zip is truncated or corrupt \(entry disk\.img fails its CRC-32 check\): download it again$/);
});

(process.getuid?.() === 0 ? test.serial : test.serial.skip)(
  'a raw image on a full disk: one line naming the file, no partial image, the input untouched',
  async (t) => {
    const dir = scratch();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const input = join(dir, 'large.img');
    await makeTinyImage(input, { payloadMiB: 24 });
    const small = await smallFilesystem(t, dir, 16);
    const config = testConfig(dir, { work: join(small, 'work') });
    await assertRefused(
      t,
      config,
      input,
      /^cannot write \S+\/work\/image\.img\.part: no space left on device \(ENOSPC\): free some space, or pass --work on a larger disk$/,
    );
  },
);

test('a stale image.img from an earlier build is replaced', async (t) => {
  const { config } = await setup(t);
  mkdirSync(config.work, { recursive: true });
  writeFileSync(join(config.work, MARKER), ''); // the work dir of an earlier build, as it leaves it
  writeFileSync(join(config.work, 'image.img'), randomBytes(1000));
  const { state } = await extract(config, base.xz);
  await assertSameSparseImage(t, state.image!, base);
});

test('the working image is 0600, even where an earlier one was not', async (t) => {
  const { config } = await setup(t);
  mkdirSync(config.work, { recursive: true });
  writeFileSync(join(config.work, MARKER), '');
  writeFileSync(join(config.work, 'image.img.part'), randomBytes(1000), { mode: 0o644 });
  const { state } = await extract(config, base.xz);
  t.is(statSync(state.image!).mode & 0o777, 0o600);
});
