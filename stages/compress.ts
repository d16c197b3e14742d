/**
 * compress: the finished outputs in `<out>`. The working image is read once; every chunk goes to
 * the sha256 of the raw image and, in parallel, to every requested format (xz, zstd, gzip, zip,
 * tar.gz through their tools, or the sparse `.img` itself). Each output is hashed as it is
 * written, so its `.sha256` sidecar needs no second read. Backpressure from the slowest format
 * paces the read, so memory stays flat whatever the size of the image.
 *
 * Everything is written as `<file>.partial` and renamed only once every output, the `.bmap` and
 * the manifest are complete: a failed or interrupted run leaves no partial output, and an earlier
 * build's outputs of the same name stay whole until the new set replaces them.
 */
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { errnoReason, UserError } from '../engine/errors.ts';
import { formatBytes } from '../engine/options.ts';
import type { Stage } from '../engine/stage.ts';
import { version } from '../engine/version.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import { encodeImage, FORMATS, outputName, sha256Line } from '../lib/codec/encode.ts';
import { manifest } from '../lib/publish/manifest.ts';
import { writeImagerList } from '../lib/publish/os-list-json.ts';
import { cycloneDx } from '../lib/publish/sbom.ts';
import { isoSeconds } from '../lib/source-date.ts';

function describe(config: BuildConfig): string {
  const formats = [...new Set(config.compress)];
  const name = config.name ?? `<pipeline>-<release>-${config.arch}`;
  const what = formats.length ? formats.map((f) => `${name}.${FORMATS[f].ext}`).join(', ') : 'no copy of the image';
  return `${what} in ${config.out}, each with a .sha256, and ${name}.img.bmap, ${name}.cdx.json (SBOM), ${name}.manifest.json, os-list.json`;
}

export const compressStage: Stage<BuildConfig> = {
  name: 'compress',
  options: ['compress', 'name', 'release-url', 'out'],
  describe,
  async run(ctx) {
    const image = ctx.state.image;
    if (!image) throw new UserError('compress: the build state has no image: run the pipeline from its start');
    const formats = [...new Set(ctx.config.compress)];
    const name = outputName(ctx);
    const out = ctx.paths.out;
    try {
      mkdirSync(out, { recursive: true });
    } catch (error) {
      throw new UserError(`compress: cannot create the output directory ${out}: ${errnoReason(error)}`);
    }
    const path = (ext: string) => join(out, `${name}.${ext}`);

    // Every file this stage makes is first a .partial: none may outlive a failed or stopped run.
    const partials = new Set<string>();
    const partial = (file: string) => {
      partials.add(`${file}.partial`);
      return `${file}.partial`;
    };
    ctx.defer(`remove unfinished outputs in ${out}`, (outcome) => {
      if (outcome === 'success') return;
      for (const p of partials) rmSync(p, { force: true });
    });
    const writePartial = (file: string, text: string) => {
      try {
        writeFileSync(partial(file), text);
      } catch (error) {
        throw new UserError(`compress: cannot write ${file}.partial: ${errnoReason(error)}`);
      }
    };

    const { outputs, imageSha256, size } = await encodeImage(ctx, image, formats, path, name, partial);
    for (const output of outputs) {
      writePartial(`${output.path}.sha256`, sha256Line(output.sha256, output.path));
      const ratio = ((100 * output.size) / Math.max(1, size)).toFixed(1);
      ctx.log.line(`${basename(output.path)}: ${formatBytes(output.size)} (${ratio}% of the image), sha256 ${output.sha256}`);
    }
    // After the compressors rather than beside them: they have the CPUs, and a full disk is then
    // reported by the outputs' own clear error. The image is likely still in the page cache.
    const bmap = path('img.bmap');
    await ctx.run('bmaptool', ['create', '-o', partial(bmap), image]);

    // The build's one time, so that two builds of the same inputs write the same manifest and SBOM.
    const epoch = ctx.state.sourceDateEpoch;
    const created = epoch === undefined ? new Date().toISOString() : isoSeconds(epoch);
    const sbom = path('cdx.json');
    const packages = ctx.state.packages ?? [];
    writePartial(
      sbom,
      `${JSON.stringify(cycloneDx({ name, sha256: imageSha256, created, tool: { name: 'build-image', version }, system: ctx.state.system, packages }), null, 2)}\n`,
    );

    const manifestFile = path('manifest.json');
    const content = manifest(ctx, { name, imageSha256, size, bmap, sbom, outputs, created });
    writePartial(manifestFile, `${JSON.stringify(content, null, 2)}\n`);

    // All complete: into place in one synchronous sweep, the manifest last.
    for (const p of partials) if (p !== `${manifestFile}.partial`) renameSync(p, p.slice(0, -'.partial'.length));
    renameSync(`${manifestFile}.partial`, manifestFile);
    partials.clear();
    const list = writeImagerList(out, ctx.config['release-url']);
    ctx.log.line(
      list
        ? `${list}: Raspberry Pi Imager's list of the images in ${out}`
        : `no os-list.json: Raspberry Pi Imager downloads only compressed images (--compress xz)`,
    );

    ctx.state.imageSha256 = imageSha256;
    ctx.state.outputs = outputs;
  },
};
