import {
  Observable,
  asapScheduler,
  asyncScheduler,
  type OperatorFunction,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';
import type { ComponentContext, TransformModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import type { FlowBatch } from '../records.js';
import { OperatorError } from './flow-key.js';

export interface LimitCapacityOptions {
  /** Batches held for the next stage; a batch arriving when this many wait is dropped whole. */
  bufferLength: number;
  /** Losses are logged at most once per this many milliseconds. */
  logIntervalMs: number;
  counters: StageCounters;
  logger: Logger;
  /**
   * Runs the log timer and, without `demand$`, the hand-over to the next stage. By default the log
   * timer runs on asyncScheduler and the hand-over on asapScheduler (a microtask).
   */
  scheduler?: SchedulerLike;
  /**
   * The next stage's demand, as in Reactive Streams: each value n lets the limiter hand over n more
   * batches. An asynchronous consumer (a sink writing to the network) requests its window once and
   * then 1 per batch written. Without it the next stage is taken to be ready whenever the hand-over
   * task runs.
   */
  demand$?: Observable<number>;
  /** Each value hands everything queued over at once, regardless of demand (e.g. on SIGTERM). */
  flush$?: Observable<unknown>;
  /** Names the stage in error messages. */
  id?: string;
}

/** A fixed-size FIFO of batches (a ring, so taking the head does not move the others). */
class BatchRing {
  private readonly items: (FlowBatch | undefined)[];
  private head = 0;
  length = 0;

  constructor(readonly capacity: number) {
    this.items = new Array<FlowBatch | undefined>(capacity).fill(undefined);
  }

  push(batch: FlowBatch): void {
    this.items[(this.head + this.length) % this.capacity] = batch;
    this.length++;
  }

  shift(): FlowBatch {
    const batch = this.items[this.head]!;
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.length--;
    return batch;
  }

  /** Records held. */
  records(): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) n += this.items[(this.head + i) % this.capacity]!.length;
    return n;
  }

  clear(): void {
    this.items.fill(undefined);
    this.head = 0;
    this.length = 0;
  }
}

/**
 * Hands batches to the next stage through a queue of at most `bufferLength` batches and drops
 * whole batches that arrive while it is full, counting their records (reason `limiter_dropped`)
 * and logging the losses at most once per `logIntervalMs` (the first loss after a quiet interval
 * is logged at once, later ones are summed until the interval ends).
 *
 * When is the next stage "full" in a single-threaded push pipeline? A synchronous consumer has
 * finished with a batch when its `next()` returns, and it runs on the same thread as the
 * producer, so it slows the producer rather than falling behind (the kernel side then counts the
 * loss). What can fall behind is an asynchronous consumer (a sink with writes in flight): it
 * passes `demand$` and requests batches as it finishes them, and the queue absorbs bursts up to
 * `bufferLength`. Without `demand$` the queue is handed over by a scheduled task (a microtask by
 * default), so it bounds how much a producer can pile up in one synchronous run.
 *
 * On completion everything queued is handed over, then the output completes; on error or
 * unsubscribe what is queued is dropped with reason `shutdown`.
 *
 * @example
 * ```ts
 * const demand = new Subject<number>();
 * flows$.pipe(limitCapacity({ bufferLength: 50, logIntervalMs: 15_000, counters, logger, demand$: demand }))
 *   .pipe(concatMap(async (batch) => { await kafka.send(batch); demand.next(1); }))
 *   .subscribe();
 * demand.next(1); // one batch in flight at a time
 * ```
 */
