import type { ComponentKind, ComponentModule, JsonSchema } from '../component.js';
import type { ComponentRegistry } from './component-registry.js';
import { DURATION_PATTERN, isDurationKey } from '../config/duration.js';
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

/**
 * Where the schema says it comes from, so editors and validators can tell it from other schemas.
 * A name, not a place to fetch it from: `rxflow schema` prints it and the package ships it.
 */
export const SCHEMA_ID = 'urn:rxflow:schema:pipeline';

/**
 * A string holding `${VAR}` or `${VAR:-default}` (not `$${`, a literal `$` followed by `{`), as
 * `interpolate()` substitutes it. The loader checks the value once interpolated; the editor sees the
 * text as written, so every option accepts such a string.
 */
export const INTERPOLATION_PATTERN = '(^|[^$])(\\$\\$)*\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}';

const INTERPOLATION = { $ref: '#/definitions/interpolation' };

const SCALAR_TYPES = ['string', 'number', 'integer', 'boolean', 'null'];

/** Keywords by which a string schema may reject `${VAR}`; a plain `{type: string}` takes it already. */
const STRING_LIMITS = ['pattern', 'format', 'enum', 'const', 'maxLength', 'anyOf', 'oneOf', 'allOf', 'not'];

/** Whether `${VAR}` as written could fail `schema` where the interpolated value might pass. */
function rejectsInterpolation(s: JsonSchema): boolean {
  const declared = s.type;
  if (declared === undefined) return ['enum', 'const', 'anyOf', 'oneOf', 'allOf', 'not'].some((k) => k in s);
  const types: unknown[] = Array.isArray(declared) ? declared : [declared];
  if (!types.some((t) => SCALAR_TYPES.includes(t as string))) return false;
  if (!types.includes('string')) return true;
  // The shortest reference, `${A}`, has 4 characters.
  return STRING_LIMITS.some((k) => k in s) || (typeof s.minLength === 'number' && s.minLength > 4);
}

/**
 * Every scalar option also takes an interpolation string: the loader interpolates `${VAR}` in every
 * scalar value before it checks the options (document.ts), so `prometheus_port: ${PORT:-9464}` is
 * valid although the port is an integer. `wrap` is false for the branches of an `anyOf`, which is
 * widened once as a whole.
 */
function withInterpolation(schema: unknown, wrap = true): unknown {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) return schema;
  const s = schema as JsonSchema;
  const inner: JsonSchema = { ...s };
  const each = (map: unknown): unknown =>
    map !== null && typeof map === 'object'
      ? Object.fromEntries(Object.entries(map).map(([k, v]) => [k, withInterpolation(v)]))
      : map;
  if (s.properties !== undefined) inner.properties = each(s.properties);
  if (s.patternProperties !== undefined) inner.patternProperties = each(s.patternProperties);
  if (s.additionalProperties !== null && typeof s.additionalProperties === 'object') {
    inner.additionalProperties = withInterpolation(s.additionalProperties);
  }
  if (Array.isArray(s.items)) inner.items = s.items.map((item) => withInterpolation(item));
  else if (s.items !== undefined) inner.items = withInterpolation(s.items);
  for (const key of ['anyOf', 'oneOf']) {
    if (Array.isArray(s[key])) inner[key] = (s[key] as unknown[]).map((b) => withInterpolation(b, false));
  }
  if (!wrap || !rejectsInterpolation(s)) return inner;
  // Annotations stay outside, where editors look for them when hovering and completing.
  const outer: JsonSchema = {};
  const body: JsonSchema = {};
  for (const [k, v] of Object.entries(inner)) (ANNOTATIONS.includes(k) ? outer : body)[k] = v;
  const keys = Object.keys(body);
  outer.anyOf =
    keys.length === 1 && keys[0] === 'anyOf'
      ? [...(body.anyOf as unknown[]), INTERPOLATION]
      : [body, INTERPOLATION];
  return outer;
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
  const own = (
    withInterpolation(withDurations({ properties: properties ?? {} })) as {
      properties: Record<string, unknown>;
    }
  ).properties;
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

/**
 * An entry of a section, checked against the definition its `type` names: `if/then` keyed on the
 * `type` const rather than a `oneOf` of the definitions, so a wrong option is reported against its
 * component ("must NOT have additional properties") and not as a failure of every alternative. A
 * `type` from the environment is accepted unchecked; any other must be one of the types, which is
 * what a misspelt type is told (an `else`, not an `anyOf` whose failure would name no type).
 */
function component(kind: ComponentKind, types: readonly string[]): JsonSchema {
  return {
    type: 'object',
    required: ['type'],
    properties: { type: { description: `${kind} type`, type: 'string' } },
    if: { properties: { type: INTERPOLATION }, required: ['type'] },
    else: { properties: { type: { enum: [...types] } } },
    allOf: types.map((type) => ({
      if: { properties: { type: { const: type } }, required: ['type'] },
      then: { $ref: `#/definitions/${kind}.${type}` },
    })),
  };
}

/** The JSON Schema (draft-07) of the pipeline format with every type in `registry`. */
export function pipelineSchema(registry: ComponentRegistry): JsonSchema {
  const definitions: Record<string, JsonSchema> = {
    interpolation: {
      description:
        'A value from the environment: ${VAR}, or ${VAR:-default} when VAR is unset or empty, checked once interpolated when the pipeline is loaded; $$ is a literal $.',
      type: 'string',
      pattern: INTERPOLATION_PATTERN,
    },
    inputs: withInterpolation({
      description: 'Ids of the sources and transforms this component reads from; several are merged.',
      type: 'array',
      minItems: 1,
      uniqueItems: true,
      items: { type: 'string', pattern: ID_PATTERN },
    }) as JsonSchema,
  };
  const properties: Record<string, JsonSchema> = {};
  for (const [key, setting] of Object.entries(SETTINGS_SCHEMA)) {
    properties[key] = withInterpolation(withDurations(setting, key)) as JsonSchema;
  }
  for (const [section, kind] of SECTIONS) {
    const types = registry.types(kind);
    for (const type of types) definitions[`${kind}.${type}`] = definition(registry.find(kind, type)!);
    properties[section] = {
      description: SECTION_DESCRIPTIONS[kind],
      type: 'object',
      propertyNames: { type: 'string', pattern: ID_PATTERN },
      additionalProperties: types.length > 0 ? component(kind, types) : false,
    };
  }
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    $id: SCHEMA_ID,
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
