/** The pimaster built from the Raspberry Pi OS Lite bookworm arm64 look-alike, checked item by item against shared/piseduce.md. */
import { pimasterChecks } from '../helpers/pimaster-checks.ts';

pimasterChecks('bookworm-arm64');
