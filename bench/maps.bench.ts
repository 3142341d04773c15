/**
 * Read-and-delete of 100k entries of a per-CPU hash map shaped like the flow map (48-byte key,
 * 96-byte value): BpfMap.drain() with lookup_and_delete_batch against the per-key path
 * (get_next_key + lookup + delete), same map, same run. The map is refilled before every timed
 * drain; filling is not timed.
 *
 * Then the longest event-loop stall during an eviction of the flow maps of bpf/flow.o (swap, then
 * drain of 4096 flows): FlowMaps.evict(), whose swap waits for an RCU grace period on the JS
 * thread, against FlowMaps.evictAsync(), whose swap waits on a worker thread; alternating, same
 * maps, same run. Reported as the median over the evictions, the worst in the note.
 */
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { FlowMaps, setFlowMapMaxEntries } from '../src/datapath/flow/maps.js';
import { possibleCpus, type BpfMap } from '../src/datapath/map.js';
import { ObjectSpec } from '../src/datapath/object.js';
import { synchronousBenchmark, type Benchmark, type BenchContext } from './lib.js';

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

/** Flows in the map at each eviction: a busy node's share of a 5 s interval, drained on the JS thread. */
const EVICT_FLOWS = 4096;

/**
 * The longest gap between two turns of the event loop (its check phase) from just before
 * `evict` starts until just after it ends. A synchronous eviction is one gap; an asynchronous one
 * leaves the loop turning except while its drain runs.
 */
async function longestStallMs(evict: () => unknown): Promise<number> {
  let on = true;
  let last = performance.now();
  let longest = 0;
  const tick = () => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    if (on) setImmediate(tick);
  };
  setImmediate(tick);
  await nextTurn();
  longest = 0;
  await evict();
  // The gap that ends with the eviction is measured by the next tick.
  await nextTurn();
  await nextTurn();
  on = false;
  return longest;
}

async function evictionStalls(ctx: BenchContext): Promise<void> {
  const object = new URL('../../bpf/flow.o', import.meta.url).pathname;
  const coll = setFlowMapMaxEntries(ObjectSpec.open(object), 65_536).load();
  const rounds = ctx.quick ? 5 : 20;
  try {
    const flowMaps = new FlowMaps(coll);
    const keySize = flowMaps.maps[0].keySize;
    const keys = Array.from({ length: EVICT_FLOWS }, (_, i) => {
      const k = new Uint8Array(keySize);
      new DataView(k.buffer).setUint32(0, i, true);
      return k;
    });
    const value = new Uint8Array(flowMaps.maps[0].valueBufferSize).fill(1);
    // Nothing runs the programs here, so the active map can be filled directly.
    const fill = () => {
      for (const k of keys) flowMaps.active.update(k, value, 'noexist');
    };
    const check = (count: number) => {
      if (count !== EVICT_FLOWS) throw new Error(`eviction drained ${count} flows, expected ${EVICT_FLOWS}`);
    };
    // Untimed: the first asynchronous call starts koffi's worker threads.
    fill();
    check((await flowMaps.evictAsync()).count);
    const sync: number[] = [];
    const async: number[] = [];
    const idle: number[] = [];
    const swapMs: number[] = [];
    for (let r = 0; r < rounds; r++) {
      fill();
      sync.push(await longestStallMs(() => check(flowMaps.evict().count)));
      swapMs.push(flowMaps.lastSwapNs / 1e6);
      fill();
      async.push(await longestStallMs(async () => check((await flowMaps.evictAsync()).count)));
      // No eviction, as long as the last one: what the machine's other load alone stalls the loop.
      idle.push(await longestStallMs(() => sleep(Math.max(1, flowMaps.lastSwapNs / 1e6))));
    }
    // The median eviction: on a shared machine the worst one of either path is whoever else ran.
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const syncFigure = { name: 'maps.evict_stall_sync', value: median(sync) };
    ctx.report({
      ...syncFigure,
      unit: 'ms',
      note:
        `FlowMaps.evict() of ${EVICT_FLOWS} flows, swap and drain on the JS thread: median of ${rounds} ` +
        `evictions' longest stall, worst ${Math.max(...sync).toFixed(2)}; swap median ${median(swapMs).toFixed(2)}`,
    });
    ctx.report({
      name: 'maps.evict_stall_async',
      value: median(async),
      unit: 'ms',
      baseline: syncFigure,
      note:
        `FlowMaps.evictAsync(), swap on a worker thread, drain on the JS thread: median of ${rounds}, ` +
        `worst ${Math.max(...async).toFixed(2)}; with no eviction, median ${median(idle).toFixed(2)}, ` +
        `worst ${Math.max(...idle).toFixed(2)}`,
    });
  } finally {
    coll.close();
  }
}

const bench: Benchmark = async (ctx) => {
  await synchronousBenchmark(run)(ctx);
  await evictionStalls(ctx);
};

export default bench;
