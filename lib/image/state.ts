import type { Compression } from '../build-options.ts';
import type { SourceDateFrom } from '../source-date.ts';
import type { Shipped } from './as-shipped.ts';
/**
 * What each stage leaves in the build state for the ones after it, in pipeline order. Kept in one
 * place so the data's path through a build reads top to bottom.
 */

export interface Download {
  /** The verified file: in the download cache, or the user's own file (never modified). */
  path: string;
  sha256: string;
  /** What the user asked for (URL, path or release) and the URL it resolved to. */
  source: string;
  url?: string;
  /** From Raspberry Pi Imager's OS list, when the base was resolved through it. */
  extractSha256?: string;
  extractSize?: number;
  releaseDate?: string;
}

export interface Partition {
  /** 1-based number, as in /dev/sdX<number> and sfdisk -N. */
  number: number;
  startSector: number;
  sectors: number;
  /** MBR type byte (hex) or GPT type GUID. */
  type: string;
  fs: 'vfat' | 'ext4' | 'other';
  /** Byte offset and length, for losetup -o/--sizelimit and mtools' @@offset. */
  offset: number;
  size: number;
}

export interface Layout {
  label: 'dos' | 'gpt';
  sectorSize: number;
  /** Size of the image file in bytes. */
  fileSize: number;
  partitions: Partition[];
  /** Numbers of the FAT boot and ext4 root partitions. */
  boot: number;
  root: number;
}

export type Network = 'NetworkManager' | 'dhcpcd' | 'none';
/** How the release expands its root filesystem at first boot. */
export type FirstBootResize = 'init_resize' | 'firstboot' | 'resize' | 'none';

export interface SystemInfo {
  /** os-release ID and VERSION_CODENAME (raspbian/debian, bookworm...). */
  id: string;
  codename: string;
  prettyName: string;
  /** From the ELF header of the image's own /bin/sh. */
  arch: string;
  /** Where the image's own /etc/fstab mounts the boot partition: /boot or /boot/firmware. */
  bootMount: string;
  network: Network;
  firstBoot: FirstBootResize;
  /**
   * How Raspberry Pi Imager customises it (os-list.json's init_format): a cloud-init seed on the
   * boot partition where cloud-init is installed (trixie), else firstrun.sh run by systemd.run=.
   */
  initFormat: 'cloudinit-rpi' | 'systemd';
}

export interface Package {
  name: string;
  version: string;
  arch: string;
  /** The source package it was built from. */
  source: { name: string; version: string };
  /** Licence short names from its machine-readable copyright file, where it has one. */
  licenses?: string[];
}

export interface Output {
  format: Compression;
  path: string;
  size: number;
  sha256: string;
}

declare module '../../engine/stage.ts' {
  interface BuildState {
    download?: Download; // fetch
    image?: string; // extract: the raw, sparse working image in the work dir
    layout?: Layout; // grow (and every stage that changes the partition table)
    system?: SystemInfo; // attach
    /** The build's one time, seconds since 1970 (attach): what the image's programs, mtools and the outputs write. */
    sourceDateEpoch?: number;
    sourceDateFrom?: SourceDateFrom; // attach
    shipped?: Shipped; // attach: machine ids and log sizes as the base shipped them (as-shipped.ts)
    /** How the image's programs ran: `native arm64`, `qemu-user (arm64 on amd64)` (chroot, settings). */
    chroot?: string;
    packages?: Package[]; // finalize: from the image's dpkg status
    imageSha256?: string; // compress: of the final raw image
    outputs?: Output[]; // compress
  }
}
