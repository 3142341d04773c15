/**
 * Kafka record batches (message format v2, magic 2), written straight into one buffer per
 * partition: record after record, each key and value written in place, no object or buffer per
 * record. kafkajs builds a Record object, an Encoder and several buffers per message and checks
 * them with a byte-at-a-time CRC; that capped it near 60k messages a second on one core here,
 * while this writer and the value encoders beside it do several times that.
 *
 * Layout (all big-endian; see the Kafka protocol guide, "Record Batch"):
 *   baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 | crc uint32 |
 *   attributes int16 | lastOffsetDelta int32 | baseTimestamp int64 | maxTimestamp int64 |
 *   producerId int64 | producerEpoch int16 | baseSequence int32 | recordCount int32 | records
 * and each record:
 *   length varint | attributes int8 | timestampDelta varint | offsetDelta varint |
 *   keyLength varint | key | valueLength varint | value | headerCount varint |
 *   [headerKeyLength varint | headerKey | headerValueLength varint | headerValue]
 * where varints are zigzag-encoded. The CRC-32C covers attributes to the end. The headers are the
 * same for every record a writer writes (the content type): encoded once (recordHeaders()) and
 * copied after each value.
 */
import { crc32c } from './crc32c.js';

export const BATCH_HEADER_BYTES = 61;
const OFF_BATCH_LENGTH = 8;
const OFF_MAGIC = 16;
const OFF_CRC = 17;
const OFF_ATTRIBUTES = 21;
const OFF_LAST_OFFSET_DELTA = 23;
const OFF_BASE_TIMESTAMP = 27;
const OFF_MAX_TIMESTAMP = 35;
const OFF_PRODUCER_ID = 43;
const OFF_PRODUCER_EPOCH = 51;
const OFF_BASE_SEQUENCE = 53;
const OFF_RECORD_COUNT = 57;

/** Sequences wrap to 0 after this (Kafka's Integer.MAX_VALUE). */
export const MAX_SEQUENCE = 0x7fffffff;

/** The room reserved for a length varint before its size is known: 2 bytes hold 0..8191. */
const RESERVED = 2;

/** Bytes of the zigzag varint of a non-negative `n`. */
function varintSize(n: number): number {
  if (n < 64) return 1;
  if (n < 8192) return 2;
  if (n < 1_048_576) return 3;
  if (n < 134_217_728) return 4;
  return 5;
}

/** Writes the zigzag varint of a non-negative `n` (below 2^31) at `pos`; returns the end. */
function writeVarint(buf: Buffer, pos: number, n: number): number {
  let z = n * 2;
  while (z >= 0x80) {
    buf[pos++] = (z & 0x7f) | 0x80;
    z = Math.floor(z / 128);
  }
  buf[pos++] = z;
  return pos;
}

/** The headers section of a record without headers: a count of 0. */
export const NO_HEADERS: Buffer = Buffer.from([0]);

/**
 * The headers section of a record, count included, for `headers` (key, value) as UTF-8: built once
 * and copied into every record by RecordBatchWriter.
 */
export function recordHeaders(headers: readonly (readonly [key: string, value: string])[]): Buffer {
  const parts: Buffer[] = [];
  const count = Buffer.alloc(5);
  parts.push(count.subarray(0, writeVarint(count, 0, headers.length)));
  for (const [key, value] of headers) {
    for (const text of [key, value]) {
      const bytes = Buffer.from(text, 'utf8');
      const length = Buffer.alloc(5);
      parts.push(length.subarray(0, writeVarint(length, 0, bytes.length)), bytes);
    }
  }
  return Buffer.concat(parts);
}

