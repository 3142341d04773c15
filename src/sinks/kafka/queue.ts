import type { FlowBatch, FlowRecord } from '../../records/flow.js';

interface Chunk {
  records: FlowBatch;
  /** When the chunk arrived, on the sink's scheduler clock. */
  at: number;
}

/**
 * The records a sink holds before it sends them, in arrival order: the batches as they came (no
 * copy on the way in), each with its arrival time, and an offset into the first. Taking or
 * dropping from the head never moves the others.
 */
export class RecordQueue {
  private chunks: Chunk[] = [];
  private head = 0;
  private offset = 0;
  /** Records held. */
  length = 0;

  push(records: FlowBatch, at: number): void {
    if (records.length === 0) return;
    this.chunks.push({ records, at });
    this.length += records.length;
  }

  /** Arrival time of the oldest record held; Infinity when empty. */
  headArrival(): number {
    return this.length === 0 ? Infinity : this.chunks[this.head]!.at;
  }

  /** Removes and returns up to `n` records from the head. */
  take(n: number): FlowRecord[] {
    n = Math.min(n, this.length);
    const first = this.chunks[this.head];
    if (first !== undefined && this.offset === 0 && first.records.length === n) {
      this.advance(n);
      return first.records;
    }
    const out = new Array<FlowRecord>(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[this.head]!;
      const k = Math.min(n - filled, chunk.records.length - this.offset);
      for (let i = 0; i < k; i++) out[filled + i] = chunk.records[this.offset + i]!;
      filled += k;
      this.advance(k);
    }
    return out;
  }

  /** Removes up to `n` records from the head without returning them; returns how many. */
  drop(n: number): number {
    n = Math.min(n, this.length);
    let left = n;
    while (left > 0) {
      const chunk = this.chunks[this.head]!;
      const k = Math.min(left, chunk.records.length - this.offset);
      left -= k;
      this.advance(k);
    }
    return n;
  }

  /** Removes the head's records that arrived at or before `time`; returns how many. */
  dropArrivedBy(time: number): number {
    let n = 0;
    while (this.length > 0 && this.chunks[this.head]!.at <= time) {
      n += this.drop(this.chunks[this.head]!.records.length - this.offset);
    }
    return n;
  }

  /** Empties the queue; returns how many records it held. */
  clear(): number {
    const n = this.length;
    this.chunks = [];
    this.head = 0;
    this.offset = 0;
    this.length = 0;
    return n;
  }

  /** Moves the head forward by `k` records, all within the first chunk. */
  private advance(k: number): void {
    this.length -= k;
    this.offset += k;
    if (this.offset === this.chunks[this.head]!.records.length) {
      this.chunks[this.head] = undefined as unknown as Chunk;
      this.head++;
      this.offset = 0;
      // Compact now and then, so the array does not grow with every batch ever queued.
      if (this.head >= 1024 && this.head * 2 >= this.chunks.length) {
        this.chunks = this.chunks.slice(this.head);
        this.head = 0;
      }
    }
  }
}
