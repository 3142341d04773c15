import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { formatProblem } from '../../../src/pipeline/errors.js';
import { checkPipeline } from '../../../src/pipeline/load.js';

const DIR = new URL('../../../pipelines/', import.meta.url);
const files = existsSync(DIR)
  ? readdirSync(DIR)
      .filter((f) => /\.ya?ml$/.test(f))
      .sort()
  : [];

/**
 * The variables a shipped pipeline needs that have no default, with values a user would give
 * (`rxflow demo` sets the demo's). Every other `${VAR}` must have a default, so the file validates
 * with these alone.
 */
const REQUIRED_ENV: Record<string, Record<string, string>> = {
  'demo.yaml': {
    RXFLOW_DEMO_NETNS: 'rxdemo-srv',
    RXFLOW_DEMO_INTERFACE: 'rxdemo-s',
    KAFKA_BOOTSTRAP: '127.0.0.1:9092',
  },
  'kafka-export.yaml': { KAFKA_BOOTSTRAP: 'kafka-1:9092' },
};

const problemsOf = (name: string, env: Record<string, string>): string[] =>
  checkPipeline(readFileSync(new URL(name, DIR), 'utf8'), `pipelines/${name}`, { env }).problems.map(
    formatProblem,
  );

describe('pipelines/', () => {
  it('ships the demo, Kafka export and metrics pipelines the README points users to', () => {
    expect(files).toEqual(expect.arrayContaining(['demo.yaml', 'kafka-export.yaml', 'metrics-only.yaml']));
  });

  it.each(files)('%s validates with the registered components and only its required variables', (name) => {
    expect(problemsOf(name, REQUIRED_ENV[name] ?? {})).toEqual([]);
  });

  it.each(Object.entries(REQUIRED_ENV))('%s names each required variable when it is missing', (name, env) => {
    const problems = problemsOf(name, {});
    for (const variable of Object.keys(env)) {
      expect(problems.some((p) => p.includes(`environment variable ${variable} is not set`))).toBe(true);
    }
    expect(problems.every((p) => p.includes('is not set'))).toBe(true);
  });
});
