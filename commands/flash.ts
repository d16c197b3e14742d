/** `build-image flash IMAGE DEVICE [options]`: its flags, their checks, and its report. */
import { existsSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { ConfigError } from '../engine/errors.ts';
import { formatBytes } from '../engine/options.ts';
import { timingTable } from '../engine/runner.ts';
import { bmapBeside } from '../lib/image/bmap.ts';
import { flashPipeline } from '../pipelines/flash.ts';
import { checkFirstBootValue, FIRST_BOOT_FLAGS, firstBootSettings } from '../settings/first-boot.ts';
import { parseTool, runTool, type ToolFlag, toolUsage } from './tool-command.ts';

const FLAGS = {
  force: { type: 'boolean', help: 'write a disk that is not removable (never the system disk, a mounted one, or a too small one)' },
  bmap: { type: 'string', placeholder: 'FILE', help: 'the block map (default: NAME.img.bmap beside the image, when there is one)' },
  'no-bmap': { type: 'boolean', help: 'write every byte of the image, even with a .bmap beside it' },
  expand: { type: 'boolean', help: "after the read-back, grow the root partition and its ext4 filesystem to the card's end" },
  ...FIRST_BOOT_FLAGS,
} as const satisfies Record<string, ToolFlag>;

export function flashUsage(): string {
  return toolUsage(
    [
      'build-image flash IMAGE DEVICE [options]: write IMAGE (.img, .img.xz, .img.zst, .img.gz, .zip or .img.tar.gz) to the',
      'disk DEVICE, only the blocks of its .bmap when it has one, with progress; then read back what was written and',
      'compare. Refuses the disk the system runs from, a disk in use, a partition, a disk smaller than the image, and a',
      'disk that is not removable unless --force.',
      'With settings (--hostname, --user, --ssh-key, --wifi-..., --timezone, --locale, --keymap or --settings FILE), this',
      'card gets them at its first boot: written to its boot partition, in the format Raspberry Pi Imager writes for the',
      'image (firstrun.sh, or a cloud-init seed on trixie), after the read-back. The image file is never changed. Each',
      "setting is checked by customize's rule for it, before any work.",
      'With --expand, the root partition (the last, ext4) and its filesystem are then grown to the end of the card, offline',
      '(sfdisk, e2fsck, resize2fs): the first boot has nothing to grow.',
    ],
    FLAGS,
  );
}

export async function flashCommand(argv: string[]): Promise<number> {
  const parsed = parseTool(argv, 'flash', FLAGS, flashUsage, checkFirstBootValue);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 2) throw new ConfigError('flash takes an IMAGE and a DEVICE: build-image flash IMAGE DEVICE (see build-image --help flash)');
  const [image, device] = positionals as [string, string];
  // The settings first: a bad one is one line before the image or the device is looked at.
  const settings = await firstBootSettings(values);
  if (!existsSync(image)) throw new ConfigError(`${image}: no such file (the image to write)`);
  if (typeof values.bmap === 'string' && values['no-bmap']) throw new ConfigError('--bmap and --no-bmap: give one or the other');
  if (typeof values.bmap === 'string' && !existsSync(values.bmap)) throw new ConfigError(`--bmap ${values.bmap}: no such file`);
  const bmap = values['no-bmap'] ? undefined : typeof values.bmap === 'string' ? values.bmap : bmapBeside(resolve(image));
  const pipeline = flashPipeline({
    image: resolve(image),
    device,
    bmap: bmap && resolve(bmap),
    force: values.force === true,
    expand: values.expand === true,
    settings,
  });
  const { state, timings, config } = await runTool(pipeline, values);
  const f = state.flash!;
  process.stdout.write(
    `${device}: wrote ${formatBytes(f.deviceBytes!)} of the ${formatBytes(f.bytes!)} image${bmap ? ` (only what ${basename(bmap)} maps)` : ''}; read back ${formatBytes(f.verified!)} and it matches\n`,
  );
  if (f.expanded) {
    const { before, after } = f.expanded;
    const grown = after > before ? `grown from ${formatBytes(before)} to ${formatBytes(after)}, to` : `of ${formatBytes(after)} already reaches`;
    process.stdout.write(`${device}: root filesystem ${grown} the card's end\n`);
  }
  if (f.settings)
    process.stdout.write(`${device}: first-boot settings (init_format ${f.settings.format}) in ${f.settings.files.join(', ')} on its boot partition\n`);
  if (!config.quiet) process.stderr.write(`\n${timingTable(timings)}\n`);
  return 0;
}
