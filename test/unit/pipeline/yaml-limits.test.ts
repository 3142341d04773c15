import { describe, expect, it } from 'vitest';
import { formatProblem } from '../../../src/config/errors.js';
import { checkPipeline } from '../../../src/pipeline/load.js';

const problems = (text: string): string[] =>
  checkPipeline(text, 'p.yaml', { env: {} }).problems.map(formatProblem);

describe('YAML limits', () => {
  it('takes a few aliases as a pipeline uses them', () => {
    const text = `sources:\n  a:\n    type: file_replay\n    paths: &p [x, y]\n  b:\n    type: file_replay\n    paths: *p\nsinks:\n  o:\n    type: stdout\n    inputs: [a, b]\n`;
    expect(problems(text)).toEqual([]);
  });

  it('stops aliases of aliases at 10000 values, at the alias that passes it', () => {
    let text = 'a: &a [x, x, x, x, x, x, x, x, x, x]\n';
    for (const [n, prev] of [
      ['b', 'a'],
      ['c', 'b'],
      ['d', 'c'],
      ['e', 'd'],
    ]) {
      text += `${n}: &${n} [${Array(10).fill(`*${prev}`).join(', ')}]\n`;
    }
    expect(problems(text)).toEqual([
      'p.yaml:4:36: d[7]: yaml: aliases expand to more than 10000 values (aliases of aliases multiply); write the values out, or use fewer aliases',
    ]);
  });

  it('refuses nesting deeper than 64 levels, block or flow', () => {
    const block = Array.from({ length: 70 }, (_, i) => `${'  '.repeat(i)}k${i}:`).join('\n') + ' x\n';
    expect(problems(block)).toEqual([
      `p.yaml:66:${2 * 65 + 1}: k0.k1.k2.k3.k4.k5.k6.k7.k8.k9.k10.k11.k12.k13.k14.k15.k16.k17.k18.k19.k20.k21.k22.k23.k24.k25.k26.k27.k28.k29.k30.k31.k32.k33.k34.k35.k36.k37.k38.k39.k40.k41.k42.k43.k44.k45.k46.k47.k48.k49.k50.k51.k52.k53.k54.k55.k56.k57.k58.k59.k60.k61.k62.k63.k64: nested more than 64 levels deep; a pipeline needs a few`,
    ]);
    const flow = `${'['.repeat(100000)}${']'.repeat(100000)}\n`;
    const found = problems(flow);
    expect(found).toHaveLength(1);
    expect(found[0]).toMatch(/^p\.yaml:1:\d+: /);
  });

  it('refuses indentation past 256 columns, compact `- - -` included', () => {
    expect(problems(`a:\n${'- '.repeat(200)}x\n`)).toEqual([
      'p.yaml:2:257: yaml: indented more than 256 columns; a pipeline needs a few levels',
    ]);
  });

  it('resolves many aliases by their anchors in one pass, and stops them at the limit', () => {
    // yaml's Alias.resolve walks the whole document per alias: quadratic, hours at 50,000.
    const text = `a: &a x\n${Array.from({ length: 20000 }, (_, i) => `k${i}: *a`).join('\n')}\n`;
    expect(problems(text)).toEqual([
      'p.yaml:10002:9: k10000: yaml: aliases expand to more than 10000 values (aliases of aliases multiply); write the values out, or use fewer aliases',
    ]);
  });

  it('finds a duplicate key among many without comparing every pair', () => {
    const text = `${Array.from({ length: 20000 }, (_, i) => `k${i}: ${i}`).join('\n')}\nk5: again\n`;
    expect(problems(text)).toEqual(['p.yaml:20001:1: yaml: map keys must be unique']);
  });
});
