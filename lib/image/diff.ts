/**
 * `build-image diff`'s pure part: two images' partition tables and filesystem entries, compared
 * field by field, and the result as text for a reviewer or as one JSON document. Nothing here
 * reads an image (inventory.ts does); the file contents are never held, only their sha256, except
 * the two versions of a changed small text file, whose first differing line is found here.
 */

/** One partition of a table, as sfdisk gives it (sectors). */
export interface TablePartition {
  number: number;
  start: number;
  size: number;
  type: string;
  /** GPT: the partition's UUID. */
  uuid?: string;
}

export interface Table {
  /** dos or gpt. */
  label: string;
  /** The disk identifier (MBR) or GUID (GPT). */
  id: string;
  partitions: TablePartition[];
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

/** One path of a filesystem. Fields a filesystem has not (FAT: mode, owner) are left out. */
export interface Entry {
  /** From the filesystem's root: `/etc/hostname`. Bytes that are not UTF-8 are shown as \xNN. */
  path: string;
  type: EntryType;
  /** Permission bits, set-id and sticky bits included (octal when shown). */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Regular files only. */
  size?: number;
  /** Regular files only, streamed. */
  sha256?: string;
  /** Symbolic links only, never followed. */
  target?: string;
  /** Character and block devices: "major,minor". */
  device?: string;
  /** Hard links to it, when more than one (ext4, not directories): a file linked in A and copied in B differs here. */
  links?: number;
  /** ISO 8601, as precise as the filesystem keeps it (ext4: nanoseconds; FAT, read by mdir: minutes). */
  mtime?: string;
}

export const ENTRY_FIELDS = ['type', 'mode', 'uid', 'gid', 'size', 'sha256', 'target', 'device', 'links', 'mtime'] as const;
export type EntryField = (typeof ENTRY_FIELDS)[number];

export interface FieldChange {
  field: string;
  a: string | number | null;
  b: string | number | null;
}

/** The first line two versions of a text file differ at; null: the file has ended on that side. */
export interface LineChange {
  line: number;
  a: string | null;
  b: string | null;
}

export interface ChangedEntry {
  path: string;
  fields: FieldChange[];
  /** Small text files (both sides at most TEXT_LIMIT bytes, valid UTF-8). */
  firstLine?: LineChange;
}

export interface PartitionDiff {
  number: number;
  /** The filesystem on each side: ext4, vfat, other, or null when the partition is not there. */
  fs: { a: string | null; b: string | null };
  /** Whether the entries were compared (both sides the same, readable filesystem). */
  compared: boolean;
  /** Why not, when not. */
  note?: string;
  /** Entries on each side. */
  entries: { a: number; b: number };
  added: Entry[];
  removed: Entry[];
  changed: ChangedEntry[];
}

export interface DiffResult {
  a: string;
  b: string;
  identical: boolean;
  ignoreTimes: boolean;
  /** Table fields that differ: `partition` is set for a partition's own fields. */
  table: Array<FieldChange & { partition?: number }>;
  partitions: PartitionDiff[];
}

/** Largest file whose first differing line is shown. */
export const TEXT_LIMIT = 64 * 1024;

/** The partition table's differences: label, id, then each partition by number. */
export function compareTables(a: Table, b: Table): DiffResult['table'] {
  const out: DiffResult['table'] = [];
  if (a.label !== b.label) out.push({ field: 'label', a: a.label, b: b.label });
  if (a.id !== b.id) out.push({ field: 'id', a: a.id, b: b.id });
  const numbers = [...new Set([...a.partitions, ...b.partitions].map((p) => p.number))].sort((x, y) => x - y);
  for (const number of numbers) {
    const pa = a.partitions.find((p) => p.number === number);
    const pb = b.partitions.find((p) => p.number === number);
    if (!pa || !pb) {
      out.push({ partition: number, field: 'present', a: pa ? 'yes' : 'no', b: pb ? 'yes' : 'no' });
      continue;
    }
    for (const field of ['start', 'size', 'type', 'uuid'] as const) {
      if ((pa[field] ?? null) !== (pb[field] ?? null)) out.push({ partition: number, field, a: pa[field] ?? null, b: pb[field] ?? null });
    }
  }
  return out;
}

/** Byte order of the UTF-8 paths: the same whatever the locale. */
const byPath = (x: { path: string }, y: { path: string }) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0);

