/**
 * Kafka message encoding of flow records: JSON (IPFIX names) or protobuf (src/sinks/flow.proto),
 * one record or a batch of records per message, and the message key that keeps both directions
 * of a flow on one partition.
 *
 * A produce request is encoded at once, straight into one record batch per partition
 * (record-batch.ts): keys and values are written in place, nothing is allocated per record. Every
 * message carries a `content-type` header naming its encoding (contentType()).
 */
import { batchCompressor, type BatchCompressor, type Compression } from '../../kafka/compress.js';
import { CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE } from '../../kafka/flow-messages.js';
import type { EncodedRequest, PartitionBatch } from '../../kafka/produce.js';
import {
  BATCH_HEADER_BYTES,
  BufferPool,
  RecordBatchWriter,
  recordHeaders,
  type ValueWriter,
} from '../../kafka/record-batch.js';
import type { FlowRecord } from '../../records/flow.js';
import { writeFlowJson } from './json.js';
import { writeFlowProto, writeFlowProtoField } from './proto.js';

export type Encoding = 'json' | 'protobuf';
export type KeyMode = 'flow' | 'none';

// --------------------------------------------------------------------------------------------
// Content type

/**
 * The content type of the messages of an encoding: `application/json` (an object, or an array for
 * records_per_message > 1), or `application/x-protobuf; messageType=rxflow.v1.FlowRecord` (or
 * `rxflow.v1.FlowBatch` for records_per_message > 1), the message type of src/sinks/flow.proto.
 */
export function contentType(encoding: Encoding, recordsPerMessage: number): string {
  if (encoding === 'json') return JSON_CONTENT_TYPE;
  const type = recordsPerMessage === 1 ? 'FlowRecord' : 'FlowBatch';
  return `${PROTOBUF_CONTENT_TYPE}; messageType=rxflow.v1.${type}`;
}

// --------------------------------------------------------------------------------------------
// Flow key and partitioning

function sourceAddress(r: FlowRecord): string {
  return (r.ipVersion === 6 ? r.sourceIPv6Address : r.sourceIPv4Address) ?? '';
}

function destinationAddress(r: FlowRecord): string {
  return (r.ipVersion === 6 ? r.destinationIPv6Address : r.destinationIPv4Address) ?? '';
}

/**
 * The message key of a record: protocol and the two endpoints in a canonical order (the lower of
 * (address text, port) first), e.g. `6/10.0.0.1:443/10.0.0.2:51000` or
 * `17/[2001:db8::1]:53/[2001:db8::2]:40000`. A->B and B->A have the same key, so a keyed
 * partitioner puts both directions of a flow on one partition.
 */
export function flowKey(r: FlowRecord): string {
  const a = sourceAddress(r);
  const b = destinationAddress(r);
  const pa = r.sourceTransportPort;
  const pb = r.destinationTransportPort;
  const aFirst = a < b || (a === b && pa <= pb);
  const lo = aFirst ? a : b;
  const hi = aFirst ? b : a;
  const lp = aFirst ? pa : pb;
  const hp = aFirst ? pb : pa;
  return r.ipVersion === 6
    ? `${r.protocolIdentifier}/[${lo}]:${lp}/[${hi}]:${hp}`
    : `${r.protocolIdentifier}/${lo}:${lp}/${hi}:${hp}`;
}

const MURMUR_M = 0x5bd1e995;
const MURMUR_SEED = 0x9747b28c;

/**
 * Kafka's murmur2 (the Java client's and kafkajs's default partitioner hash) of a key's UTF-8
 * bytes. kafkajs computes it with a Long object per step; 32-bit `Math.imul` gives the same
 * result without allocating, which matters with a key on every message.
 */
export function murmur2(key: string | Buffer): number {
  if (typeof key === 'string') {
    for (let i = 0; i < key.length; i++) {
      if (key.charCodeAt(i) > 0x7f) return murmur2Bytes(Buffer.from(key, 'utf8'));
    }
    return murmur2Ascii(key);
  }
  return murmur2Bytes(key);
}

function mixWord(h: number, k: number): number {
  k = Math.imul(k, MURMUR_M);
  k ^= k >>> 24;
  k = Math.imul(k, MURMUR_M);
  return Math.imul(h, MURMUR_M) ^ k;
}

