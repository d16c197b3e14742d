// npm run test:unit: the unit tier alone, test/unit (no root, no loop device, no network beyond
// 127.0.0.1, no emulation, no image built), with the suite's settings (ava.config.js).
import suite from './ava.config.js';

export default { ...suite, files: ['test/unit/**/*.test.ts'] };
