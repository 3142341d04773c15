import { Observable, asyncScheduler, interval, merge, type SchedulerLike } from 'rxjs';
import type { FlowBatch, FlowRecord } from '../records/flow.js';

export interface MapTracerOptions {
  /**
   * Reads and deletes the kernel's flows; called on every eviction. It may return a promise
   * (FlowDatapath.evictFlowsAsync): the tracer then waits for it before it evicts again. `final`
   * is true for the last eviction, on stop$ (flows then end forced, flowEndReason 4).
   */
  evict: (final: boolean) => FlowRecord[] | PromiseLike<FlowRecord[]>;
  evictionIntervalMs: number;
  /** Each value evicts at once (map pressure, or a flush on demand). */
  flush$?: Observable<unknown>;
  /** When it emits, the tracer evicts one last time and completes. */
  stop$?: Observable<unknown>;
  scheduler?: SchedulerLike;
}

/**
 * Every `evictionIntervalMs`, on each `flush$` value, and once more on `stop$`, reads and deletes
 * the kernel flow map and emits the flows as one batch (nothing when the map was empty).
 * A failing eviction errors the stream: a map that cannot be read is not something to retry blind.
 *
 * Evictions never overlap, so batches come out in eviction order. A tick (interval or flush$)
 * that arrives while an eviction runs queues one more, which starts when the running one ends;
 * further ticks meanwhile add nothing, as that one eviction takes every flow they would have.
 * Queuing rather than skipping keeps a flush$ for map pressure from being lost to an interval
 * eviction that had swapped before the map filled. stop$ during an eviction waits for it, then
 * evicts once more (that final eviction replaces a queued one) and completes. Unsubscribing
 * during an eviction drops what it returns.
 */
export function mapTracer(options: MapTracerOptions): Observable<FlowBatch> {
  const scheduler = options.scheduler ?? asyncScheduler;
  return new Observable<FlowBatch>((subscriber) => {
    let running = false;
    let queued = false;
    let stopping = false;

    const evict = (final: boolean): void => {
      running = true;
      let result: FlowRecord[] | PromiseLike<FlowRecord[]>;
      try {
        result = options.evict(final);
      } catch (err) {
        fail(err);
        return;
      }
      if (Array.isArray(result)) done(result, final);
      else void result.then((batch) => done(batch, final), fail);
    };
    const done = (batch: FlowRecord[], final: boolean): void => {
      running = false;
      if (subscriber.closed) return;
      if (batch.length > 0) subscriber.next(batch);
      if (final) {
        subscriber.complete();
      } else if (stopping) {
        evict(true);
      } else if (queued) {
        queued = false;
        evict(false);
      }
    };
    const fail = (err: unknown): void => {
      running = false;
      // After unsubscribe nobody is left to tell; the stream already ended.
      if (!subscriber.closed) subscriber.error(err);
    };
    const tick = (): void => {
      // A flush$ or stop$ that fires during subscribe can arrive after a failed eviction closed
      // the stream: reading the map then would delete flows no one receives.
      if (subscriber.closed) return;
      if (running) queued = true;
      else evict(false);
    };

    const ticks = options.flush$
      ? merge(interval(options.evictionIntervalMs, scheduler), options.flush$)
      : interval(options.evictionIntervalMs, scheduler);
    const timer = ticks.subscribe(tick);
    const stop = options.stop$?.subscribe(() => {
      if (subscriber.closed || stopping) return;
      stopping = true;
      timer.unsubscribe();
      if (!running) evict(true);
    });
    return () => {
      timer.unsubscribe();
      stop?.unsubscribe();
    };
  });
}
