import {
  Observable,
  asyncScheduler,
  type OperatorFunction,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';
import type { ComponentContext, TransformModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { FlowBatch, FlowRecord } from '../records.js';
import { FlowKey, FlowTable, OperatorError, badRecordError } from './flow-key.js';

export interface AccountOptions {
  /** Distinct flows held before everything is emitted. */
  maxEntries: number;
  /** The longest a flow waits in the table, from its first record, before it is emitted. */
  evictTimeoutMs: number;
  counters: StageCounters;
  /** Runs the eviction timer; asyncScheduler by default. */
  scheduler?: SchedulerLike;
  /** Each value emits what the table holds at once (e.g. on SIGTERM, before the sources stop). */
  flush$?: Observable<unknown>;
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
 * packets and bytes are summed, the start is the earliest, the end the latest, TCP flags are ORed;
 * the other fields are those of the flow's first record. This is for the single-packet records
 * the kernel could not aggregate itself (map full or busy), which arrive by the thousand.
 *
 * Everything held is emitted as one batch, in order of each flow's first record, when the table
 * reaches `maxEntries` distinct flows, when `evictTimeoutMs` has passed since the first record
 * entered an empty table (so no record waits longer than that), on each `flush$` value, and when
 * the input completes (then the output completes). Held records are dropped with reason
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
  const { maxEntries, evictTimeoutMs, counters, flush$ } = options;
  const scheduler = options.scheduler ?? asyncScheduler;

  return (source) =>
    new Observable<FlowBatch>((subscriber) => {
      const table = new FlowTable(Math.min(maxEntries, 1 << 16));
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

      const flushSub = flush$?.subscribe({ next: flush, error: fail });

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
                const agg = held[e]!;
                agg.packetDeltaCount += packets;
                agg.octetDeltaCount += bytes;
                if (r.flowStartMilliseconds < agg.flowStartMilliseconds) {
                  agg.flowStartMilliseconds = r.flowStartMilliseconds;
                }
                if (r.flowEndMilliseconds > agg.flowEndMilliseconds) {
                  agg.flowEndMilliseconds = r.flowEndMilliseconds;
                }
                agg.tcpControlBits |= r.tcpControlBits;
                merged++;
              } else {
                table.insert(key);
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
        flushSub?.unsubscribe();
        timer?.unsubscribe();
        timer = undefined;
        if (held.length > 0) {
          counters.addDropped('shutdown', held.length);
          held = [];
        }
      };
    });
}

export interface AccountConfig {
  max_entries: number;
  evict_timeout_ms: number;
}

/** Optional wiring the pipeline may pass besides the config. */
export interface AccountHooks {
  /** Each value flushes the table at once (e.g. on SIGTERM). */
  flush$?: Observable<unknown>;
}

/** The module, whose `build` also takes the optional hooks. */
export interface AccountModule extends TransformModule<AccountConfig> {
  build(
    config: AccountConfig,
    context: ComponentContext,
    hooks?: AccountHooks,
  ): OperatorFunction<FlowBatch, FlowBatch>;
}

const accountModule: AccountModule = {
  type: 'account',
  kind: 'transform',
  description: 'aggregates single-packet flow records in userspace by flow key, like the kernel map does',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      max_entries: {
        type: 'integer',
        minimum: 1,
        default: 5000,
        description: 'distinct flows held before everything is emitted',
      },
      evict_timeout_ms: {
        type: 'integer',
        minimum: 1,
        default: 5000,
        description: 'longest a flow waits in the table from its first record, in milliseconds',
      },
    },
  },
  example: { max_entries: 5000, evict_timeout_ms: 5000 },
  build(config: AccountConfig, context: ComponentContext, hooks?: AccountHooks) {
    const options: AccountOptions = {
      maxEntries: config.max_entries,
      evictTimeoutMs: config.evict_timeout_ms,
      counters: context.counters,
      id: context.id,
    };
    if (context.scheduler) options.scheduler = context.scheduler;
    if (hooks?.flush$) options.flush$ = hooks.flush$;
    return account(options);
  },
};

export default accountModule;
