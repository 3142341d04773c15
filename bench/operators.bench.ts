/**
 * Records per second through account -> dedupe -> decorate -> limit_capacity on one core, in
 * batches of 1000, next to a plain loop doing the same work on the same kind of data in the same
 * run (the cost of the RxJS plumbing is the difference).
 *
 * The data is what the ring-buffer path delivers when the kernel map is full: single-packet
 * records of a pool of 20k flows with a heavy tail (a few flows get most packets), 5% of records
 * from a brand-new flow that replaces a pool member, and one flow in four routed through the host
 * (each packet also seen egress on a second interface, which dedupe drops). Every record has its
 * own address strings, as a parser makes them. Each batch is made just before it enters, so it is
 * in cache as a source's fresh batch would be; only the time inside the stages is counted.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Subject } from 'rxjs';
import type { BenchContext } from './lib.js';
import { StageCounters } from '../src/ledger.js';
import { silentLogger } from '../src/logger.js';
import { InterfaceWatcher } from '../src/net/interfaces.js';
import { account } from '../src/operators/account.js';
import { decorate } from '../src/operators/decorate.js';
import { dedupe } from '../src/operators/dedupe.js';
import { FlowKey, FlowTable } from '../src/operators/flow-key.js';
import { limitCapacity } from '../src/operators/limit_capacity.js';
import type { FlowBatch, FlowRecord } from '../src/records.js';

const BATCH = 1000;
const POOL = 20_000;
const MAX_ENTRIES = 5000;
const TARGET = 5_000_000;

/** mulberry32: a small deterministic PRNG, so every round sees the same stream. */
function prng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const DPORTS = [443, 80, 53, 8080];

function flowRecord(id: number, ifindex: number, direction: 0 | 1, time: number): FlowRecord {
  const dport = DPORTS[id & 3]!;
  return {
    ipVersion: 4,
    sourceIPv4Address: `10.${(id >>> 16) & 255}.${(id >>> 8) & 255}.${id & 255}`,
    destinationIPv4Address: `192.168.${(id >>> 3) & 7}.${(id * 7) & 255}`,
    sourceTransportPort: 1024 + (id % 60000),
    destinationTransportPort: dport,
    protocolIdentifier: dport === 53 ? 17 : 6,
    octetDeltaCount: 64 + (id & 1023),
    packetDeltaCount: 1,
    flowStartMilliseconds: time,
    flowEndMilliseconds: time,
    tcpControlBits: 0x10,
    ipDiffServCodePoint: 0,
    ingressInterface: ifindex,
    flowDirection: direction,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
  };
}

/**
 * The record stream, one batch at a time: a batch is made just before it enters the stages, as a
 * source hands over freshly decoded records, so the timed code finds them in cache as it would in
 * production. Two streams with the same seed give the same records.
 */
class FlowStream {
  private readonly rand = prng(42);
  private readonly pool = new Int32Array(POOL).map((_, i) => i);
  private nextId = POOL;
  private time = 1_700_000_000_000;

  next(): FlowBatch {
    const batch: FlowRecord[] = [];
    while (batch.length < BATCH) {
      let id: number;
      if (this.rand() < 0.05) {
        id = this.nextId++;
        this.pool[Math.floor(this.rand() * POOL)] = id;
      } else {
        const u = this.rand();
        id = this.pool[Math.floor(POOL * u * u * u)]!;
      }
      this.time += 1;
      batch.push(flowRecord(id, 2, 0, this.time));
      if ((id & 3) === 0 && batch.length < BATCH) batch.push(flowRecord(id, 3, 1, this.time));
    }
    return batch;
  }
}

/**
 * A full collection before each timed run, so garbage of the previous run is not collected inside
 * this one. `node --expose-gc` is not needed: the flag can be set at run time.
 */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

interface Result {
  ns: number;
  out: number;
}

