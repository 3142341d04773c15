import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PipelineConfigError, PipelineError, formatProblem } from '../../../src/config/errors.js';
import { checkPipeline, loadPipeline, parsePipeline } from '../../../src/pipeline/load.js';
import { testRegistry } from './components.js';

const registry = testRegistry();
const FILE = 'pipelines/x.yaml';

function problems(text: string, env: Record<string, string> = {}): string[] {
  const result = checkPipeline(text, FILE, { registry, env });
  expect(result.config).toBeUndefined();
  return result.problems.map(formatProblem);
}

function config(text: string, env: Record<string, string> = {}) {
  return parsePipeline(text, FILE, { registry, env });
}

const GOOD = `sources:
  flows:
    type: fixed
transforms:
  acct:
    type: hold
    inputs: [flows]
sinks:
  out:
    type: collect
    inputs: [acct]
`;

describe('pipeline errors', () => {
  it('names a misspelt key at its position, suggests the closest and lists the allowed ones', () => {
    const text = GOOD.replace('    inputs: [flows]\n', '    inputs: [flows]\n    max_entrie: 10\n');
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:8:5: transforms.acct: unknown key 'max_entrie' (did you mean 'max_entries'?); allowed: max_entries, evict_timeout_ms",
    ]);
  });

  it('names a misspelt key of a nested option', () => {
    const text = GOOD + '    retry:\n      attempts: 2\n      backof_ms: 10\n';
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:14:7: sinks.out.retry: unknown key 'backof_ms' (did you mean 'backoff_ms'?); allowed: attempts, backoff_ms",
    ]);
  });

  it('suggests inputs for a misspelt input key and also says inputs are missing', () => {
    const text = GOOD.replace('    inputs: [acct]', '    input: [acct]');
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:9:3: sinks.out: missing key 'inputs'; list the ids this sink reads from: flows, acct",
      "pipelines/x.yaml:11:5: sinks.out: unknown key 'input' (did you mean 'inputs'?); allowed: retry, fail",
    ]);
  });

  it('lists the types of the section for an unknown type', () => {
    expect(problems(GOOD.replace('type: hold', 'type: hodl'))).toEqual([
      "pipelines/x.yaml:6:11: transforms.acct.type: unknown transform type 'hodl' (did you mean 'hold'?); transform types: hold, pass",
    ]);
    expect(problems(GOOD.replace('type: collect', 'type: kafka'))).toEqual([
      "pipelines/x.yaml:10:11: sinks.out.type: unknown sink type 'kafka'; sink types: collect",
    ]);
  });

  it('reports a missing type with the types of the section', () => {
    expect(problems(GOOD.replace('    type: fixed\n', '    size: 2\n'))).toEqual([
      "pipelines/x.yaml:2:3: sources.flows: missing key 'type'; source types: fixed",
    ]);
  });

  it('names the ids that exist for a missing or unknown input', () => {
    expect(problems(GOOD.replace('inputs: [acct]', 'inputs: [acct, flow]'))).toEqual([
      "pipelines/x.yaml:11:20: sinks.out.inputs[1]: unknown input 'flow' (did you mean 'flows'?); ids that exist: flows, acct",
    ]);
    expect(problems(GOOD.replace('    inputs: [flows]\n', ''))).toEqual([
      "pipelines/x.yaml:5:3: transforms.acct: missing key 'inputs'; list the ids this transform reads from: flows",
    ]);
    expect(problems(GOOD.replace('inputs: [flows]', 'inputs: []'))).toEqual([
      'pipelines/x.yaml:7:13: transforms.acct.inputs: must list at least one id; ids that exist: flows',
    ]);
    expect(problems(GOOD.replace('inputs: [flows]', 'inputs: flows'))).toEqual([
      'pipelines/x.yaml:7:13: transforms.acct.inputs: must be a list of ids; write inputs: [flows]',
    ]);
  });

  it('refuses a sink as an input and an input listed twice', () => {
    const text = GOOD + '  out2:\n    type: collect\n    inputs: [acct, out, acct]\n';
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:14:20: sinks.out2.inputs[1]: 'out' is a sink and has no output; inputs are sources or transforms: flows, acct",
      "pipelines/x.yaml:14:25: sinks.out2.inputs[2]: 'acct' is listed twice",
    ]);
  });

  it('accepts human durations for *_ms options and rejects a bad one', () => {
    const ok = config(
      GOOD.replace('    inputs: [flows]\n', '    inputs: [flows]\n    evict_timeout_ms: 1m30s\n'),
    );
    expect(ok.components.get('acct')!.config).toEqual({ max_entries: 1000, evict_timeout_ms: 90_000 });
    const text = GOOD.replace(
      '    inputs: [flows]\n',
      '    inputs: [flows]\n    evict_timeout_ms: 5 parsecs\n',
    );
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:8:23: transforms.acct.evict_timeout_ms: bad duration '5 parsecs'; write milliseconds as an integer (5000) or a number with a unit: 500ms, 5s, 1m, 1h, 1m30s",
    ]);
    expect(problems(text.replace('5 parsecs', '0.5ms'))).toEqual([
      "pipelines/x.yaml:8:23: transforms.acct.evict_timeout_ms: bad duration '0.5ms'; write milliseconds as an integer (5000) or a number with a unit: 500ms, 5s, 1m, 1h, 1m30s",
    ]);
    expect(problems(text.replace('5 parsecs', 'true'))).toEqual([
      'pipelines/x.yaml:8:23: transforms.acct.evict_timeout_ms: must be an integer, got true; write milliseconds as an integer (5000) or a number with a unit: 500ms, 5s, 1m, 1h, 1m30s',
    ]);
  });

  it('reports a bad number, an out-of-range number and a value outside an enum', () => {
    const text = `sources:
  flows: {type: fixed, size: lots, batches: -1}
transforms:
  p: {type: pass, inputs: [flows], mode: frist}
sinks:
  out: {type: collect, inputs: [p]}
`;
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:2:30: sources.flows.size: must be an integer, got 'lots'",
      'pipelines/x.yaml:2:45: sources.flows.batches: must be >= 0, got -1',
      "pipelines/x.yaml:4:42: transforms.p.mode: must be one of: all, first, none; got 'frist' (did you mean 'first'?)",
    ]);
  });

  it('reports a cycle once, at the input that closes it, and a self loop', () => {
    const text = `sources:
  flows: {type: fixed}
transforms:
  a: {type: pass, inputs: [flows, b]}
  b: {type: pass, inputs: [a]}
  c: {type: pass, inputs: [c, flows]}
sinks:
  out: {type: collect, inputs: [b, c]}
`;
    expect(problems(text)).toEqual([
      'pipelines/x.yaml:4:35: transforms.a.inputs[1]: cycle: a -> b -> a; data must flow from sources to sinks without loops',
      'pipelines/x.yaml:6:28: transforms.c.inputs[0]: cycle: c -> c; data must flow from sources to sinks without loops',
    ]);
  });

  it('names an unknown top-level key and the allowed ones, and not the emptiness it causes', () => {
    expect(problems(GOOD + 'transform: {}\n')).toEqual([
      "pipelines/x.yaml:12:1: unknown key 'transform' (did you mean 'transforms'?); allowed: sources, transforms, sinks, drain_timeout_ms",
    ]);
    expect(problems(GOOD.replace('sinks:', 'sink:'))).toEqual([
      "pipelines/x.yaml:8:1: unknown key 'sink' (did you mean 'sinks'?); allowed: sources, transforms, sinks, drain_timeout_ms",
    ]);
  });

  it('reports a source or transform nothing reads from', () => {
    const dangling = GOOD.replace('    inputs: [acct]', '    inputs: [flows]');
    expect(problems(dangling)).toEqual([
      "pipelines/x.yaml:5:3: transforms.acct: nothing reads from this transform; add 'acct' to the inputs of a transform or sink, or remove it",
    ]);
    const text2 = GOOD.replace('sources:\n', 'sources:\n  spare:\n    type: fixed\n');
    expect(problems(text2)).toEqual([
      "pipelines/x.yaml:2:3: sources.spare: nothing reads from this source; add 'spare' to the inputs of a transform or sink, or remove it",
    ]);
  });

  it('refuses inputs on a source', () => {
    const text = GOOD.replace('    type: fixed\n', '    type: fixed\n    inputs: [acct]\n');
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:4:5: sources.flows.inputs: a source takes no inputs; remove 'inputs', or move 'flows' under transforms",
    ]);
  });

  it('reports an empty pipeline, and one without sources or sinks', () => {
    const empty =
      "pipelines/x.yaml:1:1: empty pipeline: define 'sources', 'transforms' and 'sinks'; 'rxflow schema' prints the format";
    expect(problems('')).toEqual([empty]);
    expect(problems('# nothing yet\n')).toEqual([empty]);
    expect(problems('sources: {}\nsinks:\n')).toEqual([empty]);
    expect(problems('sources:\n  flows: {type: fixed}\n')).toEqual([
      "pipelines/x.yaml:1:1: no sinks: define at least one under 'sinks'; sink types: collect",
    ]);
    expect(problems('- sources\n')).toEqual([
      'pipelines/x.yaml:1:1: a pipeline is a map with keys sources, transforms, sinks; got a list',
    ]);
  });

  it('reports entries of the wrong shape, bad and duplicate ids', () => {
    const text = `sources:
  flows: {type: fixed}
  y:
  z: [fixed]
  my flows: {type: fixed}
sinks:
  flows: {type: collect, inputs: [flows]}
  out: {type: collect, inputs: [flows, z, y, my flows]}
`;
    expect(problems(text)).toEqual([
      "pipelines/x.yaml:3:3: sources.y: empty source; give at least its 'type' (source types: fixed)",
      "pipelines/x.yaml:4:6: sources.z: must be a map with 'type' and options, got a list",
      "pipelines/x.yaml:5:3: sources.my flows: bad id 'my flows'; ids use letters, digits, '_' and '-' and start with a letter or '_'",
      "pipelines/x.yaml:7:3: sinks.flows: id 'flows' is already used by sources.flows; ids must be unique across sources, transforms and sinks",
    ]);
  });

  it('gives YAML syntax errors with their position', () => {
    expect(problems('sources:\n  flows: {type: fixed\nsinks: {}\n')).toEqual([
      'pipelines/x.yaml:3:1: yaml: flow map in block collection must be sufficiently indented and end with a }',
    ]);
    expect(problems('sources:\n  a: {type: fixed}\n  a: {type: fixed}\n')).toEqual([
      'pipelines/x.yaml:3:3: yaml: map keys must be unique',
    ]);
    expect(problems('sources:\n  a: {type: fixed, size: ${S}}\n')).toEqual([
      'pipelines/x.yaml:2:27: yaml: unexpected flow-map-start at node end; inside {...} and [...] quote values that use ${VAR}: "${VAR}"',
    ]);
    expect(problems('sources:\n\tflows: 1\n')).toEqual([
      'pipelines/x.yaml:2:1: yaml: tabs are not allowed as indentation',
    ]);
  });

  it('lists every problem of a file, in file order', () => {
    const text = `sources:
  flows: {type: fixd}
transforms:
  acct: {type: hold, inputs: [flows], max_entries: 0}
sinks:
  out: {type: collect, inputs: [act]}
`;
    const err = (() => {
      try {
        config(text);
      } catch (e) {
        return e as PipelineConfigError;
      }
      throw new Error('no error');
    })();
    expect(err).toBeInstanceOf(PipelineConfigError);
    expect(err.code).toBe('ECONFIG');
    expect(err.message).toBe(
      [
        "pipelines/x.yaml:2:17: sources.flows.type: unknown source type 'fixd' (did you mean 'fixed'?); source types: fixed",
        'pipelines/x.yaml:4:52: transforms.acct.max_entries: must be >= 1, got 0',
        "pipelines/x.yaml:6:33: sinks.out.inputs[0]: unknown input 'act' (did you mean 'acct'?); ids that exist: flows, acct",
      ].join('\n'),
    );
    expect(err.problems[1]).toEqual({
      file: FILE,
      line: 4,
      column: 52,
      path: 'transforms.acct.max_entries',
      message: 'must be >= 1, got 0',
    });
  });
});

