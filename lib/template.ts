/** `{{ name }}` templates: every variable must be known; an unknown one is an error, never "". */

export class TemplateError extends Error {}

export function renderTemplate(text: string, vars: Readonly<Record<string, string>>, file: string): string {
  return text.replace(/\{\{\s*([\w.-]+)\s*\}\}/g, (_, name: string) => {
    const value = vars[name];
    if (value === undefined) {
      throw new TemplateError(`${file}: unknown template variable {{ ${name} }} (known: ${Object.keys(vars).sort().join(', ')})`);
    }
    return value;
  });
}

/** Settings as template variables: scalars as they are, lists joined by spaces. */
export function templateVars(config: object, extra: Record<string, string | undefined> = {}): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const [key, value] of Object.entries({ ...config, ...extra })) {
    if (value === undefined || value === null) continue;
    vars[key] = Array.isArray(value) ? value.join(' ') : String(value);
  }
  return vars;
}
