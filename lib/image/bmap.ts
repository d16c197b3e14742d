/**
 * Block maps (bmaptool's .bmap, version 2): which blocks of an image hold data, with a sha256 per
 * range. Flashing writes only those ranges, and checks each against its sha256 as it passes.
 */
import { existsSync, readFileSync } from 'node:fs';
import { UserError } from '../../engine/errors.ts';

export interface Range {
  /** Byte offsets in the image: [start, end). */
  start: number;
  end: number;
  sha256?: string;
}

export interface Bmap {
  imageSize: number;
  blockSize: number;
  ranges: Range[];
}

export function parseBmap(xml: string, file = 'the bmap'): Bmap {
  const field = (name: string) => {
    const m = new RegExp(`<${name}>\\s*(\\d+)\\s*</${name}>`).exec(xml);
    if (!m) throw new UserError(`${file} is not a bmap (no <${name}>): give the .bmap bmaptool made for this image, or --no-bmap`);
    return Number(m[1]);
  };
  const imageSize = field('ImageSize');
  const blockSize = field('BlockSize');
  const type = /<ChecksumType>\s*(\w+)\s*<\/ChecksumType>/.exec(xml)?.[1];
  const ranges: Range[] = [];
  for (const m of xml.matchAll(/<Range(?:\s+chksum="([0-9a-f]+)")?\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*<\/Range>/g)) {
    const first = Number(m[2]);
    const last = m[3] !== undefined ? Number(m[3]) : first;
    ranges.push({ start: first * blockSize, end: Math.min((last + 1) * blockSize, imageSize), sha256: type === 'sha256' ? m[1] : undefined });
  }
  ranges.sort((a, b) => a.start - b.start);
  if (ranges.some((r, i) => r.end <= r.start || (i > 0 && r.start < ranges[i - 1]!.end))) {
    throw new UserError(`${file} has empty or overlapping ranges: make it again with bmaptool create`);
  }
  return { imageSize, blockSize, ranges };
}

/** The .bmap our compress stage writes beside an image: NAME.img.bmap for NAME.img[.xz|.zst|...]. */
/** An image's path without its format's suffix: NAME for NAME.img, NAME.img.xz, NAME.zip... (where NAME.manifest.json is). */
export function imageStem(image: string): string {
  return image.replace(/\.(img\.(xz|zst|gz|tar\.gz)|zip|img)$/i, '');
}

export function bmapBeside(image: string): string | undefined {
  const base = imageStem(image);
  return [`${base}.img.bmap`, `${base}.bmap`].find((f) => f !== image && existsSync(f));
}

export function readBmap(file: string): Bmap {
  return parseBmap(readFileSync(file, 'utf8'), file);
}
