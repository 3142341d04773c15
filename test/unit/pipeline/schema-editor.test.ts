/**
 * The editor schema as an editor sees it: the YAML as written, `${VAR}` not yet interpolated. The
 * checks go through Python's `jsonschema` (scripts/setup.sh installs python3-jsonschema), a
 * validator independent of the ajv the loader and the schema's generator use.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { Ajv } from 'ajv';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { interpolate } from '../../../src/config/interpolate.js';
import { defaultRegistry } from '../../../src/pipeline/registry.js';
import { INTERPOLATION_PATTERN, SCHEMA_ID, pipelineSchema } from '../../../src/pipeline/schema.js';

const ROOT = new URL('../../../', import.meta.url);

/** Checks the schema against the draft-07 meta-schema, then prints each document's errors. */
const CHECK = `
import json, sys
import jsonschema
data = json.load(sys.stdin)
jsonschema.Draft7Validator.check_schema(data["schema"])
validator = jsonschema.Draft7Validator(data["schema"])
out = []
for doc in data["documents"]:
    errors = ["/" + "/".join(str(p) for p in e.absolute_path) + ": " + e.message for e in validator.iter_errors(doc)]
    out.append(sorted(errors))
print(json.dumps(out))
`;

let found: string | undefined;

/** The first python3 with the jsonschema module: Debian's (what scripts/setup.sh installs), else the one on PATH. */
function python(): string {
  if (found !== undefined) return found;
  for (const candidate of ['/usr/bin/python3', 'python3']) {
    const probe = spawnSync(candidate, ['-c', 'import jsonschema'], { encoding: 'utf8' });
    if (probe.status === 0) return (found = candidate);
  }
  throw new Error(
    "no python3 with the jsonschema module; run scripts/setup.sh, or 'apt-get install python3-jsonschema'",
  );
}

/** Each document's errors from Python's jsonschema, sorted: "/path: message". */
function independentErrors(schema: unknown, documents: unknown[]): string[][] {
  const run = spawnSync(python(), ['-c', CHECK], {
    input: JSON.stringify({ schema, documents }),
    encoding: 'utf8',
  });
  if (run.status !== 0) throw new Error(`python jsonschema failed: ${run.stderr}`);
  return JSON.parse(run.stdout) as string[][];
}

const schema = pipelineSchema(defaultRegistry());

/** Shipped YAML files that are pipelines: all of pipelines/, and the examples with sections. */
function shippedPipelines(): { file: string; doc: unknown }[] {
  const read = (dir: string): { file: string; doc: unknown }[] =>
    readdirSync(new URL(dir, ROOT))
      .filter((f) => /\.ya?ml$/.test(f))
      .sort()
      .map((f) => ({
        file: `${dir}${f}`,
        doc: parse(readFileSync(new URL(`${dir}${f}`, ROOT), 'utf8')) as unknown,
      }));
  const isPipeline = (doc: unknown) =>
    doc !== null && typeof doc === 'object' && ['sources', 'transforms', 'sinks'].some((k) => k in doc);
  return [...read('pipelines/'), ...read('examples/').filter((p) => isPipeline(p.doc))];
}

