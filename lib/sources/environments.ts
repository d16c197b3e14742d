/** The images a pimaster's nodes can deploy (PiSeduce environments), as the chroot scripts see them. */
import { basename } from 'node:path';

/** What the scripts learn of a deployable environment (files/environments/<name>.json). */
export interface Environment {
  name: string;
  /** The .img.tar.gz file name, and where the scripts find it. */
  img_name: string;
  path: string;
  /** Size of the raw image, and the first sector of its second partition. */
  img_size: number;
  sector_start: number;
  /** sha256 of the verified download it was made from. */
  source_sha256: string;
}

/** `2024-11-19-raspios-bookworm-arm64-lite` from its download's file name (.img.xz, .zip, ...). */
export function imageBaseName(file: string): string {
  return basename(file)
    .replace(/\.(xz|gz|zst|zip|bz2)$/i, '')
    .replace(/\.img$/i, '');
}
