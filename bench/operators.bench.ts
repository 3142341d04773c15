/**
 * Records per second through account -> dedupe -> decorate -> the buffer in front of a sink
 * (src/sinks/buffer.ts; the figures keep the name of limit_capacity, which stood there) on one core, in
 * batches of 1000, next to a plain loop doing the same work on the same kind of data in the same
 * run (the cost of the RxJS plumbing is the difference).
 *
 * The data is what the ring-buffer path delivers when the kernel map is full: single-packet
 * records of a pool of 20k flows with a heavy tail (a few flows get most packets), 5% of records
 * from a brand-new flow that replaces a pool member, and one flow in four routed through the host
 * (each packet also seen egress on a second interface, which dedupe drops). Every record has its
 * own address strings, as a parser makes them. Each batch is made just before it enters, so it is
 * in cache as a source's fresh batch would be; only the time inside the stages is counted.
 *
 * Records are built as the flow decoder builds them, with the IPv4 addresses also attached as
 * 32-bit words (`attachIPv4Words`, which the decoder calls with the key bytes), so no stage reads
 * address text. A second chain figure runs the same stream with text addresses only (no words),
 * which is what every stage pays for records from a producer that does not attach them.
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
import { dedupe, SeenTable } from '../src/operators/dedupe.js';
import { FlowKey, FlowTable } from '../src/records/flow-key.js';
import { attachIPv4Words, flowInterface, type FlowBatch, type FlowRecord } from '../src/records/flow.js';
import { SinkBuffer } from '../src/sinks/buffer.js';

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

/** The flow's addresses as 32-bit words: 10.x.y.z and 192.168.a.b. */
function sourceWord(id: number): number {
  return ((10 << 24) | (id & 0xffffff)) >>> 0;
}

function destinationWord(id: number): number {
  return ((192 << 24) | (168 << 16) | (((id >>> 3) & 7) << 8) | ((id * 7) & 255)) >>> 0;
}

function dottedQuad(w: number): string {
  return `${w >>> 24}.${(w >>> 16) & 255}.${(w >>> 8) & 255}.${w & 255}`;
}

/** 64 namespaces as `netns: all` names them on a container host: one string each, as the labeler hands out. */
const NAMESPACES = Array.from(
  { length: 64 },
  (_, i) =>
    `cni-${(0x1000_0000 + i * 7919).toString(16)}-5f3a-4c2e-9b1d-${(0xa0000000 + i).toString(16)}0000`,
);

