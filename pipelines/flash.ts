/**
 * `build-image flash IMAGE DEVICE`: write an image in any of our output formats to a disk, only
 * the blocks its .bmap maps when there is one, then read back what was written and compare.
 *
 *   check      the target is a whole, removable, unused disk, not the system's, large enough
 *   write      the image decoded straight onto the device (no temporary copy), synced
 *   read-back  the kernel's cache of the device dropped, every written range read and hashed
 *   expand     (with --expand) the root partition and its ext4 filesystem grown to the card's end
 *   settings   (with --hostname, --user, --wifi-...) the card's first-boot settings written to its
 *              boot partition in the release's own format, then read back
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { crc32 } from 'node:zlib';
import { ConfigError, UserError } from '../engine/errors.ts';
import { engineSchema } from '../engine/options.ts';
import { Progress } from '../engine/progress.ts';
import type { BuildContext, Pipeline, Stage } from '../engine/stage.ts';
import { DeviceWriter, type Written } from '../lib/card/device-writer.ts';
import { type Expanded, expandRoot } from '../lib/card/expand.ts';
import { inspectTarget, openExclusive, refusals } from '../lib/card/target.ts';
import { decodeImage, imageFormat } from '../lib/codec/decode.ts';
import { type Bmap, imageStem, readBmap } from '../lib/image/bmap.ts';
import { bootFileNames, readBootFile, writeBootFile } from '../lib/image/bootfs.ts';
import { withArguments } from '../lib/image/cmdline.ts';
import { partition, readLayout } from '../lib/image/partitions.ts';
import { bootMountOf } from '../lib/image/system.ts';
import { cloudInitSeed, cmdlineArguments, firstrunScript, type InitFormat, newInstanceId } from '../settings/first-boot.ts';
import type { Settings } from '../settings/model.ts';

export interface FlashOptions {
  image: string;
  device: string;
  /** The block map: found beside the image, given, or none (every byte written). */
  bmap?: string;
  force: boolean;
  /** Grow the root to the card's end after the read-back. */
  expand?: boolean;
  /** First-boot settings for this card (the image file is never changed). */
  settings?: Settings;
}

declare module '../engine/stage.ts' {
  interface BuildState {
    flash?: {
      written?: Written[];
      bytes?: number;
      deviceBytes?: number;
      verified?: number;
      expanded?: Expanded;
      settings?: { format: InitFormat; files: string[] };
    };
  }
}

/** The image's size before writing: from its block map, or a raw image's own size, or xz's index. */
async function knownSize(ctx: BuildContext, image: string, bmap: Bmap | undefined): Promise<number | undefined> {
  if (bmap) return bmap.imageSize;
  const format = await imageFormat(image, basename(image), 'IMAGE');
  if (format === 'raw') return (await stat(image)).size;
  if (format === 'xz') {
    const { stdout } = await ctx.run('xz', ['--robot', '--list', image], { reject: false });
    const totals = stdout
      .split('\n')
      .find((l) => l.startsWith('totals\t'))
      ?.split('\t');
    return totals ? Number(totals[4]) : undefined;
  }
  return undefined; // found out while writing: a write past the end fails
}

const checkStage = (opts: FlashOptions, bmap: Bmap | undefined): Stage => ({
  name: 'check',
  describe: () => `check that ${opts.device} is a whole, removable, unused disk large enough for ${basename(opts.image)}`,
  options: [],
  async run(ctx) {
    const disk = inspectTarget(opts.device);
    const size = await knownSize(ctx, opts.image, bmap);
    const reasons = refusals(disk, size, opts.force);
    if (reasons.length) throw new UserError(reasons[0]!);
    await (await openExclusive(opts.device)).close(); // what the checks above cannot see (ZFS, another program)
    ctx.log.line(
      `${disk.path}: /sys/block/${disk.name}, ${disk.size} bytes, ${disk.removable ? 'removable' : 'not removable (--force)'}; image ${size ?? 'size unknown until decoded'}`,
    );
  },
});

const writeStage = (opts: FlashOptions, bmap: Bmap | undefined): Stage => ({
  name: 'write',
  describe: () => `write ${basename(opts.image)} to ${opts.device}${bmap ? ` (only the blocks mapped in ${basename(opts.bmap!)})` : ' (every byte: no .bmap)'}`,
  options: [],
  async run(ctx) {
    const name = `image ${basename(opts.image)}`;
    const format = await imageFormat(opts.image, name, 'IMAGE');
    const disk = inspectTarget(opts.device);
    const device = await openExclusive(opts.device);
    const mapped = bmap?.ranges.reduce((n, r) => n + r.end - r.start, 0);
    const progress = new Progress(ctx.status, 'write', bmap?.imageSize);
    const zipCrc = { crc: 0 };
    const writer = new DeviceWriter(device, disk.size, bmap?.ranges, (chunk) => {
      if (format === 'zip') zipCrc.crc = crc32(chunk, zipCrc.crc);
      progress.add(chunk.length);
    });
    try {
      await decodeImage(ctx, opts.image, format, writer, zipCrc, { name, again: 'get it again', target: opts.device });
    } catch (error) {
      if (writer.mismatch)
        throw new UserError(`${name}: ${writer.mismatch}: the image or its .bmap is damaged (the device now holds part of it): get them again`);
      throw error;
    } finally {
      await device.close();
    }
    // Let the kernel see the new partition table (a loop device without partitions says no).
    await ctx.run('blockdev', ['--rereadpt', opts.device], { reject: false });
    ctx.state.flash = { written: writer.done, bytes: writer.bytes, deviceBytes: writer.written };
    ctx.log.line(`${writer.written} of ${writer.bytes} bytes written to ${opts.device}${mapped !== undefined ? ` (${mapped} mapped)` : ''}`);
  },
});

