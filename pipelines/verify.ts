/**
 * `build-image verify IMAGE`: boot a throw-away copy of an image in QEMU and check it over SSH.
 *
 *   copy     the image (any output format) decompressed into a sparse copy in the work dir
 *   prepare  the copy's root grown, the kernel chosen (its own, or Debian's with its modules
 *            copied in), what the image says it will be read from its files
 *   boot     QEMU started, SSH waited for (bounded), console logged
 *   check    the checks run, one result each; then the guest is powered off
 *
 * The copy, QEMU and every mount are undone by the clean-up stack, whatever happens.
 */
import { appendFileSync, chownSync, cpSync, mkdirSync, rmdirSync, rmSync, statfsSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { scoped } from '../engine/cleanup.ts';
import { UserError } from '../engine/errors.ts';
import { engineSchema, formatBytes } from '../engine/options.ts';
import { type BuildContext, type BuildState, type Pipeline, Resource, type Stage } from '../engine/stage.ts';
import { extractImage } from '../lib/codec/decode.ts';
import { imageArch } from '../lib/image/arch.ts';
import { ext4Geometry } from '../lib/image/ext4-fit.ts';
import { growRoot } from '../lib/image/grow-root.ts';
import { inRoot, readInRoot } from '../lib/image/in-root.ts';
import { attachLoop, mount } from '../lib/image/loop.ts';
import { partition, readLayout } from '../lib/image/partitions.ts';
import { type Check, type CheckResult, lastLine, systemChecks } from '../lib/qemu/checks.ts';
import { type ClusterLink, createClusterLink } from '../lib/qemu/cluster-link.ts';
import { DEPLOY_USER, runDeploy } from '../lib/qemu/deploy.ts';
import { type DeployEnvironment, prepareEnvironment } from '../lib/qemu/environment.ts';
import { type GuestFacts, readFacts } from '../lib/qemu/facts.ts';
import {
  consoleTail,
  type Guest,
  type GuestSpec,
  growsAtFirstBoot,
  guestArgs,
  type SshTarget,
  shutDown,
  sshArgs,
  startGuest,
  waitForSsh,
} from '../lib/qemu/guest.ts';
import { debianKernel, type GuestArch, type GuestKernel, guestBusybox, nodeKernel, ownKernel } from '../lib/qemu/kernel.ts';
import { NODE, prepareNodeBoot, runNode } from '../lib/qemu/node.ts';
import { GUEST_BUSYBOX, PIMASTER_PORTS, pimasterChecks } from './pimaster/checks.ts';

export interface VerifyOptions {
  image: string;
  /** The private key that logs in to the guest. */
  sshKey: string;
  user: string;
  /** Authorize the key's public half for `user` in the copy (images built without a key). */
  authorize: boolean;
  /** The user's own checks (--checks FILE), read before anything starts. */
  checks: Check[];
  checksFile?: string;
  timeoutS: number;
  debianMirror: string;
  memoryMiB: number;
  /** Boot a cluster node from the pimaster too (see node.ts). */
  node: boolean;
  /** Then deploy this environment image onto the node through PiSeduce (see deploy.ts). */
  deploy?: string;
  /** Boot the copy as a card of this many bytes: the image must grow into it itself. */
  cardSize?: number;
}

/** The booted image, from boot to shut-down. */
const GUEST = new Resource<Guest>('guest');
/** --node: the cluster's Ethernet, from the pimaster's boot to the end. */
const LINK = new Resource<ClusterLink>('cluster link');

/** The guest the boot stage started: the stages after it need it. */
function running(ctx: BuildContext): Guest {
  const guest = ctx.resources.get(GUEST);
  if (!guest) throw new UserError('verify: no guest is running; run from the boot stage');
  return guest;
}

declare module '../engine/stage.ts' {
  interface BuildState {
    verify?: {
      copy: string;
      arch: GuestArch;
      rootPartition: number;
      facts: GuestFacts;
      kernel: GuestKernel;
      /** Byte offset of the boot partition (its cmdline.txt is read again after a reboot). */
      bootOffset?: number;
      bootArgs: string[];
      /** The image grows its own root at the first boot (`resize`, bookworm's firstboot) into the copy's larger disk. */
      expands: boolean;
      bootSeconds?: number;
      boots?: number;
      /** How QEMU ran the guest's CPU (`QEMU: KVM, host CPU`, `QEMU: TCG (software CPU, cortex-a72)`). */
      acceleration?: string;
      results?: CheckResult[];
      /** --deploy: the environment as the pimaster's copy holds it, and the node's SD card. */
      environment?: DeployEnvironment;
      sdCard?: string;
    };
  }
}

/** Room added to the copy's root: the kernel's modules, and what the first boot writes. */
const ROOM = 1024 * 2 ** 20;

function verifyState(ctx: BuildContext) {
  const state = ctx.state.verify;
  if (!state) throw new UserError('verify: run it from the start (no --from)');
  return state;
}

const copyStage = (opts: VerifyOptions): Stage => ({
  name: 'copy',
  describe: () => `decompress ${opts.image} into a throw-away copy`,
  options: [],
  async run(ctx) {
    const copy = join(ctx.paths.work, 'guest.img');
    ctx.defer(`remove ${copy}`, () => rmSync(copy, { force: true }));
    await extractImage(ctx, { path: opts.image, sha256: '', source: opts.image }, copy, 'image', 'IMAGE');
    ctx.state.verify = {
      copy,
      arch: 'arm64',
      rootPartition: 0,
      facts: { hostname: '', swap: [] },
      kernel: { source: '', version: '', kernel: '', initrd: '' },
      bootArgs: [],
      expands: false,
    };
  },
});

const prepareStage = (opts: VerifyOptions): Stage => ({
  name: 'prepare',
  describe: () => "grow the copy, choose the kernel (the image's own if it boots under QEMU virt, else Debian's), read what the image should be",
  options: [],
  async run(ctx) {
    const state = verifyState(ctx);
    let layout = await readLayout(ctx, state.copy);
    state.bootOffset = layout.boot ? partition(layout, layout.boot).offset : undefined;
    state.bootArgs = await bootArgsOf(ctx, state.copy, state.bootOffset);
    // An image that grows its root at the first boot gets a larger disk (or --card-size) and grows
    // into it itself (its root grown by half as much first: a shrunk root may not hold the modules
    // copied in). Other images get their root grown by verify.
    state.expands = growsAtFirstBoot(state.bootArgs);
    const shippedFree = await scoped(ctx.cleanup, ctx.signal, async () => {
      const fs = await ext4Geometry(ctx, await attachLoop(ctx, state.copy, partition(layout, layout.root)));
      return fs.freeBlocks * fs.blockSize;
    });
    const imageSize = statSync(state.copy).size;
    if (opts.cardSize !== undefined && opts.cardSize < imageSize + ROOM / 2)
      throw new UserError(
        `--card-size ${formatBytes(opts.cardSize)}: the card must hold the image (${formatBytes(imageSize)}) and the ${formatBytes(ROOM / 2)} verify adds to its root: pass a larger size`,
      );
    const card = opts.cardSize !== undefined || state.expands;
    layout = await growRoot(ctx, state.copy, layout, card ? ROOM / 2 : ROOM);
    if (card) truncateSync(state.copy, opts.cardSize ?? statSync(state.copy).size + ROOM);
    state.rootPartition = layout.root;
    const dir = join(ctx.paths.work, 'root');
    mkdirSync(dir, { recursive: true });
    // The image's own kernel is copied out (the copy is QEMU's once booted), until verify ends.
    const [kernel, initrd] = [join(ctx.paths.work, 'vmlinuz'), join(ctx.paths.work, 'initrd.img')];
    ctx.defer('remove the copied kernel', () => {
      for (const file of [kernel, initrd]) rmSync(file, { force: true });
    });
    await scoped(ctx.cleanup, ctx.signal, async () => {
      ctx.defer(`remove ${dir}`, () => rmdirSync(dir)); // after the unmount; never recursive
      const device = await attachLoop(ctx, state.copy, partition(layout, layout.root));
      await mount(ctx, device, dir, ['-t', 'ext4', '-o', 'nodev,nosuid']);
      const arch = imageArch(dir);
      if (arch !== 'arm64' && arch !== 'armhf') throw new UserError(`the image's /bin/sh is for ${arch}: verify boots arm64 and armhf images`);
      state.arch = arch;
      state.facts = readFacts(dir);
      if (opts.authorize) await authorizeKey(ctx, dir, opts);
      const own = ownKernel(dir);
      if (own) {
        cpSync(own.kernel, kernel, { dereference: true });
        cpSync(own.initrd, initrd, { dereference: true });
        state.kernel = { source: `the image's own ${own.version}`, version: own.version, kernel, initrd };
      } else {
        state.kernel = await debianKernel(ctx, arch, opts.debianMirror);
        const modules = inRoot(dir, '/lib/modules');
        mkdirSync(modules, { recursive: true });
        await ctx.run('cp', ['-a', state.kernel.modules!, modules]);
      }
      if (opts.node) {
        if (!state.facts.pimaster || arch !== 'arm64')
          throw new UserError(`--node boots a cluster node from an arm64 pimaster: ${opts.image} is ${state.facts.pimaster ? `an ${arch}` : 'not a'} pimaster`);
        const node = await nodeKernel(ctx, opts.debianMirror);
        await prepareNodeBoot(ctx, dir, node);
        if (opts.deploy) state.environment = await prepareEnvironment(ctx, opts.deploy, dir, node);
      }
      if (!state.expands) {
        const fs = statfsSync(dir);
        state.facts.room = { shippedFree, preparedUsed: (fs.blocks - fs.bfree) * fs.bsize };
      }
    });
    ctx.log.line(`kernel: ${state.kernel.source}; the image's kernel arguments: ${state.bootArgs.join(' ') || 'none'}; facts: ${JSON.stringify(state.facts)}`);
  },
});

/**
 * The guest's networks: QEMU's user network on the image's own subnet, so that its static address
 * works; with --node the cluster interface is on the link to the node instead, and the user
 * network (the pimaster's uplink, eth1) gets its address by DHCP.
 */
function guestNetworks(ctx: BuildContext, state: NonNullable<BuildState['verify']>): Pick<GuestSpec, 'user' | 'cluster'> {
  const ports = [22, ...(state.facts.pimaster ? PIMASTER_PORTS : [])];
  const link = ctx.resources.get(LINK);
  if (!link) return { user: { address: state.facts.address, ports } };
  return { cluster: { link, mac: NODE.mac0 }, user: { ports } };
}

/** The kernel arguments of the image's cmdline.txt that the boot keeps (none without one). */
async function bootArgsOf(ctx: BuildContext, copy: string, bootOffset: number | undefined): Promise<string[]> {
  if (bootOffset === undefined) return [];
  const r = await ctx.run('mtype', ['-i', `${copy}@@${bootOffset}`, '::/cmdline.txt'], { reject: false, env: { MTOOLS_SKIP_CHECK: '1' } });
  return r.exitCode === 0 ? guestArgs(r.stdout) : [];
}

/** A guest that reboots before SSH answers is started again; more boots than this is a failure. */
const MAX_BOOTS = 3;

/** Add the public half of --ssh-key to the user's authorized_keys in the copy (never the image). */
async function authorizeKey(ctx: BuildContext, root: string, opts: VerifyOptions): Promise<void> {
  const { stdout } = await ctx.run('ssh-keygen', ['-y', '-f', opts.sshKey]);
  const entry = readInRoot(root, 'etc/passwd')
    .split('\n')
    .map((l) => l.split(':'))
    .find((f) => f[0] === opts.user);
  if (!entry) throw new UserError(`--user ${opts.user}: the image has no such user (see its /etc/passwd)`);
  const [uid, gid, home] = [Number(entry[2]), Number(entry[3]), entry[5]!];
  // Resolved inside the image: a link to a host directory never gets the host's files chowned.
  const ssh = inRoot(root, `${home}/.ssh`);
  mkdirSync(ssh, { recursive: true, mode: 0o700 });
  chownSync(ssh, uid, gid);
  const keys = inRoot(root, `${home}/.ssh/authorized_keys`);
  appendFileSync(keys, `${stdout.trim()} build-image-verify\n`, { mode: 0o600 });
  chownSync(keys, uid, gid);
}

const target = (ctx: BuildContext, opts: VerifyOptions): SshTarget => {
  const guest = ctx.resources.get(GUEST);
  if (!guest) throw new UserError('verify: the guest is not running: run it from the start');
  return { key: opts.sshKey, user: opts.user, port: guest.hostPort.get(22)! };
};

const bootStage = (opts: VerifyOptions): Stage => ({
  name: 'boot',
  describe: () => `boot the copy in QEMU (user networking, restrict=on) and wait up to ${opts.timeoutS} s for SSH`,
  options: [],
  async run(ctx) {
    const state = verifyState(ctx);
    const console = join(ctx.paths.work, 'console.log');
    rmSync(console, { force: true });
    ctx.status(`kernel: ${state.kernel.source}`);
    if (opts.node) ctx.resources.set(LINK, await createClusterLink(ctx, state.facts.address!));
    const started = performance.now();
    const deadline = Date.now() + opts.timeoutS * 1000;
    for (let boot = 1; ; boot++) {
      const guest = await startGuest(ctx, {
        arch: state.arch,
        boot: { image: state.copy, rootPartition: state.rootPartition, kernel: state.kernel, bootArgs: state.bootArgs },
        console,
        memoryMiB: opts.memoryMiB,
        ...guestNetworks(ctx, state),
      });
      ctx.resources.set(GUEST, guest);
      state.acceleration = guest.acceleration;
      ctx.status(`console: ${console}${boot > 1 ? ` (boot ${boot})` : ''}`);
      if ((await waitForSsh(ctx, guest, target(ctx, opts), { deadline, timeoutS: opts.timeoutS }, console)) === 'up') {
        state.boots = boot;
        break;
      }
      if (boot === MAX_BOOTS) throw new UserError(`the guest rebooted ${MAX_BOOTS} times before SSH answered: see ${console}`);
      // As a Pi's firmware would, the next boot reads the boot partition's cmdline.txt as it is now.
      state.bootArgs = await bootArgsOf(ctx, state.copy, state.bootOffset);
      ctx.log.line(`the guest rebooted before SSH answered; boot ${boot + 1} with: ${state.bootArgs.join(' ') || 'no arguments of the image'}`);
    }
    state.bootSeconds = Math.round((performance.now() - started) / 100) / 10;
    ctx.log.line(`SSH answered ${state.bootSeconds} s after QEMU started`);
  },
});

async function runCheck(ctx: BuildContext, opts: VerifyOptions, check: Check): Promise<CheckResult> {
  const guest = running(ctx);
  if (check.probe) {
    try {
      return { name: check.name, ...(await check.probe((port) => guest.hostPort.get(port)!)) };
    } catch (error) {
      return { name: check.name, ok: false, saw: `the probe failed: ${(error as Error).message}` };
    }
  }
  const timeoutMs = (check.timeoutS ?? 120) * 1000;
  let r = await ctx.run('ssh', sshArgs(target(ctx, opts), check.command!), { reject: false, timeoutMs });
  // 255 is ssh's own failure, or a check's: the check runs again once SSH answers again.
  if (r.exitCode === 255 && (await regainSsh(ctx, opts, check.name)) === 'regained') {
    r = await ctx.run('ssh', sshArgs(target(ctx, opts), check.command!), { reject: false, timeoutMs });
  }
  // What it printed; its error output only when it printed nothing (warnings are not what it saw).
  const saw = r.exitCode === -1 && r.durationMs >= timeoutMs ? `no answer within ${timeoutMs / 1000} s` : lastLine(r.stdout.trim() ? r.stdout : r.stderr);
  return { name: check.name, ok: r.exitCode === 0, saw: r.exitCode === 0 || r.exitCode === 1 || r.exitCode === -1 ? saw : `exit code ${r.exitCode}: ${saw}` };
}

/** How long the checks wait for an SSH server that stopped answering (sshd restarted, the network reconfigured). */
const SSH_LOST_S = 180;

/**
 * After an exit code 255: 'answers' when SSH lets the key in at once (the check itself ended so),
 * 'regained' when it does so again within SSH_LOST_S. Fails with the console's last lines when the
 * guest stopped, rebooted or stays silent: every later check would fail the same way.
 */
async function regainSsh(ctx: BuildContext, opts: VerifyOptions, checkName: string): Promise<'answers' | 'regained'> {
  const ssh = target(ctx, opts);
  if ((await ctx.run('ssh', sshArgs(ssh, 'true'), { reject: false, timeoutMs: 60_000 })).exitCode === 0) return 'answers';
  const guest = running(ctx);
  const console = join(ctx.paths.work, 'console.log');
  const started = performance.now();
  const lost = `SSH to the guest stopped answering during the check "${checkName}"`;
  const outcome = await waitForSsh(ctx, guest, ssh, { deadline: Date.now() + SSH_LOST_S * 1000, timeoutS: SSH_LOST_S }, console).catch(() => {
    ctx.signal.throwIfAborted();
    return 'silent' as const;
  });
  if (outcome !== 'up') {
    const why = outcome === 'rebooted' ? 'the guest rebooted itself' : guest.exit ? `QEMU ${guest.exit}` : `no answer within ${SSH_LOST_S} s`;
    throw new UserError(`${lost} (${why}); its console's last lines:\n${consoleTail(console, guest.consoleFrom)}`);
  }
  ctx.log.line(`${lost} and answered again ${Math.round((performance.now() - started) / 1000)} s later: the check runs again`);
  return 'regained';
}

const checkStage = (opts: VerifyOptions): Stage => ({
  name: 'check',
  describe: () => `run the built-in checks${opts.checksFile ? ` and those of ${opts.checksFile}` : ''} on the guest, then power it off`,
  options: [],
  async run(ctx) {
    const state = verifyState(ctx);
    const facts = state.facts;
    const checks = [
      ...systemChecks(facts, state.expands || opts.cardSize !== undefined),
      ...(facts.pimaster ? pimasterChecks({ ...facts, pimaster: facts.pimaster }, { fromUplink: opts.node, card: opts.cardSize !== undefined }) : []),
      ...opts.checks,
    ];
    if (facts.pimaster) {
      const busybox = await guestBusybox(ctx, state.arch, opts.debianMirror, state.kernel);
      await ctx.run('ssh', sshArgs(target(ctx, opts), `mkdir -p ${dirname(GUEST_BUSYBOX)} && cat > ${GUEST_BUSYBOX} && chmod 755 ${GUEST_BUSYBOX}`), {
        stdin: { file: busybox },
      });
    }
    const results: CheckResult[] = [];
    for (const [i, check] of checks.entries()) {
      ctx.status(`${i + 1}/${checks.length} ${check.name}`);
      const result = await runCheck(ctx, opts, check);
      ctx.log.line(`${result.ok ? 'PASS' : 'FAIL'} ${result.name}: ${result.saw}`);
      results.push(result);
    }
    state.results = results;
    if (!opts.node) await powerOff(ctx, opts);
  },
});

async function powerOff(ctx: BuildContext, opts: VerifyOptions): Promise<void> {
  ctx.status('powering the guest off');
  if (!(await shutDown(ctx, running(ctx), target(ctx, opts)))) ctx.log.line('the guest did not power off in time: QEMU is stopped');
}

/** How long a deploy may take, then its destroy: the agent's own timeouts add up to about this. */
const DEPLOY_TIMEOUT_S = 1800;

/**
 * The node's SD card: an empty sparse file, at least twice the environment and 1 GiB, in a power
 * of two (QEMU's sd-card takes no other size), so the agent has a partition to grow.
 */
async function makeSdCard(ctx: BuildContext, imgSize: number): Promise<string> {
  const card = join(ctx.paths.work, 'node-sd-card.img');
  let size = 2 ** 30;
  while (size < imgSize * 2) size *= 2;
  rmSync(card, { force: true });
  ctx.defer(`remove ${card}`, () => rmSync(card, { force: true }));
  writeFileSync(card, '');
  truncateSync(card, size);
  ctx.log.line(`node: an SD card of ${size / 2 ** 30} GiB (${card})`);
  return card;
}

const nodeStage = (opts: VerifyOptions): Stage => ({
  name: 'node',
  describe: () =>
    opts.deploy
      ? `boot a cluster node from the pimaster (U-Boot, DHCP, TFTP, NFS root), check it, then deploy ${opts.deploy} onto its SD card through PiSeduce and destroy it`
      : 'boot a cluster node from the pimaster (U-Boot, DHCP, TFTP, NFS root) on the cluster link, check it, boot it again',
  options: [],
  async run(ctx) {
    const state = verifyState(ctx);
    const guest = running(ctx);
    const pimaster = target(ctx, opts);
    const console = join(ctx.paths.work, 'node-console.log');
    rmSync(console, { force: true });
    ctx.status(`node console: ${console}`);
    const environment = state.environment;
    const sdCard = environment ? await makeSdCard(ctx, environment.imgSize) : undefined;
    const userKey = join(ctx.paths.work, 'verify-user-key');
    if (environment) {
      rmSync(userKey, { force: true });
      rmSync(`${userKey}.pub`, { force: true });
      ctx.defer('remove the deploying user key', () => {
        for (const file of [userKey, `${userKey}.pub`]) rmSync(file, { force: true });
      });
      await ctx.run('ssh-keygen', ['-q', '-t', 'rsa', '-b', '3072', '-N', '', '-C', DEPLOY_USER, '-f', userKey]);
    }
    const results = await runNode(
      ctx,
      {
        pimaster,
        agentPort: guest.hostPort.get(8090)!,
        facts: state.facts,
        link: ctx.resources.get(LINK)!,
        console,
        timeoutS: opts.timeoutS,
        sdCard,
        run: async (command, timeoutMs = 120_000) => {
          const r = await ctx.run('ssh', sshArgs(pimaster, command), { reject: false, timeoutMs });
          return { ok: r.exitCode === 0, out: r.exitCode === 0 ? r.stdout : lastLine(r.stdout.trim() ? r.stdout : r.stderr) };
        },
      },
      (check) => runCheck(ctx, opts, check),
      environment ? (session) => runDeploy(ctx, session, { environment, userKey, timeoutS: DEPLOY_TIMEOUT_S }) : undefined,
    );
    for (const result of results) ctx.log.line(`${result.ok ? 'PASS' : 'FAIL'} ${result.name}: ${result.saw}`);
    state.results = [...(state.results ?? []), ...results];
    await powerOff(ctx, opts);
  },
});

export function verifyPipeline(opts: VerifyOptions): Pipeline {
  return {
    name: 'verify',
    schema: engineSchema,
    summary: 'boot an image in QEMU and check it',
    stages: [copyStage(opts), prepareStage(opts), bootStage(opts), checkStage(opts), ...(opts.node ? [nodeStage(opts)] : [])],
  };
}
