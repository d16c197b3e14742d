/** IPv4 addresses and networks, as a pimaster's cluster link and verify's guests use them. */

export interface Ipv4Cidr {
  address: string;
  prefix: number;
  network: string;
  netmask: string;
}

/** A dotted IPv4 address as a number, and back. */
export const ipv4ToInt = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
export const intToIpv4 = (n: number) => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');

/** `48.48.0.254/24`: an IPv4 host address with its prefix length. */
export function parseIpv4Cidr(raw: string): Ipv4Cidr {
  const allowed = 'an IPv4 address with a prefix length, such as 48.48.0.254/24';
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(raw.trim());
  if (!m) throw allowed;
  const octets = m[1]!.split('.').map(Number);
  if (octets.some((o) => o > 255) || m[1]!.split('.').some((o) => o.length > 1 && o.startsWith('0'))) throw allowed;
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 30) throw 'an IPv4 address with a prefix length from /8 to /30, such as 48.48.0.254/24';
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const address = ipv4ToInt(m[1]!);
  const network = (address & mask) >>> 0;
  if (address === network || address === (network | (~mask >>> 0)) >>> 0) {
    throw `a host address, not the network or broadcast address of /${prefix}`;
  }
  return { address: m[1]!, prefix, network: intToIpv4(network), netmask: intToIpv4(mask) };
}

/** A Linux network interface name (at most 15 characters, no slash, colon or space). */
export function parseInterface(raw: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(raw)) throw 'a network interface name such as eth0 or wlan0 (at most 15 letters, digits, ".", "-" or "_")';
  return raw;
}
