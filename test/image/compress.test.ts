/**
 * compress: real tools on real files. A tiny image with incompressible data goes through every
 * format; each output must decompress to the very same bytes, with sidecars `sha256sum -c`
 * accepts, a bmap `bmaptool copy` uses, and a manifest that says what was built.
 */
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, createReadStream, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { createGunzip } from 'node:zlib';
import { Ajv } from 'ajv';
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { extract } from 'tar-stream';
import yauzl from 'yauzl';
import { CommandError, InterruptedError, UserError } from '../../engine/errors.ts';
import type { BuildState } from '../../engine/stage.ts';
import type { Compression } from '../../lib/build-options.ts';
import { defaultName } from '../../lib/codec/encode.ts';
import type { Download, Package, SystemInfo } from '../../lib/image/state.ts';
import { compressStage } from '../../stages/compress.ts';
import { makeTinyImage } from '../fixtures/tiny-image.ts';
import { runStages, scratch, testConfig } from '../helpers/build.ts';
import { sbomErrors } from '../helpers/sbom.ts';

const ALL: Compression[] = ['xz', 'zstd', 'gz', 'zip', 'tar.gz', 'none'];
const MiB = 2 ** 20;

const download: Download = {
  path: '/cache/2024-11-19-raspios-bookworm-arm64-lite.img.xz',
  sha256: 'ab'.repeat(32),
  source: 'bookworm',
  url: 'https://downloads.raspberrypi.com/raspios_lite_arm64/images/2024-11-19-raspios-bookworm-arm64-lite.img.xz',
  releaseDate: '2024-11-19',
};
const system: SystemInfo = {
  id: 'debian',
  codename: 'bookworm',
  prettyName: 'Debian GNU/Linux 12 (bookworm)',
  arch: 'arm64',
  bootMount: '/boot/firmware',
  network: 'NetworkManager',
  firstBoot: 'firstboot',
  initFormat: 'systemd',
};
const packages: Package[] = [
  { name: 'base-files', version: '12.4+rpi1', arch: 'arm64', source: { name: 'base-files', version: '12.4+rpi1' }, licenses: ['GPL-2+'] },
  { name: 'openssh-server', version: '1:9.2p1-2+deb12u3', arch: 'arm64', source: { name: 'openssh', version: '1:9.2p1-2+deb12u3' } },
];

async function sha256sum(file: string): Promise<string> {
  const { stdout } = await execa('sha256sum', [file]);
  return stdout.split(' ')[0]!;
}

/** sha256 of what `command FILE` writes to stdout, through a pipe (never in memory). */
async function sha256Piped(command: string, file: string): Promise<string> {
  const { stdout } = await execa('bash', ['-o', 'pipefail', '-c', `${command} "$1" | sha256sum`, 'bash', file]);
  return stdout.split(' ')[0]!;
}

/** Names and sha256 of the files of a .tar.gz, read with tar-stream. */
async function tarEntries(file: string): Promise<Array<{ name: string; size: number | undefined; sha256: string }>> {
  const entries: Array<{ name: string; size: number | undefined; sha256: string }> = [];
  const tar = extract();
  const reading = (async () => {
    for await (const entry of tar) {
      const hash = createHash('sha256');
      for await (const chunk of entry) hash.update(chunk as Buffer);
      entries.push({ name: entry.header.name, size: entry.header.size, sha256: hash.digest('hex') });
    }
  })();
  await pipeline(createReadStream(file), createGunzip(), tar);
  await reading;
  return entries;
}

async function zipNames(file: string): Promise<string[]> {
  const zip = await yauzl.openPromise(file, { lazyEntries: true, autoClose: false });
  try {
    const names: string[] = [];
    for await (const entry of zip.eachEntry()) names.push(entry.fileName);
    return names;
  } finally {
    zip.close();
  }
}

/** Our own child processes (a compressor left running would show here). */
function children(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid) pids.push(Number(entry));
    } catch {}
  }
  return pids;
}

