/**
 * The input side every sink shares: subscribing to the batches and settling consume() only after
 * what was accepted has been flushed, and admitting a batch into a bounded buffer.
 */
import type { Observable, Subscription } from 'rxjs';
import type { StageCounters } from '../ledger.js';
import type { FlowBatch } from '../records.js';
import { asError } from './errors.js';
import type { LossLog } from '../delivery/loss-log.js';

export interface Consumption {
  readonly subscription: Subscription;
  /** consume()'s promise: settles when the input ends and flush() has resolved. */
  readonly done: Promise<void>;
  /** Resolves `done` now: close() ends consume() even when the input has not ended. */
  readonly end: () => void;
}

/** Feeds every batch of `input` to `accept`; on complete or error, waits for `flush` first. */
export function consumeBatches(
  input: Observable<FlowBatch>,
  accept: (batch: FlowBatch) => void,
  flush: () => Promise<void>,
): Consumption {
  let end!: () => void;
  let subscription!: Subscription;
  const done = new Promise<void>((resolve, reject) => {
    end = resolve;
    subscription = input.subscribe({
      next: accept,
      error: (err: unknown) => {
        void flush().then(() => reject(asError(err)));
      },
      complete: () => {
        void flush().then(resolve);
      },
    });
  });
  return { subscription, done, end };
}

/**
 * Counts a non-empty batch as received and keeps the first `room` records; the rest are counted
 * and logged as dropped for a full buffer (the newest go first).
 */
export function admitNewest(
  batch: FlowBatch,
  room: number,
  counters: StageCounters,
  losses: LossLog,
): FlowBatch {
  const n = batch.length;
  counters.addReceived(n);
  const kept = n <= room ? batch : batch.slice(0, Math.max(0, room));
  if (kept.length < n) {
    counters.addDropped('sink_buffer_full', n - kept.length);
    losses.add('sink_buffer_full', n - kept.length);
  }
  return kept;
}