/**
 * Two filesystems' entries compared by path: added (only in b), removed (only in a), changed
 * (with the fields that differ), each sorted by path. `ignoreTimes` leaves mtime out.
 */
export function compareEntries(a: readonly Entry[], b: readonly Entry[], ignoreTimes: boolean): Pick<PartitionDiff, 'added' | 'removed' | 'changed'> {
  const inA = new Map(a.map((e) => [e.path, e]));
  const inB = new Map(b.map((e) => [e.path, e]));
  const added = b.filter((e) => !inA.has(e.path)).sort(byPath);
  const removed = a.filter((e) => !inB.has(e.path)).sort(byPath);
  const changed: ChangedEntry[] = [];
  for (const ea of a) {
    const eb = inB.get(ea.path);
    if (!eb) continue;
    const fields: FieldChange[] = [];
    for (const field of ENTRY_FIELDS) {
      if (ignoreTimes && field === 'mtime') continue;
      const va = ea[field] ?? null;
      const vb = eb[field] ?? null;
      if (va !== vb) fields.push({ field, a: va, b: vb });
    }
    if (fields.length) changed.push({ path: ea.path, fields });
  }
  changed.sort(byPath);
  return { added, removed, changed };
}

/** Whether a changed entry is a small regular file on both sides, worth reading for its first differing line. */
export function wantsFirstLine(change: ChangedEntry, a: Entry, b: Entry): boolean {
  return (
    a.type === 'file' &&
    b.type === 'file' &&
    change.fields.some((f) => f.field === 'sha256') &&
    (a.size ?? Infinity) <= TEXT_LIMIT &&
    (b.size ?? Infinity) <= TEXT_LIMIT
  );
}

const decoder = new TextDecoder('utf-8', { fatal: true });

function text(bytes: Uint8Array): string | undefined {
  if (bytes.includes(0)) return undefined;
  try {
    return decoder.decode(bytes);
  } catch {
    return undefined;
  }
}

/**
 * The first line two texts differ at (1-based), or undefined when either is not UTF-8 text (a NUL
 * byte or invalid UTF-8) or larger than TEXT_LIMIT, or when they are the same.
 */
export function firstDifferingLine(a: Uint8Array, b: Uint8Array): LineChange | undefined {
  if (a.length > TEXT_LIMIT || b.length > TEXT_LIMIT) return undefined;
  const ta = text(a);
  const tb = text(b);
  if (ta === undefined || tb === undefined || ta === tb) return undefined;
  const la = ta.split('\n');
  const lb = tb.split('\n');
  // A final newline makes a last empty "line": a file that only lost its final newline differs there.
  const n = Math.max(la.length, lb.length);
  for (let i = 0; i < n; i++) {
    if (la[i] !== lb[i]) return { line: i + 1, a: la[i] ?? null, b: lb[i] ?? null };
  }
  return undefined;
}

export function isIdentical(result: Pick<DiffResult, 'table' | 'partitions'>): boolean {
  return result.table.length === 0 && result.partitions.every((p) => p.compared && p.added.length === 0 && p.removed.length === 0 && p.changed.length === 0);
}

// ---- text output ----

