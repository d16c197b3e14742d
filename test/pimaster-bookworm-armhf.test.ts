/** The pimaster built for armhf, checked item by item against shared/piseduce.md. */
import { pimasterChecks } from './helpers/pimaster-checks.ts';

pimasterChecks('armhf');
