/**
 * The Produce request (API key 0, versions 3 to 7: record batches v2, no tagged fields) and its
 * response, as the kafka sink sends them over kafkajs's broker connections. Version 3 is the
 * oldest that carries v2 record batches and the oldest Kafka 4 still accepts; 7 is the newest
 * before flexible versions, and the first that may carry zstd batches. The request is the same
 * for all of them; the response gains log_start_offset at 5.
 *
 * Request:  transactional_id nullable string | acks int16 | timeout_ms int32 |
 *           [topic string | [partition int32 | records bytes]]
 * Response: [topic string | [partition int32 | error_code int16 | base_offset int64 |
 *           log_append_time_ms int64 | (v5+) log_start_offset int64]] | throttle_time_ms int32
 */
import { KafkaError } from './errors.js';
import type { RecordBatchWriter } from './record-batch.js';

export const PRODUCE_API_KEY = 0;
export const PRODUCE_MIN_VERSION = 3;
export const PRODUCE_MAX_VERSION = 7;

/** One partition's record batch in a produce request, and whether a broker has taken it. */
export interface PartitionBatch {
  partition: number;
  /** A complete record batch (record-batch.ts). */
  data: Buffer;
  /** Flow records in it. */
  records: number;
  written: boolean;
}

/** The record batches of one produce request, a batch per partition. */
export interface EncodedRequest {
  batches: PartitionBatch[];
  /** Records in the batches (flow records, for the kafka sink). */
  records: number;
  /** Bytes of the batches. */
  bytes: number;
  /** Writers whose buffers go back to the pool once the request has settled. */
  writers: RecordBatchWriter[];
}

/** The records of a request that no broker has taken. */
export function unwritten(request: EncodedRequest): number {
  let n = 0;
  for (const b of request.batches) if (!b.written) n += b.records;
  return n;
}

/**
 * The body of a Produce v3 request for one topic (the request header is the connection's), in a
 * buffer from `allocate` (at least the given size; the body is a view of its start).
 */
export function encodeProduceBody(
  topic: string,
  acks: number,
  timeoutMs: number,
  batches: readonly PartitionBatch[],
  allocate: (bytes: number) => Buffer = (bytes) => Buffer.allocUnsafe(bytes),
): Buffer {
  const topicBytes = Buffer.byteLength(topic, 'utf8');
  let size = 2 + 2 + 4 + 4 + 2 + topicBytes + 4;
  for (const b of batches) size += 4 + 4 + b.data.length;
  const out = allocate(size).subarray(0, size);
  let pos = out.writeInt16BE(-1, 0); // no transactional id
  pos = out.writeInt16BE(acks, pos);
  pos = out.writeInt32BE(timeoutMs, pos);
  pos = out.writeInt32BE(1, pos);
  pos = out.writeInt16BE(topicBytes, pos);
  pos += out.write(topic, pos, 'utf8');
  pos = out.writeInt32BE(batches.length, pos);
  for (const b of batches) {
    pos = out.writeInt32BE(b.partition, pos);
    pos = out.writeInt32BE(b.data.length, pos);
    pos += b.data.copy(out, pos);
  }
  return out;
}

export interface PartitionResult {
  partition: number;
  errorCode: number;
  baseOffset: bigint;
}

export interface ProduceResponse {
  topics: { topic: string; partitions: PartitionResult[] }[];
  throttleTimeMs: number;
}

/** Parses a Produce response body (after the correlation id) of `version` (3 to 7). */
export function decodeProduceResponse(body: Buffer, version: number): ProduceResponse {
  let pos = 0;
  const need = (n: number): void => {
    if (pos + n > body.length) {
      throw new KafkaError(
        'EKAFKARESPONSE',
        `kafka produce response: truncated at byte ${pos} of ${body.length}; the broker sent a malformed answer`,
      );
    }
  };
  const int16 = (): number => (need(2), (pos += 2), body.readInt16BE(pos - 2));
  const int32 = (): number => (need(4), (pos += 4), body.readInt32BE(pos - 4));
  const int64 = (): bigint => (need(8), (pos += 8), body.readBigInt64BE(pos - 8));
  const string = (): string => {
    const n = int16();
    need(Math.max(0, n));
    pos += Math.max(0, n);
    return body.toString('utf8', pos - Math.max(0, n), pos);
  };
  const topics: ProduceResponse['topics'] = [];
  for (let t = int32(); t > 0; t--) {
    const topic = string();
    const partitions: PartitionResult[] = [];
    for (let p = int32(); p > 0; p--) {
      const partition = int32();
      const errorCode = int16();
      const baseOffset = int64();
      int64(); // log append time
      if (version >= 5) int64(); // log start offset
      partitions.push({ partition, errorCode, baseOffset });
    }
    topics.push({ topic, partitions });
  }
  const throttleTimeMs = int32();
  if (pos !== body.length) {
    throw new KafkaError(
      'EKAFKARESPONSE',
      `kafka produce response v${version}: ${body.length - pos} bytes left over; the broker sent a malformed answer`,
    );
  }
  return { topics, throttleTimeMs };
}
