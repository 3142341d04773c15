import { KafkaJSConnectionError, KafkaJSServerDoesNotSupportApiKey } from 'kafkajs';
import { createRequire } from 'node:module';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../../src/records/flow.js';
import { ProduceError, kafkaErrorRetriable } from '../../../src/kafka/client.js';
import { KafkaError } from '../../../src/kafka/errors.js';
import { gzipBatch } from '../../../src/kafka/compress.js';
import { RequestEncoder } from '../../../src/sinks/kafka/encode.js';
import {
  ProducerSequences,
  producerIdFailure,
  type ProducerSequencesOptions,
} from '../../../src/kafka/idempotence.js';
import type { PartitionBatch } from '../../../src/kafka/produce.js';
import {
  BATCH_HEADER_BYTES,
  MAX_SEQUENCE,
  batchProducer,
  nextSequence,
  stampBatch,
} from '../../../src/kafka/record-batch.js';
import { batchHeader } from '../../fixtures/kafka-idempotent-broker.js';
import { crc32cBitwise, decodeBatches } from '../../fixtures/record-batches.js';
import { flowRecord } from '../../fixtures/records.js';

/**
 * Idempotent produce without the sink around it: the producer fields of a record batch header and
 * their CRC, and the producer id and per-partition sequences ProducerSequences hands out, keeps and
 * moves on from. The sink driving it in virtual time is in kafka.test.ts, the sink against a broker
 * that enforces sequences in test/servers/kafka-sink.test.ts.
 */

const require = createRequire(import.meta.url);
const { createErrorFromCode } = require('kafkajs/src/protocol/error.js') as {
  createErrorFromCode: (code: number) => Error & { type: string; retriable: boolean };
};

const NOW = 1_700_000_123_456;
const records = (n: number): FlowRecord[] =>
  Array.from({ length: n }, (_, i) => flowRecord({ flowStartMilliseconds: NOW + i, packetDeltaCount: i }));

const crcOk = (b: Buffer): boolean => b.readUInt32BE(17) === crc32cBitwise(b.subarray(21));

describe('stampBatch', () => {
  it('sets producer id, epoch and base sequence, and a CRC-32C that covers them; the records stay as they were', async () => {
    const plain = await new RequestEncoder({
      encoding: 'json',
      recordsPerMessage: 1,
      key: 'none',
      compression: 'none',
    }).encode(records(5), 1, 100, NOW);
    const unstamped = await new RequestEncoder({
      encoding: 'json',
      recordsPerMessage: 1,
      key: 'none',
      compression: 'none',
      stamped: true,
    }).encode(records(5), 1, 100, NOW);
    const batch = unstamped.batches[0]!.data;
    const before = Buffer.from(batch);
    stampBatch(batch, { producerId: 0x0123456789abcdefn, producerEpoch: 7, baseSequence: 2_000_000_001 });
    expect(batchProducer(batch)).toEqual({
      producerId: 0x0123456789abcdefn,
      producerEpoch: 7,
      baseSequence: 2_000_000_001,
    });
    expect(batchHeader(batch)).toMatchObject({ count: 5 });
    expect(crcOk(batch)).toBe(true);
    // Only the CRC (17..20) and the producer fields (43..56) changed.
    const changed: number[] = [];
    for (let i = 0; i < batch.length; i++) if (batch[i] !== before[i]) changed.push(i);
    expect(changed.every((i) => (i >= 17 && i < 21) || (i >= 43 && i < 57))).toBe(true);
    expect(changed.some((i) => i >= 43)).toBe(true);
    // Stamped with no producer, it is byte for byte the batch a plain encoder finishes.
    stampBatch(batch, { producerId: -1n, producerEpoch: -1, baseSequence: -1 });
    expect(batch.equals(plain.batches[0]!.data)).toBe(true);
    expect(
      (await decodeBatches(unstamped.batches)).map((m) => JSON.parse(m.value.toString()) as unknown),
    ).toEqual(records(5));
  });

  it('stamps a compressed batch over its compressed bytes, and a consumer still reads the records', async () => {
    const encoded = await new RequestEncoder({
      encoding: 'json',
      recordsPerMessage: 1,
      key: 'none',
      compression: 'none',
      stamped: true,
    }).encode(records(50), 1, 100, NOW);
    const gz = await gzipBatch(encoded.batches[0]!.data);
    stampBatch(gz, { producerId: 42n, producerEpoch: 0, baseSequence: 50 });
    expect(batchProducer(gz)).toEqual({ producerId: 42n, producerEpoch: 0, baseSequence: 50 });
    expect(crcOk(gz)).toBe(true);
    expect(gz.length).toBeLessThan(encoded.batches[0]!.data.length);
    const decoded = await decodeBatches([{ partition: 0, data: gz }]);
    expect(decoded.map((m) => JSON.parse(m.value.toString()) as unknown)).toEqual(records(50));
  });

  it('sequences wrap to 0 after 2^31-1, as Kafka counts them', () => {
    expect(MAX_SEQUENCE).toBe(2 ** 31 - 1);
    expect(nextSequence(0, 5)).toBe(5);
    expect(nextSequence(MAX_SEQUENCE - 4, 5)).toBe(0);
    expect(nextSequence(MAX_SEQUENCE - 2, 5)).toBe(2);
    expect(nextSequence(MAX_SEQUENCE, 1)).toBe(0);
  });
});

