import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { ComponentKind, ComponentModule, JsonSchema } from '../component.js';
import { PipelineError } from '../config/errors.js';

export const KINDS: readonly ComponentKind[] = ['source', 'transform', 'sink'];

/** Keys every pipeline entry may have besides its component's own options. */
export const RESERVED_KEYS = ['type', 'inputs'] as const;

export interface ConfigValidation {
  ok: boolean;
  /** With `ok`, the config with the schema's defaults filled in. */
  config: Record<string, unknown>;
  errors: ErrorObject[];
}

/**
 * The component types a pipeline may use, by kind. Each module's schema is checked and compiled
 * (ajv, strict mode) when the registry is made, so a broken module fails every command at once,
 * with its name, instead of when a pipeline first uses it.
 */
export class ComponentRegistry {
  private readonly byKind = new Map<ComponentKind, Map<string, ComponentModule>>();
  private readonly validators = new Map<ComponentModule, ValidateFunction>();
  private readonly ajv = new Ajv({ strict: true, allErrors: true, useDefaults: true, verbose: true });

  constructor(readonly modules: readonly ComponentModule[]) {
    for (const kind of KINDS) this.byKind.set(kind, new Map());
    for (const module of modules) {
      const types = this.byKind.get(module.kind);
      if (!types) throw moduleError(module, `unknown kind '${String(module.kind)}'`);
      if (types.has(module.type)) throw moduleError(module, 'registered twice');
      checkSchema(module);
      types.set(module.type, module);
      this.validators.set(module, this.compile(module));
    }
  }

  find(kind: ComponentKind, type: string): ComponentModule | undefined {
    return this.byKind.get(kind)?.get(type);
  }

  /** The registered types of one kind, sorted. */
  types(kind: ComponentKind): string[] {
    return [...(this.byKind.get(kind)?.keys() ?? [])].sort();
  }

  /** Validates a copy of `config` (defaults are written into the copy). */
  validate(module: ComponentModule, config: Record<string, unknown>): ConfigValidation {
    const copy = structuredClone(config);
    const validate = this.validator(module);
    const ok = validate(copy);
    return { ok, config: copy, errors: ok ? [] : [...(validate.errors ?? [])] };
  }

  private validator(module: ComponentModule): ValidateFunction {
    const validate = this.validators.get(module);
    if (!validate) throw moduleError(module, 'not in this registry');
    return validate;
  }

  private compile(module: ComponentModule): ValidateFunction {
    try {
      return this.ajv.compile(module.schema);
    } catch (err) {
      throw moduleError(module, `schema does not compile: ${(err as Error).message}`, err);
    }
  }
}

function moduleError(module: ComponentModule, problem: string, cause?: unknown): PipelineError {
  return new PipelineError(
    'EMODULE',
    `component ${module.kind} '${module.type}': ${problem}; fix the module or its line in src/pipeline/registry.ts`,
    { cause },
  );
}

function checkSchema(module: ComponentModule): void {
  const schema = module.schema as JsonSchema & { properties?: Record<string, unknown> };
  if (schema.type !== 'object' || schema.additionalProperties !== false) {
    throw moduleError(module, "schema must be of type 'object' with additionalProperties: false");
  }
  for (const key of RESERVED_KEYS) {
    if (schema.properties && key in schema.properties) {
      throw moduleError(module, `schema must not define '${key}', which every pipeline entry has`);
    }
  }
  // The pipeline schema embeds each module schema under a new root, where a '#/...' reference
  // would point somewhere else.
  if (JSON.stringify(schema).includes('"$ref"')) {
    throw moduleError(module, "schema must not use '$ref'; write the definitions inline");
  }
}
