/**
 * The image I/O of a build: the `customize` pipeline with nothing to customize (fetch, extract,
 * shrink, compress and the stages between them) on an image with realistic content, against a
 * PiShrink-like baseline (bench/pishrink-baseline.sh: copy, resize2fs -M, cut, xz) on the same
 * image. Prints one table: the shrunk image against resize2fs's minimum, both .img.xz (size and
 * time), each stage's time, the pipeline's own overhead (time not spent waiting for a command), and
 * the peak RSS of the Node process running the pipeline at this size and at half of it.
 *
 * The image: a FAT boot partition and an ext4 root holding real files copied from the host's
 * /usr/lib and /usr/share (a fixed choice: ordered by a hash of their path), plus deleted files
 * whose random content stays in free blocks, as a real build leaves after apt cleans its caches:
 * zeroing them is what zerofree is for. Needs root (loop devices, mounts).
 *
 *   node bench/image-io.ts [--size-gib 2] [--used-gib 1] [--keep]
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { copyFile, mkdir } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { describeError } from '../engine/errors.ts';
import { formatBytes } from '../engine/options.ts';
import { QuietReporter } from '../engine/report.ts';
import { runPipeline, type Timing } from '../engine/runner.ts';
import { customize } from '../pipelines/customize.ts';
import '../lib/image/state.ts';
import { defaultConfig } from '../pipelines/pimaster/options.ts';
import { assembleDisk, DISK_ID, elfHeader, partuuid, writeBootFiles } from '../test/fixtures/tiny-image.ts';
import { formatTable, inUseImageSize, lastPartitionOffset, minimumImageSize } from './measure.ts';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const SOURCES = ['/usr/lib', '/usr/share'];
/** No one file takes more than this share of the data: many files, as in a real root. */
const LARGEST_SHARE = 1 / 16;
/** Deleted data left in free blocks, as a share of the data. */
const JUNK_SHARE = 1 / 4;
const JUNK_FILES = 8;
const BASELINE = fileURLToPath(new URL('pishrink-baseline.sh', import.meta.url));
/** The flag under which this file runs one pipeline in a child process (see pipelineChild). */
const CHILD = '--pipeline-child';

interface Options {
  sizeGiB: number;
  usedGiB: number;
  keep: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: { 'size-gib': { type: 'string', default: '2' }, 'used-gib': { type: 'string', default: '1' }, keep: { type: 'boolean', default: false } },
  });
  const number = (flag: string, raw: string) => {
    const n = Number(raw);
    if (!(n > 0)) throw new Error(`--${flag} ${raw}: expected a positive number`);
    return n;
  };
  return { sizeGiB: number('size-gib', values['size-gib']), usedGiB: number('used-gib', values['used-gib']), keep: values.keep };
}

const started = performance.now();
/** Progress on stderr, with the time since the start: the table alone comes on stdout. */
const say = (text: string) => process.stderr.write(`[image-io ${((performance.now() - started) / 1000).toFixed(0)} s] ${text}\n`);

// ---------------------------------------------------------------------------------------------
// The image

interface Fixture {
  image: string;
  size: number;
  files: number;
  data: number;
  junk: number;
  /** Byte offset of the root partition (the last one). */
  rootOffset: number;
}

/**
 * The regular files under `roots`. Not readdir's `recursive`: it follows symbolic links to
 * directories, and /usr/lib has links that loop (llvm's build/ tree).
 */
function regularFiles(roots: readonly string[]): string[] {
  const files: string[] = [];
  const stack = [...roots];
  while (stack.length) {
    const dir = stack.pop()!;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) stack.push(path);
      else if (entry.isFile()) files.push(path); // links and special files are not data
    }
  }
  return files;
}

/**
 * Host files adding up to about `budget` bytes: all regular files of SOURCES, ordered by a hash of
 * their path (the same choice on every run on one host, and a spread of every kind of file rather
 * than the first directories in name order).
 */
function pickFiles(budget: number): { files: string[]; total: number } {
  const all: { path: string; size: number; key: string }[] = [];
  for (const path of regularFiles(SOURCES)) {
    const size = lstatSync(path, { throwIfNoEntry: false })?.size ?? 0;
    if (size > 0 && size <= budget * LARGEST_SHARE) all.push({ path, size, key: createHash('sha256').update(path).digest('hex') });
  }
  all.sort((a, b) => (a.key < b.key ? -1 : 1));
  const files: string[] = [];
  let total = 0;
  for (const file of all) {
    if (total + file.size > budget) continue;
    files.push(file.path);
    total += file.size;
  }
  if (total < budget * 0.9) throw new Error(`${SOURCES.join(' and ')} hold only ${formatBytes(total)} of usable files; ask for less with --used-gib`);
  return { files, total };
}

