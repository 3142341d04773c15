/**
 * Random mutations of every shipped pipeline, fed to validate: whatever the text, the checker
 * returns problems (or throws the project's own errors), never crashes, never hangs, and places
 * every problem at a file:line:column inside the text.
 */
import fc from 'fast-check';
import { readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PipelineError, formatProblem } from '../../../src/config/errors.js';
import { checkPipeline } from '../../../src/pipeline/load.js';

const DIR = new URL('../../../pipelines/', import.meta.url);
const files = readdirSync(DIR)
  .filter((f) => /\.ya?ml$/.test(f))
  .sort();

/** A fixed machine, so the memory check answers the same on every host. */
const MACHINE = { availableBytes: 8e9, possibleCpus: 4 };

/** Text YAML and the checker treat specially, and values options take badly. */
const TOKENS = [
  '&a ',
  '*a',
  '<<: *a',
  '{',
  '}',
  '[',
  ']',
  ': ',
  '- ',
  '#',
  '"',
  "'",
  '|',
  '>',
  '!!str ',
  '!!binary ',
  '${',
  '${A:-${B:-x}}',
  '${UNSET}',
  '$$',
  '}',
  '\t',
  '\r',
  '\u0000',
  '\u001b[2J',
  '\u202e',
  'é',
  '\uffff',
  '~',
  'null',
  'true',
  '-1',
  '0',
  '1e308',
  '-1e308',
  '.inf',
  '.nan',
  '4294967296',
  '99999999999999999999',
  '100000h',
  '0.5ms',
  '5s',
  '__proto__',
  'constructor',
  'type',
  'inputs',
  '---',
  '...',
  '?',
  '%YAML 1.2',
];

type Mutation = (lines: string[]) => string[];

const index = fc.nat();

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  // Delete a line.
  index.map((i) => (lines: string[]) => lines.filter((_, j) => j !== i % lines.length)),
  // Duplicate a line (duplicate keys, repeated ids).
  index.map((i) => (lines: string[]) => {
    const k = i % lines.length;
    return [...lines.slice(0, k + 1), lines[k]!, ...lines.slice(k + 1)];
  }),
  // Swap two lines.
  fc.tuple(index, index).map(([i, j]) => (lines: string[]) => {
    const out = [...lines];
    const a = i % out.length;
    const b = j % out.length;
    [out[a], out[b]] = [out[b]!, out[a]!];
    return out;
  }),
  // Indent or dedent a line.
  fc.tuple(index, fc.integer({ min: -4, max: 4 })).map(([i, d]) => (lines: string[]) => {
    const out = [...lines];
    const k = i % out.length;
    out[k] = d >= 0 ? ' '.repeat(d) + out[k]! : out[k]!.replace(new RegExp(`^ {0,${-d}}`), '');
    return out;
  }),
  // Insert a token somewhere in a line.
  fc.tuple(index, index, fc.constantFrom(...TOKENS)).map(([i, p, t]) => (lines: string[]) => {
    const out = [...lines];
    const k = i % out.length;
    const at = p % (out[k]!.length + 1);
    out[k] = out[k]!.slice(0, at) + t + out[k]!.slice(at);
    return out;
  }),
  // Replace the value of a `key: value` line.
  fc
    .tuple(index, fc.oneof(fc.constantFrom(...TOKENS), fc.string({ maxLength: 12 }), fc.double().map(String)))
    .map(([i, v]) => (lines: string[]) => {
      const keyed = lines.map((l, j) => [l, j] as const).filter(([l]) => /^\s*[\w-]+:\s+\S/.test(l));
      if (keyed.length === 0) return lines;
      const [line, j] = keyed[i % keyed.length]!;
      const out = [...lines];
      out[j] = line.replace(/:\s+.*$/, `: ${v}`);
      return out;
    }),
  // Cut the file short.
  index.map((i) => (lines: string[]) => lines.slice(0, i % (lines.length + 1))),
);

describe('validate on mutated pipelines', () => {
  it.each(files)('%s: no crash, no hang, every problem positioned', (name) => {
    const original = readFileSync(new URL(name, DIR), 'utf8');
    const file = `pipelines/${name}`;
    fc.assert(
      fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (mutations) => {
        const lines = mutations.reduce((l, m) => (l.length === 0 ? l : m(l)), original.split('\n'));
        const text = lines.join('\n');
        const started = performance.now();
        let problems;
        try {
          problems = checkPipeline(text, file, { env: {}, machine: MACHINE }).problems;
        } catch (err) {
          // Only the project's own errors, never a TypeError or a RangeError from deep inside.
          expect(err).toBeInstanceOf(PipelineError);
          return;
        }
        expect(performance.now() - started).toBeLessThan(2000);
        const lineCount = text.split('\n').length;
        for (const p of problems) {
          expect(p.file).toBe(file);
          expect(p.line).toBeGreaterThanOrEqual(1);
          expect(p.line).toBeLessThanOrEqual(lineCount);
          expect(p.column).toBeGreaterThanOrEqual(1);
          expect(p.message).not.toBe('');
          expect(formatProblem(p)).toMatch(new RegExp(`^${file.replace('.', '\\.')}:\\d+:\\d+: \\S`));
          // Control characters of the text never reach the terminal raw.
          expect(formatProblem(p)).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
        }
      }),
      { numRuns: 150 },
    );
  });
});
