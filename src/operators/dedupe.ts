import { Observable, asyncScheduler, type OperatorFunction, type SchedulerLike } from 'rxjs';
import type { ComponentContext, TransformModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { FlowBatch, FlowRecord } from '../records.js';
import { FlowKey, FlowTable, OperatorError, badRecordError } from './flow-key.js';

export type DedupeMode = 'none' | 'first_come';

export interface DedupeOptions {
  mode: DedupeMode;
  /** A flow not seen for longer than this is forgotten, with the interface it was first seen on. */
  expireMs: number;
  /** Pass copies from other interfaces on, marked `duplicate: true`, instead of dropping them. */
  justMark: boolean;
  counters: StageCounters;
  /** Its clock (`now()`) ages the entries; asyncScheduler by default. */
  scheduler?: SchedulerLike;
  /** Names the stage in error messages. */
  id?: string;
}

/** The flow table plus, per entry, the interface the flow was first seen on and when it was last seen. */
class SeenTable extends FlowTable {
  firstInterface: Int32Array;
  lastSeen: Float64Array;

  constructor(expectedEntries: number) {
    super(expectedEntries);
    this.firstInterface = new Int32Array(this.capacity);
    this.lastSeen = new Float64Array(this.capacity);
  }

  protected override resized(entries: number): void {
    const first = new Int32Array(entries);
    first.set(this.firstInterface.subarray(0, this.size));
    this.firstInterface = first;
    const last = new Float64Array(entries);
    last.set(this.lastSeen.subarray(0, this.size));
    this.lastSeen = last;
  }
}

/**
 * Keeps each flow from the first interface it was seen on. A router sees one packet twice,
 * ingress on eth0 and egress on eth1: both records have the same flow key once interface and
 * direction are left out, and only the records from the interface that reported the flow first
 * pass. The others are dropped (counted with reason `dedupe_duplicate`) or, with `justMark`,
 * passed with `duplicate: true`. Any record of a flow, from whatever interface, keeps its entry
 * alive; an entry not refreshed for more than `expireMs` is forgotten, so the next record of that
 * flow registers its own interface as the first. Mode `none` passes everything.
 *
 * Expiry is exact and needs no timer: entries live in two generations, each spanning `expireMs`
 * of the scheduler's clock; a generation is dropped whole once everything in it is older than
 * `expireMs`, and an entry found in the older generation is checked against its last-seen time.
 * Memory is thus bounded by the flows seen in the last 2 x `expireMs`.
 *
 * Records are marked in place; batches with nothing dropped are passed on as they are, and a batch
 * left empty is not emitted.
 *
 * @example
 * ```ts
 * const counters = ledger.stage('dd', 'dedupe');
 * flows$.pipe(dedupe({ mode: 'first_come', expireMs: 10_000, justMark: false, counters })).subscribe(sink);
 * // [A on eth0, A on eth1, B on eth1] -> [A on eth0, B on eth1]; dropped.dedupe_duplicate = 1
 * ```
 */
export function dedupe(options: DedupeOptions): OperatorFunction<FlowBatch, FlowBatch> {
  const stage = `dedupe ${options.id ?? ''}`.trimEnd();
  const { mode, expireMs, justMark, counters } = options;
  if (mode !== 'none' && mode !== 'first_come') {
    throw new OperatorError(
      'EBADCONFIG',
      `${stage}: mode must be 'none' or 'first_come', got '${String(mode)}'`,
    );
  }
  if (!(expireMs > 0) || !Number.isFinite(expireMs)) {
    throw new OperatorError('EBADCONFIG', `${stage}: expire_ms must be > 0, got ${expireMs}`);
  }
  const scheduler = options.scheduler ?? asyncScheduler;

  if (mode === 'none') {
    return (source) =>
      new Observable<FlowBatch>((subscriber) =>
        source.subscribe({
          next(batch) {
            counters.addReceived(batch.length);
            counters.addSent(batch.length);
            subscriber.next(batch);
          },
          error: (err: unknown) => subscriber.error(err),
          complete: () => subscriber.complete(),
        }),
      );
  }

  return (source) =>
    new Observable<FlowBatch>((subscriber) => {
      let current = new SeenTable(1024);
      let previous = new SeenTable(1024);
      let generationStart = scheduler.now();
      const key = new FlowKey(false);

      const rotate = (now: number): void => {
        const emptied = previous;
        previous = current;
        current = emptied;
        current.clear();
        // Everything in the generation just retired was last seen before `generationStart +
        // expireMs`; if that is more than expireMs ago, it is all expired too.
        if (now - generationStart >= 2 * expireMs) previous.clear();
        generationStart = now;
      };

      return source.subscribe({
        next(batch) {
          counters.addReceived(batch.length);
          let i = 0;
          let kept: FlowRecord[] | undefined;
          let duplicates = 0;
          try {
            const now = scheduler.now();
            if (now - generationStart >= expireMs) rotate(now);
            for (; i < batch.length; i++) {
              const r = batch[i]!;
              let e = current.find(key.read(r));
              let first: number;
              if (e >= 0) {
                first = current.firstInterface[e]!;
              } else {
                const p = previous.size === 0 ? -1 : previous.find(key);
                // Entries of the current generation are never expired; those of the previous one may be.
                first =
                  p >= 0 && now - previous.lastSeen[p]! <= expireMs
                    ? previous.firstInterface[p]!
                    : r.ingressInterface | 0;
                e = current.insert(key);
                current.firstInterface[e] = first;
              }
              current.lastSeen[e] = now;
              if (first === (r.ingressInterface | 0)) {
                kept?.push(r);
              } else {
                duplicates++;
                if (justMark) r.duplicate = true;
                else kept ??= batch.slice(0, i);
              }
            }
          } catch (err) {
            // Nothing of this batch is sent: copies found so far are duplicates, the rest is lost.
            const dropped = justMark ? 0 : duplicates;
            counters.addDropped('dedupe_duplicate', dropped);
            counters.addDropped('shutdown', batch.length - dropped);
            subscriber.error(badRecordError(stage, batch, i, err));
            return;
          }
          const out = kept ?? batch;
          if (!justMark) counters.addDropped('dedupe_duplicate', duplicates);
          counters.addSent(out.length);
          if (out.length > 0) subscriber.next(out);
        },
        error: (err: unknown) => subscriber.error(err),
        complete: () => subscriber.complete(),
      });
    });
}

export interface DedupeConfig {
  mode: DedupeMode;
  expire_ms: number;
  just_mark: boolean;
}

const dedupeModule: TransformModule<DedupeConfig> = {
  type: 'dedupe',
  kind: 'transform',
  description: 'keeps each flow from the first interface it was seen on; drops or marks copies from others',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      mode: {
        type: 'string',
        enum: ['none', 'first_come'],
        default: 'first_come',
        description: "'first_come' keeps a flow from the first interface that reported it; 'none' passes all",
      },
      expire_ms: {
        type: 'integer',
        minimum: 1,
        default: 10000,
        description: 'a flow not seen for longer than this is forgotten, in milliseconds',
      },
      just_mark: {
        type: 'boolean',
        default: false,
        description: 'pass copies from other interfaces with duplicate: true instead of dropping them',
      },
    },
  },
  example: { mode: 'first_come', expire_ms: 10000, just_mark: false },
  build(config: DedupeConfig, context: ComponentContext) {
    const options: DedupeOptions = {
      mode: config.mode,
      expireMs: config.expire_ms,
      justMark: config.just_mark,
      counters: context.counters,
      id: context.id,
    };
    if (context.scheduler) options.scheduler = context.scheduler;
    return dedupe(options);
  },
};

export default dedupeModule;
