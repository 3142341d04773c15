import type { ErrorObject } from 'ajv';
import { MAX_TIMER_MS } from '../component.js';
import { isSecretKey } from '../redact.js';
import { DURATION_HINT, isDurationKey } from '../config/duration.js';
import type { Path, Segment } from '../config/document.js';
import { didYouMean, listOf } from '../config/suggest.js';

/** A schema violation, placed at a path inside one component's config. */
export interface SchemaProblem {
  /** Where to point: the key at this path (`key`) or its value. */
  at: Path;
  side: 'key' | 'value';
  /** The path shown before the message. */
  shown: Path;
  message: string;
}

/** How a value reads in a message: `'abc'`, `5`, `a list`. */
export function describe(value: unknown): string {
  return describeValue(value);
}

function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'an empty value';
  if (typeof value === 'string') {
    const s = value.length > 60 ? `${value.slice(0, 57)}...` : value;
    return `'${s}'`;
  }
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a map';
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return typeof value;
}

const TYPE_NAMES: Record<string, string> = {
  integer: 'an integer',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  object: 'a map',
  array: 'a list',
  null: 'empty',
};

function typeNames(type: unknown): string {
  const types = Array.isArray(type) ? (type as string[]) : String(type).split(',');
  return types.map((t) => TYPE_NAMES[t] ?? t).join(' or ');
}

function literal(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** Splits a JSON pointer into keys and list indexes, reading `data` to tell which is which. */
function segmentsOf(pointer: string, data: unknown): Segment[] {
  if (pointer === '') return [];
  const out: Segment[] = [];
  let at = data;
  for (const raw of pointer.slice(1).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(at)) {
      const i = Number(key);
      out.push(i);
      at = at[i] as unknown;
    } else {
      out.push(key);
      at = at !== null && typeof at === 'object' ? (at as Record<string, unknown>)[key] : undefined;
    }
  }
  return out;
}

/**
 * Turns ajv errors (run with `verbose` and `allErrors`) into one message per problem. Errors under a
 * failed anyOf/oneOf are folded into it, since a user cannot act on each branch's complaint.
 * `reserved` are the pipeline's own keys (type, inputs), suggested for a misspelt key but not listed.
 */
export function translateErrors(
  errors: readonly ErrorObject[],
  data: unknown,
  base: Path,
  reserved: readonly string[],
): SchemaProblem[] {
  const branches = errors
    .filter((e) => e.keyword === 'anyOf' || e.keyword === 'oneOf')
    .map((e) => `${e.schemaPath}/`);
  const out: SchemaProblem[] = [];
  for (const err of errors) {
    if (branches.some((b) => err.schemaPath.startsWith(b))) continue;
    const path = [...base, ...segmentsOf(err.instancePath, data)];
    const last = path[path.length - 1];
    const value: unknown = err.data;
    const params = err.params as Record<string, unknown>;
    // A message about a password must not print the password.
    const secret = path.some((s) => typeof s === 'string' && isSecretKey(s));
    const describe = (v: unknown): string => (secret ? 'a value not shown (a secret)' : describeValue(v));
    switch (err.keyword) {
      case 'additionalProperties': {
        const key = String(params.additionalProperty);
        const properties = Object.keys(
          (err.parentSchema as { properties?: Record<string, unknown> } | undefined)?.properties ?? {},
        );
        const candidates = err.instancePath === '' ? [...properties, ...reserved] : properties;
        out.push({
          at: [...path, key],
          side: 'key',
          shown: path,
          message: `unknown key '${key}'${didYouMean(key, candidates)}; allowed: ${listOf(properties)}`,
        });
        break;
      }
      case 'required':
        out.push({
          at: path,
          side: 'key',
          shown: path,
          message: `missing key '${String(params.missingProperty)}'`,
        });
        break;
      case 'type': {
        let message = `must be ${typeNames(params.type)}, got ${describe(value)}`;
        if (typeof last === 'string' && isDurationKey(last)) message += `; ${DURATION_HINT}`;
        out.push({ at: path, side: 'value', shown: path, message });
        break;
      }
      case 'enum': {
        const allowed = (params.allowedValues as unknown[]).map(literal);
        const hint = typeof value === 'string' && !secret ? didYouMean(value, allowed) : '';
        out.push({
          at: path,
          side: 'value',
          shown: path,
          message: `must be one of: ${allowed.join(', ')}; got ${describe(value)}${hint}`,
        });
        break;
      }
      case 'const':
        out.push({
          at: path,
          side: 'value',
          shown: path,
          message: `must be ${literal(params.allowedValue)}, got ${describe(value)}`,
        });
        break;
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum': {
        const timer =
          err.keyword === 'maximum' &&
          typeof last === 'string' &&
          isDurationKey(last) &&
          params.limit === MAX_TIMER_MS;
        out.push({
          at: path,
          side: 'value',
          shown: path,
          message: timer
            ? `must be at most ${MAX_TIMER_MS} ms (about 24.8 days), the longest a timer can wait; got ${describe(value)} ms`
            : `must be ${String(params.comparison)} ${String(params.limit)}, got ${describe(value)}`,
        });
        break;
      }
      case 'minLength':
      case 'minItems':
      case 'minProperties':
      case 'maxLength':
      case 'maxItems':
      case 'maxProperties': {
        const limit = Number(params.limit);
        const unit = err.keyword.endsWith('Length')
          ? 'character'
          : err.keyword.endsWith('Items')
            ? 'item'
            : 'key';
        const bound = err.keyword.startsWith('min') ? 'at least' : 'at most';
        out.push({
          at: path,
          side: 'value',
          shown: path,
          message: `must have ${bound} ${limit} ${unit}${limit === 1 ? '' : 's'}, got ${describe(value)}`,
        });
        break;
      }
      case 'pattern':
        out.push({
          at: path,
          side: 'value',
          shown: path,
          message: `must match ${String(params.pattern)}, got ${describe(value)}`,
        });
        break;
      case 'anyOf':
      case 'oneOf': {
        // `anyOf: [{required: [a]}, {required: [b]}]`: one of two keys is needed.
        const branches = (err.schema as unknown[] | undefined) ?? [];
        const keys = branches.map((b) => {
          const r = (b as { required?: unknown }).required;
          return Array.isArray(r) && r.length === 1 ? String(r[0]) : undefined;
        });
        if (err.keyword === 'anyOf' && keys.length > 0 && keys.every((k) => k !== undefined)) {
          out.push({
            at: path,
            side: 'key',
            shown: path,
            message: `missing key ${keys.map((k) => `'${k}'`).join(' or ')}`,
          });
          break;
        }
        out.push({
          at: path,
          side: 'value',
          shown: path,
          message:
            err.keyword === 'oneOf' && params.passingSchemas
              ? `${describe(value)} matches more than one allowed form`
              : `${describe(value)} matches none of the allowed forms`,
        });
        break;
      }
      default:
        out.push({
          at: path,
          side: 'value',
          shown: path,
          message: `${err.message ?? 'is not valid'}, got ${describe(value)}`,
        });
    }
  }
  return out;
}
