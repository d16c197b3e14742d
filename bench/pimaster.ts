/**
 * `npm run bench`: the pimaster on the arm64 Debian fixture, built in full, then rebuilt after one
 * change at a time, with the stage cache; the outputs against what the root holds, resize2fs's
 * minimum and a PiShrink-style baseline (bench/pishrink-baseline.sh); the pipeline's own overhead; the peak RSS
 * of the Node process. Prints one table with the targets.
 *
 * The builds run a copy of this toolkit (so a pimaster script can be changed without touching the
 * repository) in Node processes of their own (bench/pimaster-child.ts: they load what the CLI loads,
 * so their peak RSS is a build's own), with a user layer on top (one overlay file, one
 * script), the fixture served over HTTP on 127.0.0.1 and the real PiSeduce repositories. Downloads
 * and apt archives are kept in ~/.cache/build-image-bench (the first run fills them); the stage
 * cache starts empty. Needs root; about a quarter of an hour on two cores.
 *
 *   node bench/pimaster.ts [--keep]
 */
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { formatBytes } from '../engine/options.ts';
import { defaultConfig } from '../pipelines/pimaster/options.ts';
import { debianImage } from '../test/fixtures/debian-image.ts';
import { piseduceRepos } from '../test/fixtures/piseduce-repos.ts';
import { startServer } from '../test/helpers/http-server.ts';
import { formatTable, inUseImageSize, minimumImageSize, rootDifferences, xzUncompressedSize } from './measure.ts';
import type { Build } from './pimaster-child.ts';

const repo = fileURLToPath(new URL('../', import.meta.url));
const CACHE = join(homedir(), '.cache', 'build-image-bench');
const say = (text: string) => process.stderr.write(`[bench] ${text}\n`);

const total = (b: Build) => b.timings.reduce((s, t) => s + t.seconds, 0);
const commandTime = (b: Build) => b.timings.reduce((s, t) => s + t.commandSeconds, 0);
const cached = (b: Build) =>
  b.timings
    .filter((t) => t.note)
    .map((t) => `${t.stage}${t.note === 'from cache' ? '' : ` (${t.note!.replace(' from cache', '')})`}`)
    .join(', ');

