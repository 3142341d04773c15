import { describe, expect, it } from 'vitest';
import { checkStructLayout, readStructLayout } from '../../src/datapath/btf.js';
import { DatapathError } from '../../src/datapath/errors.js';
import { testObject } from './datapath-helpers.js';

// Reading BTF needs no privilege, only the built object.
describe('datapath btf layouts', () => {
  const obj = testObject('test_datapath');

  const rbConfig = {
    name: 'rb_config',
    size: 32,
    fields: [
      { name: 'records_per_run', offset: 0, size: 4 },
      { name: 'discard_every', offset: 4, size: 4 },
      { name: 'fixed_size', offset: 8, size: 4 },
      { name: '_pad0', offset: 12, size: 4 },
      { name: 'next_seq', offset: 16, size: 8 },
      { name: 'reserve_failed', offset: 24, size: 8 },
    ],
  };

  it('reads a struct as clang laid it out', () => {
    expect(readStructLayout(obj, 'rb_config')).toEqual(rbConfig);
    expect(readStructLayout(obj, 'test_flow_key')).toEqual({
      name: 'test_flow_key',
      size: 48,
      fields: [{ name: 'b', offset: 0, size: 48 }],
    });
    expect(() => checkStructLayout(obj, rbConfig)).not.toThrow();
  });

  it('names every difference from the TypeScript layout', () => {
    const drifted = {
      name: 'rb_config',
      size: 40,
      fields: [
        ...rbConfig.fields.filter((f) => f.name !== 'reserve_failed' && f.name !== 'next_seq'),
        { name: 'next_seq', offset: 20, size: 8 },
        { name: 'dropped', offset: 32, size: 8 },
      ],
    };
    let err: unknown;
    try {
      checkStructLayout(obj, drifted);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DatapathError);
    expect((err as DatapathError).code).toBe('EOBJLAYOUT');
    expect((err as DatapathError).message).toBe(
      `${obj}: struct rb_config differs from the TypeScript layout: size 32 in the object, 40 in TypeScript; ` +
        'field next_seq at offset 16 size 8 in the object, offset 20 size 8 in TypeScript; ' +
        'field reserve_failed missing in TypeScript; field dropped missing in the object; ' +
        "rebuild the object with 'bash scripts/setup.sh' if the header changed, else update the TypeScript side",
    );
  });

  it('reports a struct the object does not have', () => {
    expect(() => readStructLayout(obj, 'flow_key')).toThrow(
      `read btf of ${obj}: no struct flow_key; rebuild it with 'bash scripts/setup.sh', or check that a map or program uses the struct (clang drops unused types)`,
    );
  });
});
