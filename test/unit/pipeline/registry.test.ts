import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { ComponentModule } from '../../../src/component.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import { PipelineError } from '../../../src/config/errors.js';
import { defaultRegistry, modules } from '../../../src/pipeline/registry.js';
import { fixed, hold, pass } from './components.js';

const FOLDER = { source: 'sources', transform: 'operators', sink: 'sinks' } as const;

describe('src/pipeline/registry.ts', () => {
  it('builds a registry of every listed module', () => {
    const registry = defaultRegistry();
    for (const m of modules) expect(registry.find(m.kind, m.type)).toBe(m);
  });

  it.each(modules.map((m) => [`${m.kind} ${m.type}`, m] as const))(
    '%s: lives in the file named by its type',
    (_, m) => {
      expect(existsSync(new URL(`../../../src/${FOLDER[m.kind]}/${m.type}.ts`, import.meta.url))).toBe(true);
    },
  );

  it.each(modules.map((m) => [`${m.kind} ${m.type}`, m] as const))(
    '%s: its example passes its strict schema',
    (_, m) => {
      const result = defaultRegistry().validate(m, m.example as Record<string, unknown>);
      expect(result.errors).toEqual([]);
      expect(result.ok).toBe(true);
    },
  );
});

describe('ComponentRegistry', () => {
  const registry = new ComponentRegistry([fixed, hold, pass]);

  it('finds modules by kind and type and lists the types of a kind, sorted', () => {
    expect(registry.find('transform', 'hold')).toBe(hold);
    expect(registry.find('source', 'hold')).toBeUndefined();
    expect(registry.types('transform')).toEqual(['hold', 'pass']);
    expect(registry.types('sink')).toEqual([]);
  });

  it('fills in defaults on a copy', () => {
    const config = { max_entries: 7 };
    expect(registry.validate(hold, config)).toEqual({
      ok: true,
      config: { max_entries: 7, evict_timeout_ms: 5000 },
      errors: [],
    });
    expect(config).toEqual({ max_entries: 7 });
  });

  const broken = (schema: Record<string, unknown>): ComponentModule => ({ ...pass, type: 'broken', schema });
  const refusal = (modules: ComponentModule[]) => {
    try {
      new ComponentRegistry(modules);
    } catch (err) {
      expect(err).toBeInstanceOf(PipelineError);
      expect((err as PipelineError).code).toBe('EMODULE');
      return (err as Error).message;
    }
    throw new Error('accepted');
  };

  it('refuses a module listed twice', () => {
    expect(refusal([pass, pass])).toBe(
      "component transform 'pass': registered twice; fix the module or its line in src/pipeline/registry.ts",
    );
  });

  it('refuses a schema that would let unknown keys through', () => {
    expect(refusal([broken({ type: 'object', properties: {} })])).toBe(
      "component transform 'broken': schema must be of type 'object' with additionalProperties: false; fix the module or its line in src/pipeline/registry.ts",
    );
  });

  it('refuses options named like the pipeline keys and $ref', () => {
    expect(
      refusal([
        broken({ type: 'object', additionalProperties: false, properties: { inputs: { type: 'string' } } }),
      ]),
    ).toBe(
      "component transform 'broken': schema must not define 'inputs', which every pipeline entry has; fix the module or its line in src/pipeline/registry.ts",
    );
    expect(
      refusal([
        broken({
          type: 'object',
          additionalProperties: false,
          properties: { a: { $ref: '#/definitions/a' } },
        }),
      ]),
    ).toBe(
      "component transform 'broken': schema must not use '$ref'; write the definitions inline; fix the module or its line in src/pipeline/registry.ts",
    );
  });

  it('refuses a schema strict mode rejects', () => {
    expect(
      refusal([
        broken({
          type: 'object',
          additionalProperties: false,
          properties: { a: { type: 'string', units: 'ms' } },
        }),
      ]),
    ).toBe(
      'component transform \'broken\': schema does not compile: strict mode: unknown keyword: "units"; fix the module or its line in src/pipeline/registry.ts',
    );
  });
});
