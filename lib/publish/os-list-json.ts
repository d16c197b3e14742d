/**
 * An OS list for Raspberry Pi Imager (`os-list.json`) describing the images in an output directory,
 * made from their manifests: Imager can then download, check and flash them, and offer its
 * customisation (host name, user, wifi, SSH key) through the image's first-boot mechanism.
 */
import { readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../../engine/errors.ts';

/** What the compress stage's manifest.json holds that the list needs. */
export interface Manifest {
  name: string;
  pipeline: string;
  created: string;
  release: string | null;
  arch: 'arm64' | 'armhf';
  /** Older manifests have none: it then follows from the release. */
  init_format?: 'systemd' | 'cloudinit-rpi' | null;
  image: { size: number; sha256: string };
  outputs: Array<{ format: string; file: string; size: number; sha256: string }>;
}

export interface ImagerEntry {
  name: string;
  description: string;
  icon: string;
  url: string;
  release_date: string;
  extract_size: number;
  extract_sha256: string;
  image_download_size: number;
  image_download_sha256: string;
  init_format: 'systemd' | 'cloudinit-rpi';
  devices: string[];
}

/** Formats Imager downloads and decompresses itself, best first. */
const DOWNLOADABLE = ['xz', 'gz', 'zip', 'zstd'];

/** Imager's device tags for each image architecture (its devices list), and Raspberry Pi OS's icons. */
const DEVICES = {
  arm64: ['pi5-64bit', 'pi4-64bit', 'pi3-64bit'],
  armhf: ['pi4-32bit', 'pi3-32bit', 'pi2-32bit', 'pi1-32bit'],
};
const ICONS = {
  arm64: 'https://downloads.raspberrypi.com/raspios_arm64/Raspberry_Pi_OS_(64-bit).png',
  armhf: 'https://downloads.raspberrypi.com/raspios_armhf/Raspberry_Pi_OS_(32-bit).png',
};

/** The image's entry, or undefined when it has no output Imager can download (only a raw .img). */
export function imagerEntry(manifest: Manifest, releaseUrl: string | undefined): ImagerEntry | undefined {
  const download = DOWNLOADABLE.map((f) => manifest.outputs.find((o) => o.format === f)).find(Boolean);
  if (!download) return undefined;
  const bits = manifest.arch === 'arm64' ? '64-bit' : '32-bit';
  const release = manifest.release ?? 'unknown release';
  const pimaster = manifest.pipeline === 'pimaster';
  return {
    name: pimaster ? `PiSeduce pimaster (${bits})` : `${manifest.name} (${bits})`,
    description: pimaster
      ? `The Raspberry Pi that runs a PiSeduce cluster: DHCP, TFTP/PXE and an NFS root for the nodes, the PiSeduce web UI and agent. Raspberry Pi OS ${release}.`
      : `Raspberry Pi OS ${release}, customized by build-image.`,
    icon: ICONS[manifest.arch],
    url: `${releaseUrl ?? ''}${download.file}`,
    release_date: manifest.created.slice(0, 10),
    extract_size: manifest.image.size,
    extract_sha256: manifest.image.sha256,
    image_download_size: download.size,
    image_download_sha256: download.sha256,
    // Imager's customisation: what the image itself runs (cloud-init on trixie, else firstrun.sh).
    init_format: manifest.init_format ?? (release === 'trixie' ? 'cloudinit-rpi' : 'systemd'),
    devices: DEVICES[manifest.arch],
  };
}

/**
 * os-list.json for every image whose manifest is in `dir` (several builds may share an output
 * directory), newest first. Returns its path, or undefined when no image there has an output
 * Imager can download.
 */
export function writeImagerList(dir: string, releaseUrl: string | undefined): string | undefined {
  const manifests = readdirSync(dir)
    .filter((f) => f.endsWith('.manifest.json'))
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as Manifest)
    .sort((a, b) => b.created.localeCompare(a.created));
  if (manifests.length === 0) throw new UserError(`${dir} holds no *.manifest.json: give the output directory of a build`);
  const entries = manifests.map((m) => imagerEntry(m, releaseUrl)).filter((e) => e !== undefined);
  if (entries.length === 0) return undefined;
  const file = join(dir, 'os-list.json');
  writeFileSync(`${file}.partial`, `${JSON.stringify({ os_list: entries }, null, 2)}\n`);
  renameSync(`${file}.partial`, file);
  return file;
}
