/**
 * The one bounded buffer in front of a sink. The pipeline reads the input of every sink that holds
 * records (its module is `buffered`) through one (src/pipeline/build.ts), configured by the sink's
 * `buffer_max_records` and `when_full`; a sink built on its own puts one in front of itself
 * (throughBuffer in consume.ts), so it counts and bounds the same in tests.
 *
 * It counts on the sink's own ledger counters, so there is one set of them: every record that
 * reaches the buffer is counted received (handed to the sink), and a record it cannot keep is
 * counted dropped as `sink_buffer_full`. The bound is on what the sink holds by those counts
 * (received - sent - dropped: waiting here, queued in the sink or being written), so the sink
 * signals its demand by counting what it writes or drops: every such count frees a place, and
 * wakes the buffer (StageCounters.onLeft). What a full buffer does with an arriving record:
 *
 * - `drop_newest`: the records that do not fit are dropped, the newest first;
 * - `drop_oldest`: the oldest records still waiting make room: first those the sink has not
 *   started writing (Sink.evictOldest), then the oldest of the arriving batch;
 * - `block`: nothing is dropped; the batch waits here and the sources upstream that can wait
 *   (SourceHold) are held until the sink has room. Up to buffer_max_records more records wait here for
 *   sources that cannot wait (packets keep arriving); beyond those, the newest are dropped.
 *
 * When the input completes, what waits here is handed to the sink; when the sink unsubscribes
 * (close), what still waits is counted `shutdown`.
 */
import { Observable, asyncScheduler, type OperatorFunction, type SchedulerLike } from 'rxjs';
import type { JsonSchema, Sink, WhenFull } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import type { FlowBatch } from '../records/flow.js';
import { LossLog } from '../delivery/loss-log.js';

export interface BufferSettings {
  /** Records the sink holds at most (waiting here or in its own hands); Infinity: no bound. */
  maxRecords: number;
  whenFull: WhenFull;
}

/** A sink without buffer options: every record is handed over, none dropped here. */
export const UNBOUNDED: BufferSettings = { maxRecords: Infinity, whenFull: 'drop_newest' };

/** Losses are logged at most this often; the ledger has every count. */
const LOSS_LOG_INTERVAL_MS = 10_000;

/** The buffer settings of a sink's config: its buffer_max_records and when_full, when it has them. */
export function bufferSettings(config: unknown, defaults: BufferSettings = UNBOUNDED): BufferSettings {
  const options = (config ?? {}) as { buffer_max_records?: unknown; when_full?: unknown };
  return {
    maxRecords:
      typeof options.buffer_max_records === 'number' ? options.buffer_max_records : defaults.maxRecords,
    whenFull: typeof options.when_full === 'string' ? (options.when_full as WhenFull) : defaults.whenFull,
  };
}

export interface BufferOptionsSpec {
  /** Default of buffer_max_records. */
  maxRecords: number;
  /** Largest buffer_max_records allowed. */
  maximum: number;
  /** The when_full modes the sink offers (drop_oldest gives back more than arrivals with Sink.evictOldest). */
  choices: readonly WhenFull[];
  /** Where the sink's records wait, for the description: "waiting or in flight". */
  held: string;
}

const MODES: Record<WhenFull, string> = {
  drop_newest: 'drop_newest (the default) drops the records that do not fit',
  drop_oldest: 'drop_oldest drops the oldest records not yet being written to make room',
  block:
    'block keeps them and holds the sources upstream that can wait (file_replay, kafka_consumer) until the sink has room; what a source that cannot wait sends beyond another buffer_max_records is dropped',
};

/** The schema of a sink's `buffer_max_records` and `when_full`, which configure its buffer. */
export function bufferOptions(spec: BufferOptionsSpec): Record<string, JsonSchema> {
  return {
    buffer_max_records: {
      type: 'integer',
      minimum: 1,
      maximum: spec.maximum,
      default: spec.maxRecords,
      description: `Records held at most (${spec.held}), by the pipeline's buffer in front of the sink; beyond it when_full applies, and what it drops counts as sink_buffer_full.`,
    },
    when_full: {
      enum: [...spec.choices],
      default: 'drop_newest',
      description: `What the sink's buffer does with records that find it full: ${spec.choices.map((c) => MODES[c]).join('; ')}.`,
    },
  };
}