async function copyInto(root: string, files: readonly string[], signal: AbortSignal): Promise<void> {
  const made = new Set<string>();
  for (const file of files) {
    signal.throwIfAborted();
    const dest = join(root, file);
    if (!made.has(dirname(dest))) {
      await mkdir(dirname(dest), { recursive: true });
      made.add(dirname(dest));
    }
    await copyFile(file, dest);
  }
}

/** What the pipeline reads of a Raspberry Pi OS root: release, fstab, the ELF of /bin/sh. */
function writeSkeleton(root: string): void {
  const files: Record<string, string> = {
    'etc/os-release': 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n',
    'etc/fstab': `proc /proc proc defaults 0 0\nPARTUUID=${partuuid('dos', 1)} /boot/firmware vfat defaults 0 2\nPARTUUID=${partuuid('dos', 2)} / ext4 defaults,noatime 0 1\n`,
    'etc/hostname': 'raspberrypi\n',
    'usr/sbin/NetworkManager': '#!/bin/sh\n',
    'usr/lib/raspberrypi-sys-mods/firstboot': '#!/bin/sh\n',
  };
  for (const [file, content] of Object.entries(files)) {
    mkdirSync(dirname(join(root, file)), { recursive: true });
    writeFileSync(join(root, file), content, { mode: content.startsWith('#!') ? 0o755 : 0o644 });
  }
  mkdirSync(join(root, 'boot/firmware'), { recursive: true });
  mkdirSync(join(root, 'usr/bin'), { recursive: true });
  writeFileSync(join(root, 'usr/bin/dash'), elfHeader('arm64'), { mode: 0o755 });
  symlinkSync('dash', join(root, 'usr/bin/sh'));
  symlinkSync('usr/bin', join(root, 'bin'));
}

/** Incompressible files, deleted from the filesystem once it is made (see deleteJunk). */
function writeJunk(root: string, bytes: number): string[] {
  const dir = join(root, 'var/cache/apt/archives');
  mkdirSync(dir, { recursive: true });
  const names: string[] = [];
  for (let i = 0; i < JUNK_FILES; i++) {
    const path = join(dir, `junk-${i}.deb`);
    const fd = openSync(path, 'w');
    for (let left = Math.floor(bytes / JUNK_FILES); left > 0; left -= MiB) writeSync(fd, randomBytes(Math.min(MiB, left)));
    closeSync(fd);
    names.push(`/${relative(root, path)}`);
  }
  return names;
}

/** debugfs frees the files' blocks without clearing them; `?offset=` opens the partition in place. */
async function deleteJunk(image: string, rootOffset: number, paths: readonly string[]): Promise<void> {
  const { stderr } = await execa('debugfs', ['-w', '-f', '-', `${image}?offset=${rootOffset}`], { input: paths.map((p) => `rm ${p}\n`).join('') });
  const errors = stderr.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('debugfs '));
  if (errors.length) throw new Error(`debugfs: ${errors.join('; ')}`);
}

interface Plan {
  sizeMiB: number;
  bootMiB: number;
  rootMiB: number;
  /** Bytes of files, and of deleted files. */
  data: number;
  junk: number;
}

/** The partitions of an image of `sizeGiB` with `usedGiB` of files, checked to fit. */
function plan(sizeGiB: number, usedGiB: number): Plan {
  const sizeMiB = Math.round(sizeGiB * 1024);
  const bootMiB = Math.max(40, Math.round(sizeMiB / 8));
  const rootMiB = sizeMiB - 4 - bootMiB; // assembleDisk puts the boot partition at 4 MiB
  const data = Math.round(usedGiB * GiB);
  const junk = Math.round(data * JUNK_SHARE);
  // Room for the journal, inode tables and the like besides the files and the junk.
  if (data + junk + 0.05 * rootMiB * MiB + 32 * MiB > rootMiB * MiB) {
    throw new Error(
      `${formatBytes(data)} of files and ${formatBytes(junk)} of junk do not fit in a ${formatBytes(rootMiB * MiB)} root: lower --used-gib or raise --size-gib`,
    );
  }
  return { sizeMiB, bootMiB, rootMiB, data, junk };
}