describe('interpolation', () => {
  const text = `sources:
  flows:
    type: fixed
    size: \${SIZE}
    batches: \${BATCHES:-4}
transforms:
  p: {type: pass, inputs: [flows], tags: ["\${TAG}", "$$\{TAG}", 'cost: $$5', "\${EMPTY:-fallback}"]}
sinks:
  out: {type: collect, inputs: ["\${INPUT:-p}"], fail: "\${FAIL}"}
`;

  it('replaces set variables and defaults, typed like YAML for plain values and by the option for quoted ones', () => {
    const c = config(text, { SIZE: '7', TAG: 'edge', EMPTY: '', FAIL: 'true' });
    expect(c.components.get('flows')!.config).toEqual({ batches: 4, size: 7, first: 0, complete: true });
    expect(c.components.get('p')!.config).toEqual({
      mode: 'all',
      tags: ['edge', '${TAG}', 'cost: $5', 'fallback'],
    });
    expect(c.components.get('out')!.inputs).toEqual(['p']);
    expect(c.components.get('out')!.config).toEqual({ retry: { attempts: 3, backoff_ms: 100 }, fail: true });
  });

  it('reports each unset variable with its name and position, and nothing that follows from it', () => {
    expect(problems(text, { TAG: 'edge', FAIL: 'false' })).toEqual([
      'pipelines/x.yaml:4:11: sources.flows.size: environment variable SIZE is not set; set it, or give a default with ${SIZE:-value}',
    ]);
    expect(problems(text, { SIZE: '2' })).toEqual([
      'pipelines/x.yaml:7:44: transforms.p.tags[0]: environment variable TAG is not set; set it, or give a default with ${TAG:-value}',
      'pipelines/x.yaml:9:56: sinks.out.fail: environment variable FAIL is not set; set it, or give a default with ${FAIL:-value}',
    ]);
  });

  it('reports a bad reference', () => {
    expect(problems(GOOD.replace('type: collect', 'type: "${SINK"'))).toEqual([
      "pipelines/x.yaml:10:12: sinks.out.type: unterminated '${' in '${SINK'; close it with '}' or write '$$' for a literal '$'",
    ]);
    expect(problems(GOOD.replace('type: collect', 'type: x${1X}'))).toEqual([
      "pipelines/x.yaml:10:12: sinks.out.type: bad variable name '1X' in '${1X}'; names use letters, digits and '_' and do not start with a digit",
    ]);
  });
});

