/**
 * extract: turn the verified download into `<work>/image.img`, a sparse raw image. The format is
 * found by magic bytes (xz, gzip, zstd, zip, else a raw disk image with a boot signature; a
 * compressed tar of one .img by its name);
 * decompressors stream into a writer that skips zero blocks. The download itself is only read.
 * The image is written as `image.img.part` and renamed when complete and verified, so a failed or
 * interrupted run never leaves a partial `image.img`.
 */
import { join } from 'node:path';
import { UserError } from '../engine/errors.ts';
import type { Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { extractImage } from '../lib/codec/decode.ts';
import { DOWNLOADING } from '../lib/sources/fetch.ts';

export const extractStage: Stage<BuildConfig> = {
  name: 'extract',
  options: [],
  describe(config) {
    return `decompress the base image (xz, gzip, zstd, zip or raw) into ${join(config.work, 'image.img')}, sparse`;
  },
  async key(ctx) {
    return [{ label: 'base image extracted', input: ctx.state.download?.sha256 ?? '' }];
  },
  async run(ctx) {
    const download = ctx.state.download;
    if (!download) throw new UserError('extract: the build state has no download: run the fetch stage first (drop --from extract)');
    const image = join(ctx.paths.work, 'image.img');
    const downloading = ctx.resources.get(DOWNLOADING);
    ctx.resources.delete(DOWNLOADING);
    ctx.state.download = await extractImage(ctx, download, image, undefined, undefined, downloading);
    ctx.state.image = image;
  },
};