describe('the editor schema, checked by an independent validator', () => {
  it('has an $id and is a valid draft-07 schema', () => {
    expect(schema.$schema).toBe('http://json-schema.org/draft-07/schema#');
    expect(schema.$id).toBe('urn:rxflow:schema:pipeline');
    expect(SCHEMA_ID).toBe(schema.$id);
    expect(independentErrors(schema, [])).toEqual([]);
  });

  it('accepts every shipped pipeline as written, ${VAR} in numbers, ports, interfaces and servers', () => {
    const shipped = shippedPipelines();
    expect(shipped.map((p) => p.file)).toEqual(
      expect.arrayContaining([
        'pipelines/demo.yaml',
        'pipelines/kafka-export.yaml',
        'pipelines/metrics-only.yaml',
      ]),
    );
    const errors = independentErrors(
      schema,
      shipped.map((p) => p.doc),
    );
    expect(Object.fromEntries(shipped.map((p, i) => [p.file, errors[i]]))).toEqual(
      Object.fromEntries(shipped.map((p) => [p.file, []])),
    );
  });

  it('accepts ${VAR} in every kind of scalar option, and still rejects what is neither', () => {
    const [good, bad] = independentErrors(schema, [
      parse(`drain_timeout_ms: \${DRAIN:-5s}
sources:
  flows:
    type: ebpf_flows
    interfaces: ['\${IFACE:-a-name-longer-than-fifteen}']
    cache_max_flows: \${FLOWS:-5000}
    flush_on_map_full: \${FLUSH:-true}
    eviction_interval_ms: \${EVICT}
  old:
    type: file_replay
    paths: [/x]
    speed: \${SPEED:-0.5}
transforms:
  once:
    type: dedupe
    inputs: ['\${INPUT:-flows}', old]
    mode: \${DEDUPE:-first_come}
sinks:
  out:
    type: kafka
    inputs: [once]
    bootstrap_servers: ['\${KAFKA_HOST}:\${KAFKA_PORT:-9092}']
    topic: flows
  prom:
    type: otel_metrics
    inputs: [once]
    prometheus_port: \${PORT:-9464}
  console:
    type: \${CONSOLE_SINK:-stdout}
    inputs: [once]
`),
      parse(`sources:
  flows:
    type: ebpf_flows
    interfaces: [eth0]
    cache_max_flows: many
    flush_on_map_full: $\${FLUSH}
sinks:
  prom:
    type: otel_metrics
    inputs: [flows]
    prometheus_port: '{PORT}'
`),
    ]);
    expect(good).toEqual([]);
    expect(bad).toEqual([
      "/sinks/prom/prometheus_port: '{PORT}' is not valid under any of the given schemas",
      "/sources/flows/cache_max_flows: 'many' is not valid under any of the given schemas",
      "/sources/flows/flush_on_map_full: '$${FLUSH}' is not valid under any of the given schemas",
    ]);
  });

  it('reports a wrong option and a wrong type against their component', () => {
    const pipeline: unknown = parse(`sources:
  flows: {type: ebpf_flows, interfaces: [eth0], cache_max_flow: 10}
transforms:
  acct: {type: account, inputs: [flows], max_entries: lots}
sinks:
  out: {type: kafak, inputs: [acct]}
  prom: {inputs: [acct]}
`);
    expect(independentErrors(schema, [pipeline])).toEqual([
      [
        "/sinks/out/type: 'kafak' is not one of ['file', 'ipfix', 'kafka', 'nats_sessions', 'otel_metrics', 'stdout', 'top']",
        "/sinks/prom: 'type' is a required property",
        "/sources/flows: Additional properties are not allowed ('cache_max_flow' was unexpected)",
        "/transforms/acct/max_entries: 'lots' is not valid under any of the given schemas",
      ],
    ]);
    // The same through ajv, which reports the rule that failed beside the component's own error.
    const validate = new Ajv({ strict: true, allErrors: true }).compile(schema);
    expect(validate(pipeline)).toBe(false);
    expect((validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ''}`)).toEqual([
      '/sources/flows must NOT have additional properties',
      '/sources/flows must match "then" schema',
      '/transforms/acct/max_entries must be integer',
      '/transforms/acct/max_entries must match pattern "(^|[^$])(\\$\\$)*\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}"',
      '/transforms/acct/max_entries must match a schema in anyOf',
      '/transforms/acct must match "then" schema',
      '/sinks/out/type must be equal to one of the allowed values',
      '/sinks/out must match "else" schema',
      "/sinks/prom must have required property 'type'",
    ]);
  });
});

describe('INTERPOLATION_PATTERN', () => {
  const pattern = new RegExp(INTERPOLATION_PATTERN, 'u');
  /** Every variable set to a marker, so a reference shows in the result whatever its default. */
  const marked = new Proxy({}, { get: () => '\u0001' }) as Record<string, string>;
  const substitutes = (text: string): boolean => {
    const result = interpolate(text, marked);
    return result.ok && result.value.includes('\u0001');
  };

  it('matches a string exactly when the loader substitutes a variable in it', () => {
    expect(pattern.test('${A}')).toBe(true);
    expect(pattern.test('x:${A_1:-y}')).toBe(true);
    expect(pattern.test('$${A}')).toBe(false);
    expect(pattern.test('$$${A}')).toBe(true);
    expect(pattern.test('${1A}')).toBe(false);
    const text = fc.string({ unit: fc.constantFrom('$', '{', '}', ':', '-', 'A', '_', '1', 'x') });
    fc.assert(
      fc.property(text, (t) => {
        // A malformed reference is the loader's error to report; the pattern need not reject it.
        if (!interpolate(t, marked).ok) return;
        expect(pattern.test(t), t).toBe(substitutes(t));
      }),
      { numRuns: 2000 },
    );
  });
});
