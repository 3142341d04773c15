import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { format, resolveConfig } from 'prettier';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import { defaultRegistry } from '../../../src/pipeline/registry.js';
import { formatJson, pipelineSchema } from '../../../src/pipeline/schema.js';
import { hold, testRegistry } from './components.js';

const SCHEMA_FILE = new URL('../../../schema/pipeline.schema.json', import.meta.url);

describe('schema/pipeline.schema.json', () => {
  it('is what `rxflow schema` prints for the registered components', () => {
    const committed = readFileSync(SCHEMA_FILE, 'utf8');
    const current = formatJson(pipelineSchema(defaultRegistry()));
    expect(
      committed,
      'schema/pipeline.schema.json is stale; regenerate it with: npx tsc -p . && node dist/src/cli/main.js schema > schema/pipeline.schema.json',
    ).toBe(current);
  });

  it('is printed the way prettier formats JSON, so the format check passes', async () => {
    const text = formatJson(pipelineSchema(testRegistry()));
    const options = (await resolveConfig(SCHEMA_FILE)) ?? {};
    expect(text).toBe(await format(text, { ...options, parser: 'json' }));
    const lists = formatJson({
      short: [1, 2],
      long: Array.from({ length: 40 }, (_, i) => `value-${i}`),
      empty: {},
    });
    expect(lists).toBe(await format(lists, { ...options, parser: 'json' }));
  });
});

describe('pipelineSchema', () => {
  const schema = pipelineSchema(testRegistry());
  const validate = new Ajv({ strict: true, allErrors: true }).compile(schema);
  const check = (yaml: string) => {
    const ok = validate(parse(yaml));
    return ok ? [] : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ''}`);
  };

  it('has a definition per type with its own options, type and inputs', () => {
    const interpolation = { $ref: '#/definitions/interpolation' };
    const definitions = schema.definitions as Record<string, Record<string, unknown>>;
    expect(Object.keys(definitions)).toEqual([
      'interpolation',
      'inputs',
      'source.fixed',
      'transform.hold',
      'transform.pass',
      'sink.collect',
    ]);
    expect(definitions['transform.hold']).toEqual({
      description: 'holds records until the input completes',
      type: 'object',
      additionalProperties: false,
      required: ['type', 'inputs'],
      properties: {
        type: { const: 'hold', description: 'transform type' },
        inputs: { $ref: '#/definitions/inputs' },
        max_entries: {
          default: 1000,
          description: 'records held at most',
          anyOf: [{ type: 'integer', minimum: 1 }, interpolation],
        },
        evict_timeout_ms: {
          default: 5000,
          description: 'unused here',
          anyOf: [
            { type: 'integer', minimum: 0 },
            { type: 'string', pattern: '^(\\d+|(\\d+(\\.\\d+)?(ms|s|m|h))+)$' },
            interpolation,
          ],
        },
      },
    });
    expect((definitions['source.fixed']!.properties as Record<string, unknown>).inputs).toBeUndefined();
    expect(definitions['source.fixed']!.required).toEqual(['type']);
    expect((schema.properties as Record<string, unknown>).sinks).toEqual({
      description: 'Where flows go, keyed by an id of your choice; each lists its inputs.',
      type: 'object',
      propertyNames: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_-]*$' },
      additionalProperties: {
        type: 'object',
        required: ['type'],
        properties: { type: { description: 'sink type', type: 'string' } },
        if: { properties: { type: interpolation }, required: ['type'] },
        else: { properties: { type: { enum: ['collect'] } } },
        allOf: [
          {
            if: { properties: { type: { const: 'collect' } }, required: ['type'] },
            then: { $ref: '#/definitions/sink.collect' },
          },
        ],
      },
    });
  });

  it('accepts a valid pipeline, durations as strings included', () => {
    expect(
      check(`sources:
  flows: {type: fixed, size: 2}
transforms:
  acct: {type: hold, inputs: [flows], evict_timeout_ms: 1m30s}
sinks:
  out: {type: collect, inputs: [acct], retry: {backoff_ms: 250ms}}
`),
    ).toEqual([]);
  });

  it('rejects what the loader rejects: unknown keys and types, a source with inputs, missing inputs', () => {
    expect(check('sources:\n  flows: {type: fixed, inputs: [x]}\n')).toContain(
      '/sources/flows must NOT have additional properties',
    );
    expect(check('sinks:\n  out: {type: collect}\n')).toContain(
      "/sinks/out must have required property 'inputs'",
    );
    expect(check('transforms:\n  t: {type: hold, inputs: [a], max_entrie: 1}\n')).toContain(
      '/transforms/t must NOT have additional properties',
    );
    expect(check('transforms:\n  t: {type: hold, inputs: [a], evict_timeout_ms: 5 parsecs}\n')).toContain(
      '/transforms/t/evict_timeout_ms must match a schema in anyOf',
    );
    expect(check('transforms:\n  t: {type: hodl, inputs: [a]}\n')).toContain(
      '/transforms/t/type must be equal to one of the allowed values',
    );
    expect(check('sink:\n  out: {type: collect, inputs: [a]}\n')).toEqual([
      ' must NOT have additional properties',
    ]);
    expect(check('sinks:\n  my out: {type: collect, inputs: [a]}\n')).toContain(
      '/sinks property name must be valid',
    );
  });

  it('allows no entries in a section whose kind has no types', () => {
    const sections = pipelineSchema(new ComponentRegistry([hold])).properties as Record<
      string,
      Record<string, unknown>
    >;
    expect(sections.sources!.additionalProperties).toBe(false);
    expect(sections.sinks!.additionalProperties).toBe(false);
    expect(sections.transforms!.additionalProperties).toMatchObject({
      else: { properties: { type: { enum: ['hold'] } } },
      allOf: [
        {
          if: { properties: { type: { const: 'hold' } }, required: ['type'] },
          then: { $ref: '#/definitions/transform.hold' },
        },
      ],
    });
  });
});
