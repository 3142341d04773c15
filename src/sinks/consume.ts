/**
 * The input side every sink shares: reading the batches through the buffer in front of the sink
 * and settling consume() only after what was accepted has been flushed.
 */
import type { Observable, Subscription } from 'rxjs';
import type { ComponentContext, Sink } from '../component.js';
import type { FlowBatch } from '../records/flow.js';
import { SinkBuffer, type BufferSettings } from './buffer.js';
import { SinkError, asError } from './errors.js';

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
 * A sink's input as it reads it: as given when the pipeline has put its buffer in front of the
 * sink, else through a buffer of the sink's own with the same settings (a sink built on its own).
 */
export function throughBuffer(
  input: Observable<FlowBatch>,
  context: ComponentContext,
  settings: BufferSettings,
  sink: Sink,
): Observable<FlowBatch> {
  if (context.bufferedByPipeline) return input;
  const buffer = new SinkBuffer(settings, context.counters, context.logger, context.id, context.scheduler);
  buffer.attach(sink);
  return input.pipe(buffer.operator());
}

/**
 * A sink's input: at most one consume(), then the two halves of a close: stop reading, and later
 * settle consume() once what was read is written or counted.
 */
export class SinkInput {
  private consumption: Consumption | undefined;
  private claimed = false;

  /**
   * Takes the input for this consume(), or returns the error for a second call or a call after
   * close (`what` names the sink in the message).
   */
  claim(what: string, closed: boolean): SinkError | undefined {
    if (this.claimed || closed)
      return new SinkError('ECONSUME', `${what}: consume() was already called or the sink is closed`);
    this.claimed = true;
    return undefined;
  }

  /** Feeds every batch of `input` to `accept`; returns consume()'s promise (see consumeBatches). */
  start(
    input: Observable<FlowBatch>,
    accept: (batch: FlowBatch) => void,
    flush: () => Promise<void>,
  ): Promise<void> {
    this.consumption = consumeBatches(input, accept, flush);
    return this.consumption.done;
  }

  /** Stops reading the input. */
  stop(): void {
    this.consumption?.subscription.unsubscribe();
  }

  /** Settles consume() now, whether or not the input has ended. */
  end(): void {
    this.consumption?.end();
  }
}
