/**
 * An agent instance names its bpffs directory (<pin root>/rxflow-<instance>), so the name must be
 * a single safe path component. Config schemas use the pattern; loaders check with the function.
 */
export const INSTANCE_PATTERN = '^[A-Za-z0-9_.-]{1,64}$';
const INSTANCE_RE = new RegExp(INSTANCE_PATTERN);

/** What a bad instance name is told: the rule, in words. */
export const INSTANCE_RULE = "must be 1-64 letters, digits, '_', '.' or '-'";

export function isInstanceName(name: string): boolean {
  return INSTANCE_RE.test(name);
}
