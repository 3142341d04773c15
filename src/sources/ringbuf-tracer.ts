import { Observable, asyncScheduler, interval, type SchedulerLike } from 'rxjs';
import type { Logger } from '../logger.js';
import type { FlowBatch, FlowRecord } from '../records/flow.js';

/** Decodes the record at view[offset..offset+length) into `out`; returns true when it signals map pressure. */
export type RingRecordDecoder = (
  view: DataView,
  offset: number,
  length: number,
  out: FlowRecord[],
) => boolean;

export interface RingbufTracerOptions {
  /** Drains the ring (e.g. RingBufferReader.drain bound to it). */
  drain: (onRecord: (view: DataView, offset: number, length: number) => void) => number;
  decode: RingRecordDecoder;
  /** Records are submitted without wake-ups, so the ring is drained on this timer. */
  drainIntervalMs: number;
  /** Called (at most once per drain) when a record reports that the kernel map was full. */
  onMapPressure?: () => void;
  logger?: Logger;
  /** How often, at most, the count of records received is logged. */
  logIntervalMs: number;
  stop$?: Observable<unknown>;
  scheduler?: SchedulerLike;
}

/**
 * Emits the single-packet flows the kernel could not aggregate, one batch per drain. When they
 * report map pressure it asks (onMapPressure) for an early eviction of the kernel map, which makes
 * room before more packets spill. Logs how many records arrived at most once per logIntervalMs.
 */
export function ringbufTracer(options: RingbufTracerOptions): Observable<FlowBatch> {
  const scheduler = options.scheduler ?? asyncScheduler;
  return new Observable<FlowBatch>((subscriber) => {
    let sinceLog = 0;
    let lastLog = scheduler.now();
    const drainOnce = (): boolean => {
      const out: FlowRecord[] = [];
      let pressure = false;
      try {
        options.drain((view, offset, length) => {
          if (options.decode(view, offset, length, out)) pressure = true;
        });
      } catch (err) {
        subscriber.error(err);
        return false;
      }
      if (out.length > 0) {
        sinceLog += out.length;
        subscriber.next(out);
      }
      if (pressure) {
        // Thrown from a timer callback it would escape to the host as an uncaught error.
        try {
          options.onMapPressure?.();
        } catch (err) {
          subscriber.error(err);
          return false;
        }
      }
      const now = scheduler.now();
      if (sinceLog > 0 && now - lastLog >= options.logIntervalMs) {
        options.logger?.info({ records: sinceLog, interval_ms: now - lastLog }, 'ring buffer flows received');
        sinceLog = 0;
        lastLog = now;
      }
      return true;
    };
    const timer = interval(options.drainIntervalMs, scheduler).subscribe(() => void drainOnce());
    const stop = options.stop$?.subscribe(() => {
      if (drainOnce()) subscriber.complete();
    });
    return () => {
      timer.unsubscribe();
      stop?.unsubscribe();
    };
  });
}