/**
 * Buffers for batches and request bodies, handed back once a request settled, so steady sending
 * allocates nothing. Sizes are powers of two from 64 KiB; at most `maxBytes` are kept. Large
 * fresh Buffers are what makes V8 run full collections here (their external memory counts toward
 * the heap limit), so reuse matters more than the allocation itself.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private kept = 0;

  constructor(private readonly maxBytes: number) {}

  acquire(minBytes: number): Buffer {
    const size = sizeClass(minBytes);
    const buf = this.free.get(size)?.pop();
    if (buf !== undefined) {
      this.kept -= size;
      return buf;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  release(buf: Buffer): void {
    const size = buf.length;
    if (size !== sizeClass(size) || this.kept + size > this.maxBytes) return;
    let list = this.free.get(size);
    if (list === undefined) this.free.set(size, (list = []));
    list.push(buf);
    this.kept += size;
  }
}

function sizeClass(n: number): number {
  let size = 1 << 16;
  while (size < n) size *= 2;
  return size;
}

/** Writes a value into `out` at `pos`; returns the end, or -1 when it does not fit. */
export type ValueWriter<T> = (item: T, out: Buffer, pos: number) => number;

/**
 * The records of one batch for one partition. Use: startRecord(key), then write the value with
 * writeValue/writeByte, then endRecord(); finally finish(). The buffer grows (doubling) when a
 * value does not fit; buffers come from and go back to a pool. Every record gets `headers` (a
 * headers section from recordHeaders(), NO_HEADERS by default).
 */
export class RecordBatchWriter {
  buf: Buffer;
  pos = BATCH_HEADER_BYTES;
  /** Kafka records (messages) in the batch. */
  count = 0;
  /** Values written with writeValue: flow records, however many a message holds. */
  items = 0;
  private recordStart = 0;
  private valueStart = 0;
  private readonly retired: Buffer[] = [];

  constructor(
    private readonly pool: BufferPool,
    capacity: number,
    private readonly headers: Buffer = NO_HEADERS,
  ) {
    this.buf = pool.acquire(capacity);
  }

  /** Begins a record with `key` (ASCII text, or null for none). */
  startRecord(key: string | null): void {
    const keyLength = key === null ? 0 : key.length;
    // length, attributes, timestamp delta, offset delta, key length, key, value length.
    this.ensure(RESERVED + 1 + 1 + 5 + 5 + keyLength + RESERVED);
    const buf = this.buf;
    let pos = this.pos;
    this.recordStart = pos;
    pos += RESERVED;
    buf[pos++] = 0;
    buf[pos++] = 0;
    pos = writeVarint(buf, pos, this.count);
    if (key === null) {
      buf[pos++] = 1; // zigzag -1: a null key
    } else {
      pos = writeVarint(buf, pos, keyLength);
      for (let i = 0; i < keyLength; i++) buf[pos++] = key.charCodeAt(i);
    }
    this.valueStart = pos + RESERVED;
    this.pos = this.valueStart;
  }

  /** Appends `item` written by `write`, growing the buffer until it fits. */
  writeValue<T>(write: ValueWriter<T>, item: T): void {
    for (;;) {
      const end = write(item, this.buf, this.pos);
      if (end >= 0) {
        this.pos = end;
        this.items++;
        return;
      }
      this.grow(this.buf.length * 2);
    }
  }

  writeByte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  /** Ends the record: fills in the value and record lengths, moving the bytes if they need other room. */
  endRecord(): void {
    const headers = this.headers;
    this.ensure(2 * (5 - RESERVED) + headers.length);
    const buf = this.buf;
    const valueLength = this.pos - this.valueStart;
    let end = this.place(this.valueStart - RESERVED, valueLength, this.pos);
    if (headers.length === 1) buf[end++] = headers[0]!;
    else end += headers.copy(buf, end);
    const bodyStart = this.recordStart + RESERVED;
    end = this.place(this.recordStart, end - bodyStart, end);
    this.pos = end;
    this.count++;
  }

