import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatProblem } from '../../../src/config/errors.js';
import { fileURLToPath } from 'node:url';
import { loadPolicyFile } from '../../../src/config/firewall-policy.js';
import { checkPipeline } from '../../../src/pipeline/load.js';

const DIR = new URL('../../../pipelines/', import.meta.url);
const files = existsSync(DIR)
  ? readdirSync(DIR)
      .filter((f) => /\.ya?ml$/.test(f))
      .sort()
  : [];

const problemsOf = (name: string, env: Record<string, string>): string[] =>
  checkPipeline(readFileSync(new URL(name, DIR), 'utf8'), `pipelines/${name}`, { env }).problems.map(
    formatProblem,
  );

describe('pipelines/', () => {
  it('ships the demo, Kafka export and metrics pipelines the README points users to', () => {
    expect(files).toEqual(expect.arrayContaining(['demo.yaml', 'kafka-export.yaml', 'metrics-only.yaml']));
  });

  // Every variable has a default, so `rxflow validate pipelines/<file>` passes as the README shows it.
  it.each(files)('%s validates as shipped, with an empty environment', (name) => {
    expect(problemsOf(name, {})).toEqual([]);
  });

  it.each(files)('%s documents in its header every variable it reads', (name) => {
    const text = readFileSync(new URL(name, DIR), 'utf8');
    const header = text.slice(0, text.search(/^[a-z]/m));
    const variables = [...text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!);
    expect(variables.filter((v) => !header.includes(v))).toEqual([]);
  });
});

const EXAMPLES = new URL('../../../examples/', import.meta.url);

describe('examples/', () => {
  const examples = readdirSync(EXAMPLES).filter((f) => /\.ya?ml$/.test(f));

  it.each(examples)('%s is a firewall policy that loads as shipped and names no interface', async (name) => {
    const file = fileURLToPath(new URL(name, EXAMPLES));
    const policy = await loadPolicyFile(file, {});
    expect(policy.policies.length).toBeGreaterThan(0);
    expect(readFileSync(file, 'utf8')).not.toMatch(/^\s*redirect_interface:/m);
  });

  it.each(examples)('%s names only files that exist in its comments', (name) => {
    const text = readFileSync(new URL(name, EXAMPLES), 'utf8');
    const named = [...text.matchAll(/(?:pipelines|examples)\/[\w.-]+\.ya?ml/g)].map((m) => m[0]);
    expect(named.filter((f) => !existsSync(new URL(`../../../${f}`, import.meta.url)))).toEqual([]);
  });
});
