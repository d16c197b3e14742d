/**
 * What the image says it will be once booted, read from its files before the boot: the checks
 * then compare the running system against it (a host name or address the image sets but the
 * booted system does not have is a failure).
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { inRoot, readInRoot } from '../image/in-root.ts';
import type { Ipv4Cidr } from '../net.ts';
import { parseIpv4Cidr } from '../net.ts';

export interface StaticAddress extends Ipv4Cidr {
  interface: string;
}

export interface GuestFacts {
  hostname: string;
  /** The static IPv4 address the image gives an interface; none when it asks DHCP. */
  address?: StaticAddress;
  /** Set on a PiSeduce pimaster image: the interface its NAT rule sends traffic out of. */
  pimaster?: { uplink: string };
  /**
   * The root's free bytes as the image ships them, and its used bytes (statfs) once verify has
   * added what it adds (the copy's root is grown, modules copied in): what the first boot writes
   * is measured against the first. Unset for an image that grows its root at the first boot.
   */
  room?: { shippedFree: number; preparedUsed: number };
  /** The swap the image sets up at boot (dphys-swapfile, zram-generator, rpi-swap, fstab): none is []. */
  swap: string[];
}

/** The swap arrangements an image's files set up at boot, by name. */
export function swapOf(root: string): string[] {
  const has = (path: string) => existsSync(inRoot(root, path));
  const generator = (name: string) => has(`usr/lib/systemd/system-generators/${name}`) || has(`lib/systemd/system-generators/${name}`);
  const swap: string[] = [];
  if (
    has('etc/systemd/system/multi-user.target.wants/dphys-swapfile.service') ||
    readdirSafe(inRoot(root, 'etc/rc2.d')).some((f) => /^S\d*dphys-swapfile$/.test(f))
  )
    swap.push('dphys-swapfile');
  if (generator('zram-generator') && (has('etc/systemd/zram-generator.conf') || has('usr/lib/systemd/zram-generator.conf'))) swap.push('zram-generator');
  if (generator('rpi-swap-generator')) swap.push('rpi-swap');
  if (/^\s*[^#\s]\S*\s+\S+\s+swap\s/m.test(readInRoot(root, 'etc/fstab'))) swap.push('fstab');
  return swap;
}

const readdirSafe = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);

/** The last `interface X` block of a dhcpcd.conf with a `static ip_address=`. */
export function dhcpcdStatic(text: string): StaticAddress | undefined {
  let current: string | undefined;
  let found: StaticAddress | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const iface = /^interface\s+(\S+)/.exec(line);
    if (iface) current = iface[1];
    const address = /^static\s+ip_address=(\S+)/.exec(line);
    if (address && current) found = { ...parseIpv4Cidr(address[1]!), interface: current };
  }
  return found;
}

/** A NetworkManager keyfile with a manual IPv4 address bound to an interface. */
export function nmStatic(text: string): StaticAddress | undefined {
  const iface = /^interface-name=(\S+)/m.exec(text)?.[1];
  const address = /^address1=([^,\s]+)/m.exec(text)?.[1];
  if (!iface || !address || !/^method=manual/m.test(text)) return undefined;
  return { ...parseIpv4Cidr(address), interface: iface };
}

/** The uplink of the pimaster's NAT unit (`iptables ... -o wlan0 -j MASQUERADE`). */
export function natUplink(unit: string): string | undefined {
  return /-A POSTROUTING -o (\S+) -j MASQUERADE/.exec(unit)?.[1];
}

export function readFacts(root: string): GuestFacts {
  const hostname = readInRoot(root, 'etc/hostname').trim() || 'localhost';
  let address = dhcpcdStatic(readInRoot(root, 'etc/dhcpcd.conf'));
  const nm = 'etc/NetworkManager/system-connections';
  if (!address && existsSync(inRoot(root, nm))) {
    for (const name of readdirSync(inRoot(root, nm))
      .filter((n) => n.endsWith('.nmconnection'))
      .sort()) {
      address ??= nmStatic(readInRoot(root, join(nm, name)));
    }
  }
  const nat = readInRoot(root, 'etc/systemd/system/pimaster-nat.service');
  const pimaster = existsSync(inRoot(root, 'usr/local/sbin/pimaster-firstboot')) ? { uplink: natUplink(nat) ?? 'wlan0' } : undefined;
  return { hostname, address, pimaster, swap: swapOf(root) };
}
