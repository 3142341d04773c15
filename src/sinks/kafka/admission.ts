import type { FlowBatch, FlowRecord } from '../../records.js';
import { RecordQueue } from './queue.js';

export type WhenFull = 'drop_newest' | 'drop_oldest';

/**
 * The kafka sink's bounded buffer: records wait here, in arrival order, until the send service
 * takes them into a request. At most `limit` records are held, counting those in flight (which
 * the sender reports); `when_full` says which records a full buffer drops. Every record gets a
 * queue position as it comes in (`admitted` counts them) and leaves at one (`left`), so a flush
 * can wait for everything before a position.
 */
export class Admission {
  private readonly queue = new RecordQueue();
  /** Records ever put in the queue, and records ever gone from it: queue positions. */
  admitted = 0;
  left = 0;

  constructor(
    private readonly limit: number,
    private readonly whenFull: WhenFull,
  ) {}

  /** Records waiting (not in flight). */
  get length(): number {
    return this.queue.length;
  }

  /** Arrival time of the oldest waiting record; Infinity when none waits. */
  headArrival(): number {
    return this.queue.headArrival();
  }

  /**
   * Takes in `batch`, arrived at `now`, with `inFlight` records already sent and not settled.
   * Returns how many records (of the batch, or waiting ones with drop_oldest) the full buffer dropped.
   */
  admit(batch: FlowBatch, now: number, inFlight: number): number {
    const n = batch.length;
    const room = this.limit - this.queue.length - inFlight;
    if (n <= room) {
      this.enqueue(batch, now);
      return 0;
    }
    if (this.whenFull === 'drop_newest') {
      if (room > 0) this.enqueue(batch.slice(0, room), now);
      return n - Math.max(0, room);
    }
    const excess = n - room;
    const old = this.queue.drop(Math.min(excess, this.queue.length));
    this.left += old;
    // Records in flight cannot be taken back; what still does not fit is the oldest arriving.
    const rest = excess - old;
    this.enqueue(rest > 0 ? batch.slice(rest) : batch, now);
    return old + rest;
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

  private enqueue(records: FlowBatch, now: number): void {
    this.queue.push(records, now);
    this.admitted += records.length;
  }
}
