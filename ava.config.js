// The suite's files run two at a time, in name order, except that the file that needs the longest
// chain of builds on an empty test cache (the trixie fixture, then the pimaster built from it) and
// nothing else starts first: the chain runs beside everything else instead of after it.
const FIRST = ['pimaster-trixie-arm64.test.ts'];
const rank = (file) => (FIRST.some((name) => file.endsWith(`/${name}`)) ? 0 : 1);

export default {
  extensions: ['ts'],
  files: ['test/**/*.test.ts'],
  timeout: '20m',
  concurrency: 2,
  workerThreads: false,
  sortTestFiles: (a, b) => rank(a) - rank(b) || a.localeCompare(b),
};
