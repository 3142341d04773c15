import type { ComponentKind, ComponentModule, JsonSchema } from '../component.js';
import type { ComponentRegistry } from './component-registry.js';
import { DURATION_PATTERN, isDurationKey } from './duration.js';
import { ID_PATTERN, SECTIONS } from './load.js';
import { SETTINGS_SCHEMA } from './settings.js';

const SECTION_DESCRIPTIONS: Record<ComponentKind, string> = {
  source: 'Where flows come from, keyed by an id of your choice.',
  transform: 'What is done to flows on the way, keyed by an id of your choice; each lists its inputs.',
  sink: 'Where flows go, keyed by an id of your choice; each lists its inputs.',
};

const ANNOTATIONS = ['title', 'description', 'default', 'examples'];

/**
 * `*_ms` options also take strings such as "5s" (the loader converts them), so the editor schema
 * accepts both forms.
 */
function withDurations(schema: unknown, key?: string): unknown {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) return schema;
  const s = schema as JsonSchema;
  if (key !== undefined && isDurationKey(key) && s.type === 'integer') {
    const outer: JsonSchema = {};
    const integer: JsonSchema = {};
    for (const [k, v] of Object.entries(s)) (ANNOTATIONS.includes(k) ? outer : integer)[k] = v;
    outer.anyOf = [integer, { type: 'string', pattern: DURATION_PATTERN }];
    return outer;
  }
  const out: JsonSchema = { ...s };
  if (s.properties && typeof s.properties === 'object') {
    out.properties = Object.fromEntries(
      Object.entries(s.properties as Record<string, unknown>).map(([k, v]) => [k, withDurations(v, k)]),
    );
  }
  // A list of durations: `buckets_ms: [5s, 1m]`.
  if (s.items !== undefined) out.items = withDurations(s.items, key);
  if (s.additionalProperties && typeof s.additionalProperties === 'object') {
    out.additionalProperties = withDurations(s.additionalProperties);
  }
  return out;
}

function definition(module: ComponentModule): JsonSchema {
  const {
    properties,
    required,
    type: _type,
    additionalProperties: _ap,
    $schema: _s,
    ...rest
  } = module.schema;
  const own = (withDurations({ properties: properties ?? {} }) as { properties: Record<string, unknown> })
    .properties;
  const reserved: Record<string, unknown> = {
    type: { const: module.type, description: `${module.kind} type` },
  };
  if (module.kind !== 'source') reserved.inputs = { $ref: '#/definitions/inputs' };
  return {
    ...rest,
    description: module.description,
    type: 'object',
    additionalProperties: false,
    required: [...Object.keys(reserved), ...((required as string[] | undefined) ?? [])],
    properties: { ...reserved, ...own },
  };
}

/** The JSON Schema (draft-07) of the pipeline format with every type in `registry`. */
export function pipelineSchema(registry: ComponentRegistry): JsonSchema {
  const definitions: Record<string, JsonSchema> = {
    inputs: {
      description: 'Ids of the sources and transforms this component reads from; several are merged.',
      type: 'array',
      minItems: 1,
      uniqueItems: true,
      items: { type: 'string', pattern: ID_PATTERN },
    },
  };
  const properties: Record<string, JsonSchema> = {};
  for (const [key, setting] of Object.entries(SETTINGS_SCHEMA)) {
    properties[key] = withDurations(setting, key) as JsonSchema;
  }
  for (const [section, kind] of SECTIONS) {
    const refs = registry.types(kind).map((type) => {
      const name = `${kind}.${type}`;
      definitions[name] = definition(registry.find(kind, type)!);
      return { $ref: `#/definitions/${name}` };
    });
    properties[section] = {
      description: SECTION_DESCRIPTIONS[kind],
      type: 'object',
      propertyNames: { type: 'string', pattern: ID_PATTERN },
      additionalProperties: refs.length > 0 ? { oneOf: refs } : false,
    };
  }
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'rxflow pipeline',
    description:
      'A pipeline: sources, transforms and sinks keyed by id. Scalar values may use ${VAR} and ${VAR:-default} from the environment; $$ is a literal $.',
    type: 'object',
    additionalProperties: false,
    properties,
    definitions,
  };
}

const WIDTH = 110;

/**
 * JSON as prettier formats it (2-space indent, lists of scalars on one line when they fit), so the
 * committed schema file passes the format check as generated.
 */
export function formatJson(value: unknown): string {
  return `${print(value, 0, 0, true)}\n`;
}

function isScalar(value: unknown): boolean {
  return value === null || typeof value !== 'object';
}

function inline(value: unknown): string | undefined {
  if (isScalar(value)) return JSON.stringify(value);
  if (Array.isArray(value)) {
    const parts = value.map(inline);
    return parts.every((p) => p !== undefined) ? `[${parts.join(', ')}]` : undefined;
  }
  return Object.keys(value as object).length === 0 ? '{}' : undefined;
}

/** `used`: characters already on the line before the value; `last`: no comma follows it. */
function print(value: unknown, indent: number, used: number, last: boolean): string {
  if (isScalar(value)) return JSON.stringify(value);
  const pad = ' '.repeat(indent + 2);
  const end = ' '.repeat(indent);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    const flat = inline(value);
    if (flat !== undefined && used + flat.length + (last ? 0 : 1) <= WIDTH) return flat;
    if (value.every((v) => typeof v === 'number')) {
      const lines: string[] = [];
      let line = '';
      value.forEach((v, i) => {
        const item = `${JSON.stringify(v)}${i < value.length - 1 ? ',' : ''}`;
        if (line !== '' && pad.length + line.length + 1 + item.length > WIDTH) {
          lines.push(line);
          line = item;
        } else {
          line = line === '' ? item : `${line} ${item}`;
        }
      });
      lines.push(line);
      return `[\n${lines.map((l) => pad + l).join('\n')}\n${end}]`;
    }
    const items = value.map((v, i) => pad + print(v, indent + 2, pad.length, i === value.length - 1));
    return `[\n${items.join(',\n')}\n${end}]`;
  }
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length === 0) return '{}';
  const lines = entries.map(([k, v], i) => {
    const head = `${pad}${JSON.stringify(k)}: `;
    return head + print(v, indent + 2, head.length, i === entries.length - 1);
  });
  return `{\n${lines.join(',\n')}\n${end}}`;
}