// ----------------------------------------------------------------------------------------------

/** A header-only batch of `count` Kafka records for `partition`: all ProducerSequences reads. */
function batch(partition: number, count: number): PartitionBatch {
  const data = Buffer.alloc(BATCH_HEADER_BYTES);
  data.writeInt32BE(count, 57);
  return { partition, data, records: count, written: false };
}

const stamp = (b: PartitionBatch): [bigint, number] => {
  const p = batchProducer(b.data);
  expect(crcOk(b.data)).toBe(true);
  return [p.producerId, p.baseSequence];
};

function capturedLogger(): { logger: pino.Logger; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') lines.push(JSON.parse(line) as { level: number; msg: string });
      }
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}

/** ProducerSequences with ids 101, 102, ... (or `failures` first), instant sleeps, recorded. */
function sequences(failures: Error[] = [], options: Partial<ProducerSequencesOptions> = {}) {
  const { logger, lines } = capturedLogger();
  const slept: number[] = [];
  let asked = 0;
  let issued = 0;
  const seq = new ProducerSequences({
    acquire: () => {
      asked++;
      const failure = failures.shift();
      if (failure !== undefined) return Promise.reject(failure);
      return Promise.resolve({ producerId: BigInt(101 + issued++), producerEpoch: 0 });
    },
    sleep: (ms) => {
      slept.push(ms);
      return Promise.resolve();
    },
    backoff: (attempt) => 100 * 2 ** (attempt - 1),
    stopped: () => false,
    retries: 2,
    logger,
    failing: () => undefined,
    ...options,
  });
  return { seq, lines, slept, asked: () => asked };
}

const outOfOrder = (partition: number): ProduceError =>
  new ProduceError('t', [{ partition, error: createErrorFromCode(45) }]);

