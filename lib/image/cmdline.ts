/** Edits of the boot partition's cmdline.txt: one line of space-separated kernel arguments. */
import type { FirstBootResize } from './state.ts';

const INIT_RESIZE = 'init=/usr/lib/raspi-config/init_resize.sh';
const FIRSTBOOT = 'init=/usr/lib/raspberrypi-sys-mods/firstboot';

export function parseCmdline(text: string): string[] {
  return text.trim().split(/\s+/).filter(Boolean);
}

export function formatCmdline(args: readonly string[]): string {
  return `${args.join(' ')}\n`;
}

/**
 * A card's cmdline.txt with `extra` (" a=b c=d") appended to its arguments: to the first line, the
 * only one the firmware reads; the lines after it are kept as they were.
 */
export function withArguments(text: string, extra: string): string {
  const [first = '', ...rest] = text.replace(/\r\n/g, '\n').split('\n');
  return `${[`${first.trim()}${extra}`, ...rest].join('\n').trimEnd()}\n`;
}

function isFirstBootArg(arg: string): boolean {
  return arg === INIT_RESIZE || arg === FIRSTBOOT || arg === 'resize';
}

/** Which first-boot expansion the command line arms, if any. */
export function firstBootOf(args: readonly string[]): FirstBootResize {
  if (args.includes(INIT_RESIZE)) return 'init_resize';
  if (args.includes(FIRSTBOOT)) return 'firstboot';
  if (args.includes('resize')) return 'resize';
  return 'none';
}

/** The release's own mechanism: buster init_resize.sh, bullseye/bookworm firstboot, trixie `resize`. */
export function firstBootFor(codename: string): FirstBootResize {
  switch (codename) {
    case 'stretch':
    case 'buster':
      return 'init_resize';
    case 'bullseye':
    case 'bookworm':
      return 'firstboot';
    case 'trixie':
    case 'forky':
      return 'resize';
    default:
      return 'none';
  }
}

/** Remove any first-boot expansion argument. */
export function disarmFirstBoot(args: readonly string[]): string[] {
  return args.filter((a) => !isFirstBootArg(a));
}

/** Arm exactly one first-boot expansion (and no other). */
export function armFirstBoot(args: readonly string[], mechanism: FirstBootResize): string[] {
  const rest = disarmFirstBoot(args).filter((a) => mechanism === 'resize' || !a.startsWith('init='));
  if (mechanism === 'init_resize') return [...rest, INIT_RESIZE];
  if (mechanism === 'firstboot') return [...rest, FIRSTBOOT];
  if (mechanism === 'resize') return [...rest, 'resize'];
  return rest;
}