  /**
   * Completes the batch header: `timestamp` (ms) becomes every record's create time (deltas are 0).
   * Returns the batch, a view of the writer's buffer (valid until release()). Without `checksum`
   * the CRC is left for stampBatch() to compute, which has to anyway once it sets the producer
   * fields: the CRC covers them, and one pass over the batch is what it costs.
   */
  finish(timestamp: number, checksum = true): Buffer {
    const buf = this.buf;
    const end = this.pos;
    buf.writeBigInt64BE(0n, 0);
    buf.writeInt32BE(end - 12, OFF_BATCH_LENGTH);
    buf.writeInt32BE(-1, 12); // partition leader epoch: set by the broker
    buf[OFF_MAGIC] = 2;
    buf.writeInt16BE(0, OFF_ATTRIBUTES);
    buf.writeInt32BE(this.count - 1, OFF_LAST_OFFSET_DELTA);
    buf.writeBigInt64BE(BigInt(timestamp), OFF_BASE_TIMESTAMP);
    buf.writeBigInt64BE(BigInt(timestamp), OFF_MAX_TIMESTAMP);
    buf.writeBigInt64BE(-1n, OFF_PRODUCER_ID); // producer id, epoch and sequence unset until stamped
    buf.writeInt16BE(-1, OFF_PRODUCER_EPOCH);
    buf.writeInt32BE(-1, OFF_BASE_SEQUENCE);
    buf.writeInt32BE(this.count, OFF_RECORD_COUNT);
    if (checksum) buf.writeUInt32BE(crc32c(buf, OFF_ATTRIBUTES, end), OFF_CRC);
    return buf.subarray(0, end);
  }

  /** Hands the buffers back to the pool; the writer must not be used after. */
  release(): void {
    for (const b of this.retired) this.pool.release(b);
    this.retired.length = 0;
    this.pool.release(this.buf);
  }

  /**
   * Writes the varint of `length` at `at`, where RESERVED bytes were left for it, moving the
   * `length` bytes that follow (up to `end`) if the varint is not RESERVED bytes long. Returns the
   * new end.
   */
  private place(at: number, length: number, end: number): number {
    const size = varintSize(length);
    if (size !== RESERVED) {
      this.buf.copyWithin(at + size, at + RESERVED, end);
      end += size - RESERVED;
    }
    writeVarint(this.buf, at, length);
    return end;
  }

  private ensure(n: number): void {
    if (this.pos + n > this.buf.length) this.grow(Math.max(this.buf.length * 2, this.pos + n));
  }

  private grow(capacity: number): void {
    const next = this.pool.acquire(capacity);
    this.buf.copy(next, 0, 0, this.pos);
    this.retired.push(this.buf);
    this.buf = next;
  }
}

/** The producer fields of a record batch header: which idempotent producer wrote it, and where. */
export interface BatchProducer {
  /** -1n: no producer id (not idempotent). */
  producerId: bigint;
  producerEpoch: number;
  /** Sequence of the batch's first record on its partition; -1 without a producer id. */
  baseSequence: number;
}

/**
 * Sets the producer fields of a finished batch (plain or compressed) in place and recomputes its
 * CRC-32C, which covers them. The rest of the batch stays byte for byte what it was, so a resend
 * carries the same records under the same sequence.
 */
export function stampBatch(batch: Buffer, producer: BatchProducer): void {
  batch.writeBigInt64BE(producer.producerId, OFF_PRODUCER_ID);
  batch.writeInt16BE(producer.producerEpoch, OFF_PRODUCER_EPOCH);
  batch.writeInt32BE(producer.baseSequence, OFF_BASE_SEQUENCE);
  batch.writeUInt32BE(crc32c(batch, OFF_ATTRIBUTES, batch.length), OFF_CRC);
}

/** The producer fields of a batch. */
export function batchProducer(batch: Buffer): BatchProducer {
  return {
    producerId: batch.readBigInt64BE(OFF_PRODUCER_ID),
    producerEpoch: batch.readInt16BE(OFF_PRODUCER_EPOCH),
    baseSequence: batch.readInt32BE(OFF_BASE_SEQUENCE),
  };
}

/** Kafka records (messages) in a batch: how far it moves its partition's sequence. */
export function batchRecordCount(batch: Buffer): number {
  return batch.readInt32BE(OFF_RECORD_COUNT);
}

/** The sequence after `count` records from `sequence`: past 2^31-1 it wraps to 0, as Kafka's does. */
export function nextSequence(sequence: number, count: number): number {
  return (sequence + count) % (MAX_SEQUENCE + 1);
}