describe('checked config', () => {
  it('has ids, kinds, types, inputs, outputs, defaults applied and a topological order', () => {
    const c = config(`sinks:
  out: {type: collect, inputs: [b, a], retry: {attempts: 5}}
transforms:
  b: {type: pass, inputs: [a]}
  a: {type: hold, inputs: [flows, more], max_entries: 3}
sources:
  flows: {type: fixed, size: 1}
  more: {type: fixed}
`);
    expect(c.file).toBe(FILE);
    expect(c.order.map((s) => s.id)).toEqual(['flows', 'more', 'a', 'b', 'out']);
    expect(c.sources.map((s) => s.id)).toEqual(['flows', 'more']);
    expect(c.transforms.map((s) => s.id)).toEqual(['b', 'a']);
    expect(c.sinks.map((s) => s.id)).toEqual(['out']);
    const out = c.components.get('out')!;
    expect(out).toMatchObject({
      kind: 'sink',
      type: 'collect',
      inputs: ['b', 'a'],
      outputs: [],
      line: 2,
      column: 3,
    });
    expect(out.config).toEqual({ retry: { attempts: 5, backoff_ms: 100 }, fail: false });
    expect(c.components.get('a')).toMatchObject({
      kind: 'transform',
      type: 'hold',
      inputs: ['flows', 'more'],
      outputs: ['b', 'out'],
    });
    expect(c.components.get('a')!.config).toEqual({ max_entries: 3, evict_timeout_ms: 5000 });
    expect(c.components.get('flows')!.config).toEqual({ batches: 3, size: 1, first: 0, complete: true });
    expect(c.components.get('flows')!.module.type).toBe('fixed');
  });

  it('follows YAML anchors and aliases', () => {
    const c = config(`sources:
  flows: &src {type: fixed, size: 4}
  more: *src
sinks:
  out: {type: collect, inputs: [flows, more]}
`);
    expect(c.components.get('more')!.config).toEqual({ batches: 3, size: 4, first: 0, complete: true });
  });
});

describe('loadPipeline', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rxflow-pipeline-load-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads a file and names it in problems', async () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, GOOD.replace('type: hold', 'type: hodl'));
    await expect(loadPipeline(file, { registry, env: {} })).rejects.toThrow(
      `${file}:6:11: transforms.acct.type: unknown transform type 'hodl' (did you mean 'hold'?); transform types: hold, pass`,
    );
  });

  it('says a missing file is missing', async () => {
    const file = join(dir, 'nope.yaml');
    const err = await loadPipeline(file, { registry }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PipelineError);
    expect(err).toMatchObject({ code: 'ENOFILE', message: `read ${file}: no such file; check the path` });
  });
});