function mixTail(h: number, b0: number, b1: number, b2: number, rest: number): number {
  if (rest === 3) h ^= b2 << 16;
  if (rest >= 2) h ^= b1 << 8;
  if (rest >= 1) h = Math.imul(h ^ b0, MURMUR_M);
  h ^= h >>> 13;
  h = Math.imul(h, MURMUR_M);
  h ^= h >>> 15;
  return h | 0;
}

/** murmur2 of a string whose characters are all ASCII (one byte each in UTF-8). */
function murmur2Ascii(s: string): number {
  const len = s.length;
  const whole = len & ~3;
  let h = (MURMUR_SEED ^ len) | 0;
  for (let i = 0; i < whole; i += 4) {
    h = mixWord(
      h,
      s.charCodeAt(i) |
        (s.charCodeAt(i + 1) << 8) |
        (s.charCodeAt(i + 2) << 16) |
        (s.charCodeAt(i + 3) << 24),
    );
  }
  const rest = len & 3;
  return mixTail(
    h,
    rest >= 1 ? s.charCodeAt(whole) : 0,
    rest >= 2 ? s.charCodeAt(whole + 1) : 0,
    rest >= 3 ? s.charCodeAt(whole + 2) : 0,
    rest,
  );
}

function murmur2Bytes(b: Buffer): number {
  const len = b.length;
  const whole = len & ~3;
  let h = (MURMUR_SEED ^ len) | 0;
  for (let i = 0; i < whole; i += 4)
    h = mixWord(h, b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24));
  const rest = len & 3;
  return mixTail(
    h,
    rest >= 1 ? b[whole]! : 0,
    rest >= 2 ? b[whole + 1]! : 0,
    rest >= 3 ? b[whole + 2]! : 0,
    rest,
  );
}

/** The partition Kafka's default partitioner picks for a key among `partitions`. */
export function partitionForKey(key: string | Buffer, partitions: number): number {
  return (murmur2(key) & 0x7fffffff) % partitions;
}

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

function endpointHash(address: string, port: number): number {
  let h = FNV_OFFSET;
  for (let i = 0; i < address.length; i++) h = Math.imul(h ^ address.charCodeAt(i), FNV_PRIME);
  h = Math.imul(h ^ port, FNV_PRIME);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return h;
}

/**
 * A 31-bit hash of a record's flow that is the same for both directions (the endpoint hashes are
 * added, which commutes). Used to group records by partition in batch messages, where no key
 * string is needed, so none is built.
 */
export function flowHash(r: FlowRecord): number {
  let h =
    (endpointHash(sourceAddress(r), r.sourceTransportPort) +
      endpointHash(destinationAddress(r), r.destinationTransportPort) +
      r.protocolIdentifier) |
    0;
  h ^= h >>> 16;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h & 0x7fffffff;
}

// --------------------------------------------------------------------------------------------
// Requests

/** Bytes of free batch and request buffers kept for reuse. */
const POOL_BYTES = 64 << 20;

/** A record inside a FlowBatch message: field 1, length-delimited. */
function writeFlowBatchItem(r: FlowRecord, out: Buffer, pos: number): number {
  return writeFlowProtoField(r, 1, out, pos);
}

export interface EncoderOptions {
  encoding: Encoding;
  recordsPerMessage: number;
  key: KeyMode;
  /** Loaded when the encoder is built: a missing codec library fails then (SinkError ENOCODEC). */
  compression: Compression;
  /**
   * The batches get their producer id, sequence and CRC-32C from stampBatch() before they are
   * sent (idempotent produce), so finishing them skips the CRC: one pass over the bytes, not two.
   */
  stamped?: boolean;
}

const OPEN_BRACKET = 0x5b;
const COMMA = 0x2c;
const CLOSE_BRACKET = 0x5d;

/**
 * Turns records into the record batches of one produce request. `partitions` is the topic's
 * partition count: with key `flow` a record goes where Kafka's default partitioner puts its key
 * (batch messages, which carry no key, are grouped by a flow hash instead); with key `none` a
 * request's records all go to one partition, the next one for the next request.
 */
