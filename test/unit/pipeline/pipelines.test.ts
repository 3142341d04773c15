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

describe('pipelines/', () => {
  it('holds only pipeline files that validate with the registered components and an empty environment', () => {
    // Examples give every ${VAR} a default, so they validate as shipped.
    const problems = files.flatMap((name) =>
      checkPipeline(readFileSync(new URL(name, DIR), 'utf8'), `pipelines/${name}`, { env: {} }).problems.map(
        formatProblem,
      ),
    );
    expect(problems).toEqual([]);
  });
});
