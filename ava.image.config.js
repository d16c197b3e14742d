// npm run test:image: the image tier alone, test/image (root, loop devices, tiny images made by the
// fixtures, a local HTTP server on 127.0.0.1; no emulation), with the suite's settings
// (ava.config.js).
import suite from './ava.config.js';

export default { ...suite, files: ['test/image/**/*.test.ts'] };
