/**
 * Memory of account + dedupe under flow churn: 100k live flows, 1M new distinct flows a minute
 * (each replaces a live one, so a flow lives about 6 s), every live flow reported once per 5 s
 * as the map tracer would, one flow in five also seen egress on a second interface. Ten minutes
 * of that run in seconds on rxjs's VirtualTimeScheduler: the source, account's eviction timer and
 * dedupe's clock all read virtual time. RSS is sampled every 10 virtual seconds after a full
 * collection; the figures are the largest sample and the slope over the last 5 minutes, where a
 * leak shows as a steady climb.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { VirtualTimeScheduler, from, interval, map, mergeMap, take } from 'rxjs';
import type { BenchContext } from './lib.js';
import { StageCounters } from '../src/ledger.js';
import { account } from '../src/operators/account.js';
import { dedupe } from '../src/operators/dedupe.js';
import type { FlowBatch, FlowRecord } from '../src/records/flow.js';

const LIVE = 100_000;
const NEW_PER_MINUTE = 1_000_000;
const TICK_MS = 1000;
const REPORT_EVERY_TICKS = 5;
const BATCH = 1000;
const SAMPLE_EVERY_TICKS = 10;
const MB = 1024 * 1024;

function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

/**
 * Flow `id` (below 2^24) as a client address scrambled over 10.0.0.0/8 (an odd multiplier is a
 * bijection mod 2^24, so every id is its own flow) talking to one of 64 servers. Scrambling keeps
 * the mix of address lengths the same all run long; counting up would make the strings, and the
 * heap, grow by a byte whenever an octet gains a digit, which reads as a leak.
 */
function flowRecord(id: number, ifindex: number, direction: 0 | 1, time: number): FlowRecord {
  const client = Math.imul(id, 0x9e3779b1) & 0xffffff;
  return {
    ipVersion: 4,
    sourceIPv4Address: `10.${client >>> 16}.${(client >>> 8) & 255}.${client & 255}`,
    destinationIPv4Address: `172.16.0.${id & 63}`,
    sourceTransportPort: 1024 + (id % 60000),
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 1500,
    packetDeltaCount: 3,
    flowStartMilliseconds: time,
    flowEndMilliseconds: time,
    tcpControlBits: 0x18,
    ipDiffServCodePoint: 0,
    ingressInterface: ifindex,
    flowDirection: direction,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
  };
}

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

export default function memoryBench(ctx: BenchContext): Promise<void> {
  const minutes = ctx.quick ? 2 : 10;
  const ticks = (minutes * 60_000) / TICK_MS;
  const newPerTick = Math.round((NEW_PER_MINUTE * TICK_MS) / 60_000);
  const scheduler = new VirtualTimeScheduler(undefined, Infinity);
  const live = new Int32Array(LIVE);
  for (let i = 0; i < LIVE; i++) live[i] = i;
  let nextId = LIVE;
  let replaceAt = 0;
  let records = 0;
  let out = 0;
  const samples: { minute: number; rss: number; heap: number }[] = [];

  const sample = (tick: number): void => {
    collectGarbage();
    const m = process.memoryUsage();
    samples.push({ minute: (tick * TICK_MS) / 60_000, rss: m.rss / MB, heap: m.heapUsed / MB });
  };

  const tickBatches = (tick: number): FlowBatch[] => {
    // Churn: the oldest live flows end and new ones take their slots.
    for (let i = 0; i < newPerTick; i++) {
      live[replaceAt] = nextId++;
      replaceAt = (replaceAt + 1) % LIVE;
    }
    const time = tick * TICK_MS;
    const batches: FlowBatch[] = [];
    let batch: FlowRecord[] = [];
    for (let slot = tick % REPORT_EVERY_TICKS; slot < LIVE; slot += REPORT_EVERY_TICKS) {
      const id = live[slot]!;
      batch.push(flowRecord(id, 2, 0, time));
      if (id % 5 === 0) batch.push(flowRecord(id, 3, 1, time));
      if (batch.length >= BATCH) {
        batches.push(batch);
        batch = [];
      }
    }
    if (batch.length > 0) batches.push(batch);
    for (const b of batches) records += b.length;
    if (tick % SAMPLE_EVERY_TICKS === 0) sample(tick);
    return batches;
  };

  const accounted = new StageCounters('account', 'account');
  const deduped = new StageCounters('dedupe', 'dedupe');
  const start = process.hrtime.bigint();
  interval(TICK_MS, scheduler)
    .pipe(
      take(ticks),
      map((i) => tickBatches(i + 1)),
      mergeMap((batches) => from(batches)),
      account({ maxEntries: 5000, evictTimeoutMs: 5000, counters: accounted, scheduler }),
      dedupe({ mode: 'first_come', expireMs: 10_000, justMark: false, counters: deduped, scheduler }),
    )
    .subscribe((b) => (out += b.length));
  scheduler.flush();
  collectGarbage();
  const heapAfter = process.memoryUsage().heapUsed / MB;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;

  const tail = samples.filter((s) => s.minute >= minutes / 2);
  const rssSlope = slope(
    tail.map((s) => s.minute),
    tail.map((s) => s.rss),
  );
  const heapSlope = slope(
    tail.map((s) => s.minute),
    tail.map((s) => s.heap),
  );
  const maxRss = Math.max(...samples.map((s) => s.rss));
  const note = `${minutes} virtual min in ${seconds.toFixed(1)} s: ${records} records in, ${out} out, ${
    nextId - LIVE
  } new flows`;
  ctx.report({
    name: 'memory.account_dedupe.max_rss',
    value: maxRss,
    unit: 'MB',
    target: { value: 300, better: 'lower' },
    note,
  });
  ctx.report({
    name: 'memory.account_dedupe.rss_slope',
    value: rssSlope,
    unit: 'MB/virtual min',
    // RSS jitters by a few MB between samples (allocator pages); a leak of even one small object
    // per flow would climb by tens of MB a minute here, 1M new flows a minute.
    target: { value: 2, better: 'lower' },
    note: `least squares over minutes ${minutes / 2}-${minutes}`,
  });
  ctx.report({
    name: 'memory.account_dedupe.heap_slope',
    value: heapSlope,
    unit: 'MB/virtual min',
    target: { value: 0.5, better: 'lower' },
    note: `heap used after gc: max ${Math.max(...samples.map((s) => s.heap)).toFixed(1)} MB, ${heapAfter.toFixed(1)} MB after completion`,
  });
  if (accounted.snapshot().inFlight !== 0 || deduped.received !== accounted.sent) {
    return Promise.reject(new Error('memory bench: account did not hand over everything it received'));
  }
  return Promise.resolve();
}