async function buildFixture(dir: string, { sizeMiB, bootMiB, rootMiB, data, junk }: Plan, signal: AbortSignal): Promise<Fixture> {
  const tree = join(dir, `tree-${sizeMiB}`);
  const image = join(dir, `fixture-${sizeMiB}.img`);
  try {
    const { files, total } = pickFiles(data);
    say(`copying ${files.length} files (${formatBytes(total)}) from ${SOURCES.join(', ')}`);
    await copyInto(join(tree, 'root'), files, signal);
    writeSkeleton(join(tree, 'root'));
    const junkFiles = writeJunk(join(tree, 'root'), junk);
    writeBootFiles(join(tree, 'boot'), 'bookworm', partuuid('dos', 2, DISK_ID));
    signal.throwIfAborted();
    say(`making the ${formatBytes(sizeMiB * MiB)} image (mkfs.ext4 -d)`);
    await assembleDisk(image, { label: 'dos', bootMiB, rootMiB, bootDir: join(tree, 'boot'), rootDir: join(tree, 'root') });
    const rootOffset = await lastPartitionOffset(image);
    await deleteJunk(image, rootOffset, junkFiles);
    return { image, size: statSync(image).size, files: files.length, data: total, junk, rootOffset };
  } finally {
    rmSync(tree, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The measurements

/** What a pipeline child reports. */
interface PipelineRun {
  timings: Timing[];
  imageSize: number;
  xzSize: number;
  /** process.resourceUsage().maxRSS of the process that ran the pipeline, in KiB. */
  maxRssKiB: number;
}

/**
 * Run the pipeline in a fresh Node process: its peak RSS is then the pipeline's own, not that of
 * this process (which has walked /usr and built the image), and two sizes are measured alike.
 */
async function runOurs(image: string, dir: string, signal: AbortSignal): Promise<PipelineRun> {
  const { stdout } = await execa(process.execPath, [fileURLToPath(import.meta.url), CHILD, JSON.stringify({ image, dir })], {
    cancelSignal: signal,
    forceKillAfterDelay: false, // SIGTERM only: the child then detaches and unmounts what it made
    stderr: 'inherit',
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as PipelineRun; // its last line: the pipeline prints nothing else
}

/** The child's side: the customize pipeline as the CLI runs it, all under `dir`. */
async function pipelineChild(spec: { image: string; dir: string }): Promise<void> {
  const config = defaultConfig({
    hostname: undefined, // customize keeps the image's host name: the pimaster's default is not the CLI's here
    base: spec.image,
    'insecure-no-verify': true,
    compress: ['xz'],
    name: 'bench',
    work: join(spec.dir, 'work'),
    cache: join(spec.dir, 'cache'),
    out: join(spec.dir, 'out'),
    quiet: true,
  });
  const { timings, state } = await runPipeline(customize, config, {}, new QuietReporter());
  const xz = state.outputs?.find((o) => o.format === 'xz');
  if (!xz || !state.image) throw new Error('the pipeline left no image or no .img.xz');
  const run: PipelineRun = { timings, imageSize: statSync(state.image).size, xzSize: xz.size, maxRssKiB: process.resourceUsage().maxRSS };
  process.stdout.write(`${JSON.stringify(run)}\n`);
}

interface BaselineRun {
  imageSize: number;
  xzSize: number;
  seconds: number;
}

async function runBaseline(image: string, out: string, signal: AbortSignal): Promise<BaselineRun> {
  const started = performance.now();
  await execa('bash', [BASELINE, image, out], { cancelSignal: signal, forceKillAfterDelay: false, stderr: 'inherit' });
  const seconds = (performance.now() - started) / 1000;
  // The shrunk .img is gone (xz replaced it); its size is in the .xz index.
  const { stdout } = await execa('xz', ['--robot', '--list', out]);
  const totals = stdout
    .split('\n')
    .find((line) => line.startsWith('totals\t'))!
    .split('\t');
  return { imageSize: Number(totals[4]), xzSize: statSync(out).size, seconds };
}

// ---------------------------------------------------------------------------------------------
// Clean-up

/**
 * Mounts and loop devices left under `dir` by a child killed before its own clean-up: unmounted and
 * detached before the directory goes (rm -r must never walk into a mounted filesystem).
 */
async function releaseLeftovers(dir: string): Promise<void> {
  const under = (path: string) => path.startsWith(`${dir}/`);
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter(under);
  for (const target of mounts.reverse()) await execa('umount', ['--lazy', target], { reject: false });
  const { stdout } = await execa('losetup', ['--list', '--json'], { reject: false });
  const devices = stdout ? (JSON.parse(stdout) as { loopdevices: { name: string; 'back-file': string | null }[] }).loopdevices : [];
  for (const device of devices) {
    if (under(device['back-file'] ?? '')) await execa('losetup', ['--detach', device.name], { reject: false });
  }
}

// ---------------------------------------------------------------------------------------------
// The table

const seconds = (s: number) => `${s.toFixed(1)} s`;
const signedBytes = (n: number) => `${n < 0 ? '-' : '+'}${formatBytes(Math.abs(n))}`;
const percent = (ours: number, theirs: number) => {
  const p = (100 * (ours - theirs)) / theirs;
  return `${Math.abs(p).toFixed(1)}% ${p <= 0 ? 'smaller' : 'larger'}`;
};

interface Results {
  fixture: Fixture;
  minimum: number;
  /** The root's start plus its blocks in use, before the pipeline (what no shrink goes below). */
  inUse: number;
  margin: number;
  ours: PipelineRun;
  baseline: BaselineRun;
  half: { size: number; run: PipelineRun };
}

function table({ fixture, minimum, inUse, margin, ours, baseline, half }: Results): string {
  const total = ours.timings.reduce((s, t) => s + t.seconds, 0);
  const commands = ours.timings.reduce((s, t) => s + t.commandSeconds, 0);
  const rss = (run: PipelineRun) => formatBytes(run.maxRssKiB * 1024);
  const title =
    `image-io: ${formatBytes(fixture.size)} image, root holding ${formatBytes(fixture.data)} in ${fixture.files} files from ` +
    `${SOURCES.join(' and ')} and ${formatBytes(fixture.junk)} deleted; xz -T0 -6; ${availableParallelism()} CPUs`;
  const rows: string[][] = [
    ['', 'ours', 'baseline', ''],
    ['shrunk .img', formatBytes(ours.imageSize), formatBytes(baseline.imageSize), `resize2fs -P minimum: ${formatBytes(minimum)}`],
    ['  over the minimum', signedBytes(ours.imageSize - minimum), signedBytes(baseline.imageSize - minimum), `--shrink-margin ${formatBytes(margin)}`],
    [
      '  over what it holds',
      signedBytes(ours.imageSize - inUse),
      signedBytes(baseline.imageSize - inUse),
      `boot + root blocks in use: ${formatBytes(inUse)}; target for ours: <= 1.05 x (that + margin): ${ours.imageSize <= 1.05 * (inUse + margin) ? 'met' : 'NOT met'}`,
    ],
    ['.img.xz', formatBytes(ours.xzSize), formatBytes(baseline.xzSize), `ours ${percent(ours.xzSize, baseline.xzSize)}`],
    ['time to .img.xz', seconds(total), seconds(baseline.seconds), 'ours: the sum of the stages below'],
    ...ours.timings.map((t) => [`  ${t.stage}`, seconds(t.seconds), '', `commands ${seconds(t.commandSeconds)}`]),
    ['pipeline overhead', seconds(total - commands), '', `total minus ${seconds(commands)} in commands`],
    [`peak RSS, ${formatBytes(fixture.size)} image`, rss(ours), '', 'maxRSS of the Node process running the pipeline'],
    [`peak RSS, ${formatBytes(half.size)} image`, rss(half.run), '', 'the same, on an image of half the size'],
  ];
  return `${title}\n${formatTable(rows, [1, 2])}`;
}

// ---------------------------------------------------------------------------------------------

async function bench(options: Options): Promise<string> {
  if (process.getuid?.() !== 0) throw new Error('image-io: run as root (the pipeline attaches loop devices and mounts)');
  const controller = new AbortController();
  // The children get SIGTERM and clean up; this process waits for them, then removes its files.
  const stop = (signal: NodeJS.Signals) => controller.abort(new Error(`stopped by ${signal}`));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const signal = controller.signal;
  const dir = mkdtempSync(join(tmpdir(), 'image-io-'));
  try {
    const full = plan(options.sizeGiB, options.usedGiB);
    const halved = plan(options.sizeGiB / 2, options.usedGiB / 2);
    const fixture = await buildFixture(dir, full, signal);
    const minimum = await minimumImageSize(fixture.image, fixture.rootOffset);
    const inUse = await inUseImageSize(fixture.image, fixture.rootOffset);
    say('running the customize pipeline');
    const ours = await runOurs(fixture.image, join(dir, 'ours'), signal);
    say('running the baseline');
    const baseline = await runBaseline(fixture.image, join(dir, 'baseline.img.xz'), signal);
    if (!options.keep) rmSync(fixture.image);
    const small = await buildFixture(dir, halved, signal);
    say('running the customize pipeline on the half-size image');
    const half = { size: small.size, run: await runOurs(small.image, join(dir, 'ours-half'), signal) };
    return table({ fixture, minimum, inUse, margin: defaultConfig()['shrink-margin'], ours, baseline, half });
  } catch (error) {
    throw signal.aborted ? signal.reason : error; // the signal, not the child it cancelled
  } finally {
    await releaseLeftovers(dir);
    if (options.keep) say(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

const argv = process.argv.slice(2);
if (argv[0] === CHILD) {
  await pipelineChild(JSON.parse(argv[1]!) as { image: string; dir: string }).catch((error: unknown) => {
    process.stderr.write(`${describeError(error, true)}\n`);
    process.exitCode = 1;
  });
} else {
  try {
    console.log(await bench(parseOptions(argv)));
  } catch (error) {
    // A failed command has already shown its own errors (stderr is inherited): one line is enough.
    process.stderr.write(`image-io: ${(error as { shortMessage?: string }).shortMessage ?? (error as Error).message}\n`);
    process.exitCode = 1;
  }
}
