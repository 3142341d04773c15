import { describe, expect, it } from 'vitest';
import { ProduceError, kafkaErrorRetriable, produceVersion } from '../../../src/kafka/client.js';
import { KafkaError } from '../../../src/kafka/errors.js';
import { decodeProduceResponse, encodeProduceBody, type PartitionBatch } from '../../../src/kafka/produce.js';

const batch = (partition: number, bytes: number[]): PartitionBatch => ({
  partition,
  data: Buffer.from(bytes),
  records: 1,
  written: false,
});

describe('Produce request body', () => {
  it('is transactional id null, acks, timeout, one topic and each partition with its batch, big-endian', () => {
    const body = encodeProduceBody('flows', -1, 30_000, [batch(0, [1, 2, 3]), batch(7, [9])]);
    // prettier-ignore
    expect([...body]).toEqual([
      0xff, 0xff,             // transactional_id: null
      0xff, 0xff,             // acks: -1
      0x00, 0x00, 0x75, 0x30, // timeout_ms: 30000
      0x00, 0x00, 0x00, 0x01, // one topic
      0x00, 0x05, 0x66, 0x6c, 0x6f, 0x77, 0x73, // "flows"
      0x00, 0x00, 0x00, 0x02, // two partitions
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 1, 2, 3, // partition 0, 3 bytes
      0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x01, 9, // partition 7, 1 byte
    ]);
  });

  it('is written into the buffer the allocator gives, as a view of its start', () => {
    const pool = Buffer.alloc(4096, 0xee);
    const body = encodeProduceBody('t', 1, 5, [batch(2, [4, 5])], (n) => {
      expect(n).toBe(2 + 2 + 4 + 4 + 2 + 1 + 4 + 4 + 4 + 2);
      return pool;
    });
    expect(body.buffer).toBe(pool.buffer);
    expect(body.byteOffset).toBe(pool.byteOffset);
    expect(body.length).toBe(29);
    expect(pool[29]).toBe(0xee);
  });
});

/** A Produce response body as a broker writes it, for `version`. */
function response(
  version: number,
  topics: { topic: string; partitions: [number, number, bigint][] }[],
  throttle = 0,
): Buffer {
  const parts: Buffer[] = [];
  const int16 = (v: number): void => void parts.push(Buffer.from([(v >> 8) & 255, v & 255]));
  const int32 = (v: number): void => {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    parts.push(b);
  };
  const int64 = (v: bigint): void => {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(v);
    parts.push(b);
  };
  int32(topics.length);
  for (const t of topics) {
    int16(t.topic.length);
    parts.push(Buffer.from(t.topic));
    int32(t.partitions.length);
    for (const [partition, error, offset] of t.partitions) {
      int32(partition);
      int16(error);
      int64(offset);
      int64(-1n); // log append time
      if (version >= 5) int64(0n); // log start offset
    }
  }
  int32(throttle);
  return Buffer.concat(parts);
}

describe('Produce response', () => {
  for (const version of [3, 4, 5, 6, 7]) {
    it(`v${version}: gives each partition's error code and base offset, and the throttle time`, () => {
      const body = response(
        version,
        [
          {
            topic: 'flows',
            partitions: [
              [0, 0, 41n],
              [3, 6, -1n],
            ],
          },
        ],
        250,
      );
      expect(decodeProduceResponse(body, version)).toEqual({
        topics: [
          {
            topic: 'flows',
            partitions: [
              { partition: 0, errorCode: 0, baseOffset: 41n },
              { partition: 3, errorCode: 6, baseOffset: -1n },
            ],
          },
        ],
        throttleTimeMs: 250,
      });
    });
  }

  it('rejects a truncated answer with where it ended', () => {
    const body = response(7, [{ topic: 'flows', partitions: [[0, 0, 1n]] }]);
    const cut = body.subarray(0, 20);
    expect(() => decodeProduceResponse(cut, 7)).toThrow(KafkaError);
    expect(() => decodeProduceResponse(cut, 7)).toThrow(expect.objectContaining({ code: 'EKAFKARESPONSE' }));
    expect(() => decodeProduceResponse(cut, 7)).toThrow(
      'kafka produce response: truncated at byte 19 of 20; the broker sent a malformed answer',
    );
    // Read as v3, a v7 answer is misaligned by the log start offsets: it must not pass silently.
    expect(() => decodeProduceResponse(body, 3)).toThrow(
      'kafka produce response v3: 8 bytes left over; the broker sent a malformed answer',
    );
  });
});

describe('Produce version', () => {
  it('takes the newest both the broker and the sink speak, 3 when the broker did not say', () => {
    const broker = (minVersion: number, maxVersion: number) => ({
      versions: { 0: { minVersion, maxVersion }, 3: { minVersion: 0, maxVersion: 12 } },
    });
    expect(produceVersion(broker(0, 11))).toBe(7);
    expect(produceVersion(broker(3, 7))).toBe(7);
    expect(produceVersion(broker(0, 5))).toBe(5);
    expect(produceVersion(broker(0, 3))).toBe(3);
    expect(produceVersion({ versions: null })).toBe(3);
    expect(produceVersion({})).toBe(3);
  });

  it('refuses a broker older than record batches v2, for good', () => {
    let error: unknown;
    try {
      produceVersion({ versions: { 0: { minVersion: 0, maxVersion: 2 } } });
    } catch (err) {
      error = err;
    }
    expect(error).toMatchObject({
      code: 'EBROKERVERSION',
      message:
        'kafka sink: the broker speaks Produce v0-v2, the sink v3-v7 (record batches v2); use Kafka 0.11 or newer',
    });
    expect(kafkaErrorRetriable(error)).toBe(false);
    expect(kafkaErrorRetriable(new ProduceError('t', [{ partition: 0, error: error as Error }]))).toBe(false);
  });
});
