// The suite: the three tiers' folders (test/unit, test/image, test/system; see CONTRIBUTING.md).
// npm test runs them all; ava.unit.config.js, ava.image.config.js and ava.system.config.js each run
// one tier with these settings. Files run two at a time in the order of their file names (whatever
// their tier), except that the file that needs the longest chain of builds on an empty test cache
// (the trixie fixture, then the pimaster built from it) and nothing else starts first: the chain
// runs beside everything else instead of after it.
import { basename } from 'node:path';

const FIRST = ['pimaster-trixie-arm64.test.ts'];
const rank = (file) => (FIRST.includes(basename(file)) ? 0 : 1);

export default {
  extensions: ['ts'],
  files: ['test/unit/**/*.test.ts', 'test/image/**/*.test.ts', 'test/system/**/*.test.ts'],
  // ava fails a file when no test result comes for this long: on an empty test cache the first
  // results of the trixie file wait for its fixture and its pimaster, and under load that took more
  // than 20 minutes (seen: the fixture alone took 11 minutes beside other builds).
  timeout: '30m',
  concurrency: 2,
  workerThreads: false,
  sortTestFiles: (a, b) => rank(a) - rank(b) || basename(a).localeCompare(basename(b)) || a.localeCompare(b),
};
