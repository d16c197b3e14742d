/**
 * Loop devices and mounts, each undone through the build's clean-up stack. Partitions are attached
 * by offset and size: `losetup -P` partition nodes do not appear in many containers.
 */
import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CommandError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';

/** Retry a command that fails while the kernel is still letting go of a device (EBUSY). */
async function retry<T>(attempts: number, fn: () => Promise<T>): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (error) {
      const busy = error instanceof CommandError && error.tail.some((l) => /busy|resource temporarily unavailable/i.test(l));
      if (!busy || i >= attempts) throw error;
      await sleep(200 * i);
    }
  }
}

/*
 * Making a device or a mount is never cancelled half way: a Ctrl-C then would leave one that no
 * clean-up step knows of. The build stops right after it is registered instead.
 */

/** `readOnly`: a device nothing can write through, kernel included (an image only read, as `diff` reads its inputs). */
export async function attachLoop(
  ctx: BuildContext,
  image: string,
  part: { offset: number; size: number },
  options: { readOnly?: boolean } = {},
): Promise<string> {
  const ro = options.readOnly ? ['--read-only'] : [];
  const { stdout } = await retry(5, () =>
    ctx.run('losetup', ['--find', '--show', ...ro, '--offset', String(part.offset), '--sizelimit', String(part.size), image], { uncancellable: true }),
  );
  const device = stdout.trim();
  ctx.defer(`detach ${device}`, async () => {
    await retry(10, () => ctx.run('losetup', ['--detach', device], { uncancellable: true }));
    await detached(device);
  });
  ctx.signal.throwIfAborted();
  return device;
}

/**
 * A device still held for a moment (a filesystem just unmounted) is only marked for detaching
 * by `losetup --detach`: wait until it has let go of its file, so that none outlives the build.
 */
async function detached(device: string): Promise<void> {
  const backing = `/sys/block/${basename(device)}/loop/backing_file`;
  for (let i = 0; i < 100 && existsSync(backing); i++) await sleep(100);
}

export async function mount(ctx: BuildContext, source: string, target: string, args: readonly string[] = []): Promise<void> {
  await ctx.run('mount', [...args, source, target], { uncancellable: true });
  ctx.defer(`unmount ${target}`, () => retry(10, () => ctx.run('umount', [target], { uncancellable: true })));
  ctx.signal.throwIfAborted();
}