const readBackStage = (opts: FlashOptions): Stage => ({
  name: 'read-back',
  describe: () => `read back what was written to ${opts.device} and compare`,
  options: [],
  async run(ctx) {
    const state = ctx.state.flash;
    if (!state?.written) throw new UserError('flash: nothing was written: run it from the start');
    // Reads must come from the disk, not from the kernel's cache of what was just written.
    await ctx.run('blockdev', ['--flushbufs', opts.device]);
    const progress = new Progress(ctx.status, 'read back', state.deviceBytes);
    let verified = 0;
    for (const range of state.written) {
      if (range.end === range.start) continue;
      const hash = createHash('sha256');
      for await (const chunk of createReadStream(opts.device, { start: range.start, end: range.end - 1, highWaterMark: 4 * 1024 * 1024, signal: ctx.signal })) {
        hash.update(chunk as Buffer);
        progress.add((chunk as Buffer).length);
      }
      if (hash.digest('hex') !== range.sha256) {
        throw new UserError(
          `${opts.device} reads back different bytes at ${range.start}-${range.end - 1} than were written: the card may be failing or fake; try another`,
        );
      }
      verified += range.end - range.start;
    }
    state.verified = verified;
  },
});

const expandStage = (opts: FlashOptions): Stage => ({
  name: 'expand',
  describe: () => `grow the root partition of ${opts.device} and its filesystem to the card's end`,
  options: [],
  async run(ctx) {
    const expanded = await expandRoot(ctx, opts.device, inspectTarget(opts.device).size);
    ctx.state.flash = { ...ctx.state.flash, expanded };
    ctx.log.line(`root filesystem: ${expanded.before} bytes, now ${expanded.after}`);
  },
});

/**
 * The init_format the build's manifest beside the image gives, if there is one: read before the
 * card is written, so that a malformed one stops flash with nothing done.
 */
function manifestInitFormat(image: string): InitFormat | undefined {
  const manifest = `${imageStem(image)}.manifest.json`;
  if (!existsSync(manifest)) return undefined;
  const bad = (why: string) => new ConfigError(`${manifest}: ${why}: fix it or remove it (without it, the card's boot partition says which format)`);
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(manifest, 'utf8'));
  } catch (error) {
    throw bad(`not readable JSON (${(error as Error).message.split('\n')[0]})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('not a JSON object');
  const format = (value as { init_format?: unknown }).init_format;
  if (format === undefined || format === 'systemd' || format === 'cloudinit-rpi') return format;
  throw bad(`init_format ${JSON.stringify(format)} is neither systemd nor cloudinit-rpi`);
}

/** How the release takes first-boot settings: the build's manifest says; else a cloud-init seed on the boot partition does. */
function initFormatOf(fromManifest: InitFormat | undefined, bootFiles: string[]): InitFormat {
  if (fromManifest) return fromManifest;
  return bootFiles.includes('meta-data') || bootFiles.includes('user-data') ? 'cloudinit-rpi' : 'systemd';
}

const settingsStage = (opts: FlashOptions, settings: Settings, fromManifest: InitFormat | undefined): Stage => ({
  name: 'settings',
  describe: () => `write the card's first-boot settings to the boot partition of ${opts.device}`,
  options: [],
  async run(ctx) {
    const layout = await readLayout(ctx, opts.device);
    const boot = partition(layout, layout.boot);
    const root = partition(layout, layout.root);
    const format = initFormatOf(fromManifest, await bootFileNames(ctx, opts.device, boot.offset));
    // Where the system mounts the boot partition, from the card's own fstab (debugfs reads it without mounting).
    const fstab = await ctx.run('debugfs', ['-R', 'cat /etc/fstab', `${opts.device}?offset=${root.offset}`], { reject: false });
    const bootMount = bootMountOf(fstab.stdout) ?? '/boot/firmware';
    const instance = newInstanceId();
    const files = format === 'systemd' ? { 'firstrun.sh': firstrunScript(settings, bootMount) } : cloudInitSeed(settings, instance);
    const cmdline = await readBootFile(ctx, opts.device, boot.offset, 'cmdline.txt');
    const written = { ...files, 'cmdline.txt': withArguments(cmdline, cmdlineArguments(format, bootMount, instance)) };
    for (const [name, content] of Object.entries(written)) await writeBootFile(ctx, opts.device, boot.offset, name, content);
    await ctx.run('blockdev', ['--flushbufs', opts.device]);
    for (const [name, content] of Object.entries(written)) {
      if ((await readBootFile(ctx, opts.device, boot.offset, name)).trim() !== content.trim())
        throw new UserError(`${opts.device}: ${name} reads back different from what was written to the boot partition: the card may be failing; try another`);
    }
    ctx.state.flash = { ...ctx.state.flash, settings: { format, files: Object.keys(written) } };
    ctx.log.line(`init_format ${format}, boot partition mounted on ${bootMount}: wrote ${Object.keys(written).join(', ')}`);
  },
});

export function flashPipeline(opts: FlashOptions): Pipeline {
  const bmap = opts.bmap ? readBmap(opts.bmap) : undefined;
  return {
    name: 'flash',
    schema: engineSchema,
    summary: 'write an image to a disk and verify it',
    stages: [
      checkStage(opts, bmap),
      writeStage(opts, bmap),
      readBackStage(opts),
      ...(opts.expand ? [expandStage(opts)] : []),
      ...(opts.settings ? [settingsStage(opts, opts.settings, manifestInitFormat(opts.image))] : []),
    ],
  };
}
