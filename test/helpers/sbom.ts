/** CycloneDX's own validator (the official library, its bundled 1.6 JSON schema): null when valid, else the errors. */
import { Spec, Validation } from '@cyclonedx/cyclonedx-library';

const validator = new Validation.JsonStrictValidator(Spec.Version.v1dot6);

export async function sbomErrors(json: string): Promise<unknown> {
  return validator.validate(json);
}
