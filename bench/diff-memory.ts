/**
 * The memory `build-image diff` holds while it compares two large images: a 4 GiB sparse image
 * whose ext4 root holds a few hundred MiB of incompressible files (mkfs.ext4 -d from a directory
 * of random files, many small ones and some of 1 MiB), a copy of it (cp --sparse=always) with one
 * file added to the copy's root (debugfs -w `write` on a loop device of the copy's root partition),
 * then `build-image diff A B --quiet` run as a child process under /usr/bin/time -v. Prints the
 * image's size and data, the diff's exit code, its time, and its peak RSS: files are hashed as
 * they stream, so the peak should stay near Node's own baseline (about 100 MiB) whatever the
 * images' size; only the lists of entries grow, with their number.
 * Needs root (loop devices, mount); keep it out of the test suite.
 *
 *   node bench/diff-memory.ts [--data-mib 384] [--keep]
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { formatBytes } from '../engine/options.ts';
import { assembleDisk } from '../test/fixtures/tiny-image.ts';
import { formatTable } from './measure.ts';

const MiB = 2 ** 20;
const IMAGE_MIB = 4096;
const cli = new URL('../commands/cli.ts', import.meta.url).pathname;

async function bench(dataMiB: number, keep: boolean): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'diff-memory-'));
  try {
    const boot = join(dir, 'boot');
    const root = join(dir, 'root');
    mkdirSync(boot);
    writeFileSync(join(boot, 'config.txt'), 'arm_64bit=1\n');
    // Half the data in 1 MiB files, half in 4 KiB to 64 KiB ones: many entries, real blocks.
    let files = 0;
    for (let i = 0; i < dataMiB / 2; i++, files++) {
      mkdirSync(join(root, 'big', String(i % 16)), { recursive: true });
      writeFileSync(join(root, 'big', String(i % 16), `f${i}.bin`), randomBytes(MiB));
    }
    for (let bytes = 0, i = 0; bytes < (dataMiB / 2) * MiB; i++, files++) {
      const size = 4096 * (1 + (i % 16));
      mkdirSync(join(root, 'small', String(i % 64)), { recursive: true });
      writeFileSync(join(root, 'small', String(i % 64), `f${i}.dat`), randomBytes(size));
      bytes += size;
    }
    const a = join(dir, 'a.img');
    const bootMiB = 40;
    await assembleDisk(a, { label: 'dos', bootMiB, rootMiB: IMAGE_MIB - bootMiB - 4, bootDir: boot, rootDir: root });
    rmSync(root, { recursive: true, force: true });
    truncateSync(a, IMAGE_MIB * MiB);
    const b = join(dir, 'b.img');
    await execa('cp', ['--sparse=always', a, b]);
    // One change: a file added to B's root.
    const { stdout } = await execa('sfdisk', ['--json', b]);
    const part = (JSON.parse(stdout) as { partitiontable: { partitions: { start: number; size: number }[] } }).partitiontable.partitions[1]!;
    const added = join(dir, 'added.txt');
    writeFileSync(added, 'the one change\n');
    const { stdout: device } = await execa('losetup', ['--find', '--show', '--offset', String(part.start * 512), '--sizelimit', String(part.size * 512), b]);
    try {
      await execa('debugfs', ['-w', '-R', `write ${added} added.txt`, device.trim()]);
    } finally {
      await execa('losetup', ['--detach', device.trim()]);
    }
    const used = Number((await execa('du', ['-B1', '-s', a])).stdout.split('\t')[0]);
    const started = performance.now();
    const run = await execa('/usr/bin/time', ['-v', process.execPath, cli, 'diff', a, b, '--quiet', '--work', join(dir, 'work')], { reject: false });
    const seconds = (performance.now() - started) / 1000;
    const peakKiB = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(run.stderr)?.[1]);
    if (run.exitCode !== 1 || !/^ {2}\+ \/added\.txt/m.test(run.stdout))
      throw new Error(`diff did not find the one change (exit ${run.exitCode}):\n${run.stdout}\n${run.stderr}`);
    const rows = [
      ['build-image diff, two images', 'figure'],
      ['image size (each)', formatBytes(statSync(a).size)],
      ['data on disk (each)', formatBytes(used)],
      ['files in the root', String(files)],
      ['difference found', run.stdout.split('\n').at(-1) ?? ''],
      ['time', `${seconds.toFixed(1)} s`],
      ['peak RSS (/usr/bin/time -v)', formatBytes(peakKiB * 1024)],
    ];
    if (keep) process.stderr.write(`diff-memory: kept ${dir}\n`);
    return formatTable(rows, [1]);
  } finally {
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

try {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { 'data-mib': { type: 'string', default: '384' }, keep: { type: 'boolean', default: false } },
  });
  const dataMiB = Number(values['data-mib']);
  if (!(Number.isInteger(dataMiB) && dataMiB >= 16 && dataMiB <= 2048))
    throw new Error(`--data-mib ${values['data-mib']}: expected a whole number of MiB, 16 to 2048`);
  console.log(await bench(dataMiB, values.keep));
} catch (error) {
  process.stderr.write(`diff-memory: ${(error as { shortMessage?: string }).shortMessage ?? (error as Error).message}\n`);
  process.exitCode = 1;
}
