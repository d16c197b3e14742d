/**
 * extract's refusals of what holds no usable image (zips with unsafe, missing, extra or lying
 * entries, files that are neither archive nor disk image, tars that are not one .img), the format
 * told by its magic bytes, and the sparse writer. Small archives made here: no image, no root.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import test from 'ava';
import { execa } from 'execa';
import { detectFormat, toolReason } from '../../lib/codec/decode.ts';
import { SparseWriter } from '../../lib/image/sparse-writer.ts';
import { assertRefused, bootSignedDisk, makeZip, setup } from '../helpers/extract.ts';

/** Replace every occurrence of a byte string (same length) in a file: the names in a zip's headers. */
function patchBytes(path: string, from: string, to: string): number {
  const data = readFileSync(path);
  const needle = Buffer.from(from);
  let count = 0;
  for (let i = data.indexOf(needle); i >= 0; i = data.indexOf(needle, i + 1)) {
    Buffer.from(to).copy(data, i);
    count++;
  }
  writeFileSync(path, data);
  return count;
}

test('a zip with a ../ entry is refused, naming the entry', async (t) => {
  const { dir, config } = await setup(t);
  const zip = join(dir, 'evil.zip');
  await makeZip(join(dir, 'src'), zip, { 'xxxevil.img': bootSignedDisk() });
  t.is(patchBytes(zip, 'xxxevil.img', '../evil.img'), 2); // the local header and the central directory
  await assertRefused(t, config, zip, /^base image evil\.zip holds an entry with an unsafe path \(\.\.\/evil\.img\): refusing to use it$/);
});

test('a zip with an absolute entry is refused', async (t) => {
  const { dir, config } = await setup(t);
  const zip = join(dir, 'abs.zip');
  await makeZip(join(dir, 'src'), zip, { 'xabs.img': bootSignedDisk() });
  t.is(patchBytes(zip, 'xabs.img', '/abs.img'), 2);
  await assertRefused(t, config, zip, /holds an entry with an unsafe path \(\/abs\.img\)/);
});

test('a zip with no image is refused, saying what it holds', async (t) => {
  const { dir, config } = await setup(t);
  const zip = join(dir, 'none.zip');
  await makeZip(join(dir, 'src'), zip, { 'README.txt': Buffer.from('hello\n'), 'boot/config.txt': Buffer.from('x\n') });
  await assertRefused(
    t,
    config,
    zip,
    /^base image none\.zip holds no \.img file \(it holds README\.txt, boot\/config\.txt\): give a zip with exactly one disk image$/,
  );
});

test('a zip with two images is refused, naming them', async (t) => {
  const { dir, config } = await setup(t);
  const zip = join(dir, 'two.zip');
  await makeZip(join(dir, 'src'), zip, { 'a.img': bootSignedDisk(), 'b/b.img': bootSignedDisk() });
  await assertRefused(t, config, zip, /^base image two\.zip holds 2 \.img files \(a\.img, b\/b\.img\): give a zip with exactly one disk image$/);
});

test('a zip entry whose size lies is refused, naming the entry', async (t) => {
  const { dir, config } = await setup(t);
  const zip = join(dir, 'lies.zip');
  await makeZip(join(dir, 'src'), zip, { 'disk.img': bootSignedDisk() });
  // The central directory's uncompressed size (offset 24 of its header) now says 4 KiB less.
  const data = readFileSync(zip);
  const header = data.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
  t.true(header > 0);
  t.is(data.readUInt16LE(header + 10), 8, 'deflated');
  data.writeUInt32LE(data.readUInt32LE(header + 24) - 4096, header + 24);
  writeFileSync(zip, data);
  await assertRefused(
    t,
    config,
    zip,
    /^base image lies\.zip is truncated or corrupt \(entry disk\.img is not the size the archive says \(too many bytes in the stream\. expected 1044480\. got at least \d+\)\): download it again$/,
  );
});

test('a stored zip entry whose sizes disagree is refused, naming the entry', async (t) => {
  const { dir, config } = await setup(t);
  const zip = join(dir, 'stored-lies.zip');
  await makeZip(join(dir, 'src'), join(dir, 'unused.zip'), { 'readme.txt': Buffer.from('hi\n'), 'disk.img': bootSignedDisk() });
  await execa('zip', ['-q', '-0', zip, 'readme.txt', 'disk.img'], { cwd: join(dir, 'src') });
  const data = readFileSync(zip);
  const header = data.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
  t.is(data.readUInt16LE(header + 10), 0, 'stored');
  t.is(data.subarray(header + 46, header + 54).toString(), 'disk.img');
  data.writeUInt32LE(data.readUInt32LE(header + 24) + 4096, header + 24);
  writeFileSync(zip, data);
  await assertRefused(
    t,
    config,
    zip,
    /^base image stored-lies\.zip is truncated or corrupt \(entry disk\.img is not the size the archive says \(compressed\/uncompressed size mismatch for stored file: 1048576 != 1052672\)\): download it again$/,
  );
});

