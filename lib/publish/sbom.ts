/**
 * The software bill of materials beside an image: its installed packages as CycloneDX 1.6 JSON
 * (name, version, architecture, source package, licences where the package's copyright file is
 * machine-readable), each with its package URL. Licences are Debian's short names, given as names
 * rather than SPDX ids: many (GPL-2+, BSD-3-clause, Expat) are not SPDX ids as written.
 */
import { createHash } from 'node:crypto';
import type { Package, SystemInfo } from '../image/state.ts';

export const SBOM_FORMAT = 'CycloneDX 1.6';

export interface SbomInput {
  /** The image's name (its file is NAME.img) and the raw image's sha256. */
  name: string;
  sha256: string;
  created: string;
  tool: { name: string; version: string };
  system?: SystemInfo;
  packages: readonly Package[];
}

/** A name-based UUID (version 5 layout) from the image's digest: the same image, the same serial number. */
function serialNumber(sha256: string): string {
  const hex = createHash('sha1').update(`build-image sbom ${sha256}`).digest('hex').slice(0, 32).split('');
  hex[12] = '5';
  hex[16] = ((parseInt(hex[16]!, 16) & 0x3) | 0x8).toString(16);
  const h = hex.join('');
  return `urn:uuid:${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** pkg:deb/<os id>/<name>@<version>?arch=<arch>&distro=<codename> (the purl spec's deb type). */
export function debPurl(p: Package, system?: SystemInfo): string {
  const qualifiers = [`arch=${encodeURIComponent(p.arch)}`, ...(system?.codename ? [`distro=${encodeURIComponent(system.codename)}`] : [])];
  return `pkg:deb/${encodeURIComponent(system?.id || 'debian')}/${encodeURIComponent(p.name)}@${encodeURIComponent(p.version)}?${qualifiers.join('&')}`;
}

export function cycloneDx(input: SbomInput): object {
  return {
    bomFormat: 'CycloneDX',
    specVersion: '1.6',
    serialNumber: serialNumber(input.sha256),
    version: 1,
    metadata: {
      timestamp: input.created,
      tools: { components: [{ type: 'application', name: input.tool.name, version: input.tool.version }] },
      component: {
        type: 'operating-system',
        'bom-ref': 'image',
        name: input.name,
        ...(input.system ? { version: input.system.codename, description: input.system.prettyName } : {}),
        hashes: [{ alg: 'SHA-256', content: input.sha256 }],
      },
    },
    components: input.packages.map((p) => ({
      type: 'library',
      'bom-ref': debPurl(p, input.system),
      name: p.name,
      version: p.version,
      purl: debPurl(p, input.system),
      ...(p.licenses?.length ? { licenses: p.licenses.map((name) => ({ license: { name } })) } : {}),
      properties: [
        { name: 'deb:architecture', value: p.arch },
        { name: 'deb:source', value: p.source.name },
        { name: 'deb:source-version', value: p.source.version },
      ],
    })),
    dependencies: [{ ref: 'image', dependsOn: input.packages.map((p) => debPurl(p, input.system)) }],
  };
}
