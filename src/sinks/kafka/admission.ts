import type { FlowBatch, FlowRecord } from '../../records/flow.js';
import { RecordQueue } from './queue.js';

/**
 * The kafka sink's queue of records waiting to be sent: in arrival order, until the send service
 * takes them into a request. The pipeline's buffer in front of the sink bounds it (at most
 * buffer_max_records held, counting those in flight) and applies when_full; with drop_oldest it
 * takes waiting records back with evictOldest(). Every record gets a queue position as it comes
 * in (`admitted` counts them) and leaves at one (`left`), so a flush can wait for everything
 * before a position.
 */
export class Admission {
  private readonly queue = new RecordQueue();
  /** Records ever put in the queue, and records ever gone from it: queue positions. */
  admitted = 0;
  left = 0;

  /** Records waiting (not in flight). */
  get length(): number {
    return this.queue.length;
  }

  /** Arrival time of the oldest waiting record; Infinity when none waits. */
  headArrival(): number {
    return this.queue.headArrival();
  }

  /** Takes in `batch`, arrived at `now`. */
  admit(batch: FlowBatch, now: number): void {
    this.queue.push(batch, now);
    this.admitted += batch.length;
  }

  /** Drops up to `n` of the oldest waiting records (not those in flight); returns how many. */
  evictOldest(n: number): number {
    const old = this.queue.drop(Math.min(n, this.queue.length));
    this.left += old;
    return old;
  }

  /** Up to `n` of the oldest waiting records, which leave the queue. */
  take(n: number): FlowRecord[] {
    const records = this.queue.take(n);
    this.left += records.length;
    return records;
  }

  /** Drops the records that arrived at `time` or before; returns how many. */
  expire(time: number): number {
    const n = this.queue.dropArrivedBy(time);
    this.left += n;
    return n;
  }

  /** Drops every waiting record; returns how many. */
  clear(): number {
    const n = this.queue.clear();
    this.left += n;
    return n;
  }
}