export function limitCapacity(options: LimitCapacityOptions): OperatorFunction<FlowBatch, FlowBatch> {
  const stage = `limit_capacity ${options.id ?? ''}`.trimEnd();
  const { bufferLength, logIntervalMs, counters, logger, demand$, flush$ } = options;
  if (!Number.isSafeInteger(bufferLength) || bufferLength < 1) {
    throw new OperatorError(
      'EBADCONFIG',
      `${stage}: buffer_length must be an integer >= 1, got ${bufferLength}`,
    );
  }
  if (!(logIntervalMs > 0) || !Number.isFinite(logIntervalMs)) {
    throw new OperatorError('EBADCONFIG', `${stage}: log_interval_ms must be > 0, got ${logIntervalMs}`);
  }
  const timers = options.scheduler ?? asyncScheduler;
  const handOver = options.scheduler ?? asapScheduler;

  return (source) =>
    new Observable<FlowBatch>((subscriber) => {
      const queue = new BatchRing(bufferLength);
      let credits = 0;
      let handing = false;
      let handTask: Subscription | undefined;
      let logTimer: Subscription | undefined;
      let lostRecords = 0;
      let lostBatches = 0;
      let stopped = false;

      const report = (): void => {
        if (lostBatches === 0) return;
        logger.warn(
          {
            dropped_records: lostRecords,
            dropped_batches: lostBatches,
            buffer_length: bufferLength,
            total_dropped_records: counters.dropped.get('limiter_dropped') ?? 0,
          },
          `${stage}: next stage cannot keep up; flows dropped`,
        );
        lostRecords = 0;
        lostBatches = 0;
      };

      const onLogTimer = (): void => {
        logTimer = undefined;
        if (lostBatches === 0) return;
        report();
        logTimer = timers.schedule(onLogTimer, logIntervalMs);
      };

      const ready = (): boolean => demand$ === undefined || credits > 0;

      // Hands over while the next stage is ready. A consumer that requests more (or a producer that
      // emits) from inside next() only adds to the queue or the credits; this loop picks them up.
      const deliver = (force: boolean): void => {
        if (handing) return;
        handing = true;
        try {
          while (queue.length > 0 && (force || ready())) {
            const batch = queue.shift();
            if (credits > 0) credits--;
            counters.addSent(batch.length);
            subscriber.next(batch);
          }
        } finally {
          handing = false;
        }
      };

      const onHandTask = (): void => {
        handTask = undefined;
        deliver(false);
      };

      const shutdown = (): void => {
        stopped = true;
        handTask?.unsubscribe();
        handTask = undefined;
        logTimer?.unsubscribe();
        logTimer = undefined;
        const held = queue.records();
        if (held > 0) counters.addDropped('shutdown', held);
        queue.clear();
        report();
      };

      const fail = (err: unknown): void => {
        if (stopped) return;
        shutdown();
        subscriber.error(err);
      };

      const demandSub = demand$?.subscribe({
        next(n) {
          if (!(n > 0)) {
            fail(
              new OperatorError('EDEMAND', `${stage}: demand must be a positive number of batches, got ${n}`),
            );
            return;
          }
          credits += n;
          deliver(false);
        },
        error: fail,
      });
      const flushSub = flush$?.subscribe({ next: () => deliver(true), error: fail });

      const sub = source.subscribe({
        next(batch) {
          if (stopped) return;
          counters.addReceived(batch.length);
          if (queue.length >= bufferLength) {
            counters.addDropped('limiter_dropped', batch.length);
            lostRecords += batch.length;
            lostBatches++;
            if (logTimer === undefined) {
              report();
              logTimer = timers.schedule(onLogTimer, logIntervalMs);
            }
            return;
          }
          queue.push(batch);
          if (demand$ !== undefined) deliver(false);
          else handTask ??= handOver.schedule(onHandTask);
        },
        error: fail,
        complete() {
          if (stopped) return;
          deliver(true);
          shutdown();
          subscriber.complete();
        },
      });

      return () => {
        sub.unsubscribe();
        demandSub?.unsubscribe();
        flushSub?.unsubscribe();
        if (!stopped) shutdown();
      };
    });
}

export interface LimitCapacityConfig {
  buffer_length: number;
  log_interval_ms: number;
}

/** Optional wiring the pipeline may pass besides the config. */
export interface LimitCapacityHooks {
  /** The next stage's demand (see `LimitCapacityOptions.demand$`). */
  demand$?: Observable<number>;
  /** Each value hands everything queued over at once. */
  flush$?: Observable<unknown>;
}

/** The module, whose `build` also takes the optional hooks. */
export interface LimitCapacityModule extends TransformModule<LimitCapacityConfig> {
  build(
    config: LimitCapacityConfig,
    context: ComponentContext,
    hooks?: LimitCapacityHooks,
  ): OperatorFunction<FlowBatch, FlowBatch>;
}

const limitCapacityModule: LimitCapacityModule = {
  type: 'limit_capacity',
  kind: 'transform',
  description: 'drops whole batches when the next stage cannot keep up, and logs how many flows it lost',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      buffer_length: {
        type: 'integer',
        minimum: 1,
        maximum: 65536,
        default: 50,
        description: 'batches held for the next stage; a batch arriving when this many wait is dropped',
      },
      log_interval_ms: {
        type: 'integer',
        minimum: 1,
        maximum: 2147483647,
        default: 15000,
        description: 'losses are logged at most once per this many milliseconds',
      },
    },
  },
  example: { buffer_length: 50, log_interval_ms: 15000 },
  build(config: LimitCapacityConfig, context: ComponentContext, hooks?: LimitCapacityHooks) {
    const options: LimitCapacityOptions = {
      bufferLength: config.buffer_length,
      logIntervalMs: config.log_interval_ms,
      counters: context.counters,
      logger: context.logger,
      id: context.id,
    };
    if (context.scheduler) options.scheduler = context.scheduler;
    if (hooks?.demand$) options.demand$ = hooks.demand$;
    if (hooks?.flush$) options.flush$ = hooks.flush$;
    return limitCapacity(options);
  },
};

export default limitCapacityModule;
