/** The pimaster built for arm64, checked item by item against shared/piseduce.md. */
import { pimasterChecks } from './helpers/pimaster-checks.ts';

pimasterChecks('arm64');