describe('ProducerSequences', () => {
  it('numbers each partition from 0 by the Kafka records before it, across requests, and wraps at 2^31-1', async () => {
    const { seq } = sequences();
    await seq.start();
    expect(seq.status()).toEqual({ state: 'on', producerId: '101', producerEpoch: 0, producerIds: 1 });
    const r1 = [batch(0, 3), batch(1, 4)];
    const r2 = [batch(1, 2)];
    const r3 = [batch(0, 5), batch(2, 1)];
    for (const r of [r1, r2, r3]) expect(seq.stamp(r)).toBeUndefined();
    expect([...r1, ...r2, ...r3].map(stamp)).toEqual([
      [101n, 0],
      [101n, 0],
      [101n, 4],
      [101n, 3],
      [101n, 0],
    ]);
    // A batch already stamped keeps its stamp: a retry resends the same bytes.
    const bytes = Buffer.from(r1[0]!.data);
    expect(seq.stamp(r1)).toBeUndefined();
    expect(r1[0]!.data.equals(bytes)).toBe(true);
    const big = batch(3, MAX_SEQUENCE - 1);
    const next = batch(3, 5);
    const after = batch(3, 1);
    expect(seq.stamp([big])).toBeUndefined();
    expect(seq.stamp([next])).toBeUndefined();
    expect(seq.stamp([after])).toBeUndefined();
    expect([big, next, after].map(stamp)).toEqual([
      [101n, 0],
      [101n, MAX_SEQUENCE - 1],
      [101n, 3],
    ]);
  });

  it('a batch settles only by its own acknowledgement, never because a later batch of its partition was taken', async () => {
    const { seq } = sequences();
    await seq.start();
    const [a, b, c, other] = [batch(0, 1), batch(0, 1), batch(0, 1), batch(1, 1)];
    for (const x of [a, b, c, other]) expect(seq.stamp([x])).toBeUndefined();
    b.written = true;
    seq.settle([b]);
    expect([a.written, b.written, c.written, other.written]).toEqual([false, true, false, false]);
    // a failed with no answer: it is still a failure, and a goes again with the same stamp.
    const timedOut = new ProduceError('t', [{ partition: 0, error: new Error('timed out') }]);
    expect(seq.failed([a], timedOut)).toBe(timedOut);
    expect(seq.stamp([a])).toBeUndefined();
    expect(stamp(a)).toEqual([101n, 0]);
  });

  it('no batch goes out five places or more after the oldest unacknowledged batch of its partition', async () => {
    const { seq } = sequences();
    await seq.start();
    const first = batch(0, 1);
    expect(seq.stamp([first])).toBeUndefined();
    expect(seq.sendable([first])).toEqual([first]);
    first.written = true;
    seq.settle([first]);
    // The broker knows the producer now; a (oldest unacknowledged) is out, b..e are acknowledged.
    const lane = Array.from({ length: 6 }, () => batch(0, 1));
    for (const x of lane) expect(seq.stamp([x])).toBeUndefined();
    expect(seq.sendable(lane)).toEqual(lane.slice(0, 5));
    for (const x of lane.slice(1, 5)) x.written = true;
    seq.settle(lane.slice(1, 5));
    // f would push a out of the five batches a broker remembers: it waits for a's own answer.
    expect(seq.sendable([lane[5]!])).toEqual([]);
    const moved = seq.changed();
    lane[0]!.written = true;
    seq.settle([lane[0]!]);
    await moved;
    expect(seq.sendable([lane[5]!])).toEqual([lane[5]]);
  });

  it('until a partition knows the producer id, only its oldest unsettled batch goes out', async () => {
    const { seq } = sequences();
    await seq.start();
    const [a, b, c] = [batch(0, 2), batch(0, 2), batch(1, 2)];
    for (const x of [a, b, c]) expect(seq.stamp([x])).toBeUndefined();
    expect(seq.sendable([a, b, c])).toEqual([a, c]);
    a.written = true;
    seq.settle([a]);
    expect(seq.sendable([b])).toEqual([b]);
  });

  it('out of order while an earlier batch was unsettled: no failure, the same stamp again once the partition has moved', async () => {
    const { seq } = sequences();
    await seq.start();
    const [a, b, c] = [batch(0, 2), batch(0, 2), batch(0, 2)];
    for (const x of [a, b, c]) expect(seq.stamp([x])).toBeUndefined();
    expect(seq.sendable([a])).toEqual([a]);
    a.written = true;
    seq.settle([a]);
    expect(seq.sendable([b, c])).toEqual([b, c]);
    // c reached the broker before b: it waits for b.
    expect(seq.failed([c], outOfOrder(0))).toBeUndefined();
    expect(seq.sendable([c])).toEqual([]);
    const moved = seq.changed();
    b.written = true;
    seq.settle([b]);
    await moved;
    expect(seq.sendable([c])).toEqual([c]);
    expect(stamp(c)).toEqual([101n, 4]);
    // Refused while b was unsettled, handled after b settled: b may have arrived just after c, so
    // c goes again at once.
    const d = batch(0, 1);
    expect(seq.stamp([d])).toBeUndefined();
    expect(seq.sendable([d])).toEqual([d]);
    c.written = true;
    seq.settle([c]);
    expect(seq.failed([d], outOfOrder(0))).toBeUndefined();
    expect(seq.sendable([d])).toEqual([d]);
  });

  it('out of order as the oldest unsettled batch, with nothing settled since it went: stamped anew under a new producer id', async () => {
    const { seq, lines } = sequences();
    await seq.start();
    const [a, b, c, other] = [batch(0, 2), batch(0, 2), batch(0, 2), batch(1, 2)];
    for (const x of [a, b, c, other]) expect(seq.stamp([x])).toBeUndefined();
    expect(seq.sendable([a])).toEqual([a]);
    a.written = true;
    seq.settle([a]);
    expect(seq.sendable([b, c, other])).toEqual([b, c, other]);
    seq.givenUp([b]); // b refused for good: a gap at sequence 2
    // c went while b was unsettled: it goes again before the gap is taken as final.
    expect(seq.failed([c], outOfOrder(0))).toBeUndefined();
    expect(seq.sendable([c])).toEqual([c]);
    const gap = seq.failed([c], outOfOrder(0));
    expect(gap).toBeInstanceOf(ProduceError);
    const failure = (gap as ProduceError).failures[0]!.error;
    expect(failure).toBeInstanceOf(KafkaError);
    expect(failure).toMatchObject({ code: 'ESEQUENCE', retriable: true });
    expect(failure.message).toBe(
      'kafka sink partition 0, producer id 101: OUT_OF_ORDER_SEQUENCE_NUMBER; resending under a new producer id',
    );
    expect(kafkaErrorRetriable(gap)).toBe(true);
    const renewal = seq.stamp([c]);
    expect(renewal).toBeInstanceOf(Promise);
    await renewal;
    expect(seq.stamp([c])).toBeUndefined();
    expect(stamp(c)).toEqual([102n, 0]);
    // `other`, of another partition and out under 101, keeps its stamp; new batches take 102.
    expect(seq.stamp([other])).toBeUndefined();
    expect(stamp(other)).toEqual([101n, 0]);
    const d = batch(1, 1);
    expect(seq.stamp([d])).toBeUndefined();
    expect(stamp(d)).toEqual([102n, 0]);
    expect(seq.status()).toMatchObject({ state: 'on', producerId: '102', producerIds: 2 });
    expect(lines.filter((l) => l.msg === 'kafka sink: new producer id')).toMatchObject([
      { level: 30, producerId: '102', reason: 'a batch was given up' },
    ]);
  });

  it('UNKNOWN_PRODUCER_ID and INVALID_PRODUCER_EPOCH: the batch was not written; it is stamped anew', async () => {
    for (const code of [59, 47]) {
      const { seq } = sequences();
      await seq.start();
      const a = batch(0, 3);
      expect(seq.stamp([a])).toBeUndefined();
      const left = seq.failed(
        [a],
        new ProduceError('t', [{ partition: 0, error: createErrorFromCode(code) }]),
      );
      expect(kafkaErrorRetriable(left)).toBe(true);
      const renewal = seq.stamp([a]);
      expect(renewal).toBeInstanceOf(Promise);
      await renewal;
      expect(seq.stamp([a])).toBeUndefined();
      expect(stamp(a)).toEqual([102n, 0]);
    }
  });

  it('leaves other failures as they are: a message too large is not retried, nor one without a producer id', async () => {
    const { seq } = sequences();
    await seq.start();
    const a = batch(0, 1);
    expect(seq.stamp([a])).toBeUndefined();
    const tooLarge = new ProduceError('t', [{ partition: 0, error: createErrorFromCode(10) }]);
    expect(seq.failed([a], tooLarge)).toBe(tooLarge);
    expect(kafkaErrorRetriable(tooLarge)).toBe(false);
    const without = sequences([createErrorFromCode(31)]).seq;
    await without.start();
    const b = batch(0, 1);
    expect(without.stamp([b])).toBeUndefined();
    const refused = outOfOrder(0);
    expect(without.failed([b], refused)).toBe(refused);
  });

  it('takes InitProducerId failures by kind: unreachable is retried with backoff, answered up to `retries` times, refused never', async () => {
    const unreachable = new KafkaJSConnectionError('Connection error: connect ECONNREFUSED');
    expect(producerIdFailure(unreachable)).toBe('unreachable');
    expect(producerIdFailure(createErrorFromCode(15))).toBe('answered'); // COORDINATOR_NOT_AVAILABLE
    expect(producerIdFailure(createErrorFromCode(31))).toBe('refused'); // CLUSTER_AUTHORIZATION_FAILED
    expect(producerIdFailure(new KafkaJSServerDoesNotSupportApiKey('no InitProducerId'))).toBe('refused');

    const a = sequences([unreachable, unreachable, unreachable]);
    await a.seq.start();
    expect(a.slept).toEqual([100, 200, 400]);
    expect(a.seq.status()).toMatchObject({ state: 'on', producerIds: 1 });

    // Two answered failures are within retries (2): the third attempt gets the id.
    const b = sequences([createErrorFromCode(15), createErrorFromCode(15)]);
    await b.seq.start();
    expect(b.seq.status()).toMatchObject({ state: 'on' });
    const c = sequences([createErrorFromCode(15), createErrorFromCode(15), createErrorFromCode(15)]);
    await c.seq.start();
    expect(c.seq.status()).toMatchObject({ state: 'unavailable' });
    expect(c.asked()).toBe(3);
  });

  it('refused: one warning that says what to grant or upgrade, then batches without producer id', async () => {
    for (const [refusal, remedy] of [
      [
        createErrorFromCode(31),
        "grant the sink's principal IdempotentWrite on the cluster (Kafka before 2.8; later ones need Write on the topic)",
      ],
      [new KafkaJSServerDoesNotSupportApiKey('not supported'), 'upgrade the brokers to Kafka 0.11 or newer'],
    ] as const) {
      const { seq, lines, asked } = sequences([refusal]);
      await seq.start();
      const type = 'type' in refusal ? refusal.type : 'UNSUPPORTED_VERSION';
      expect(seq.status()).toEqual({
        state: 'unavailable',
        producerIds: 0,
        reason: `the brokers refused a producer id (${type}: ${refusal.message})`,
      });
      expect(lines.filter((l) => l.level >= 40).map((l) => l.msg)).toEqual([
        `kafka sink: the brokers refused a producer id (${type}); writing without idempotence, so a retry after a lost response may write records twice; ${remedy}, or set idempotence to false`,
      ]);
      const [x, y] = [batch(0, 4), batch(0, 4)];
      expect(seq.stamp([x])).toBeUndefined();
      seq.givenUp([x]);
      expect(seq.stamp([y])).toBeUndefined();
      expect([x, y].map((b) => batchProducer(b.data))).toEqual([
        { producerId: -1n, producerEpoch: -1, baseSequence: -1 },
        { producerId: -1n, producerEpoch: -1, baseSequence: -1 },
      ]);
      expect(crcOk(y.data)).toBe(true);
      // No further attempt after a refusal, however many batches are given up.
      expect(asked()).toBe(1);
    }
  });

  it('stops asking once the sink has stopped', async () => {
    let stopped = false;
    const unreachable = new KafkaJSConnectionError('down');
    const { seq, asked } = sequences([unreachable, unreachable, unreachable], {
      sleep: () => {
        stopped = true;
        return Promise.resolve();
      },
      stopped: () => stopped,
    });
    await seq.start();
    expect(asked()).toBe(1);
    expect(seq.status()).toEqual({ state: 'pending', producerIds: 0 });
  });
});
