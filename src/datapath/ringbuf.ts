import koffi from 'koffi';
import { SyscallError, describeErrno } from '../errors.js';
import { DatapathError } from './errors.js';
import {
  BPF_MAP_TYPE_RINGBUF,
  MAP_FAILED,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
  lastErrno,
  libc,
  pageSize,
  type Ptr,
} from './libbpf.js';
import type { BpfMap } from './map.js';

/** Called for each record: its bytes are view[offset .. offset+length). Valid only during the call. */
export type RecordHandler = (view: DataView, offset: number, length: number) => void;

// Record header (kernel/bpf/ringbuf.c): u32 len with these flag bits, u32 pg_off.
const BUSY_BIT = 0x80000000;
const DISCARD_BIT = 0x40000000;
const LEN_MASK = 0x3fffffff;
const HEADER_SIZE = 8;

/**
 * Reads a BPF_MAP_TYPE_RINGBUF by mmap'ing it into JS (koffi.view): no FFI call per record.
 *
 * The kernel's mmap contract: at offset 0 one page holding the consumer position (u64, the only
 * page userspace may write); at offset pagesize a read-only page holding the producer position
 * (u64), followed by the data area mapped twice back to back, so a record that crosses the end of
 * the ring is still contiguous in the mapping. Each record is an 8-byte header (len + BUSY/DISCARD
 * bits, page offset) then the data, padded to 8 bytes; positions only grow.
 *
 * drain(cb) hands every available record to cb(view: DataView, offset: number, length: number) in
 * one batch and advances the consumer position once; returns the count. Records are submitted by
 * BPF with BPF_RB_NO_WAKEUP, so callers drain on a timer.
 */
export class RingBufferReader {
  /** Size of the data area in bytes (the map's max_entries). */
  readonly size: number;
  /** The whole read-only mapping; record offsets given to handlers index into it. */
  readonly view: DataView;
  /** The same memory as `view`, for handlers that copy bytes. */
  readonly bytes: Uint8Array;
  readonly #name: string;
  readonly #page: number;
  readonly #mask: number;
  readonly #consumerPtr: Ptr;
  readonly #producerPtr: Ptr;
  readonly #producerLength: number;
  readonly #consumer: BigUint64Array;
  readonly #producer: BigUint64Array;
  readonly #headers: Int32Array;
  #closed = false;

  constructor(map: BpfMap) {
    const ctx = `read ring buffer ${map.name}`;
    if (map.type !== BPF_MAP_TYPE_RINGBUF) {
      throw new DatapathError(
        'EARG',
        `${ctx}: map type ${map.type} is not a ring buffer (${BPF_MAP_TYPE_RINGBUF})`,
      );
    }
    if (map.closed) throw new DatapathError('ECLOSED', `${ctx}: the map was closed; load the object again`);
    const c = libc();
    this.#name = map.name;
    this.#page = pageSize();
    this.size = map.maxEntries;
    this.#mask = this.size - 1;
    this.#consumerPtr = c.mmap(null, this.#page, PROT_READ | PROT_WRITE, MAP_SHARED, map.fd, 0);
    if (this.#consumerPtr === MAP_FAILED) throw mmapError(ctx, 'consumer page');
    this.#producerLength = this.#page + 2 * this.size;
    this.#producerPtr = c.mmap(null, this.#producerLength, PROT_READ, MAP_SHARED, map.fd, this.#page);
    if (this.#producerPtr === MAP_FAILED) {
      const err = mmapError(ctx, 'producer page and data');
      c.munmap(this.#consumerPtr, this.#page);
      throw err;
    }
    this.#consumer = new BigUint64Array(koffi.view(this.#consumerPtr, 8));
    const data = koffi.view(this.#producerPtr, this.#producerLength);
    this.#producer = new BigUint64Array(data, 0, 1);
    this.#headers = new Int32Array(data);
    this.view = new DataView(data);
    this.bytes = new Uint8Array(data);
  }

  /** Bytes written by producers and not yet consumed (including records still being written). */
  pendingBytes(): number {
    this.#check();
    return Number(Atomics.load(this.#producer, 0)) - Number(Atomics.load(this.#consumer, 0));
  }

  /**
   * Hands every committed record to onRecord (discarded ones are skipped), up to `max`, then
   * publishes the new consumer position once. Stops at the first record a producer is still
   * writing. If onRecord throws, the records handed over so far, that one included, count as
   * consumed, and the error propagates.
   */
  drain(onRecord: RecordHandler, max = Number.MAX_SAFE_INTEGER): number {
    this.#check();
    const producerPos = Number(Atomics.load(this.#producer, 0));
    // Read back each time rather than cached: a previous reader (a killed agent, with the map
    // pinned) or another consumer may have moved it.
    const start = Number(Atomics.load(this.#consumer, 0));
    let pos = start;
    if (pos === producerPos) return 0;
    const headers = this.#headers;
    const view = this.view;
    const base = this.#page;
    const mask = this.#mask;
    let off = pos % this.size;
    let n = 0;
    try {
      while (pos < producerPos && n < max) {
        const at = base + off;
        // Atomic loads order the header read after the producer position read, and each record's
        // data after its header, as the kernel's smp_store_release on commit requires.
        const header = Atomics.load(headers, at >> 2);
        if ((header & BUSY_BIT) !== 0) break;
        const length = header & LEN_MASK;
        const step = (length + HEADER_SIZE + 7) & ~7;
        pos += step;
        off = (off + step) & mask;
        if ((header & DISCARD_BIT) === 0) {
          n++;
          onRecord(view, at + HEADER_SIZE, length);
        }
      }
    } finally {
      if (pos !== start) Atomics.store(this.#consumer, 0, BigInt(pos));
    }
    return n;
  }

  /** Unmaps the ring; views handed to handlers must not be used afterwards. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const c = libc();
    c.munmap(this.#producerPtr, this.#producerLength);
    c.munmap(this.#consumerPtr, this.#page);
  }

  #check(): void {
    if (this.#closed) {
      throw new DatapathError('ECLOSED', `read ring buffer ${this.#name}: the reader was closed`);
    }
  }
}

function mmapError(ctx: string, what: string): DatapathError {
  const errno = lastErrno();
  return new DatapathError(
    'ERINGBUF',
    `${ctx}: mmap ${what}: ${describeErrno(errno)}`,
    new SyscallError('mmap', errno),
  );
}