export class SinkBuffer {
  private sink: Sink | undefined;
  private readonly losses: LossLog;
  private readonly fullListeners: ((full: boolean) => void)[] = [];
  private full = false;

  constructor(
    readonly settings: BufferSettings,
    private readonly counters: StageCounters,
    logger: Logger,
    id: string,
    scheduler: SchedulerLike = asyncScheduler,
  ) {
    this.losses = new LossLog(
      logger,
      `sink ${id}: records dropped at its buffer`,
      LOSS_LOG_INTERVAL_MS,
      scheduler,
    );
  }

  /** The sink behind the buffer, for drop_oldest. */
  attach(sink: Sink): void {
    this.sink = sink;
  }

  /** Called with true when the buffer fills up (block only) and false when the sink has room again. */
  onFull(listener: (full: boolean) => void): void {
    this.fullListeners.push(listener);
  }

  /** The buffer, as an operator between the sink's input and the sink; one subscriber at a time. */
  operator(): OperatorFunction<FlowBatch, FlowBatch> {
    return (source) =>
      new Observable<FlowBatch>((subscriber) => {
        const { counters } = this;
        const { maxRecords, whenFull } = this.settings;
        // Batches that found the sink full (block only): few, and taken from the front.
        const waiting: FlowBatch[] = [];
        let waitingRecords = 0;
        const take = (): FlowBatch => {
          const batch = waiting.shift()!;
          waitingRecords -= batch.length;
          return batch;
        };
        let handing = false;
        let stopped = false;

        // Room in the sink: what it holds, less what waits here, against the bound.
        const room = (): number => maxRecords - (counters.held() - waitingRecords);
        const drop = (n: number): void => {
          if (n <= 0) return;
          counters.addDropped('sink_buffer_full', n);
          this.losses.add('sink_buffer_full', n);
        };
        // Hands waiting batches over while the sink has room (block only); reentrant calls, from a
        // sink that counts a write inside next(), only set up another round.
        const handOver = (force: boolean): void => {
          if (handing) return;
          handing = true;
          try {
            while (waiting.length > 0 && (force || room() > 0)) subscriber.next(take());
          } finally {
            handing = false;
          }
          this.setFull(!force && counters.held() >= maxRecords);
        };
        const stop = (): void => {
          stopped = true;
          if (counters.onLeft === onLeft) counters.onLeft = undefined;
          counters.addDropped('shutdown', waitingRecords);
          waiting.length = 0;
          waitingRecords = 0;
          this.setFull(false);
          this.losses.close();
        };
        const onLeft = (): void => {
          if (!stopped && (this.full || waiting.length > 0)) handOver(false);
        };
        if (whenFull === 'block') counters.onLeft = onLeft;

        const admit = (batch: FlowBatch): void => {
          const n = batch.length;
          if (n === 0) return;
          counters.addReceived(n);
          const free = room() + n;
          if (whenFull === 'block') {
            if (waiting.length === 0 && free > 0) {
              subscriber.next(batch);
            } else {
              const kept = Math.min(n, Math.max(0, maxRecords - waitingRecords));
              if (kept > 0) {
                waiting.push(kept === n ? batch : batch.slice(0, kept));
                waitingRecords += kept;
              }
              drop(n - kept);
            }
            this.setFull(counters.held() >= maxRecords);
            return;
          }
          if (n <= free) {
            subscriber.next(batch);
          } else if (whenFull === 'drop_newest') {
            drop(n - Math.max(0, free));
            if (free > 0) subscriber.next(batch.slice(0, free));
          } else {
            const excess = n - Math.max(0, free);
            const evicted = Math.min(excess, this.sink?.evictOldest?.(excess) ?? 0);
            drop(excess);
            // Records being written cannot be taken back: what still does not fit is the oldest arriving.
            const rest = excess - evicted;
            if (rest < n) subscriber.next(rest > 0 ? batch.slice(rest) : batch);
          }
        };

        const subscription = source.subscribe({
          next: (batch) => {
            if (!stopped) admit(batch);
          },
          error: (err: unknown) => {
            handOver(true);
            stop();
            subscriber.error(err);
          },
          complete: () => {
            handOver(true);
            stop();
            subscriber.complete();
          },
        });
        return () => {
          subscription.unsubscribe();
          if (!stopped) stop();
        };
      });
  }

  private setFull(full: boolean): void {
    if (full === this.full) return;
    this.full = full;
    for (const listener of this.fullListeners) listener(full);
  }
}