export class RequestEncoder {
  readonly pool = new BufferPool(POOL_BYTES);
  private readonly value: ValueWriter<FlowRecord>;
  private readonly item: ValueWriter<FlowRecord>;
  private readonly compress: BatchCompressor | undefined;
  /** Every message's headers: its content type. */
  private readonly headers: Buffer;
  private next = 0;

  constructor(private readonly options: EncoderOptions) {
    this.compress = batchCompressor(options.compression);
    this.headers = recordHeaders([
      [CONTENT_TYPE_HEADER, contentType(options.encoding, options.recordsPerMessage)],
    ]);
    if (options.encoding === 'protobuf') {
      this.value = writeFlowProto;
      this.item = writeFlowBatchItem;
    } else {
      this.value = writeFlowJson;
      this.item = writeFlowJson;
    }
  }

  /** `bytesPerRecord`: the expected encoded size of a record, to size the buffers. */
  async encode(
    records: readonly FlowRecord[],
    partitions: number,
    bytesPerRecord: number,
    now: number,
  ): Promise<EncodedRequest> {
    const count = Math.max(1, partitions);
    const keyed = this.options.key === 'flow';
    const perPartition = keyed ? Math.ceil(records.length / count) : records.length;
    const capacity = Math.ceil(perPartition * bytesPerRecord * 1.25) + BATCH_HEADER_BYTES;
    const writers = new Array<RecordBatchWriter | undefined>(count);
    const used: number[] = [];
    const writerOf = (p: number): RecordBatchWriter => {
      let w = writers[p];
      if (w === undefined) {
        w = writers[p] = new RecordBatchWriter(this.pool, capacity, this.headers);
        used.push(p);
      }
      return w;
    };
    if (this.options.recordsPerMessage === 1) {
      if (keyed) {
        for (const r of records) {
          const key = flowKey(r);
          const w = writerOf(partitionForKey(key, count));
          w.startRecord(key);
          w.writeValue(this.value, r);
          w.endRecord();
        }
      } else {
        const w = writerOf(this.nextPartition(count));
        for (const r of records) {
          w.startRecord(null);
          w.writeValue(this.value, r);
          w.endRecord();
        }
      }
    } else if (keyed) {
      const groups = new Array<FlowRecord[] | undefined>(count);
      for (const r of records) (groups[flowHash(r) % count] ??= []).push(r);
      for (let p = 0; p < count; p++) {
        const group = groups[p];
        if (group !== undefined) this.writeMessages(writerOf(p), group);
      }
    } else {
      this.writeMessages(writerOf(this.nextPartition(count)), records);
    }
    used.sort((a, b) => a - b);
    const list = used.map((p) => writers[p]!);
    const checksum = this.options.stamped !== true;
    const finished = list.map((w) => w.finish(now, checksum));
    // Partitions compress side by side on the thread pool.
    const compress = this.compress;
    const data = compress === undefined ? finished : await Promise.all(finished.map((b) => compress(b)));
    const batches: PartitionBatch[] = [];
    let bytes = 0;
    for (let i = 0; i < used.length; i++) {
      batches.push({ partition: used[i]!, data: data[i]!, records: list[i]!.items, written: false });
      bytes += data[i]!.length;
    }
    return { batches, records: records.length, bytes, writers: list };
  }

  /** Hands a request's buffers back once it has settled. */
  release(request: EncodedRequest): void {
    for (const w of request.writers) w.release();
    request.writers = [];
  }

  private nextPartition(count: number): number {
    this.next = (this.next + 1) % count;
    return this.next;
  }

  /** Messages of up to recordsPerMessage records: a JSON array or a protobuf FlowBatch. */
  private writeMessages(w: RecordBatchWriter, records: readonly FlowRecord[]): void {
    const n = this.options.recordsPerMessage;
    const json = this.options.encoding === 'json';
    for (let from = 0; from < records.length; from += n) {
      const to = Math.min(records.length, from + n);
      w.startRecord(null);
      if (json) w.writeByte(OPEN_BRACKET);
      for (let i = from; i < to; i++) {
        if (json && i > from) w.writeByte(COMMA);
        w.writeValue(this.item, records[i]!);
      }
      if (json) w.writeByte(CLOSE_BRACKET);
      w.endRecord();
    }
  }
}