async function runChain(total: number, names: InterfaceWatcher): Promise<Result & { dropped: number }> {
  const stage = (id: string) => new StageCounters(id, id);
  const limiter = stage('limit_capacity');
  const input = new Subject<FlowBatch>();
  let out = 0;
  const done = new Promise<void>((resolve, reject) => {
    input
      .pipe(
        account({ maxEntries: MAX_ENTRIES, evictTimeoutMs: 5000, counters: stage('account') }),
        dedupe({ mode: 'first_come', expireMs: 10_000, justMark: false, counters: stage('dedupe') }),
        decorate({ counters: stage('decorate'), interfaces: () => names, exporterIPv4Address: '192.0.2.1' }),
        limitCapacity({ bufferLength: 50, logIntervalMs: 60_000, counters: limiter, logger: silentLogger() }),
      )
      .subscribe({ next: (b) => (out += b.length), error: reject, complete: resolve });
  });
  const stream = new FlowStream();
  collectGarbage();
  let ns = 0;
  for (let n = 0; n < total; n += BATCH) {
    const batch = stream.next();
    const start = process.hrtime.bigint();
    input.next(batch);
    // Lets the limiter's hand-over microtask run, as it would between two reads of a source.
    await Promise.resolve();
    ns += Number(process.hrtime.bigint() - start);
  }
  const start = process.hrtime.bigint();
  input.complete();
  await done;
  ns += Number(process.hrtime.bigint() - start);
  return { ns, out, dropped: limiter.droppedTotal() };
}

/** The first-interface table of the plain loop (what dedupe keeps, without generations). */
class FirstSeen extends FlowTable {
  first = new Int32Array(this.capacity);
  protected override resized(entries: number): void {
    const next = new Int32Array(entries);
    next.set(this.first.subarray(0, this.size));
    this.first = next;
  }
}

/** The same work as the chain, fused into one loop with no Observables. */
function plainLoop(total: number, names: InterfaceWatcher): Result {
  const table = new FlowTable(MAX_ENTRIES);
  const seen = new FirstSeen(1024);
  const key = new FlowKey(true);
  const seenKey = new FlowKey(false);
  let held: FlowRecord[] = [];
  let out = 0;
  const emit = (records: FlowRecord[]): void => {
    let lastIndex = -1;
    let lastName = 'unknown';
    for (let i = 0; i < records.length; i++) {
      const r = records[i]!;
      let e = seen.find(seenKey.read(r));
      if (e < 0) {
        e = seen.insert(seenKey);
        seen.first[e] = r.ingressInterface;
      }
      if (seen.first[e] !== r.ingressInterface) continue;
      if (r.ingressInterface !== lastIndex) {
        lastIndex = r.ingressInterface;
        lastName = names.name(lastIndex) ?? 'unknown';
      }
      r.interfaceName = lastName;
      r.exporterIPv4Address = '192.0.2.1';
      out++;
    }
  };
  const stream = new FlowStream();
  collectGarbage();
  let ns = 0;
  for (let n = 0; n < total; n += BATCH) {
    const batch = stream.next();
    const start = process.hrtime.bigint();
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]!;
      const e = table.find(key.read(r));
      if (e >= 0) {
        const agg = held[e]!;
        agg.packetDeltaCount += r.packetDeltaCount;
        agg.octetDeltaCount += r.octetDeltaCount;
        if (r.flowStartMilliseconds < agg.flowStartMilliseconds)
          agg.flowStartMilliseconds = r.flowStartMilliseconds;
        if (r.flowEndMilliseconds > agg.flowEndMilliseconds) agg.flowEndMilliseconds = r.flowEndMilliseconds;
        agg.tcpControlBits |= r.tcpControlBits;
      } else {
        table.insert(key);
        held.push(r);
        if (held.length >= MAX_ENTRIES) {
          emit(held);
          held = [];
          table.clear();
        }
      }
    }
    ns += Number(process.hrtime.bigint() - start);
  }
  const start = process.hrtime.bigint();
  emit(held);
  ns += Number(process.hrtime.bigint() - start);
  return { ns, out };
}