test('a file that is neither an archive nor a disk image is refused', async (t) => {
  const { dir, config } = await setup(t);
  const junk = join(dir, 'junk.img');
  writeFileSync(junk, randomBytes(8192));
  await assertRefused(
    t,
    config,
    junk,
    /^base image junk\.img is neither a disk image \(no MBR\/GPT boot signature 0x55AA at byte 510\) nor an xz, gzip, zstd or zip archive: check --base$/,
  );
  const bz = join(dir, 'x.img.bz2');
  writeFileSync(bz, Buffer.concat([Buffer.from('BZh91AY&SY'), randomBytes(1000)]));
  await assertRefused(t, config, bz, /nor an xz, gzip, zstd or zip archive \(it is bzip2\): check --base$/);
  // An archive holding something that is not a disk image.
  const notDisk = join(dir, 'text.xz');
  await execa('sh', ['-c', `printf 'hello world\\n' | xz > ${notDisk}`]);
  await assertRefused(t, config, notDisk, /^base image text\.xz holds 12 bytes that are not a disk image/);
});

test('a .tar.gz must hold exactly one .img', async (t) => {
  const { dir, config } = await setup(t);
  writeFileSync(join(dir, 'a.img'), bootSignedDisk());
  writeFileSync(join(dir, 'b.img'), bootSignedDisk());
  writeFileSync(join(dir, 'notes.txt'), 'hello');
  await execa('tar', ['-czf', join(dir, 'two.img.tar.gz'), '-C', dir, 'a.img', 'b.img']);
  await assertRefused(
    t,
    config,
    join(dir, 'two.img.tar.gz'),
    /^base image two\.img\.tar\.gz holds more than one \.img file \(a\.img, b\.img\): give a tar with exactly one disk image$/,
  );
  await execa('tar', ['-czf', join(dir, 'none.tar.gz'), '-C', dir, 'notes.txt']);
  await assertRefused(t, config, join(dir, 'none.tar.gz'), /^base image none\.tar\.gz holds no \.img file: give a tar with exactly one disk image$/);
  writeFileSync(join(dir, 'holes.img'), bootSignedDisk().subarray(0, 512));
  truncateSync(join(dir, 'holes.img'), 8 * 1024 * 1024);
  await execa('tar', ['-czSf', join(dir, 'sparse.img.tar.gz'), '-C', dir, 'holes.img']);
  await assertRefused(
    t,
    config,
    join(dir, 'sparse.img.tar.gz'),
    /^base image sparse\.img\.tar\.gz: holes\.img is stored sparse \(tar --sparse\), not a plain file: make the tar of the \.img itself, without --sparse$/,
  );
});

test('formats are told by their magic bytes; decompressor messages are shortened', (t) => {
  const disk = bootSignedDisk();
  t.is(detectFormat(disk.subarray(0, 512)), 'raw');
  t.is(detectFormat(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1])), 'xz');
  t.is(detectFormat(Buffer.from([0x1f, 0x8b, 8])), 'gzip');
  t.is(detectFormat(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])), 'zstd');
  t.is(detectFormat(Buffer.from('PK\x03\x04', 'latin1')), 'zip');
  t.is(detectFormat(Buffer.alloc(512)), undefined);
  t.is(toolReason('xz: /a/b.img.xz: Unexpected end of input\n', 'xz', '/a/b.img.xz'), 'Unexpected end of input');
  t.is(toolReason('pigz: skipping: /a/b.gz: corrupted -- incomplete deflate data\n', 'pigz', '/a/b.gz'), 'corrupted -- incomplete deflate data');
  t.is(toolReason('/a/b.zst : Read error (39) : premature end \n', 'zstd', '/a/b.zst'), 'Read error (39): premature end');
  t.is(
    toolReason('m-arm64-lite.img.zst : Read error (39) : premature end \n', 'zstd', '/a/2024-11-19-raspios-bookworm-arm64-lite.img.zst'),
    'Read error (39): premature end',
  );
});

test('the sparse writer copies any chunking exactly, leaves zero blocks as holes and sets the length', async (t) => {
  const { dir } = await setup(t);
  // Data, a long zero run, data straddling block edges, and a zero tail that is not a whole block.
  const content = Buffer.concat([randomBytes(5000), Buffer.alloc(1024 * 1024), randomBytes(4097), Buffer.alloc(3000), Buffer.from([1]), Buffer.alloc(70_001)]);
  const sizes = [1, 4095, 5000, 8193, 65536, 3, 100_000];
  const chunks: Buffer[] = [];
  for (let at = 0, i = 0; at < content.length; i++) {
    const size = sizes[i % sizes.length]!;
    chunks.push(content.subarray(at, at + size));
    at += size;
  }
  const path = join(dir, 'out.img');
  const file = await open(path, 'w');
  let seen = 0;
  const writer = new SparseWriter(file, (chunk) => (seen += chunk.length));
  await pipeline(Readable.from(chunks), writer);
  await file.close();
  t.true(readFileSync(path).equals(content));
  t.is(writer.bytes, content.length);
  t.is(seen, content.length);
  t.true(writer.written < 20 * 4096, `wrote ${writer.written} bytes`);
  t.true(statSync(path).blocks * 512 < 200 * 1024);
});
