/** compress as --plan shows it: every output it will write, on one line. Nothing is compressed. */
import test from 'ava';
import { compressStage } from '../../stages/compress.ts';
import { testConfig } from '../helpers/build.ts';

test('--plan lists the formats and the output directory', (t) => {
  const config = testConfig('/srv/build', { compress: ['xz', 'zip', 'tar.gz'], name: 'pi' });
  const line = compressStage.describe(config);
  for (const part of ['pi.img.xz', 'pi.zip', 'pi.img.tar.gz', '/srv/build/out', '.sha256', 'pi.img.bmap', 'pi.manifest.json', 'os-list.json'])
    t.true(line.includes(part), `${part} in: ${line}`);
  t.false(line.includes('\n'));
  t.regex(compressStage.describe(testConfig('/srv/build', { arch: 'armhf' })), /<pipeline>-<release>-armhf\.img\.xz/);
  t.deepEqual([...compressStage.options], ['compress', 'name', 'release-url', 'out']);
});
