/**
 * fetch: get the base image and verify it. The base is an http(s) URL, a file:// URL, a local
 * path, or a release name resolved through Raspberry Pi Imager's OS list. Its sha256 comes from
 * --base-sha256, else the `.sha256` sidecar next to it, else the OS list; with none of them the
 * build stops unless --insecure-no-verify. Downloads are cached under
 * `<cache>/downloads/<sha256>/<file>` (a known checksum is looked up there before any download)
 * and resumed from `<cache>/downloads/partial/`. A local file is only read, never copied.
 */
import { join } from 'node:path';
import type { Stage } from '../engine/stage.ts';
import type { BuildConfig } from '../lib/build-options.ts';
import type { Source } from '../lib/sources/fetch.ts';
import { baseRequest, fetchImage, sourceOf } from '../lib/sources/fetch.ts';

function verification(config: BuildConfig, local: boolean): string {
  if (config['base-sha256']) return `against --base-sha256 ${config['base-sha256'].slice(0, 12)}…`;
  const where = local ? 'its .sha256 file' : 'its .sha256 sidecar';
  return config['insecure-no-verify'] ? `against ${where} if any (--insecure-no-verify)` : `against ${where}`;
}

export const fetchStage: Stage<BuildConfig> = {
  name: 'fetch',
  options: ['base', 'base-sha256', 'os-list', 'insecure-no-verify', 'arch'],
  describe(config) {
    let source: Source;
    try {
      source = sourceOf(config.base);
    } catch (error) {
      return `get the base image: ${(error as Error).message}`;
    }
    switch (source.kind) {
      case 'release':
        return `download the newest Raspberry Pi OS Lite ${source.release === 'latest' ? '' : `${source.release} `}(${config.arch}) from ${config['os-list']}, verified ${verification(config, false).replace(/^against its \.sha256 sidecar/, 'against its .sha256 sidecar or the OS list')}, cached in ${join(config.cache, 'downloads')}`;
      case 'url':
        return `download ${source.url}, verified ${verification(config, false)}, cached in ${join(config.cache, 'downloads')}`;
      case 'file':
        return `use ${source.path} in place, verified ${verification(config, true)}`;
    }
  },
  async run(ctx) {
    ctx.state.download = await fetchImage(ctx, baseRequest(ctx.config), true);
  },
};
