/**
 * `<name>.manifest.json`: what a build made, from what, with which settings (none of them secret or
 * a host path). Nothing of the run itself (no stage timings: they are in the work dir's state.json
 * and the log): two builds of the same inputs write the same manifest.
 */
import { basename } from 'node:path';
import { published, publishedSettings, withoutCredentials } from '../../engine/redact.ts';
import type { BuildContext } from '../../engine/stage.ts';
import { commit, PACKAGE_NAME, version } from '../../engine/version.ts';
import type { BuildConfig } from '../build-options.ts';
import type { Output } from '../image/state.ts';
import { SBOM_FORMAT } from './sbom.ts';

export interface ManifestFacts {
  name: string;
  imageSha256: string;
  size: number;
  /** The .bmap and SBOM files written beside the outputs. */
  bmap: string;
  sbom: string;
  outputs: readonly Output[];
  created: string;
}

export function manifest(ctx: BuildContext<BuildConfig>, out: ManifestFacts) {
  const download = ctx.state.download;
  const packages = ctx.state.packages ?? [];
  return {
    name: out.name,
    pipeline: ctx.pipeline,
    created: out.created,
    source_date_epoch: ctx.state.sourceDateEpoch ?? null,
    toolkit: { name: PACKAGE_NAME, version, commit: commit() },
    base: download
      ? {
          source: published(ctx.schema.base, download.source),
          url: download.url ? withoutCredentials(download.url) : null,
          sha256: download.sha256,
          releaseDate: download.releaseDate ?? null,
        }
      : null,
    release: ctx.state.system?.codename ?? null,
    arch: ctx.config.arch,
    chroot: ctx.state.chroot ?? null,
    init_format: ctx.state.system?.initFormat ?? null,
    image: { file: `${out.name}.img`, size: out.size, sha256: out.imageSha256, bmap: basename(out.bmap) },
    sbom: { file: basename(out.sbom), format: SBOM_FORMAT, components: packages.length },
    outputs: out.outputs.map((o) => ({ format: o.format, file: basename(o.path), size: o.size, sha256: o.sha256 })),
    config: publishedSettings(ctx.schema, ctx.config),
    sources: ctx.state.sources ?? {},
    packages,
  };
}
