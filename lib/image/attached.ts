/** What the attach stage leaves for the stages after it, up to finalize. */
import { join } from 'node:path';
import { Resource } from '../../engine/stage.ts';
import type { Snapshot } from './bootfs.ts';

/** Where the root filesystem is mounted and the boot partition copied out, inside the work dir. */
export const rootDir = (work: string) => join(work, 'root');
export const bootDir = (work: string) => join(work, 'boot');

/** The clean-up stack's mark before attach: finalize unwinds to it (unmount, detach). */
export const ATTACHED = new Resource<number>('attached');
/** The boot partition's files as attach copied them out: what changed is written back. */
export const BOOT_BEFORE = new Resource<Snapshot>('boot-before');