/** ns per record of keying alone: FlowKey + FlowTable vs the obvious string key into a Map. */
function keyCost(total: number): { flowTable: number; stringMap: number } {
  const batches: FlowBatch[] = [];
  const stream = new FlowStream();
  for (let n = 0; n < total; n += BATCH) batches.push(stream.next());
  const flowTable = (): number => {
    const t = new FlowTable(MAX_ENTRIES);
    const key = new FlowKey(true);
    const start = process.hrtime.bigint();
    for (const batch of batches) {
      for (const r of batch) {
        if (t.find(key.read(r)) < 0) {
          if (t.size >= MAX_ENTRIES) t.clear();
          t.insert(key);
        }
      }
    }
    return Number(process.hrtime.bigint() - start) / total;
  };
  const stringMap = (): number => {
    let m = new Map<string, FlowRecord>();
    const start = process.hrtime.bigint();
    for (const batch of batches) {
      for (const r of batch) {
        const k = `${r.sourceIPv4Address}|${r.destinationIPv4Address}|${r.sourceTransportPort}|${r.destinationTransportPort}|${r.protocolIdentifier}|${r.ingressInterface}|${r.flowDirection}`;
        if (m.get(k) === undefined) {
          if (m.size >= MAX_ENTRIES) m = new Map();
          m.set(k, r);
        }
      }
    }
    return Number(process.hrtime.bigint() - start) / total;
  };
  let best = { flowTable: Infinity, stringMap: Infinity };
  for (let round = 0; round < 3; round++) {
    best = {
      flowTable: Math.min(best.flowTable, flowTable()),
      stringMap: Math.min(best.stringMap, stringMap()),
    };
  }
  return best;
}

export default async function operatorsBench(ctx: BenchContext): Promise<void> {
  const total = ctx.quick ? 100_000 : 1_000_000;
  const rounds = ctx.quick ? 1 : 3;
  const names = InterfaceWatcher.open({ watch: false });
  let chainBest = Infinity;
  let loopBest = Infinity;
  let chainOut = 0;
  let loopOut = 0;
  // Interleaved, so a burst of load from other work on the machine hits both alike.
  for (let round = 0; round < rounds; round++) {
    const chain = await runChain(total, names);
    if (chain.dropped !== 0) throw new Error(`operators bench: the limiter dropped ${chain.dropped} records`);
    chainBest = Math.min(chainBest, chain.ns);
    chainOut = chain.out;
    const loop = plainLoop(total, names);
    loopBest = Math.min(loopBest, loop.ns);
    loopOut = loop.out;
  }
  names.close();
  if (chainOut !== loopOut) {
    throw new Error(`operators bench: the chain emitted ${chainOut} records, the plain loop ${loopOut}`);
  }
  const loopRate = (total / loopBest) * 1e9;
  ctx.report({
    name: 'operators.plain_loop',
    value: loopRate,
    unit: 'records/s',
    note: `${total} records in batches of ${BATCH}, the same work fused in one loop`,
  });
  ctx.report({
    name: 'operators.account_dedupe_decorate_limit',
    value: (total / chainBest) * 1e9,
    unit: 'records/s',
    baseline: { name: 'operators.plain_loop', value: loopRate },
    target: { value: TARGET, better: 'higher' },
    note: `${total} records in, ${chainOut} out, best of ${rounds}`,
  });
  const keys = keyCost(ctx.quick ? 100_000 : 300_000);
  ctx.report({
    name: 'operators.key_string_map',
    value: keys.stringMap,
    unit: 'ns/record',
    note: 'template-string key into a Map',
  });
  ctx.report({
    name: 'operators.key_flow_table',
    value: keys.flowTable,
    unit: 'ns/record',
    baseline: { name: 'operators.key_string_map', value: keys.stringMap },
    target: { value: keys.stringMap, better: 'lower' },
    note: 'FlowKey.read + FlowTable.find/insert',
  });
}