function setup(t: ExecutionContext): string {
  const dir = scratch('compress-test-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// --- One build with every format, checked from several sides ------------------------------------

interface Built {
  dir: string;
  out: string;
  image: string;
  imageSha256: string;
  state: BuildState;
}

const shared = scratch('compress-shared-');
test.after.always(() => rmSync(shared, { recursive: true, force: true }));
let builtOnce: Promise<Built> | undefined;
/** The build's one time (2026-06-18T10:00:00Z), as attach leaves it in the state. */
const EPOCH = 1781776800;

function built(): Promise<Built> {
  builtOnce ??= (async () => {
    const image = join(shared, 'image.img');
    await makeTinyImage(image, { payloadMiB: 6 });
    const imageSha256 = await sha256sum(image);
    const config = testConfig(shared, { compress: ALL, name: 'pi' });
    const state0 = { image, download, system, packages, timings: { fetch: 1.5, extract: 2.5 }, sourceDateEpoch: EPOCH };
    const { state } = await runStages([compressStage], config, state0);
    return { dir: shared, out: config.out, image, imageSha256, state };
  })();
  return builtOnce;
}

test('every format decompresses to a byte-identical image', async (t) => {
  const { out, imageSha256 } = await built();
  t.is(await sha256Piped('xz -dc', join(out, 'pi.img.xz')), imageSha256, 'xz');
  t.is(await sha256Piped('zstd -dc', join(out, 'pi.img.zst')), imageSha256, 'zstd');
  t.is(await sha256Piped('pigz -dc', join(out, 'pi.img.gz')), imageSha256, 'gz');
  t.is(await sha256Piped('unzip -p', join(out, 'pi.zip')), imageSha256, 'zip');
  t.deepEqual(await zipNames(join(out, 'pi.zip')), ['pi.img'], 'the zip holds exactly pi.img');
  const tar = await tarEntries(join(out, 'pi.img.tar.gz'));
  t.deepEqual(
    tar.map((e) => e.name),
    ['pi.img'],
    'the tar holds exactly pi.img',
  );
  t.is(tar[0]!.sha256, imageSha256, 'tar.gz');
  t.is(await sha256sum(join(out, 'pi.img')), imageSha256, 'none');
});

test('the image sha256 comes from the same read, and the state lists every output', async (t) => {
  const { out, imageSha256, state } = await built();
  t.is(state.imageSha256, imageSha256);
  const expected = { xz: 'pi.img.xz', zstd: 'pi.img.zst', gz: 'pi.img.gz', zip: 'pi.zip', 'tar.gz': 'pi.img.tar.gz', none: 'pi.img' };
  t.deepEqual(
    state.outputs!.map((o) => o.format),
    ALL,
  );
  for (const output of state.outputs!) {
    t.is(output.path, join(out, expected[output.format]));
    t.is(output.size, statSync(output.path).size);
    t.is(output.sha256, await sha256sum(output.path));
  }
});

test('each output has a sha256sum sidecar, and nothing partial is left', async (t) => {
  const { out, state } = await built();
  for (const output of state.outputs!) {
    const name = output.path.slice(out.length + 1);
    const line = readFileSync(`${output.path}.sha256`, 'utf8');
    t.is(line, `${await sha256sum(output.path)}  ${name}\n`);
  }
  const sidecars = readdirSync(out).filter((f) => f.endsWith('.sha256'));
  t.is(sidecars.length, ALL.length);
  await execa('sha256sum', ['--check', '--strict', ...sidecars], { cwd: out });
  t.deepEqual(
    readdirSync(out).filter((f) => f.endsWith('.partial')),
    [],
  );
  t.deepEqual(
    readdirSync(out).sort(),
    ['pi.img', 'pi.img.bmap', 'pi.img.gz', 'pi.img.xz', 'pi.img.zst', 'pi.cdx.json', 'pi.manifest.json', 'os-list.json', 'pi.img.tar.gz', 'pi.zip']
      .flatMap((f) => (f.endsWith('.bmap') || f.endsWith('.json') ? [f] : [f, `${f}.sha256`]))
      .sort(),
  );
});

test('every copy of the image is 0600 (it may hold a secret); the sidecars, which hold none, are not', async (t) => {
  const { out, state } = await built();
  const mode = (file: string) => statSync(file).mode & 0o777;
  t.is(state.outputs!.length, ALL.length);
  for (const output of state.outputs!) t.is(mode(output.path), 0o600, output.path);
  for (const file of readdirSync(out).filter((f) => f.endsWith('.sha256') || f.endsWith('.bmap') || f.endsWith('.json'))) {
    t.is(mode(join(out, file)) & 0o044, 0o044, file);
  }
});

test('bmaptool copy with the bmap reproduces the image, from the .img and from the .img.xz', async (t) => {
  const { dir, out, image, imageSha256 } = await built();
  const bmap = join(out, 'pi.img.bmap');
  t.regex(readFileSync(bmap, 'utf8'), /<bmap version=/);
  const copy = join(dir, 'copy.img');
  await execa('bmaptool', ['copy', '--bmap', bmap, image, copy]);
  t.is(await sha256sum(copy), imageSha256);
  rmSync(copy);
  await execa('bmaptool', ['copy', '--bmap', bmap, join(out, 'pi.img.xz'), copy]);
  t.is(await sha256sum(copy), imageSha256);
  rmSync(copy);
});

test('the manifest says what was built, from what, how and with which packages', async (t) => {
  const { out, image, imageSha256, state } = await built();
  const file = join(out, 'pi.manifest.json');
  const manifest = JSON.parse(readFileSync(file, 'utf8'));
  t.is(manifest.name, 'pi');
  t.is(manifest.pipeline, 'test');
  t.deepEqual(manifest.base, { source: 'bookworm', url: download.url, sha256: download.sha256, releaseDate: '2024-11-19' });
  t.is(manifest.release, 'bookworm');
  t.is(manifest.arch, 'arm64');
  t.deepEqual(manifest.image, { file: 'pi.img', size: statSync(image).size, sha256: imageSha256, bmap: 'pi.img.bmap' });
  t.deepEqual(manifest.sbom, { file: 'pi.cdx.json', format: 'CycloneDX 1.6', components: 2 });
  t.deepEqual(
    manifest.outputs,
    state.outputs!.map((o) => ({ format: o.format, file: o.path.slice(out.length + 1), size: o.size, sha256: o.sha256 })),
  );
  t.deepEqual(manifest.config.compress, ALL);
  t.is(manifest.config.name, 'pi');
  t.false('out' in manifest.config, 'no path of the build machine');
  t.false('timings' in manifest, 'no time of the run: the same inputs, the same manifest');
  t.deepEqual(manifest.packages, packages);
  t.is(manifest.source_date_epoch, EPOCH);
  t.is(manifest.created, '2026-06-18T10:00:00Z', "the build's one time, not now");
  // Written last of the image's files (only the directory's os-list.json comes after).
  const newest = Math.max(
    ...readdirSync(out)
      .filter((f) => f !== 'os-list.json')
      .map((f) => statSync(join(out, f)).mtimeMs),
  );
  t.is(statSync(file).mtimeMs, newest);
});

test('the SBOM beside the image is valid CycloneDX 1.6 and lists each package with its purl, source and licences', async (t) => {
  const { out, imageSha256 } = await built();
  const text = readFileSync(join(out, 'pi.cdx.json'), 'utf8');
  t.is(await sbomErrors(text), null);
  const sbom = JSON.parse(text);
  t.is(sbom.metadata.component.name, 'pi');
  t.deepEqual(sbom.metadata.component.hashes, [{ alg: 'SHA-256', content: imageSha256 }]);
  t.regex(sbom.serialNumber, /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const ssh = sbom.components.find((c: { name: string }) => c.name === 'openssh-server');
  t.is(ssh.purl, 'pkg:deb/debian/openssh-server@1%3A9.2p1-2%2Bdeb12u3?arch=arm64&distro=bookworm');
  t.deepEqual(ssh.properties.find((p: { name: string }) => p.name === 'deb:source').value, 'openssh');
  t.false('licenses' in ssh, 'no licence where the copyright file is free-form');
  t.deepEqual(sbom.components.find((c: { name: string }) => c.name === 'base-files').licenses, [{ license: { name: 'GPL-2+' } }]);
  t.not(await sbomErrors(JSON.stringify({ ...sbom, components: [{ name: 'no type' }] })), null, 'the schema does catch a component without a type');
  t.is(sbom.metadata.timestamp, '2026-06-18T10:00:00Z');
});

test('gzip headers hold no time, and the tar entry has the build time', async (t) => {
  const { out } = await built();
  // Bytes 4-7 of a gzip member: its MTIME, 0 for none.
  t.is(readFileSync(join(out, 'pi.img.gz')).readUInt32LE(4), 0, 'gz');
  t.is(readFileSync(join(out, 'pi.img.tar.gz')).readUInt32LE(4), 0, 'tar.gz');
  const { stdout } = await execa('tar', ['-tvzf', join(out, 'pi.img.tar.gz'), '--full-time', '--utc']);
  t.regex(stdout, /2026-06-18 10:00:00 pi\.img$/);
});

test("os-list.json: Raspberry Pi Imager's entry for the image, from its manifest; build-image os-list for a directory", async (t) => {
  const { out, image, imageSha256 } = await built();
  const manifest = JSON.parse(readFileSync(join(out, 'pi.manifest.json'), 'utf8'));
  const xz = join(out, 'pi.img.xz');
  const entry = {
    name: 'pi (64-bit)',
    description: 'Raspberry Pi OS bookworm, customized by build-image.',
    icon: 'https://downloads.raspberrypi.com/raspios_arm64/Raspberry_Pi_OS_(64-bit).png',
    url: 'pi.img.xz',
    release_date: manifest.created.slice(0, 10),
    extract_size: statSync(image).size,
    extract_sha256: imageSha256,
    image_download_size: statSync(xz).size,
    image_download_sha256: await sha256sum(xz),
    init_format: 'systemd',
    devices: ['pi5-64bit', 'pi4-64bit', 'pi3-64bit'],
  };
  const list = JSON.parse(readFileSync(join(out, 'os-list.json'), 'utf8'));
  t.deepEqual(list, { os_list: [entry] });
  const validate = new Ajv({ allErrors: true }).compile(JSON.parse(readFileSync(new URL('../fixtures/imager-os-list.schema.json', import.meta.url), 'utf8')));
  t.true(validate(list), JSON.stringify(validate.errors));
  t.false(validate({ os_list: [{ ...entry, icon: undefined, devices: ['pi4'] }] }), 'the schema does catch a missing icon and bad device tags');

  const dir = setup(t);
  for (const f of ['pi.manifest.json', 'pi.img.xz']) copyFileSync(join(out, f), join(dir, f));
  const cli = new URL('../../commands/cli.ts', import.meta.url).pathname;
  const r = await execa('node', [cli, 'os-list', dir, '--release-url', 'https://example.org/releases/v1/']);
  t.is(r.stdout, join(dir, 'os-list.json'));
  t.is(JSON.parse(readFileSync(join(dir, 'os-list.json'), 'utf8')).os_list[0].url, 'https://example.org/releases/v1/pi.img.xz');
  const bad = await execa('node', [cli, 'os-list', dir, '--release-url', 'example.org'], { reject: false });
  t.is(bad.exitCode, 2);
  t.regex(bad.stderr, /--release-url .*example\.org.*an http\(s\):\/\/ or file:\/\/ URL ending in \//);
});

test('the none output is the image itself, sparse', async (t) => {
  const { out, image } = await built();
  const raw = statSync(join(out, 'pi.img'));
  const source = statSync(image);
  t.is(raw.size, source.size);
  t.true(raw.blocks * 512 < raw.size / 4, `${raw.blocks * 512} bytes allocated for ${raw.size}`);
  t.true(raw.blocks * 512 <= source.blocks * 512 + MiB, `no more allocated than the working image (${raw.blocks * 512} > ${source.blocks * 512})`);
});

// --- Names ---------------------------------------------------------------------------------------

test('the default name is <pipeline>-<release>-<arch>, lower case and safe', async (t) => {
  t.is(defaultName('pimaster', 'bookworm', 'arm64'), 'pimaster-bookworm-arm64');
  t.is(defaultName('My Pipeline', 'Trixie', 'armhf'), 'my-pipeline-trixie-armhf');
  t.is(defaultName('customize', undefined, 'arm64'), 'customize-image-arm64');
  t.is(defaultName('../x', 'a/b', 'arm64'), 'x-a-b-arm64');

  const dir = setup(t);
  const image = join(dir, 'image.img');
  await makeTinyImage(image);
  const config = testConfig(dir, { compress: ['gz'], arch: 'armhf' });
  await runStages([compressStage], config, { image, system });
  t.deepEqual(readdirSync(config.out).sort(), [
    'os-list.json',
    'test-bookworm-armhf.cdx.json',
    'test-bookworm-armhf.img.bmap',
    'test-bookworm-armhf.img.gz',
    'test-bookworm-armhf.img.gz.sha256',
    'test-bookworm-armhf.manifest.json',
  ]);
  const { state } = await runStages([compressStage], testConfig(dir, { compress: ['none'] }), { image });
  t.is(state.outputs![0]!.path, join(config.out, 'test-image-arm64.img'));
  const manifest = JSON.parse(readFileSync(join(config.out, 'test-image-arm64.manifest.json'), 'utf8'));
  t.is(manifest.source_date_epoch, null, 'no source date in the state');
  t.false(Number.isNaN(Date.parse(manifest.created)), 'then now');
});

// --- Failures (serial: they change PATH or send SIGINT to this process) -------------------------

test.serial('a compressor that fails: its command and exit code in one line, its stderr in the tail, no output left', async (t) => {
  const dir = setup(t);
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { payloadMiB: 4 });
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  writeFileSync(join(bin, 'xz'), '#!/bin/sh\necho "xz: simulated failure" >&2\nexit 3\n');
  chmodSync(join(bin, 'xz'), 0o755);
  const config = testConfig(dir, { compress: ['zstd', 'xz', 'none'], name: 'pi' });
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path}`;
  let error: CommandError | undefined;
  try {
    error = await t.throwsAsync(runStages([compressStage], config, { image }), { instanceOf: CommandError });
  } finally {
    process.env.PATH = path;
  }
  t.is(error?.message, 'stage compress: `xz -T0 -6 --block-size=64MiB -c` failed with exit code 3');
  t.deepEqual(error?.tail, ['xz: simulated failure']);
  t.deepEqual(readdirSync(config.out), []);
  t.deepEqual(children(), []);
});

const isRoot = process.getuid?.() === 0;

(isRoot ? test.serial : test.serial.skip)('a full disk: one clear line naming the file, no partial output, the earlier build untouched', async (t) => {
  const dir = setup(t);
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { payloadMiB: 16 });
  const fs = join(dir, 'small.ext4');
  await execa('truncate', ['-s', '8M', fs]);
  await execa('mkfs.ext4', ['-q', '-F', fs]);
  const { stdout: loop } = await execa('losetup', ['--find', '--show', fs]);
  const out = join(dir, 'out');
  mkdirSync(out);
  let mounted = false;
  t.teardown(async () => {
    if (mounted) await execa('umount', [out], { reject: false });
    await execa('losetup', ['-d', loop], { reject: false });
  });
  await execa('mount', [loop, out]);
  mounted = true;
  writeFileSync(join(out, 'pi.img.xz'), 'the earlier build\n');

  const config = testConfig(dir, { compress: ['xz', 'none'], name: 'pi' });
  const error = await t.throwsAsync(runStages([compressStage], config, { image }), { instanceOf: UserError });
  t.regex(error!.message, /^compress: cannot write \S+\/out\/pi\.img(\.xz)?\.partial: no space left on device \(ENOSPC\)$/);
  t.deepEqual(readdirSync(out).sort(), ['lost+found', 'pi.img.xz']);
  t.is(readFileSync(join(out, 'pi.img.xz'), 'utf8'), 'the earlier build\n');
  t.deepEqual(children(), []);
});

test.serial('Ctrl-C while compressing: stopped, no partial output, no process left', async (t) => {
  const dir = setup(t);
  const image = join(dir, 'image.img');
  await makeTinyImage(image, { payloadMiB: 32 });
  const config = testConfig(dir, { compress: ['xz', 'gz', 'none'], name: 'pi' });
  const run = runStages([compressStage], config, { image });
  run.catch(() => {});
  const partial = join(config.out, 'pi.img.partial');
  for (let i = 0; ; i++) {
    let size = 0;
    try {
      size = statSync(partial).blocks * 512;
    } catch {}
    if (size > 2 * MiB) break;
    if (i > 400) throw new Error('the outputs never started');
    await sleep(50);
  }
  t.true(readdirSync(config.out).includes('pi.img.xz.partial'), 'outputs are written as .partial');
  const keepAlive = () => {}; // if the build were already over, this SIGINT must not end the test process
  process.on('SIGINT', keepAlive);
  try {
    process.kill(process.pid, 'SIGINT');
    const error = await t.throwsAsync(run, { instanceOf: InterruptedError });
    t.is(error?.message, 'interrupted by SIGINT');
  } finally {
    process.off('SIGINT', keepAlive);
  }
  t.deepEqual(readdirSync(config.out), []);
  t.deepEqual(children(), []);
});