/** A value as shown: modes in octal, strings quoted when they hold spaces or controls, hashes cut to 16 digits. */
export function showValue(field: string, value: string | number | null): string {
  if (value === null) return '(none)';
  if (field === 'mode' && typeof value === 'number') return value.toString(8).padStart(4, '0');
  if (field === 'sha256' && typeof value === 'string') return value.slice(0, 16);
  if (typeof value === 'string' && (value === '' || /[\s"\\\p{Cc}]/u.test(value))) return JSON.stringify(value);
  return String(value);
}

/** A path as shown on one line: controls (a newline in a name) escaped. */
function showPath(path: string): string {
  return /[\p{Cc}"\\]/u.test(path) ? JSON.stringify(path) : path;
}

function describeEntry(e: Entry): string {
  const parts: string[] = [e.type];
  if (e.mode !== undefined) parts.push(showValue('mode', e.mode));
  if (e.uid !== undefined) parts.push(`${e.uid}:${e.gid}`);
  if (e.size !== undefined) parts.push(`${e.size} bytes`);
  if (e.sha256 !== undefined) parts.push(`sha256 ${showValue('sha256', e.sha256)}`);
  if (e.target !== undefined) parts.push(`-> ${showValue('target', e.target)}`);
  if (e.device !== undefined) parts.push(`device ${e.device}`);
  if (e.links !== undefined) parts.push(`${e.links} links`);
  return parts.join(' ');
}

function showLine(line: string | null): string {
  return line === null ? '(end of file)' : JSON.stringify(line.length > 200 ? `${line.slice(0, 200)}...` : line);
}

/** What a reviewer reads: the table, then each partition's entries by path; a summary line last. */
export function formatText(result: DiffResult): string {
  const lines: string[] = [`--- ${result.a}`, `+++ ${result.b}`];
  if (result.table.length) {
    lines.push('partition table:');
    for (const c of result.table) {
      const what = c.partition === undefined ? c.field : `partition ${c.partition} ${c.field}`;
      const unit = c.field === 'start' || c.field === 'size' ? ' sectors' : '';
      lines.push(`  ${what}: ${showValue(c.field, c.a)}${unit} -> ${showValue(c.field, c.b)}${unit}`);
    }
  }
  let added = 0;
  let removed = 0;
  let changed = 0;
  for (const p of result.partitions) {
    const fs = p.fs.a === p.fs.b ? (p.fs.a ?? 'none') : `${p.fs.a ?? 'none'} -> ${p.fs.b ?? 'none'}`;
    const body: string[] = [];
    if (!p.compared) body.push(`  not compared: ${p.note}`);
    // One list by path, whatever happened to each.
    const rows: Array<[string, string[]]> = [
      ...p.removed.map((e): [string, string[]] => [e.path, [`  - ${showPath(e.path)}  ${describeEntry(e)}`]]),
      ...p.added.map((e): [string, string[]] => [e.path, [`  + ${showPath(e.path)}  ${describeEntry(e)}`]]),
      ...p.changed.map((c): [string, string[]] => [
        c.path,
        [
          `  ~ ${showPath(c.path)}  ${c.fields.map((f) => `${f.field} ${showValue(f.field, f.a)} -> ${showValue(f.field, f.b)}`).join(', ')}`,
          ...(c.firstLine ? [`      line ${c.firstLine.line}: ${showLine(c.firstLine.a)} -> ${showLine(c.firstLine.b)}`] : []),
        ],
      ]),
    ];
    rows.sort((x, y) => byPath({ path: x[0] }, { path: y[0] }));
    for (const [, text] of rows) body.push(...text);
    added += p.added.length;
    removed += p.removed.length;
    changed += p.changed.length;
    if (body.length) lines.push(`partition ${p.number} (${fs}):`, ...body);
  }
  const times = result.ignoreTimes ? ', times ignored' : '';
  if (result.identical) {
    const entries = result.partitions.reduce((sum, p) => sum + p.entries.a, 0);
    lines.push(`identical: same partition table, ${entries} entries in ${result.partitions.length} partitions${times}`);
  } else {
    lines.push(
      `differ: ${result.table.length} partition table field${result.table.length === 1 ? '' : 's'}, ${added} added, ${removed} removed, ${changed} changed${times}`,
    );
  }
  return lines.join('\n');
}
