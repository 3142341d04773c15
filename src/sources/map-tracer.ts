import { Observable, asyncScheduler, interval, merge, type SchedulerLike } from 'rxjs';
import type { FlowBatch, FlowRecord } from '../records.js';

export interface MapTracerOptions {
  /** Reads and deletes the kernel's flows; called on every eviction. */
  evict: () => FlowRecord[];
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
 */
export function mapTracer(options: MapTracerOptions): Observable<FlowBatch> {
  const scheduler = options.scheduler ?? asyncScheduler;
  return new Observable<FlowBatch>((subscriber) => {
    const evict = (): boolean => {
      // A flush$ or stop$ that fires during subscribe can arrive after a failed eviction closed
      // the stream: reading the map then would delete flows no one receives.
      if (subscriber.closed) return false;
      let batch: FlowRecord[];
      try {
        batch = options.evict();
      } catch (err) {
        subscriber.error(err);
        return false;
      }
      if (batch.length > 0) subscriber.next(batch);
      return true;
    };
    const ticks = options.flush$
      ? merge(interval(options.evictionIntervalMs, scheduler), options.flush$)
      : interval(options.evictionIntervalMs, scheduler);
    const timer = ticks.subscribe(() => void evict());
    const stop = options.stop$?.subscribe(() => {
      if (evict()) subscriber.complete();
    });
    return () => {
      timer.unsubscribe();
      stop?.unsubscribe();
    };
  });
}