/** One build in a child process; `speedUpsOff` as BUILD_IMAGE_SPEEDUPS_OFF (see lib/chroot/environment.ts). */
async function build(toolkit: string, flags: Record<string, unknown>, until?: string, speedUpsOff = ''): Promise<Build> {
  const { stdout } = await execa(process.execPath, [join(toolkit, 'bench/pimaster-child.ts'), JSON.stringify({ flags, until })], {
    // Node's compile cache where commands/cli.ts has it: the child loads the toolkit as the CLI does.
    env: { CI: 'true', BUILD_IMAGE_SPEEDUPS_OFF: speedUpsOff, NODE_COMPILE_CACHE: join(tmpdir(), 'node-compile-cache') },
    stderr: 'inherit',
    forceKillAfterDelay: false, // SIGTERM only: the child unwinds what it attached
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Build;
}

async function bench(keep: boolean): Promise<string> {
  if (process.getuid?.() !== 0) throw new Error('run as root (builds attach loop devices and mount)');
  const dir = mkdtempSync(join(tmpdir(), 'pimaster-bench-'));
  const server = { close: async () => {} };
  try {
    // A copy of the toolkit whose pimaster scripts this bench may change.
    const toolkit = join(dir, 'toolkit');
    mkdirSync(toolkit);
    for (const entry of ['package.json', 'engine', 'lib', 'settings', 'stages', 'pipelines', 'commands', 'overlays', 'scripts', 'bench', 'test'])
      await execa('cp', ['-a', join(repo, entry), toolkit]);
    symlinkSync(join(repo, 'node_modules'), join(toolkit, 'node_modules'));

    const fixture = await debianImage('arm64');
    const serve = join(dir, 'serve');
    mkdirSync(serve);
    symlinkSync(fixture, join(serve, basename(fixture)));
    const sha = (await execa('sha256sum', [fixture])).stdout.split(' ')[0]!;
    writeFileSync(join(serve, `${basename(fixture)}.sha256`), `${sha}  ${basename(fixture)}\n`);
    const started = await startServer(serve);
    server.close = () => started.close();
    const piseduce = await piseduceRepos();
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'id_ed25519')]);

    // The user's layer on top of the pimaster: one overlay file, one script.
    mkdirSync(join(dir, 'site/rootfs/etc'), { recursive: true });
    writeFileSync(join(dir, 'site/rootfs/etc/site-motd'), 'site v1\n');
    writeFileSync(join(dir, 'site.sh'), 'cp /etc/site-motd /etc/motd\n');
    rmSync(join(CACHE, 'snapshots'), { recursive: true, force: true });
    const flags = {
      arch: 'arm64',
      base: started.url(basename(fixture)),
      'piseduce-webui': `${piseduce.webui}#${piseduce.webuiRef}`,
      'piseduce-agent': `${piseduce.agent}#${piseduce.agentRef}`,
      'ssh-key': join(dir, 'id_ed25519.pub'),
      overlay: join(dir, 'site'),
      script: join(dir, 'site.sh'),
      compress: 'zstd',
      name: 'pimaster-arm64',
      work: join(dir, 'work'),
      cache: CACHE,
      out: join(dir, 'out'),
    };

    say('full build, the stage cache empty');
    const full = await build(toolkit, flags);
    say('rebuild after changing one overlay file of the user layer');
    writeFileSync(join(dir, 'site/rootfs/etc/site-motd'), 'site v2\n');
    const overlay = await build(toolkit, flags);
    say("rebuild after changing the pimaster's last script");
    appendFileSync(join(toolkit, 'scripts/pimaster/90-clean.sh'), '# bench: a late change\n');
    const late = await build(toolkit, flags);

    // The chroot stage again, from its first script (changed, so the stage cache has no snapshot
    // for it), with the apt archives the full build downloaded, each speed-up off in turn.
    const chroot: Array<{ label: string; off: string; seconds: number; image: string }> = [];
    const workOf = (off: string) => join(dir, `work-chroot-${off || 'on'}`);
    for (const [label, off] of [
      ['all speed-ups on', ''],
      ['python-compile and native-unpack off (as before issue 17)', 'python-compile,native-unpack'],
      ['python-compile off', 'python-compile'],
      ['native-unpack off', 'native-unpack'],
      ['unsafe-io off', 'unsafe-io'],
    ] as const) {
      say(`the chroot stage again, ${label}`);
      appendFileSync(join(toolkit, 'scripts/pimaster/10-packages.sh'), `# bench: ${label}\n`);
      // A work directory of its own: the image stays there to be compared, with no copy.
      const built = await build(toolkit, { ...flags, work: workOf(off) }, 'chroot', off);
      chroot.push({ label, off, seconds: built.timings.find((t) => t.stage === 'chroot')!.seconds, image: built.image });
    }
    const [on, before] = [chroot[0]!, chroot[1]!];
    const differences = await rootDifferences(on.image, before.image, dir);
    for (const run of chroot) rmSync(workOf(run.off), { recursive: true, force: true });

    say('rebuild for other output formats only (.img, .img.xz, .img.zst)');
    const formats = await build(toolkit, { ...flags, compress: 'none,xz,zstd' });
    const size = (format: string) => formats.outputs.find((o) => o.format === format)!.size;
    const img = formats.outputs.find((o) => o.format === 'none')!.path;
    const minimum = await minimumImageSize(img);
    const inUse = await inUseImageSize(img);
    const margin = defaultConfig()['shrink-margin'];

    say('the image before shrink (from the cache), then the PiShrink-style baseline on it');
    const unshrunk = await build(toolkit, flags, 'finalize');
    const baselineOut = join(dir, 'baseline.img.xz');
    const baselineStarted = performance.now();
    await execa('bash', [join(repo, 'bench/pishrink-baseline.sh'), unshrunk.image, baselineOut], { stderr: 'inherit' });
    const baselineSeconds = (performance.now() - baselineStarted) / 1000;
    const baselineXz = Number((await execa('stat', ['-c', '%s', baselineOut])).stdout);

    const s = (n: number) => `${n.toFixed(1)} s`;
    const share = (b: Build) => (100 * total(b)) / total(full);
    const overhead = (100 * (total(full) - commandTime(full))) / total(full);
    const builds = { full, 'overlay rebuild': overlay, 'late-script rebuild': late, 'formats rebuild': formats, 'unshrunk rebuild': unshrunk };
    const [rssBuild, rssKiB, rssStage] = Object.entries(builds)
      .map(([name, b]) => [name, b.maxRssKiB, b.peakStage] as const)
      .reduce((a, b) => (b[1] > a[1] ? b : a));
    const rss = rssKiB * 1024;
    const ratio = on.seconds / before.seconds;
    const pycDiffering = differences.differing.filter((p) => p.endsWith('.pyc'));
    const others = differences.differing.filter((p) => !p.endsWith('.pyc'));
    const imgOver = (100 * (size('none') - (inUse + margin))) / (inUse + margin);
    const baselineImg = await xzUncompressedSize(baselineOut);
    const ok = (pass: boolean) => (pass ? 'yes' : 'NO');
    const rows = [
      ['', 'measured', 'target', 'met', 'notes'],
      ['full pimaster build', s(total(full)), '', '', 'the stage cache empty; apt archives and downloads cached; .img.zst'],
      [
        'rebuild, one overlay file changed',
        s(total(overlay)),
        '<= 15% of full',
        ok(share(overlay) <= 15),
        `${share(overlay).toFixed(1)}% of full; from cache: ${cached(overlay)}`,
      ],
      ['rebuild, the last pimaster script changed', s(total(late)), '', '', `${share(late).toFixed(1)}% of full; from cache: ${cached(late)}`],
      ['rebuild, only the output formats changed', s(total(formats)), '', '', `.img, .img.xz and .img.zst; from cache: ${cached(formats)}`],
      [
        '.img',
        formatBytes(size('none')),
        '<= in use + margin + 5%',
        ok(imgOver <= 5),
        `boot + root blocks in use ${formatBytes(inUse)} + --shrink-margin ${formatBytes(margin)}: ${imgOver >= 0 ? '+' : ''}${imgOver.toFixed(1)}%; resize2fs -P minimum ${formatBytes(minimum)}; PiShrink-style .img ${formatBytes(baselineImg)}`,
      ],
      [
        '.img.xz',
        formatBytes(size('xz')),
        '<= baseline',
        ok(size('xz') <= baselineXz),
        `PiShrink-style baseline (resize2fs -M, xz -T0 -6): ${formatBytes(baselineXz)} in ${s(baselineSeconds)}`,
      ],
      ['.img.zst', formatBytes(size('zstd')), '', '', ''],
      [
        'chroot stage, all speed-ups on',
        s(on.seconds),
        '<= 0.6 x before',
        ok(ratio <= 0.6),
        `${ratio.toFixed(2)} x the chroot stage with python-compile and native-unpack off (${s(before.seconds)}), as it ran before issue 17`,
      ],
      ...chroot.slice(2).map((run) => [`chroot stage, ${run.label}`, s(run.seconds), '', '', `${(run.seconds / on.seconds).toFixed(2)} x all on`]),
      [
        'pipeline overhead',
        `${overhead.toFixed(1)}%`,
        '< 5%',
        ok(overhead < 5),
        `full build: ${s(total(full) - commandTime(full))} of ${s(total(full))} not spent in commands`,
      ],
      [
        'peak RSS',
        formatBytes(rss),
        '< 200 MiB',
        ok(rss < 200 * 2 ** 20),
        `maxRSS of the Node process running each build, the largest (the ${rssBuild}, reached ${rssStage ? `in its ${rssStage} stage` : 'while loading'}); the others: ${Object.entries(
          builds,
        )
          .filter(([name]) => name !== rssBuild)
          .map(([name, b]) => `${name} ${formatBytes(b.maxRssKiB * 1024)} (${b.peakStage || 'loading'})`)
          .join(', ')}`,
      ],
    ];
    const stages = full.timings.map((t) => `${t.stage} ${t.seconds.toFixed(1)}`).join(', ');
    const sameness = [
      `the image after the chroot stage, all on against as before: .pyc files ${differences.pyc[0]} and ${differences.pyc[1]}, ${pycDiffering.length} of them differing${pycDiffering.length ? ` (${pycDiffering.slice(0, 4).join(', ')})` : ''};`,
      `${others.length} other paths differ${others.length ? `: ${others.slice(0, 12).join(', ')}${others.length > 12 ? ', ...' : ''}` : ''}`,
    ].join(' ');
    return `pimaster bench: arm64 Debian fixture, ${(await execa('nproc')).stdout} CPUs\n${formatTable(rows, [1])}\nfull build by stage (s): ${stages}\n${sameness}`;
  } finally {
    await server.close();
    if (keep) say(`kept ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

try {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { keep: { type: 'boolean', default: false } } });
  console.log(await bench(values.keep));
} catch (error) {
  process.stderr.write(`pimaster bench: ${(error as { shortMessage?: string }).shortMessage ?? (error as Error).message}\n`);
  process.exitCode = 1;
}
