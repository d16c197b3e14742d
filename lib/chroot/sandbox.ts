/**
 * Everything the image executes (maintainer scripts, the settings' commands, the user's scripts,
 * --shell-on-error's shell) runs in a bubblewrap sandbox, not a plain chroot: the image is a
 * download, and its programs run as root. bubblewrap (Flatpak's sandbox, packaged everywhere)
 * builds the namespaces from explicit flags and nothing else:
 * - its own PID, IPC and UTS namespaces and a /proc of its own: no host process in view, so no
 *   /proc/<pid>/root way out, and every process left running dies with the command;
 * - its own mount namespace holding the image's root (with what the build bound into it on
 *   purpose: the apt archives, the staged files read-only, /run), a minimal /dev (null, zero,
 *   full, random, urandom, tty, pts, shm) and the host's /sys read-only;
 * - Docker's default capabilities less the network ones: what dpkg, useradd and setcap need; no
 *   CAP_SYS_ADMIN (no mount, no binfmt_misc registration), no CAP_SYS_PTRACE, no module loading;
 *   no-new-privileges, so no set-uid program or file capability gives any back.
 * The network is the host's: apt fetches packages. qemu-user keeps working because binfmt_misc's F
 * flag opened the interpreter at registration (emulation.ts).
 */
import { inRoot, readRegular } from '../image/in-root.ts';

/** The command the sandbox is made with (apt-get install bubblewrap). */
export const SANDBOX = 'bwrap';

export const CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_SETFCAP',
  'CAP_MKNOD',
  'CAP_SYS_CHROOT',
  'CAP_AUDIT_WRITE',
] as const;

/** The image's host name (first line of its /etc/hostname, a regular file), for the sandbox's UTS namespace. */
function hostnameOf(root: string): string {
  try {
    const name = (readRegular(inRoot(root, 'etc/hostname'), 'etc/hostname', 4096) ?? '').toString('latin1').split('\n')[0]!.trim();
    return /^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/.test(name) ? name : 'localhost';
  } catch {
    return 'localhost'; // not a regular file, or an absurd one: the sandbox still runs
  }
}

export interface SandboxOptions {
  /** The environment, and nothing else of the host's. */
  env: Record<string, string>;
  /** A terminal's shell (--shell-on-error): it keeps the terminal as its controlling one. */
  interactive?: boolean;
}

/** `bwrap` arguments that run `args` in the image at `root`. */
export function sandboxArgs(root: string, args: readonly string[], options: SandboxOptions): string[] {
  return [
    ...['--bind', root, '/', '--dev', '/dev', '--proc', '/proc', '--ro-bind', '/sys', '/sys'],
    ...['--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--hostname', hostnameOf(root)],
    '--die-with-parent',
    // A session of its own: no TIOCSTI typing into the build's terminal. A shell needs the terminal.
    ...(options.interactive ? [] : ['--new-session']),
    ...['--cap-drop', 'ALL', ...CAPABILITIES.flatMap((cap) => ['--cap-add', cap])],
    '--clearenv',
    ...Object.entries(options.env).flatMap(([name, value]) => ['--setenv', name, value]),
    ...['--chdir', '/', '--'],
    ...args,
  ];
}
