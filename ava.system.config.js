// npm run test:system: the system tier alone, test/system (qemu-user chroots, the Debian mirror,
// QEMU boots, the pimaster builds), with the suite's settings (ava.config.js).
import suite from './ava.config.js';

export default { ...suite, files: ['test/system/**/*.test.ts'] };
