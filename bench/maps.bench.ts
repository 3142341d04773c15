/**
 * Read-and-delete of 100k entries of a per-CPU hash map shaped like the flow map (48-byte key,
 * 96-byte value): BpfMap.drain() with lookup_and_delete_batch against the per-key path
 * (get_next_key + lookup + delete), same map, same run. The map is refilled before every timed
 * drain; filling is not timed.
 */
import { possibleCpus, type BpfMap } from '../src/datapath/map.js';
import { ObjectSpec } from '../src/datapath/object.js';
import { synchronousBenchmark, type BenchContext } from './lib.js';

const ENTRIES = 100_000;

function fill(m: BpfMap, keys: Uint8Array[], value: Uint8Array): void {
  for (const k of keys) m.update(k, value, 'noexist');
}

function timeDrain(m: BpfMap, mode: 'batch' | 'iterate'): number {
  const t0 = process.hrtime.bigint();
  const r = m.drain({ mode });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.count !== ENTRIES) throw new Error(`${mode} drain returned ${r.count} entries, expected ${ENTRIES}`);
  return ms;
}

function run(ctx: BenchContext): void {
  const object = new URL('../../bpf/test_datapath.o', import.meta.url).pathname;
  const coll = ObjectSpec.open(object).setMaxEntries('test_flows', 131_072).load();
  const rounds = ctx.quick ? 2 : 5;
  try {
    const m = coll.map('test_flows');
    const keys = Array.from({ length: ENTRIES }, (_, i) => {
      const k = new Uint8Array(48);
      const dv = new DataView(k.buffer);
      dv.setUint32(0, i, true);
      dv.setUint32(44, i * 2654435761, true);
      return k;
    });
    const value = new Uint8Array(96 * possibleCpus()).fill(7);

    let batch = Infinity;
    let iterate = Infinity;
    for (let r = 0; r < rounds; r++) {
      fill(m, keys, value);
      batch = Math.min(batch, timeDrain(m, 'batch'));
      fill(m, keys, value);
      iterate = Math.min(iterate, timeDrain(m, 'iterate'));
    }
    ctx.report({
      name: 'maps.drain_batch_100k',
      value: batch,
      unit: 'ms',
      baseline: { name: 'maps.drain_iterate_100k', value: iterate },
      target: { value: 80, better: 'lower' },
      note: `per-CPU hash, key 48 B, value 96 B x ${possibleCpus()} cpus, best of ${rounds}`,
    });
    ctx.report({
      name: 'maps.drain_batch_speedup',
      value: iterate / batch,
      unit: 'x',
      target: { value: 3, better: 'higher' },
    });
  } finally {
    coll.close();
  }
}

export default synchronousBenchmark(run);
