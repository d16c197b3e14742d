/** `build-image diff A B [--json] [--ignore-times]`: what differs between two images. */
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError, describeError, InterruptedError } from '../engine/errors.ts';
import type { DiffResult } from '../lib/image/diff.ts';
import { formatText } from '../lib/image/diff.ts';
import { diffPipeline } from '../pipelines/diff.ts';
import { parseTool, runTool, type ToolFlag, toolUsage } from './tool-command.ts';

const FLAGS = {
  json: { type: 'boolean', help: 'print one JSON document (a, b, identical, ignoreTimes, table, partitions) instead of text' },
  'ignore-times': { type: 'boolean', help: 'leave modification times out of the comparison' },
} as const satisfies Record<string, ToolFlag>;

export function diffUsage(): string {
  return toolUsage(
    [
      'build-image diff A B [--json] [--ignore-times]: compare two images (.img, .img.xz, .img.zst, .img.gz, .zip or',
      '.img.tar.gz; a compressed one is decompressed into a temporary file of the work directory, removed afterwards).',
      "First the partition tables (label, disk id, each partition's start, size, type and GPT UUID), then, partition by",
      "partition (matched by number), each filesystem's entries (ext4 and FAT; another partition by its bytes' sha256):",
      'what was added, removed and changed, and which fields changed: type, mode, owner, size, sha256 (of regular files),',
      'link target, device number, hard links and modification time (ext4: to the nanosecond; FAT: to the minute, as',
      'mdir shows it).',
      'Times are compared unless --ignore-times is given. For a changed text file of at most 64 KiB, the first differing line.',
      'The images are only read: ext4 through a read-only loop device mounted read-only, FAT with mtools.',
      'Exits 0 when the images are identical, 1 when they differ, 2 on a usage or input error.',
    ],
    FLAGS,
  );
}

function checkInput(path: string | undefined, which: string): string {
  if (path === undefined) throw new ConfigError('diff takes two images: build-image diff A B (see build-image --help diff)');
  if (!existsSync(path)) throw new ConfigError(`${path}: no such file (${which}): check the path`);
  if (!statSync(path).isFile()) throw new ConfigError(`${path}: not a file (${which}): give an image file (.img, .img.xz, ...)`);
  return resolve(path);
}

async function diff(argv: string[]): Promise<number> {
  const parsed = parseTool(argv, 'diff', FLAGS, diffUsage);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 2) throw new ConfigError('diff takes two images: build-image diff A B (see build-image --help diff)');
  const a = checkInput(positionals[0], 'the first image');
  const b = checkInput(positionals[1], 'the second image');
  const out: { result?: DiffResult } = {};
  await runTool(diffPipeline({ a, b, ignoreTimes: values['ignore-times'] === true }, out), values);
  const result = { ...out.result!, a: positionals[0]!, b: positionals[1]! };
  process.stdout.write(values.json ? `${JSON.stringify(result, null, 2)}\n` : `${formatText(result)}\n`);
  return result.identical ? 0 : 1;
}

/**
 * Exit 1 means "the images differ": any error, a failed command included, exits 2 (or the
 * signal's code after Ctrl-C), its one line printed here.
 */
export async function diffCommand(argv: string[]): Promise<number> {
  try {
    return await diff(argv);
  } catch (error) {
    if (error instanceof InterruptedError) throw error;
    process.stderr.write(`${describeError(error, argv.includes('--verbose'))}\n`);
    return 2;
  }
}
