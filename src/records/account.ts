/**
 * Flow accounting in userspace: single-packet flow records aggregated by flow key the way the
 * kernel's flow map does it. The `account` operator and the ebpf_flows source's ring-buffer path
 * both run it.
 */
import {
  Observable,
  asyncScheduler,
  type OperatorFunction,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';
import type { StageCounters } from '../ledger.js';
import { attachIPv4Words, type FlowBatch, type FlowRecord } from './flow.js';
import { FlowKey, FlowTable, OperatorError, badRecordError } from './flow-key.js';

/**
 * Float64 words per flow in TotalsTable.totals: packets, bytes, start, end, flags (TCP flags and the
 * bits below), layer-2 bytes.
 */
const TOTAL_WORDS = 8;

/**
 * The flow table plus each flow's running totals. Why not sum into the held record itself: held
 * records are objects scattered over the heap, and a merge that touches one costs a cache miss;
 * the totals here sit in one 64-byte row per flow, and are written into the records once, when
 * they are emitted.
 */
class TotalsTable extends FlowTable {
  totals: Float64Array;

  constructor(expectedEntries: number) {
    super(expectedEntries);
    this.totals = new Float64Array(this.capacity * TOTAL_WORDS);
  }

  protected override resized(entries: number): void {
    const totals = new Float64Array(entries * TOTAL_WORDS);
    totals.set(this.totals.subarray(0, Math.min(this.size, entries) * TOTAL_WORDS));
    this.totals = totals;
  }
}

/** Set in a flow's flags once it has absorbed a record (TCP flags use the low 16 bits). */
const MERGED = 1 << 30;
/** Set in a flow's flags once a record moved its start earlier or its end later. */
const EARLIER_START = 1 << 29;
const LATER_END = 1 << 28;

export interface AccountOptions {
  /** Distinct flows held before everything is emitted. */
  maxEntries: number;
  /** The longest a flow waits in the table, from its first record, before it is emitted. */
  evictTimeoutMs: number;
  counters: StageCounters;
  /** Runs the eviction timer; asyncScheduler by default. */
  scheduler?: SchedulerLike;
  /** Names the stage in error messages. */
  id?: string;
}

function checkOptions(o: AccountOptions, stage: string): void {
  if (!Number.isSafeInteger(o.maxEntries) || o.maxEntries < 1) {
    throw new OperatorError(
      'EBADCONFIG',
      `${stage}: max_entries must be an integer >= 1, got ${o.maxEntries}`,
    );
  }
  if (!(o.evictTimeoutMs > 0) || !Number.isFinite(o.evictTimeoutMs)) {
    throw new OperatorError('EBADCONFIG', `${stage}: evict_timeout_ms must be > 0, got ${o.evictTimeoutMs}`);
  }
}

/**
 * Aggregates records of the same flow (5-tuple, ICMP type and code, VNI, interface, direction):
 * packets and bytes (octetDeltaCount and layer2OctetDeltaCount) are summed, the start is the earliest, the end the latest, TCP flags are ORed;
 * the other fields are those of the flow's first record. This is for the single-packet records
 * the kernel could not aggregate itself (map full or busy), which arrive by the thousand.
 *
 * Everything held is emitted as one batch, in order of each flow's first record, when the table
 * reaches `maxEntries` distinct flows, when `evictTimeoutMs` has passed since the first record
 * entered an empty table (so no record waits longer than that), and when the input completes (then the output completes). Held records are dropped with reason
 * `shutdown` if the input errors or the subscriber unsubscribes.
 *
 * The first record of each flow is updated in place and becomes the output record: the stage owns
 * the records it receives (a pipeline that fans one output out to several aggregating stages must
 * copy). Counters: every record is received; records folded into an earlier one count as merged.
 *
 * @example
 * ```ts
 * const counters = ledger.stage('acc', 'account');
 * ringbufRecords$.pipe(account({ maxEntries: 5000, evictTimeoutMs: 5000, counters })).subscribe(sink);
 * // 3 single-packet records of one TCP flow in a batch -> one record with packetDeltaCount 3,
 * // emitted 5 s after the first arrived (or earlier if 5000 flows pile up).
 * ```
 */
export function account(options: AccountOptions): OperatorFunction<FlowBatch, FlowBatch> {
  const stage = `account ${options.id ?? ''}`.trimEnd();
  checkOptions(options, stage);
  const { maxEntries, evictTimeoutMs, counters } = options;
  const scheduler = options.scheduler ?? asyncScheduler;

  return (source) =>
    new Observable<FlowBatch>((subscriber) => {
      const table = new TotalsTable(Math.min(maxEntries, 1 << 16));
      const key = new FlowKey(true);
      let held: FlowRecord[] = [];
      let timer: Subscription | undefined;
      let stopped = false;

      const flush = (): void => {
        timer?.unsubscribe();
        timer = undefined;
        if (held.length === 0) return;
        const out = held;
        held = [];
        const totals = table.totals;
        for (let e = 0; e < out.length; e++) {
          const t = e * TOTAL_WORDS;
          const f = totals[t + 4]!;
          if ((f & MERGED) === 0) continue;
          const r = out[e]!;
          r.packetDeltaCount = totals[t]!;
          r.octetDeltaCount = totals[t + 1]!;
          // Records of older versions have no wire octets: left absent.
          if (r.layer2OctetDeltaCount !== undefined) r.layer2OctetDeltaCount = totals[t + 5]!;
          // Only times that moved are written: a time not read saves a load from its heap box.
          if ((f & EARLIER_START) !== 0) r.flowStartMilliseconds = totals[t + 2]!;
          if ((f & LATER_END) !== 0) r.flowEndMilliseconds = totals[t + 3]!;
          r.tcpControlBits = f & 0xffff;
        }
        table.clear();
        counters.addSent(out.length);
        subscriber.next(out);
      };

      const fail = (err: unknown): void => {
        if (stopped) return;
        stopped = true;
        timer?.unsubscribe();
        counters.addDropped('shutdown', held.length);
        held = [];
        table.clear();
        subscriber.error(err);
      };

      const onTimer = (): void => {
        timer = undefined;
        flush();
      };

      const sub = source.subscribe({
        next(batch) {
          if (stopped) return;
          counters.addReceived(batch.length);
          let merged = 0;
          let i = 0;
          try {
            for (; i < batch.length; i++) {
              const r = batch[i]!;
              const packets = r.packetDeltaCount;
              const bytes = r.octetDeltaCount;
              if (typeof packets !== 'number' || typeof bytes !== 'number')
                throw badRecordError(stage, batch, i);
              const e = table.find(key.read(r));
              if (e >= 0) {
                const totals = table.totals;
                const t = e * TOTAL_WORDS;
                totals[t] = totals[t]! + packets;
                totals[t + 1] = totals[t + 1]! + bytes;
                totals[t + 5] = totals[t + 5]! + (r.layer2OctetDeltaCount ?? 0);
                let f = totals[t + 4]! | (r.tcpControlBits & 0xffff) | MERGED;
                const start = r.flowStartMilliseconds;
                const end = r.flowEndMilliseconds;
                if (start < totals[t + 2]!) {
                  totals[t + 2] = start;
                  f |= EARLIER_START;
                }
                if (end > totals[t + 3]!) {
                  totals[t + 3] = end;
                  f |= LATER_END;
                }
                totals[t + 4] = f;
                merged++;
              } else {
                const n = table.insert(key);
                const totals = table.totals;
                const t = n * TOTAL_WORDS;
                totals[t] = packets;
                totals[t + 1] = bytes;
                totals[t + 5] = r.layer2OctetDeltaCount ?? 0;
                totals[t + 2] = r.flowStartMilliseconds;
                totals[t + 3] = r.flowEndMilliseconds;
                totals[t + 4] = r.tcpControlBits & 0xffff;
                // The next stage keying on this record (dedupe) then need not parse it again.
                if (key.parsed) attachIPv4Words(r, key.src >>> 0, key.dst >>> 0);
                held.push(r);
                if (held.length >= maxEntries) {
                  counters.addMerged(merged);
                  merged = 0;
                  flush();
                } else if (timer === undefined) {
                  timer = scheduler.schedule(onTimer, evictTimeoutMs);
                }
              }
            }
            counters.addMerged(merged);
          } catch (err) {
            counters.addMerged(merged);
            // The rest of the batch never reached the table.
            counters.addDropped('shutdown', batch.length - i);
            fail(err instanceof OperatorError ? err : badRecordError(stage, batch, i, err));
          }
        },
        error: fail,
        complete() {
          stopped = true;
          flush();
          subscriber.complete();
        },
      });

      return () => {
        sub.unsubscribe();
        timer?.unsubscribe();
        timer = undefined;
        if (held.length > 0) {
          counters.addDropped('shutdown', held.length);
          held = [];
        }
      };
    });
}
