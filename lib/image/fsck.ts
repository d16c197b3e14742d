import { UserError } from '../../engine/errors.ts';
import type { BuildContext } from '../../engine/stage.ts';

/**
 * e2fsck -f -y. On a filesystem as it came (the base image, before growing) exit code 1, errors
 * fixed, is fine. On one the build has just written (`written`), any repair means a write went
 * wrong (a full or failing disk under the work directory): the build stops rather than ship it.
 */
export async function fsck(ctx: BuildContext, device: string, written = false): Promise<void> {
  const { exitCode, stdout } = await ctx.run('e2fsck', ['-f', '-y', device], { reject: false });
  const last = stdout.trim().split('\n').at(-1);
  if (exitCode > 1) {
    throw new UserError(`e2fsck found errors it could not fix in the root filesystem (exit code ${exitCode}): ${last}`);
  }
  if (written && exitCode === 1) {
    throw new UserError(
      `the root filesystem the build wrote had errors (e2fsck repaired them: ${last}): the disk under the work directory may be full or failing; nothing was written to --out (see the finalize log)`,
    );
  }
}