function flowRecord(
  id: number,
  ifindex: number,
  direction: 0 | 1,
  time: number,
  words: boolean,
  labelled = false,
): FlowRecord {
  const dport = DPORTS[id & 3]!;
  const src = sourceWord(id);
  const dst = destinationWord(id);
  // Field by field as decodeFlowEvent builds a record: the literal, then the address pair of the
  // family, then the end reason.
  const rec: FlowRecord = {
    ipVersion: 4,
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
  rec.sourceIPv4Address = dottedQuad(src);
  rec.destinationIPv4Address = dottedQuad(dst);
  if (words) attachIPv4Words(rec, src, dst);
  if (labelled) rec.dot1qVlanId = 100 + (id & 7);
  rec.flowEndReason = 5;
  if (labelled) rec.networkNamespace = NAMESPACES[(id >>> 3) & 63];
  return rec;
}

/**
 * The record stream, one batch at a time: a batch is made just before it enters the stages, as a
 * source hands over freshly decoded records, so the timed code finds them in cache as it would in
 * production. Two streams with the same seed give the same records.
 */
class FlowStream {
  private readonly rand = prng(42);

  /**
   * @param words attach the addresses as words, as the flow decoder does
   * @param labelled give each flow a VLAN id and a namespace (a trunk under `netns: all`)
   */
  constructor(
    private readonly words = true,
    private readonly labelled = false,
  ) {}

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
      batch.push(flowRecord(id, 2, 0, this.time, this.words, this.labelled));
      if ((id & 3) === 0 && batch.length < BATCH)
        batch.push(flowRecord(id, 3, 1, this.time, this.words, this.labelled));
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

async function runChain(
  total: number,
  names: InterfaceWatcher,
  words = true,
  observedInterfaces = false,
): Promise<Result & { dropped: number }> {
  const stage = (id: string) => new StageCounters(id, id);
  // The sink's counters, which its buffer counts on; the subscriber writes every batch at once.
  const limiter = stage('sink');
  const buffer = new SinkBuffer(
    { maxRecords: 100_000, whenFull: 'drop_newest' },
    limiter,
    silentLogger(),
    'sink',
  );
  const input = new Subject<FlowBatch>();
  let out = 0;
  const done = new Promise<void>((resolve, reject) => {
    input
      .pipe(
        account({ maxEntries: MAX_ENTRIES, evictTimeoutMs: 5000, counters: stage('account') }),
        dedupe({
          mode: 'first_come',
          expireMs: 10_000,
          justMark: false,
          observedInterfaces,
          counters: stage('dedupe'),
        }),
        decorate({ counters: stage('decorate'), interfaces: () => names, exporterIPv4Address: '192.0.2.1' }),
        buffer.operator(),
      )
      .subscribe({
        next: (b) => {
          out += b.length;
          limiter.addSent(b.length);
        },
        error: reject,
        complete: resolve,
      });
  });
  const stream = new FlowStream(words);
  collectGarbage();
  let ns = 0;
  for (let n = 0; n < total; n += BATCH) {
    const batch = stream.next();
    const start = process.hrtime.bigint();
    input.next(batch);
    // Lets microtasks run, as they would between two reads of a source.
    await Promise.resolve();
    ns += Number(process.hrtime.bigint() - start);
  }
  const start = process.hrtime.bigint();
  input.complete();
  await done;
  ns += Number(process.hrtime.bigint() - start);
  return { ns, out, dropped: limiter.droppedTotal() };
}

/** Float64 words per flow of the plain loop's totals: packets, bytes, start, end, flags. */
const TOTAL_WORDS = 8;

/**
 * The same work as the chain, fused into one loop with no Observables: the same tables, totals
 * written into the first record of each flow when the table is emitted, the first interface of
 * each flow kept (what dedupe keeps, without generations: nothing expires within a run).
 */
function plainLoop(total: number, names: InterfaceWatcher): Result {
  const table = new FlowTable(MAX_ENTRIES);
  let totals = new Float64Array(table.capacity * TOTAL_WORDS);
  const seen = new SeenTable(1024);
  const key = new FlowKey(true);
  const seenKey = new FlowKey(false);
  let held: FlowRecord[] = [];
  let out = 0;
  const emit = (records: FlowRecord[]): void => {
    let lastIndex = -1;
    let lastName = 'unknown';
    for (let e = 0; e < records.length; e++) {
      const r = records[e]!;
      const t = e * TOTAL_WORDS;
      r.packetDeltaCount = totals[t]!;
      r.octetDeltaCount = totals[t + 1]!;
      r.flowStartMilliseconds = totals[t + 2]!;
      r.flowEndMilliseconds = totals[t + 3]!;
      r.tcpControlBits = totals[t + 4]!;
    }
    for (let i = 0; i < records.length; i++) {
      const r = records[i]!;
      let s = seen.find(seenKey.read(r));
      if (s < 0) s = seen.insert(seenKey, s, flowInterface(r), 0);
      if (seen.firstInterface(s) !== flowInterface(r)) continue;
      if (flowInterface(r) !== lastIndex) {
        lastIndex = flowInterface(r);
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
        const t = e * TOTAL_WORDS;
        totals[t] = totals[t]! + r.packetDeltaCount;
        totals[t + 1] = totals[t + 1]! + r.octetDeltaCount;
        if (r.flowStartMilliseconds < totals[t + 2]!) totals[t + 2] = r.flowStartMilliseconds;
        if (r.flowEndMilliseconds > totals[t + 3]!) totals[t + 3] = r.flowEndMilliseconds;
        totals[t + 4] = totals[t + 4]! | r.tcpControlBits;
      } else {
        const x = table.insert(key);
        if (table.capacity * TOTAL_WORDS > totals.length) {
          const grown = new Float64Array(table.capacity * TOTAL_WORDS);
          grown.set(totals);
          totals = grown;
        }
        const t = x * TOTAL_WORDS;
        totals[t] = r.packetDeltaCount;
        totals[t + 1] = r.octetDeltaCount;
        totals[t + 2] = r.flowStartMilliseconds;
        totals[t + 3] = r.flowEndMilliseconds;
        totals[t + 4] = r.tcpControlBits;
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

/**
 * ns per record of keying alone: FlowKey + FlowTable (with and without words, and with VLAN ids and
 * namespaces) vs a string key into a Map.
 */
function keyCost(total: number): {
  flowTable: number;
  flowTableText: number;
  flowTableLabelled: number;
  stringMap: number;
} {
  const make = (words: boolean, labelled = false): FlowBatch[] => {
    const batches: FlowBatch[] = [];
    const stream = new FlowStream(words, labelled);
    for (let n = 0; n < total; n += BATCH) batches.push(stream.next());
    return batches;
  };
  const withWords = make(true);
  const textOnly = make(false);
  const labelled = make(true, true);
  const flowTable = (batches: FlowBatch[]): number => {
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
  const stringMap = (batches: FlowBatch[]): number => {
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
  let best = {
    flowTable: Infinity,
    flowTableText: Infinity,
    flowTableLabelled: Infinity,
    stringMap: Infinity,
  };
  for (let round = 0; round < 3; round++) {
    best = {
      flowTable: Math.min(best.flowTable, flowTable(withWords)),
      flowTableText: Math.min(best.flowTableText, flowTable(textOnly)),
      flowTableLabelled: Math.min(best.flowTableLabelled, flowTable(labelled)),
      stringMap: Math.min(best.stringMap, stringMap(textOnly)),
    };
  }
  return best;
}

export default async function operatorsBench(ctx: BenchContext): Promise<void> {
  const total = ctx.quick ? 100_000 : 1_000_000;
  const rounds = ctx.quick ? 1 : 3;
  const names = InterfaceWatcher.open({ watch: false });
  let chainBest = Infinity;
  let textBest = Infinity;
  let observedBest = Infinity;
  let loopBest = Infinity;
  let chainOut = 0;
  let textOut = 0;
  let loopOut = 0;
  // Interleaved, so a burst of load from other work on the machine hits all alike.
  for (let round = 0; round < rounds; round++) {
    const chain = await runChain(total, names);
    if (chain.dropped !== 0)
      throw new Error(`operators bench: the sink's buffer dropped ${chain.dropped} records`);
    chainBest = Math.min(chainBest, chain.ns);
    chainOut = chain.out;
    const loop = plainLoop(total, names);
    loopBest = Math.min(loopBest, loop.ns);
    loopOut = loop.out;
    const text = await runChain(total, names, false);
    textBest = Math.min(textBest, text.ns);
    textOut = text.out;
    const observed = await runChain(total, names, true, true);
    if (observed.out !== chain.out)
      throw new Error(
        `operators bench: with observed_interfaces ${observed.out} records, without ${chain.out}`,
      );
    observedBest = Math.min(observedBest, observed.ns);
  }
  names.close();
  if (chainOut !== loopOut || textOut !== loopOut) {
    throw new Error(
      `operators bench: the chain emitted ${chainOut} records (${textOut} without words), the plain loop ${loopOut}`,
    );
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
    note: `${total} records in, ${chainOut} out, best of ${rounds}; addresses attached as words`,
  });
  ctx.report({
    name: 'operators.account_dedupe_decorate_limit_text',
    value: (total / textBest) * 1e9,
    unit: 'records/s',
    baseline: { name: 'operators.plain_loop', value: loopRate },
    note: 'the same records with text addresses only: each stage that keys parses them',
  });
  ctx.report({
    name: 'operators.account_dedupe_decorate_limit_observed',
    value: (total / observedBest) * 1e9,
    unit: 'records/s',
    baseline: { name: 'operators.account_dedupe_decorate_limit', value: (total / chainBest) * 1e9 },
    note: 'dedupe with observed_interfaces: every flow kept carries the list of its two interfaces',
  });
  const keys = keyCost(ctx.quick ? 100_000 : 300_000);
  ctx.report({
    name: 'operators.key_string_map',
    value: keys.stringMap,
    unit: 'ns/record',
    note: 'template-string key into a Map',
  });
  ctx.report({
    name: 'operators.key_flow_table_text',
    value: keys.flowTableText,
    unit: 'ns/record',
    baseline: { name: 'operators.key_string_map', value: keys.stringMap },
    target: { value: keys.stringMap, better: 'lower' },
    note: 'FlowKey.read parsing the dotted quads + FlowTable.find/insert',
  });
  ctx.report({
    name: 'operators.key_flow_table',
    value: keys.flowTable,
    unit: 'ns/record',
    baseline: { name: 'operators.key_string_map', value: keys.stringMap },
    target: { value: keys.stringMap, better: 'lower' },
    note: 'FlowKey.read from attached words + FlowTable.find/insert',
  });
  ctx.report({
    name: 'operators.key_flow_table_labelled',
    value: keys.flowTableLabelled,
    unit: 'ns/record',
    baseline: { name: 'operators.key_flow_table', value: keys.flowTable },
    note: 'the same with a VLAN id and one of 64 namespaces (40-character names) on every record',
  });
}
