/** `build-image verify IMAGE --ssh-key FILE [options]`: its flags, their checks, and its report. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError } from '../engine/errors.ts';
import { engineSchema, parseSize } from '../engine/options.ts';
import { timingTable } from '../engine/runner.ts';
import { formatResults, readChecksFile } from '../lib/qemu/checks.ts';
import { verifyPipeline } from '../pipelines/verify.ts';
import { parseTool, runTool, type ToolFlag, toolUsage } from './tool-command.ts';

const FLAGS = {
  'ssh-key': { type: 'string', placeholder: 'FILE', help: 'the private key that logs in to the image (required)' },
  user: { type: 'string', placeholder: 'NAME', help: 'the user it logs in as', default: 'root' },
  authorize: { type: 'boolean', help: 'authorize the key for the user in the throw-away copy (an image built without one, such as a release image)' },
  checks: { type: 'string', placeholder: 'FILE', help: 'more checks: one shell command a line, run on the guest, each must exit 0' },
  node: { type: 'boolean', help: 'a pimaster (arm64): also boot a cluster node from it over the network (DHCP, TFTP, NFS root) and check it' },
  deploy: {
    type: 'string',
    placeholder: 'ENV',
    help: 'with --node: then deploy the image ENV onto the node through PiSeduce (reserve, deploy, boot from its SD card, destroy)',
  },
  'card-size': {
    type: 'string',
    placeholder: 'SIZE',
    help: 'boot the copy as a card of SIZE (8G): the image must grow its root into it, its swap must start (a pimaster: room for a 1G environment)',
  },
  timeout: { type: 'string', placeholder: 'SECONDS', help: 'how long to wait for SSH after QEMU starts', default: '600' },
  memory: { type: 'string', placeholder: 'MIB', help: "the guest's memory", default: '2048' },
  'debian-mirror': {
    type: 'string',
    placeholder: 'URL',
    help: "the Debian mirror of the kernel booted when the image's own cannot boot under QEMU",
    default: 'http://deb.debian.org/debian',
  },
  cache: { type: 'string', placeholder: 'DIR', help: 'cache directory (Debian kernels)', default: engineSchema.cache.default as () => string },
} as const satisfies Record<string, ToolFlag>;

export function verifyUsage(): string {
  return toolUsage(
    [
      'build-image verify IMAGE --ssh-key FILE [options]: boot a throw-away copy of IMAGE (.img, .img.xz, .img.zst, .img.gz,',
      '.zip or .img.tar.gz) in QEMU, wait for SSH, run the checks (the built-in ones, more for a pimaster, and yours),',
      'print one PASS/FAIL line per check, power it off. Exits 1 if a check failed or the image never came up.',
      'With --node, a cluster node then boots from the pimaster over the cluster link, powered by the agent through a',
      'PoE switch stand-in, and is checked; with --deploy ENV as well, a user deploys ENV onto it through the agent.',
    ],
    FLAGS,
  );
}

function cardSize(raw: unknown): number | undefined {
  if (raw === undefined) return undefined;
  try {
    return parseSize(String(raw));
  } catch (expected) {
    throw new ConfigError(`--card-size ${String(raw)}: expected ${expected}`);
  }
}

export async function verifyCommand(argv: string[]): Promise<number> {
  const parsed = parseTool(argv, 'verify', FLAGS, verifyUsage);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new ConfigError('verify takes one IMAGE: build-image verify IMAGE --ssh-key FILE (see build-image --help verify)');
  const image = positionals[0]!;
  if (!existsSync(image)) throw new ConfigError(`${image}: no such file (the image to verify)`);
  const key = values['ssh-key'];
  if (typeof key !== 'string') throw new ConfigError('--ssh-key FILE is needed: the private key that logs in to the image');
  if (!existsSync(key)) throw new ConfigError(`--ssh-key ${key}: no such file (the private key that logs in to the image)`);
  const checksFile = typeof values.checks === 'string' ? resolve(values.checks) : undefined;
  const deploy = typeof values.deploy === 'string' ? values.deploy : undefined;
  if (deploy !== undefined && !existsSync(deploy)) throw new ConfigError(`--deploy ${deploy}: no such file (the environment image the node deploys)`);
  if (deploy !== undefined && values.node !== true)
    throw new ConfigError('--deploy needs --node: the environment is deployed onto the node that boots from the pimaster');
  const number = (name: 'timeout' | 'memory', min: number) => {
    const raw = String(values[name] ?? FLAGS[name].default);
    if (!/^\d+$/.test(raw) || Number(raw) < min)
      throw new ConfigError(`--${name} ${raw}: expected a whole number of ${name === 'timeout' ? 'seconds' : 'MiB'}, at least ${min}`);
    return Number(raw);
  };
  const pipeline = verifyPipeline({
    image: resolve(image),
    sshKey: resolve(key),
    user: String(values.user ?? FLAGS.user.default),
    authorize: values.authorize === true,
    checks: checksFile ? readChecksFile(checksFile) : [],
    checksFile,
    timeoutS: number('timeout', 10),
    memoryMiB: number('memory', 256),
    debianMirror: String(values['debian-mirror'] ?? FLAGS['debian-mirror'].default).replace(/\/+$/, ''),
    node: values.node === true,
    deploy: deploy === undefined ? undefined : resolve(deploy),
    cardSize: cardSize(values['card-size']),
  });
  const { state, timings, config } = await runTool(pipeline, values);
  const v = state.verify!;
  const results = v.results ?? [];
  const failed = results.filter((r) => !r.ok).length;
  process.stdout.write(`${formatResults(results)}\n`);
  process.stdout.write(
    `${results.length - failed} of ${results.length} checks passed; SSH answered ${v.bootSeconds} s after QEMU started${(v.boots ?? 1) > 1 ? ` (boot ${v.boots}: the guest rebooted itself before)` : ''}; kernel: ${v.kernel.source}${v.acceleration ? `; ${v.acceleration}` : ''}\n`,
  );
  if (!config.quiet) process.stderr.write(`\n${timingTable(timings)}\n`);
  return failed ? 1 : 0;
}
