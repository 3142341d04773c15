import { KafkaJSConnectionError, Partitioners, type PartitionerArgs } from 'kafkajs';
import { createRequire } from 'node:module';
import { Subject, VirtualTimeScheduler, from } from 'rxjs';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { ComponentContext, HealthReporter } from '../../../src/component.js';
import { Ledger, type StageCounters } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';
import { cleanup, makeTempDir } from '../../fixtures/cleanup.js';
import {
  KafkaCode,
  ProducerStateModel,
  batchHeader,
  type BatchHeader,
  type Verdict,
} from '../../fixtures/kafka-idempotent-broker.js';
import { crc32cBitwise, decodeBatches, type DecodedMessage } from '../../fixtures/record-batches.js';
import fc from 'fast-check';
import kafkaModule, { KafkaSink, type KafkaSinkConfig } from '../../../src/sinks/kafka.js';
import { retriable } from '../../../src/sinks/kafka/sender.js';
import {
  ProduceError,
  tlsConnectionOptions,
  type KafkaTransport,
  type ProducerIdentity,
} from '../../../src/kafka/client.js';
import { crc32c, crc32cImplementation, crc32cJs } from '../../../src/kafka/crc32c.js';
import { loadFlowProto } from '../../../src/kafka/flow-messages.js';
import type { EncodedRequest } from '../../../src/kafka/produce.js';
import {
  RequestEncoder,
  type EncoderOptions,
  flowHash,
  flowKey,
  murmur2,
  partitionForKey,
} from '../../../src/sinks/kafka/encode.js';

afterAll(() => cleanup.dispose());

function record(i: number, overrides: Partial<FlowRecord> = {}): FlowRecord {
  return {
    ipVersion: 4,
    sourceIPv4Address: '10.0.0.1',
    destinationIPv4Address: '10.0.0.2',
    sourceTransportPort: 40000 + i,
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 100 * i,
    packetDeltaCount: i,
    flowStartMilliseconds: 1_700_000_000_000 + i,
    flowEndMilliseconds: 1_700_000_001_000 + i,
    tcpControlBits: 0x10,
    ipDiffServCodePoint: 0,
    ingressInterface: 2,
    flowDirection: 0,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
    ...overrides,
  };
}

const range = (from: number, count: number): FlowRecord[] =>
  Array.from({ length: count }, (_, k) => record(from + k));

function reverse(r: FlowRecord): FlowRecord {
  return {
    ...r,
    sourceIPv4Address: r.destinationIPv4Address,
    destinationIPv4Address: r.sourceIPv4Address,
    sourceIPv6Address: r.destinationIPv6Address,
    destinationIPv6Address: r.sourceIPv6Address,
    sourceTransportPort: r.destinationTransportPort,
    destinationTransportPort: r.sourceTransportPort,
    flowDirection: r.flowDirection === 0 ? 1 : 0,
  };
}

describe('kafka message keys and partitions', () => {
  it("murmur2 gives the partition kafkajs's default partitioner gives, for ASCII and UTF-8 keys of every length mod 4", () => {
    const kafkajs = Partitioners.DefaultPartitioner();
    for (const partitions of [1, 3, 16, 997]) {
      const partitionMetadata = Array.from({ length: partitions }, (_, p) => ({
        partitionId: p,
        leader: 1,
        partitionErrorCode: 0,
        replicas: [1],
        isr: [1],
      }));
      for (const key of [
        '',
        'a',
        'ab',
        'abc',
        'abcd',
        '6/10.0.0.1:443/10.0.0.2:51000',
        'zürich-ü',
        '☃☃☃',
        'x'.repeat(101),
      ]) {
        const args: PartitionerArgs = { topic: 't', partitionMetadata, message: { key, value: null } };
        expect({ key, partitions, p: partitionForKey(key, partitions) }).toEqual({
          key,
          partitions,
          p: kafkajs(args),
        });
        expect(murmur2(Buffer.from(key))).toBe(murmur2(key));
      }
    }
  });

  it('keys a flow by protocol and its endpoints in a fixed order, the same for both directions', () => {
    const ab = record(0, {
      sourceIPv4Address: '10.0.0.9',
      destinationIPv4Address: '10.0.0.10',
      sourceTransportPort: 51000,
    });
    expect(flowKey(ab)).toBe('6/10.0.0.10:443/10.0.0.9:51000');
    expect(flowKey(reverse(ab))).toBe('6/10.0.0.10:443/10.0.0.9:51000');
    // Same address both ways (loopback): the port decides.
    const self = record(0, {
      sourceIPv4Address: '127.0.0.1',
      destinationIPv4Address: '127.0.0.1',
      sourceTransportPort: 9000,
      destinationTransportPort: 80,
    });
    expect(flowKey(self)).toBe('6/127.0.0.1:80/127.0.0.1:9000');
    expect(flowKey(reverse(self))).toBe('6/127.0.0.1:80/127.0.0.1:9000');
    const v6 = record(0, {
      ipVersion: 6,
      sourceIPv4Address: undefined,
      destinationIPv4Address: undefined,
      sourceIPv6Address: 'fe80::2',
      destinationIPv6Address: '2001:db8::1',
      protocolIdentifier: 17,
      sourceTransportPort: 5353,
      destinationTransportPort: 53,
    });
    expect(flowKey(v6)).toBe('17/[2001:db8::1]:53/[fe80::2]:5353');
    expect(flowKey(reverse(v6))).toBe('17/[2001:db8::1]:53/[fe80::2]:5353');
  });

  it('hashes both directions of a flow alike and different flows apart', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 1000; i++) {
      const r = record(i, { sourceIPv4Address: `10.0.${i >> 8}.${i & 255}` });
      expect(flowHash(reverse(r))).toBe(flowHash(r));
      seen.add(flowHash(r));
    }
    expect(seen.size).toBe(1000);
  });
});

describe('RequestEncoder', () => {
  const { FlowRecord: FlowRecordType, FlowBatch: FlowBatchType } = loadFlowProto();
  // proto3 has no absent repeated field: a record without observedInterfaces decodes with [].
  const withoutEmptyLists = (r: FlowRecord): FlowRecord => {
    if (r.observedInterfaces?.length === 0) delete r.observedInterfaces;
    return r;
  };
  const decode = (value: Buffer): unknown =>
    withoutEmptyLists(
      FlowRecordType.toObject(FlowRecordType.decode(value), { longs: Number, defaults: true }) as FlowRecord,
    );
  const decodeBatch = (value: Buffer): FlowRecord[] =>
    (
      FlowBatchType.toObject(FlowBatchType.decode(value), { longs: Number, defaults: true }) as {
        records: FlowRecord[];
      }
    ).records.map(withoutEmptyLists);
  const encoder = (options: Partial<EncoderOptions>): RequestEncoder =>
    new RequestEncoder({
      encoding: 'json',
      recordsPerMessage: 1,
      key: 'flow',
      compression: 'none',
      ...options,
    });
  const NOW = 1_700_000_123_456;

  it("json, one record per message: the record's JSON as the value, the flow key, on the key's partition", async () => {
    const records = [record(1), record(2, { interfaceName: 'eth0', duplicate: true }), record(3)];
    const out = await encoder({}).encode(records, 4, 100, NOW);
    const messages = await decodeBatches(out.batches);
    const expected = records.map((r) => ({
      partition: partitionForKey(flowKey(r), 4),
      key: flowKey(r),
      value: JSON.stringify(r),
      timestamp: NOW,
      headers: 1, // content-type
    }));
    expect(
      messages
        .map((m) => ({ ...m, value: m.value.toString(), offset: undefined }))
        .sort((x, y) => x.value.localeCompare(y.value)),
    ).toEqual(
      expected.map((e) => ({ ...e, offset: undefined })).sort((x, y) => x.value.localeCompare(y.value)),
    );
    // Offsets within each partition's batch count from 0 in arrival order.
    for (const b of out.batches) {
      const own = messages.filter((m) => m.partition === b.partition);
      expect(own.map((m) => m.offset)).toEqual(own.map((_, i) => i));
      expect(b.records).toBe(own.length);
    }
    expect(out.records).toBe(3);
    expect(out.bytes).toBe(out.batches.reduce((n, b) => n + b.data.length, 0));
  });

  it('protobuf, one record per message: each value decodes to its record; key none puts a request on one partition, the next request on the next', async () => {
    const enc = encoder({ encoding: 'protobuf', key: 'none' });
    const records = range(1, 5);
    const first = await enc.encode(records, 3, 100, NOW);
    const messages = await decodeBatches(first.batches);
    expect(messages.map((m) => m.key)).toEqual([null, null, null, null, null]);
    expect(messages.map((m) => decode(m.value))).toEqual(records);
    expect(first.batches.map((b) => [b.partition, b.records])).toEqual([[1, 5]]);
    const partitions: number[] = [];
    for (let i = 0; i < 3; i++)
      partitions.push((await enc.encode(records, 3, 100, NOW)).batches[0]!.partition);
    expect(partitions).toEqual([2, 0, 1]);
  });

  it('keeps values of every size whole, whatever room the length prefixes need (1 to 3 varint bytes)', async () => {
    // Interface names from a few bytes to 20 kB move the value length and record length across
    // the 64-, 8192- and 1M-byte varint boundaries, and past the first buffer's end.
    const records = [1, 30, 60, 4000, 8150, 8200, 20_000].map((n, i) =>
      record(i, { interfaceName: 'x'.repeat(n) }),
    );
    for (const encoding of ['json', 'protobuf'] as const) {
      const out = await encoder({ encoding, key: 'none' }).encode(records, 1, 10, NOW);
      const messages = await decodeBatches(out.batches);
      expect(
        messages.map((m): unknown =>
          encoding === 'json' ? JSON.parse(m.value.toString()) : decode(m.value),
        ),
      ).toEqual(records);
    }
  });

  it('batch messages keyed by flow are grouped by partition and hold at most records_per_message', async () => {
    const records: FlowRecord[] = [];
    for (let i = 0; i < 40; i++) {
      const r = record(i, { sourceIPv4Address: `10.0.1.${i}` });
      records.push(r, reverse(r));
    }
    for (const encoding of ['json', 'protobuf'] as const) {
      const out = await encoder({ encoding, recordsPerMessage: 7 }).encode(records, 3, 100, NOW);
      const seen: FlowRecord[] = [];
      for (const m of await decodeBatches(out.batches)) {
        expect(m.key).toBeNull();
        const batch =
          encoding === 'json' ? (JSON.parse(m.value.toString()) as FlowRecord[]) : decodeBatch(m.value);
        expect(batch.length).toBeGreaterThan(0);
        expect(batch.length).toBeLessThanOrEqual(7);
        for (const r of batch) expect(m.partition).toBe(flowHash(r) % 3);
        seen.push(...batch);
      }
      expect(out.batches.reduce((n, b) => n + b.records, 0)).toBe(80);
      const order = (a: FlowRecord, b: FlowRecord): number =>
        a.flowStartMilliseconds - b.flowStartMilliseconds || a.flowDirection - b.flowDirection;
      expect(seen.sort(order)).toEqual([...records].sort(order));
    }
  });

  it('batch messages without a key are cut in arrival order', async () => {
    const records = range(0, 10);
    const out = await encoder({ recordsPerMessage: 4, key: 'none' }).encode(records, 1, 100, NOW);
    const messages = await decodeBatches(out.batches);
    expect(messages.map((m) => JSON.parse(m.value.toString()) as unknown)).toEqual([
      records.slice(0, 4),
      records.slice(4, 8),
      records.slice(8, 10),
    ]);
  });

  it('gzip compresses each batch; a consumer reads the same messages', async () => {
    const records = range(0, 200);
    const plain = await encoder({ key: 'none' }).encode(records, 1, 100, NOW);
    const gzipped = await encoder({ key: 'none', compression: 'gzip' }).encode(records, 1, 100, NOW);
    expect(gzipped.batches[0]!.data.readInt16BE(21) & 7).toBe(1);
    expect(gzipped.bytes).toBeLessThan(plain.bytes / 4);
    const values = async (r: EncodedRequest): Promise<unknown[]> =>
      (await decodeBatches(r.batches)).map((m): unknown => JSON.parse(m.value.toString()));
    expect(await values(gzipped)).toEqual(records);
    expect(await values(plain)).toEqual(records);
  });

  it('fills the batch header: magic 2, CRC-32C of attributes to end, offsets, timestamps, no producer id', async () => {
    const out = await encoder({ key: 'none' }).encode(range(0, 3), 1, 100, NOW);
    const b = out.batches[0]!.data;
    expect({
      baseOffset: b.readBigInt64BE(0),
      length: b.readInt32BE(8),
      epoch: b.readInt32BE(12),
      magic: b[16],
      crc: b.readUInt32BE(17),
      attributes: b.readInt16BE(21),
      lastOffsetDelta: b.readInt32BE(23),
      firstTimestamp: b.readBigInt64BE(27),
      maxTimestamp: b.readBigInt64BE(35),
      producerId: b.readBigInt64BE(43),
      producerEpoch: b.readInt16BE(51),
      baseSequence: b.readInt32BE(53),
      count: b.readInt32BE(57),
    }).toEqual({
      baseOffset: 0n,
      length: b.length - 12,
      epoch: -1,
      magic: 2,
      crc: crc32cBitwise(b.subarray(21)),
      attributes: 0,
      lastOffsetDelta: 2,
      firstTimestamp: BigInt(NOW),
      maxTimestamp: BigInt(NOW),
      producerId: -1n,
      producerEpoch: -1,
      baseSequence: -1,
      count: 3,
    });
  });
});

describe('crc32c', () => {
  const implementations = { native: crc32c, javascript: crc32cJs };

  it('uses native/crc32c.c once setup has built it', () => {
    // Setup builds dist/native/librxflow.so; in CI the JavaScript stand-in must not be what runs.
    if (process.env.CI === 'true') expect(crc32cImplementation).not.toBe('javascript');
    expect(['sse4.2', 'native-table', 'javascript']).toContain(crc32cImplementation);
  });

  for (const [name, crc] of Object.entries(implementations)) {
    it(`${name}: matches the published check values (RFC 3720 B.4 and the CRC catalogue)`, () => {
      expect(crc(Buffer.from('123456789'))).toBe(0xe3069283);
      expect(crc(new Uint8Array(32))).toBe(0x8a9136aa);
      expect(crc(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
      expect(crc(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e);
      expect(crc(Uint8Array.from({ length: 32 }, (_, i) => 31 - i))).toBe(0x113fdb5c);
      expect(crc(new Uint8Array(0))).toBe(0);
    });

    it(`${name}: equals the bitwise definition for any bytes and any sub-range`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 3000 }), fc.nat(), fc.nat(), (data, x, y) => {
          const start = data.length === 0 ? 0 : x % (data.length + 1);
          const end = start + (data.length === 0 ? 0 : y % (data.length - start + 1));
          expect(crc(data, start, end)).toBe(crc32cBitwise(data.subarray(start, end)));
        }),
      );
    });
  }
});

describe('retriable', () => {
  it('retries what kafkajs gave up on after its retries, not what cannot succeed', () => {
    const connection = Object.assign(new Error('connect ECONNREFUSED'), {
      name: 'KafkaJSConnectionError',
      retriable: true,
    });
    const exceeded = Object.assign(new Error('retries'), {
      name: 'KafkaJSNumberOfRetriesExceeded',
      retriable: false,
      cause: connection,
    });
    const wrapped = Object.assign(new Error('wrapped'), {
      name: 'KafkaJSNonRetriableError',
      retriable: false,
      cause: exceeded,
    });
    const tooLarge = Object.assign(new Error('too large'), {
      name: 'KafkaJSProtocolError',
      retriable: false,
    });
    const wrappedTooLarge = Object.assign(new Error('wrapped'), {
      name: 'KafkaJSNonRetriableError',
      retriable: false,
      cause: tooLarge,
    });
    expect([connection, exceeded, wrapped, tooLarge, wrappedTooLarge].map(retriable)).toEqual([
      true,
      true,
      true,
      false,
      false,
    ]);
  });
});

// ----------------------------------------------------------------------------------------------
// The sink with a fake transport, in virtual time.

/**
 * A VirtualTimeScheduler advanced one due action at a time, letting promises settle in between:
 * the sink's timers are RxJS scheduler actions, but what they start (sends, backoffs) continues in
 * promise callbacks, which TestScheduler.run would not interleave.
 */
class Clock {
  readonly scheduler = new VirtualTimeScheduler();

  get now(): number {
    return this.scheduler.now();
  }

  async settle(): Promise<void> {
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  }

  async advance(ms: number): Promise<void> {
    const target = this.scheduler.frame + ms;
    await this.settle();
    for (;;) {
      const next = (this.scheduler.actions as { delay: number }[])[0];
      if (next === undefined || next.delay > target) break;
      this.scheduler.maxFrames = next.delay;
      this.scheduler.flush();
      await this.settle();
    }
    this.scheduler.frame = target;
    await this.settle();
  }
}

type Outcome = 'ok' | 'hang' | Error;

class FakeTransport implements KafkaTransport {
  /** What was written, decoded when sent: the sink reuses its buffers once a send settles. */
  readonly sent: { at: number; messages: DecodedMessage[] }[] = [];
  readonly attempts: number[] = [];
  connects = 0;
  disconnects = 0;
  connectFailures = 0;
  producerIds = 0;
  /** One partition keeps every request's records in arrival order. */
  partitionCount = 1;
  /** Decides each send attempt; 'hang' never settles; a function writes some batches itself. */
  outcome: (attempt: number) => Outcome | ((request: EncodedRequest) => Promise<void>) = () => 'ok';
  private hung: { messages: DecodedMessage[]; request: EncodedRequest; resolve: () => void }[] = [];

  constructor(private readonly clock: Clock) {}

  initProducerId(): Promise<ProducerIdentity> {
    this.producerIds++;
    return Promise.resolve({ producerId: BigInt(1000 + this.producerIds), producerEpoch: 0 });
  }

  connect(): Promise<void> {
    this.connects++;
    if (this.connectFailures > 0) {
      this.connectFailures--;
      return Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:9092'));
    }
    return Promise.resolve();
  }

  partitions(): Promise<number> {
    return Promise.resolve(this.partitionCount);
  }

  async send(request: EncodedRequest): Promise<void> {
    this.attempts.push(this.clock.now);
    const outcome = this.outcome(this.attempts.length);
    if (typeof outcome === 'function') return outcome(request);
    if (outcome instanceof Error) throw outcome;
    const at = this.clock.now;
    const messages = await decodeBatches(request.batches.filter((b) => !b.written));
    if (outcome === 'ok') {
      this.sent.push({ at, messages });
      for (const b of request.batches) b.written = true;
      return;
    }
    return new Promise<void>((resolve) => this.hung.push({ messages, request, resolve }));
  }

  /** Lets every hung send succeed now. */
  release(): void {
    for (const { messages, request, resolve } of this.hung) {
      this.sent.push({ at: this.clock.now, messages });
      for (const b of request.batches) b.written = true;
      resolve();
    }
    this.hung = [];
  }

  disconnect(): Promise<void> {
    this.disconnects++;
    return Promise.resolve();
  }

  /** Records written, in order, as the indexes encoded in flowStartMilliseconds. */
  written(): number[] {
    return this.sent.flatMap((s) =>
      s.messages.map(
        (m) => (JSON.parse(m.value.toString()) as FlowRecord).flowStartMilliseconds - 1_700_000_000_000,
      ),
    );
  }
}

const transient = (): Error =>
  Object.assign(new Error('Connection error: connect ECONNREFUSED'), {
    name: 'KafkaJSNumberOfRetriesExceeded',
    retriable: false,
  });

function setup(config: Partial<KafkaSinkConfig> = {}) {
  return setupWith((clock) => new FakeTransport(clock), config);
}

function setupWith<T extends KafkaTransport>(
  make: (clock: Clock) => T,
  config: Partial<KafkaSinkConfig> = {},
  logger = silentLogger(),
  health?: HealthReporter,
) {
  const clock = new Clock();
  const transport = make(clock);
  const ledger = new Ledger();
  const counters: StageCounters = ledger.stage('k', 'kafka', 'sink');
  const context: ComponentContext = {
    id: 'k',
    logger,
    ledger,
    counters,
    scheduler: clock.scheduler,
  };
  if (health !== undefined) context.health = health;
  const sink = new KafkaSink(
    { bootstrap_servers: ['127.0.0.1:9092'], topic: 't', ...config },
    context,
    transport,
  );
  const input = new Subject<FlowBatch>();
  let done = false;
  let failed: unknown;
  const consumed = sink.consume(input).then(
    () => void (done = true),
    (err: unknown) => void (failed = err),
  );
  return { clock, transport, counters, sink, input, consumed, state: () => ({ done, failed }) };
}

describe('kafka sink batching, retries and accounting', () => {
  it('sends a request once batch_max_records wait, and a smaller one after linger_ms', async () => {
    const { clock, transport, counters, input } = setup({ batch_max_records: 100, linger_ms: 20 });
    await clock.settle();
    input.next(range(0, 150));
    await clock.settle();
    expect(transport.sent.map((s) => s.messages.length)).toEqual([100]);
    await clock.advance(19);
    expect(transport.sent.map((s) => s.messages.length)).toEqual([100]);
    await clock.advance(1);
    expect(transport.sent.map((s) => [s.at, s.messages.length])).toEqual([
      [0, 100],
      [20, 50],
    ]);
    expect(transport.written()).toEqual(range(0, 150).map((_, i) => i));
    expect(counters.snapshot()).toMatchObject({ received: 150, sent: 150, inFlight: 0 });
  });

  it('lingers from the oldest waiting record, not from the latest', async () => {
    const { clock, transport, input } = setup({ batch_max_records: 100, linger_ms: 20 });
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(15);
    input.next(range(10, 10));
    await clock.advance(5);
    expect(transport.sent.map((s) => [s.at, s.messages.length])).toEqual([[20, 20]]);
  });

  it('keeps at most max_in_flight requests running', async () => {
    // Without idempotence: with it, the second request would also wait for the first to be
    // acknowledged (the first batches of a producer id; see 'kafka sink idempotence').
    const { clock, transport, counters, input } = setup({
      batch_max_records: 10,
      max_in_flight: 2,
      idempotence: false,
    });
    transport.outcome = () => 'hang';
    await clock.settle();
    input.next(range(0, 50));
    await clock.advance(1000);
    expect(transport.attempts.length).toBe(2);
    expect(counters.snapshot()).toMatchObject({ received: 50, sent: 0, inFlight: 50 });
  });

  it('retries a failed request with doubling backoff and counts it sent once written', async () => {
    const { clock, transport, counters, input } = setup({
      batch_max_records: 10,
      retry_initial_ms: 100,
      retry_max_ms: 250,
    });
    transport.outcome = (n) => (n <= 3 ? transient() : 'ok');
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(1000);
    expect(transport.attempts).toEqual([0, 100, 300, 550]);
    expect(transport.written()).toEqual(range(0, 10).map((_, i) => i));
    expect(counters.snapshot()).toMatchObject({ received: 10, sent: 10, dropped: {}, inFlight: 0 });
  });

  it('counts a request that cannot succeed as sink_failed at once', async () => {
    const { clock, transport, counters, input } = setup({ batch_max_records: 10 });
    transport.outcome = () =>
      Object.assign(new Error('Message too large'), { name: 'KafkaJSProtocolError', retriable: false });
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(10_000);
    expect(transport.attempts).toEqual([0]);
    expect(counters.snapshot()).toMatchObject({
      received: 10,
      sent: 0,
      dropped: { sink_failed: 10 },
      inFlight: 0,
    });
  });

  it('gives up on a request it cannot write by delivery_timeout_ms after its oldest record arrived', async () => {
    const { clock, transport, counters, input, sink } = setup({
      batch_max_records: 10,
      max_in_flight: 1,
      retry_initial_ms: 100,
      retry_max_ms: 100,
      delivery_timeout_ms: 1000,
    });
    transport.outcome = () => transient();
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(500);
    input.next(range(10, 5));
    let flushed = -1;
    void sink.flush().then(() => (flushed = clock.now));
    await clock.advance(2000);
    // The first request stops at 900 (no retry fits before 1000); the second, of records that
    // arrived at 500, starts then and stops at 1400.
    expect(transport.attempts).toEqual([
      0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 900, 1000, 1100, 1200, 1300, 1400,
    ]);
    expect(counters.snapshot()).toMatchObject({
      received: 15,
      sent: 0,
      dropped: { sink_failed: 15 },
      inFlight: 0,
    });
    expect(flushed).toBe(1400);
  });

  it('drops records that waited delivery_timeout_ms without a connection as sink_failed', async () => {
    const clock = new Clock();
    const transport = new FakeTransport(clock);
    transport.connectFailures = 1_000_000;
    const ledger = new Ledger();
    const counters = ledger.stage('k', 'kafka', 'sink');
    const sink = new KafkaSink(
      {
        bootstrap_servers: ['127.0.0.1:9092'],
        topic: 't',
        delivery_timeout_ms: 1000,
        retry_initial_ms: 100,
        retry_max_ms: 100,
      },
      { id: 'k', logger: silentLogger(), ledger, counters, scheduler: clock.scheduler },
      transport,
    );
    const input = new Subject<FlowBatch>();
    void sink.consume(input);
    input.next(range(0, 3));
    await clock.advance(400);
    input.next(range(3, 4));
    await clock.advance(599);
    expect(counters.snapshot()).toMatchObject({ received: 7, sent: 0, dropped: {}, inFlight: 7 });
    await clock.advance(1);
    expect(counters.snapshot()).toMatchObject({
      received: 7,
      sent: 0,
      dropped: { sink_failed: 3 },
      inFlight: 4,
    });
    await clock.advance(400);
    expect(counters.snapshot()).toMatchObject({
      received: 7,
      sent: 0,
      dropped: { sink_failed: 7 },
      inFlight: 0,
    });
    expect(transport.attempts).toEqual([]);
    await sink.close();
  });

  it('drop_newest: with the buffer full (in flight counts), arriving records are dropped as sink_buffer_full', async () => {
    const { clock, transport, counters, input } = setup({
      batch_max_records: 4,
      max_in_flight: 1,
      buffer_max_records: 10,
    });
    transport.outcome = (n) => (n === 1 ? 'hang' : 'ok');
    await clock.settle();
    input.next(range(0, 6)); // 0..3 in flight, 4..5 waiting
    input.next(range(6, 7)); // room for 6..9 of 6..12
    expect(counters.snapshot()).toMatchObject({
      received: 13,
      sent: 0,
      dropped: { sink_buffer_full: 3 },
      inFlight: 10,
    });
    await clock.settle();
    transport.release();
    await clock.advance(100);
    expect(transport.written()).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(counters.snapshot()).toMatchObject({
      received: 13,
      sent: 10,
      dropped: { sink_buffer_full: 3 },
      inFlight: 0,
    });
  });

  it('drop_oldest: waiting records make room for arriving ones; those in flight cannot', async () => {
    const { clock, transport, counters, input } = setup({
      batch_max_records: 4,
      max_in_flight: 1,
      buffer_max_records: 10,
      when_full: 'drop_oldest',
    });
    transport.outcome = (n) => (n === 1 ? 'hang' : 'ok');
    await clock.settle();
    input.next(range(0, 6)); // 0..3 in flight, 4..5 waiting
    input.next(range(6, 7)); // 3 too many: 4, 5 (waiting) and 6 (the oldest arriving) go
    expect(counters.snapshot()).toMatchObject({
      received: 13,
      dropped: { sink_buffer_full: 3 },
      inFlight: 10,
    });
    input.next(range(13, 12)); // 12 too many: the 6 waiting and the 6 oldest arriving go
    expect(counters.snapshot()).toMatchObject({
      received: 25,
      dropped: { sink_buffer_full: 15 },
      inFlight: 10,
    });
    await clock.settle();
    transport.release();
    await clock.advance(100);
    expect(transport.written()).toEqual([0, 1, 2, 3, 19, 20, 21, 22, 23, 24]);
    expect(counters.snapshot()).toMatchObject({
      received: 25,
      sent: 10,
      dropped: { sink_buffer_full: 15 },
      inFlight: 0,
    });
  });

  it('after a partial write, a retry sends only the partitions not yet written, and a final failure counts only those', async () => {
    const protocolError = (type: string, retriable: boolean): Error =>
      Object.assign(new Error(`partition error ${type}`), { name: 'KafkaJSProtocolError', type, retriable });
    for (const final of [false, true]) {
      const { clock, transport, counters, input, sink } = setup({ batch_max_records: 40, linger_ms: 0 });
      transport.partitionCount = 4;
      const partitionsSent: number[][] = [];
      // Attempt 1: partitions 0 and 1 are taken, 2 and 3 fail (leader moved: retriable).
      // Attempt 2: what is left either goes through, or fails with an error retrying cannot fix.
      transport.outcome = (n) => async (request) => {
        partitionsSent.push(request.batches.filter((b) => !b.written).map((b) => b.partition));
        const failures: { partition: number; error: Error }[] = [];
        for (const b of request.batches) {
          if (b.written) continue;
          if (n === 1 && b.partition >= 2)
            failures.push({ partition: b.partition, error: protocolError('NOT_LEADER_FOR_PARTITION', true) });
          else if (n === 2 && final)
            failures.push({ partition: b.partition, error: protocolError('MESSAGE_TOO_LARGE', false) });
          else b.written = true;
        }
        await Promise.resolve();
        if (failures.length > 0) throw new ProduceError('t', failures);
      };
      await clock.settle();
      const records = range(0, 40);
      input.next(records);
      await clock.advance(10_000);
      const perPartition = [0, 1, 2, 3].map(
        (p) => records.filter((r) => partitionForKey(flowKey(r), 4) === p).length,
      );
      expect(perPartition.every((n) => n > 0)).toBe(true);
      expect(partitionsSent).toEqual([
        [0, 1, 2, 3],
        [2, 3],
      ]);
      const late = perPartition[2]! + perPartition[3]!;
      expect(counters.snapshot()).toMatchObject(
        final
          ? { received: 40, sent: 40 - late, dropped: { sink_failed: late }, inFlight: 0 }
          : { received: 40, sent: 40, dropped: {}, inFlight: 0 },
      );
      await sink.close();
    }
  });

  it('keeps trying to connect, holding records meanwhile, and sends them once connected', async () => {
    const clock = new Clock();
    const transport = new FakeTransport(clock);
    transport.connectFailures = 3;
    const ledger = new Ledger();
    const counters = ledger.stage('k', 'kafka', 'sink');
    const sink = new KafkaSink(
      { bootstrap_servers: ['127.0.0.1:9092'], topic: 't', retry_initial_ms: 100, retry_max_ms: 1000 },
      { id: 'k', logger: silentLogger(), ledger, counters, scheduler: clock.scheduler },
      transport,
    );
    const consumed = sink.consume(from([range(0, 5)]));
    // Attempts at 0, 100, 300 fail (backoff 100, 200, 400); the one at 700 connects.
    await clock.advance(699);
    expect(transport.connects).toBe(3);
    expect(counters.snapshot()).toMatchObject({ received: 5, sent: 0, inFlight: 5 });
    await clock.advance(1);
    expect(transport.connects).toBe(4);
    await consumed;
    expect(transport.written()).toEqual([0, 1, 2, 3, 4]);
    expect(counters.snapshot()).toMatchObject({ received: 5, sent: 5, inFlight: 0 });
  });

  it('close() waits shutdown_timeout_ms, then drops what is held as shutdown; twice is once', async () => {
    const { clock, transport, counters, input, sink, state } = setup({
      batch_max_records: 4,
      max_in_flight: 1,
      shutdown_timeout_ms: 3000,
    });
    transport.outcome = () => 'hang';
    await clock.settle();
    input.next(range(0, 10));
    let closedAt = -1;
    const first = sink.close();
    expect(sink.close()).toBe(first);
    void first.then(() => (closedAt = clock.now));
    await clock.advance(2999);
    expect(closedAt).toBe(-1);
    await clock.advance(1);
    expect(closedAt).toBe(3000);
    expect(counters.snapshot()).toMatchObject({
      received: 10,
      sent: 0,
      dropped: { shutdown: 10 },
      inFlight: 0,
    });
    expect(transport.disconnects).toBe(1);
    // After close: consume has ended, the input is no longer read, flush() is immediate.
    expect(state().done).toBe(true);
    expect(input.observed).toBe(false);
    await sink.flush();
  });

  it('close(timeoutMs) waits the shorter of timeoutMs and shutdown_timeout_ms, counts the rest shutdown, and does not wait for a disconnect that hangs', async () => {
    const { clock, transport, counters, input, sink, state } = setup({
      batch_max_records: 4,
      max_in_flight: 1,
      shutdown_timeout_ms: 3000,
    });
    transport.outcome = () => 'hang';
    transport.disconnect = () => new Promise<void>(() => undefined);
    await clock.settle();
    input.next(range(0, 10));
    let closedAt = -1;
    void sink.close(1200).then(() => (closedAt = clock.now));
    await clock.advance(1199);
    expect(closedAt).toBe(-1);
    expect(counters.snapshot()).toMatchObject({ received: 10, sent: 0, dropped: {}, inFlight: 10 });
    await clock.advance(1);
    expect(counters.snapshot()).toMatchObject({ received: 10, dropped: { shutdown: 10 }, inFlight: 0 });
    await clock.advance(500);
    expect(closedAt).toBe(1700);
    expect(state().done).toBe(true);
  });

  it('reports itself degraded once the brokers have failed for degraded_after_ms, and healthy at the next write', async () => {
    const reports: string[] = [];
    const health: HealthReporter = {
      degraded: (reason) => void reports.push(`degraded ${reason}`),
      healthy: () => void reports.push('healthy'),
    };
    const { clock, transport, counters, input } = setupWith(
      (c) => new FakeTransport(c),
      { batch_max_records: 10, retry_initial_ms: 100, retry_max_ms: 1000, degraded_after_ms: 5000 },
      silentLogger(),
      health,
    );
    let failUntil = 8000;
    transport.outcome = () => (clock.now < failUntil ? transient() : 'ok');
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(4999);
    expect(reports).toEqual([]);
    await clock.advance(1);
    expect(reports).toEqual([
      'degraded kafka sink: the brokers (127.0.0.1:9092) have not been reachable for 5000 ms; records are held up to buffer_max_records (100000) and delivery_timeout_ms (120000); check the brokers and the network (last error: Connection error: connect ECONNREFUSED)',
    ]);
    await clock.advance(4000);
    expect(reports.slice(1)).toEqual(['healthy']);
    expect(counters.snapshot()).toMatchObject({ received: 10, sent: 10, inFlight: 0 });
    // A short failure, shorter than degraded_after_ms, is not reported.
    failUntil = clock.now + 2000;
    input.next(range(10, 10));
    await clock.advance(6000);
    expect(reports).toHaveLength(2);
    expect(counters.snapshot()).toMatchObject({ received: 20, sent: 20, inFlight: 0 });
  });

  it('consume() resolves after the input completes and every record is written', async () => {
    const { clock, transport, input, state, counters } = setup({ batch_max_records: 100, linger_ms: 50 });
    await clock.settle();
    input.next(range(0, 3));
    input.complete();
    await clock.settle();
    // Completion flushes without waiting for linger.
    expect(transport.sent.map((s) => [s.at, s.messages.length])).toEqual([[0, 3]]);
    expect(state().done).toBe(true);
    expect(counters.snapshot()).toMatchObject({ received: 3, sent: 3, inFlight: 0 });
  });

  it("consume() rejects with the input's error after writing what came before it", async () => {
    const clock = new Clock();
    const transport = new FakeTransport(clock);
    const ledger = new Ledger();
    const counters = ledger.stage('k', 'kafka', 'sink');
    const sink = new KafkaSink(
      { bootstrap_servers: ['127.0.0.1:9092'], topic: 't' },
      { id: 'k', logger: silentLogger(), ledger, counters, scheduler: clock.scheduler },
      transport,
    );
    const boom = new Error('source failed');
    const subject = new Subject<FlowBatch>();
    const consumed = sink.consume(subject);
    subject.next(range(0, 2));
    subject.error(boom);
    await expect(consumed).rejects.toBe(boom);
    expect(transport.written()).toEqual([0, 1]);
    await expect(sink.consume(from([]))).rejects.toThrow(
      'kafka sink: consume() was already called or the sink is closed',
    );
  });
});

// ----------------------------------------------------------------------------------------------
// Idempotence: the sink against a fake broker that keeps Kafka's producer state.

const require = createRequire(import.meta.url);
const { createErrorFromCode } = require('kafkajs/src/protocol/error.js') as {
  createErrorFromCode: (code: number) => Error & { type: string };
};

/**
 * What one send attempt meets: 'ok' (the broker answers), 'lose' (the broker writes what it
 * accepts, then the connection breaks before the answer), 'drop' (the connection breaks before the
 * broker sees the request), or a Kafka error code for every batch. A promise holds the attempt.
 */
type Fate = 'ok' | 'lose' | 'drop' | number;

/**
 * A one-topic broker with Kafka's producer state per partition (ProducerStateModel): it appends a
 * batch only in sequence, answers a resend of a recent batch as written, and keeps a log of the
 * record indexes each partition holds.
 */
class SequencedBroker implements KafkaTransport {
  readonly model = new ProducerStateModel();
  readonly logs = new Map<number, number[]>();
  /** Every batch of every attempt as it went out, and what the broker made of it. */
  readonly seen: {
    attempt: number;
    at: number;
    partition: number;
    header: BatchHeader;
    bytes: Buffer;
    verdict?: Verdict['kind'];
  }[] = [];
  readonly problems: string[] = [];
  partitionCount = 1;
  attempts = 0;
  producerIds = 0;
  /** Fails the n-th InitProducerId (1-based) with the error returned. */
  initFailure: (call: number) => Error | undefined = () => undefined;
  plan: (attempt: number) => Fate | Promise<Fate> = () => 'ok';
  private initCalls = 0;

  constructor(private readonly clock: Clock) {}

  connect(): Promise<void> {
    return Promise.resolve();
  }

  initProducerId(): Promise<ProducerIdentity> {
    const failure = this.initFailure(++this.initCalls);
    if (failure !== undefined) return Promise.reject(failure);
    this.producerIds++;
    return Promise.resolve({ producerId: BigInt(1000 + this.producerIds), producerEpoch: 0 });
  }

  partitions(): Promise<number> {
    return Promise.resolve(this.partitionCount);
  }

  async send(request: EncodedRequest): Promise<void> {
    const attempt = ++this.attempts;
    const at = this.clock.now;
    const batches = request.batches.filter((b) => !b.written);
    // The bytes as they went out: the sink may stamp its batches anew before the attempt ends.
    const out = batches.map((b) => Buffer.from(b.data));
    const fate = await this.plan(attempt);
    const failures: { partition: number; error: Error }[] = [];
    for (let i = 0; i < batches.length; i++) {
      const b = batches[i]!;
      const bytes = out[i]!;
      if (bytes.readUInt32BE(17) !== crc32cBitwise(bytes.subarray(21)))
        this.problems.push(`attempt ${attempt} partition ${b.partition}: bad CRC`);
      const seen: (typeof this.seen)[number] = {
        attempt,
        at,
        partition: b.partition,
        header: batchHeader(bytes),
        bytes,
      };
      this.seen.push(seen);
      if (fate === 'drop') {
        failures.push({
          partition: b.partition,
          error: new KafkaJSConnectionError('Connection error: socket hang up'),
        });
        continue;
      }
      if (typeof fate === 'number') {
        failures.push({ partition: b.partition, error: createErrorFromCode(fate) });
        continue;
      }
      const verdict = this.model.check('t', b.partition, bytes);
      seen.verdict = verdict.kind;
      if (verdict.kind === 'append') {
        const log = this.logs.get(b.partition) ?? [];
        this.logs.set(b.partition, log);
        for (const m of await decodeBatches([{ partition: b.partition, data: bytes }]))
          log.push((JSON.parse(m.value.toString()) as FlowRecord).flowStartMilliseconds - 1_700_000_000_000);
      }
      if (verdict.kind === 'refuse')
        failures.push({ partition: b.partition, error: createErrorFromCode(verdict.code) });
      else if (fate === 'lose')
        failures.push({
          partition: b.partition,
          error: new KafkaJSConnectionError('Connection error: socket closed'),
        });
      else b.written = true;
    }
    if (failures.length > 0) throw new ProduceError('t', failures);
  }

  disconnect(): Promise<void> {
    return Promise.resolve();
  }

  /** Producer id and base sequence of the batches the broker appended, in order. */
  appended(): [bigint, number][] {
    return this.seen
      .filter((s) => s.verdict === 'append')
      .map((s) => [s.header.producerId, s.header.baseSequence]);
  }
}

const indexes = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i);

/** A fate decided later: `settle(fate)` lets the held attempt go on. */
function held(): { fate: Promise<Fate>; settle: (fate: Fate) => void } {
  let settle!: (fate: Fate) => void;
  const fate = new Promise<Fate>((resolve) => (settle = resolve));
  return { fate, settle };
}

describe('kafka sink idempotence', () => {
  it('stamps every batch with the producer id and the next sequence of its partition, across requests', async () => {
    const {
      clock,
      transport: broker,
      counters,
      input,
      sink,
    } = setupWith((c) => new SequencedBroker(c), {
      batch_max_records: 10,
    });
    broker.partitionCount = 3;
    await clock.settle();
    input.next(range(0, 60));
    await clock.advance(100);
    expect(broker.attempts).toBe(6);
    for (let p = 0; p < 3; p++) {
      const headers = broker.seen.filter((s) => s.partition === p).map((s) => s.header);
      expect(headers.length).toBeGreaterThan(1);
      let next = 0;
      for (const h of headers) {
        expect(h).toEqual({ producerId: 1001n, producerEpoch: 0, baseSequence: next, count: h.count });
        next += h.count;
      }
    }
    expect([...broker.logs.values()].flat().sort((a, b) => a - b)).toEqual(indexes(0, 60));
    expect(broker.model.counts).toMatchObject({ appended: broker.seen.length, duplicates: 0, outOfOrder: 0 });
    expect(broker.problems).toEqual([]);
    expect(counters.snapshot()).toMatchObject({ received: 60, sent: 60, dropped: {}, inFlight: 0 });
    expect(sink.idempotence()).toEqual({ state: 'on', producerId: '1001', producerEpoch: 0, producerIds: 1 });
  });

  it('a retry after a lost response resends the same bytes, which the broker writes once; without idempotence, twice', async () => {
    for (const idempotence of [true, false]) {
      const {
        clock,
        transport: broker,
        counters,
        input,
        sink,
      } = setupWith((c) => new SequencedBroker(c), {
        batch_max_records: 10,
        retry_initial_ms: 100,
        idempotence,
      });
      broker.plan = (n) => (n === 1 ? 'lose' : 'ok');
      await clock.settle();
      input.next(range(0, 10));
      await clock.advance(1000);
      expect(broker.seen.map((s) => [s.attempt, s.at, s.verdict])).toEqual([
        [1, 0, 'append'],
        [2, 100, idempotence ? 'duplicate' : 'append'],
      ]);
      expect(broker.seen[1]!.bytes.equals(broker.seen[0]!.bytes)).toBe(true);
      expect(broker.seen[0]!.header).toMatchObject(
        idempotence ? { producerId: 1001n, baseSequence: 0 } : { producerId: -1n, baseSequence: -1 },
      );
      expect(broker.logs.get(0)).toEqual(
        idempotence ? indexes(0, 10) : [...indexes(0, 10), ...indexes(0, 10)],
      );
      // The sink counts each record sent once either way: only idempotence makes Kafka agree.
      expect(counters.snapshot()).toMatchObject({ received: 10, sent: 10, dropped: {}, inFlight: 0 });
      expect(sink.idempotence().state).toBe(idempotence ? 'on' : 'off');
    }
  });

  it('until the broker has taken a batch of a producer id on a partition, later batches of it wait: it would take any sequence from a producer it does not know', async () => {
    const {
      clock,
      transport: broker,
      counters,
      input,
    } = setupWith((c) => new SequencedBroker(c), {
      batch_max_records: 5,
      max_in_flight: 3,
      retry_initial_ms: 100,
    });
    const first = held();
    broker.plan = (n) => (n === 1 ? first.fate : 'ok');
    await clock.settle();
    input.next(range(0, 15));
    await clock.advance(500);
    // The first request is held; the other two have their sequences but do not go.
    expect(broker.attempts).toBe(1);
    // The held one never reached the broker; its retry does, then the others follow.
    first.settle('drop');
    await clock.advance(1000);
    expect(broker.seen.map((s) => [s.at, s.header.baseSequence, s.verdict])).toEqual([
      [0, 0, undefined],
      [600, 0, 'append'],
      [600, 5, 'append'],
      [600, 10, 'append'],
    ]);
    expect(broker.logs.get(0)).toEqual(indexes(0, 15));
    expect(broker.model.counts).toMatchObject({ appended: 3, outOfOrder: 0, duplicates: 0 });
    expect(counters.snapshot()).toMatchObject({ received: 15, sent: 15, dropped: {}, inFlight: 0 });
  });

  it('a batch that overtakes an earlier one of its partition is refused as out of order, and written after it', async () => {
    const {
      clock,
      transport: broker,
      counters,
      input,
    } = setupWith((c) => new SequencedBroker(c), {
      batch_max_records: 5,
      max_in_flight: 3,
      retry_initial_ms: 100,
    });
    // The second request is lost before the broker sees it; the third reaches it first.
    broker.plan = (n) => (n === 2 ? 'drop' : 'ok');
    await clock.settle();
    input.next(range(0, 15));
    await clock.advance(1000);
    expect(broker.seen.map((s) => [s.at, s.header.baseSequence, s.verdict])).toEqual([
      [0, 0, 'append'],
      [0, 5, undefined],
      [0, 10, 'refuse'],
      [100, 5, 'append'],
      [100, 10, 'append'],
    ]);
    expect(broker.logs.get(0)).toEqual(indexes(0, 15));
    expect(broker.model.counts).toMatchObject({ appended: 3, outOfOrder: 1, duplicates: 0 });
    expect(counters.snapshot()).toMatchObject({ received: 15, sent: 15, dropped: {}, inFlight: 0 });
  });

  it('after a batch is given up, the later batches of its partition go out under a new producer id and export continues', async () => {
    const {
      clock,
      transport: broker,
      counters,
      input,
      sink,
    } = setupWith((c) => new SequencedBroker(c), {
      batch_max_records: 10,
      max_in_flight: 4,
      retry_initial_ms: 100,
      retry_max_ms: 100,
    });
    const second = held();
    broker.plan = (n) => (n === 2 ? second.fate : 'ok');
    await clock.settle();
    input.next(range(0, 40));
    await clock.advance(150);
    // Requests 3 and 4 are refused as out of order behind request 2, which is held, and wait for it.
    expect(broker.seen.map((s) => [s.at, s.header.baseSequence, s.verdict])).toEqual([
      [0, 0, 'append'],
      [0, 20, 'refuse'],
      [0, 30, 'refuse'],
    ]);
    second.settle(KafkaCode.MESSAGE_TOO_LARGE); // no retry helps: request 2 is given up
    await clock.advance(1000);
    input.next(range(40, 10));
    await clock.advance(1000);
    expect(broker.seen.map((s) => [s.at, s.header.producerId, s.header.baseSequence, s.verdict])).toEqual([
      [0, 1001n, 0, 'append'],
      [0, 1001n, 20, 'refuse'],
      [0, 1001n, 30, 'refuse'],
      [0, 1001n, 10, undefined], // request 2: held from 0, refused at 150
      // Request 3 is now the oldest and still refused: the gap is for good. Request 4 went out
      // before that was known, so it goes once more before it is taken as final too.
      [150, 1001n, 20, 'refuse'],
      [150, 1001n, 30, 'refuse'],
      [150, 1001n, 30, 'refuse'],
      // After the backoff, under a new producer id; request 4 once request 3 is acknowledged.
      [250, 1002n, 0, 'append'],
      [250, 1002n, 10, 'append'],
      [1150, 1002n, 20, 'append'],
    ]);
    expect(broker.logs.get(0)).toEqual([...indexes(0, 10), ...indexes(20, 30)]);
    // Under producer id 1002 the partition starts again from sequence 0.
    expect(broker.appended()).toEqual([
      [1001n, 0],
      [1002n, 0],
      [1002n, 10],
      [1002n, 20],
    ]);
    expect(broker.producerIds).toBe(2);
    expect(broker.model.counts.duplicates).toBe(0);
    expect(broker.problems).toEqual([]);
    expect(counters.snapshot()).toMatchObject({
      received: 50,
      sent: 40,
      dropped: { sink_failed: 10 },
      inFlight: 0,
    });
    expect(sink.idempotence()).toMatchObject({ state: 'on', producerId: '1002', producerIds: 2 });
  });

  it('UNKNOWN_PRODUCER_ID: the batch goes again under a new producer id', async () => {
    const {
      clock,
      transport: broker,
      counters,
      input,
    } = setupWith((c) => new SequencedBroker(c), {
      batch_max_records: 10,
      retry_initial_ms: 100,
    });
    broker.plan = (n) => (n === 1 ? KafkaCode.UNKNOWN_PRODUCER_ID : 'ok');
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(1000);
    expect(broker.seen.map((s) => [s.at, s.header.producerId, s.header.baseSequence])).toEqual([
      [0, 1001n, 0],
      [100, 1002n, 0],
    ]);
    expect(broker.logs.get(0)).toEqual(indexes(0, 10));
    expect(counters.snapshot()).toMatchObject({ received: 10, sent: 10, dropped: {}, inFlight: 0 });
  });

  it('InitProducerId refused: one warning, records written without producer id, status unavailable', async () => {
    const logger = silentLogger();
    const warn = vi.spyOn(logger, 'warn');
    const {
      clock,
      transport: broker,
      counters,
      input,
      sink,
    } = setupWith(
      (c) => {
        const b = new SequencedBroker(c);
        b.initFailure = () => createErrorFromCode(31); // CLUSTER_AUTHORIZATION_FAILED
        return b;
      },
      { batch_max_records: 10, retry_initial_ms: 100 },
      logger,
    );
    broker.plan = (n) => (n === 1 ? KafkaCode.MESSAGE_TOO_LARGE : 'ok');
    await clock.settle();
    input.next(range(0, 20));
    await clock.advance(1000);
    expect(broker.seen.map((s) => s.header.producerId)).toEqual([-1n, -1n]);
    expect(broker.logs.get(0)).toEqual(indexes(10, 10));
    expect(counters.snapshot()).toMatchObject({ received: 20, sent: 10, dropped: { sink_failed: 10 } });
    expect(sink.idempotence()).toEqual({
      state: 'unavailable',
      producerIds: 0,
      reason:
        'the brokers refused a producer id (CLUSTER_AUTHORIZATION_FAILED: Cluster authorization failed)',
    });
    const warnings = warn.mock.calls
      .map((c) => c[1])
      .filter((m) => typeof m === 'string' && m.includes('producer id'));
    expect(warnings).toHaveLength(1);
  });

  it('waits for a producer id while the brokers cannot give one, and sends nothing without it', async () => {
    const {
      clock,
      transport: broker,
      counters,
      input,
      sink,
    } = setupWith(
      (c) => {
        const b = new SequencedBroker(c);
        b.initFailure = (n) =>
          n <= 2 ? new KafkaJSConnectionError('Connection error: ECONNREFUSED') : undefined;
        return b;
      },
      { batch_max_records: 10, retry_initial_ms: 100 },
    );
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(299);
    expect(broker.seen).toEqual([]);
    expect(sink.idempotence()).toEqual({ state: 'pending', producerIds: 0 });
    await clock.advance(1);
    expect(broker.seen.map((s) => [s.at, s.header.producerId])).toEqual([[300, 1001n]]);
    expect(counters.snapshot()).toMatchObject({ received: 10, sent: 10, dropped: {} });
  });

  it('drops a request as sink_failed when no new producer id comes before its delivery timeout', async () => {
    const {
      clock,
      transport: broker,
      counters,
      input,
      sink,
    } = setupWith((c) => new SequencedBroker(c), {
      batch_max_records: 10,
      retry_initial_ms: 100,
      retry_max_ms: 100,
      delivery_timeout_ms: 1000,
    });
    broker.initFailure = (n) =>
      n >= 2 ? new KafkaJSConnectionError('Connection error: ECONNREFUSED') : undefined;
    broker.plan = (n) => (n === 1 ? KafkaCode.MESSAGE_TOO_LARGE : 'ok');
    await clock.settle();
    input.next(range(0, 10));
    await clock.advance(500);
    input.next(range(10, 10));
    await clock.advance(999);
    expect(counters.snapshot()).toMatchObject({ sent: 0, dropped: { sink_failed: 10 }, inFlight: 10 });
    await clock.advance(1);
    expect(counters.snapshot()).toMatchObject({
      received: 20,
      sent: 0,
      dropped: { sink_failed: 20 },
      inFlight: 0,
    });
    expect(broker.attempts).toBe(1);
    await sink.close();
  });

  it('turns idempotence on by default only where acks and max_in_flight allow it, and refuses it asked for against them', () => {
    const ledger = new Ledger();
    const context = { id: 'k', logger: silentLogger(), ledger, counters: ledger.stage('k', 'kafka', 'sink') };
    const base = { bootstrap_servers: ['k:9092'], topic: 'f' };
    const state = (config: Partial<KafkaSinkConfig>): string =>
      (kafkaModule.build({ ...base, ...config }, context) as KafkaSink).idempotence().state;
    expect(state({})).toBe('pending');
    expect(state({ acks: 1 })).toBe('off');
    expect(state({ max_in_flight: 6 })).toBe('off');
    expect(state({ acks: 0, max_in_flight: 64, idempotence: false })).toBe('off');
    expect(() => kafkaModule.build({ ...base, max_in_flight: 6, idempotence: true }, context)).toThrow(
      'kafka sink: max_in_flight (6) is above 5, the most requests a broker keeps in order for an idempotent producer; lower it or set idempotence to false',
    );
    expect(() => kafkaModule.build({ ...base, acks: 1, idempotence: true }, context)).toThrow(
      'kafka sink: idempotence needs acks -1 (every in-sync replica), not 1; set acks to -1 or idempotence to false',
    );
    // The schema leaves idempotence unset, so the sink can tell "not said" from "asked for".
    const registry = new ComponentRegistry([kafkaModule]);
    const validated = registry.validate(kafkaModule, base).config;
    expect(validated.max_in_flight).toBe(4);
    expect('idempotence' in validated).toBe(false);
  });
});

describe('kafka sink module', () => {
  it('has a strict schema that accepts the example and fills the defaults', () => {
    const registry = new ComponentRegistry([kafkaModule]);
    const ok = registry.validate(kafkaModule, { bootstrap_servers: ['k:9092'], topic: 'flows' });
    expect(ok.ok).toBe(true);
    expect(ok.config).toMatchObject({
      encoding: 'json',
      records_per_message: 1,
      key: 'flow',
      acks: -1,
      compression: 'none',
    });
    expect(registry.validate(kafkaModule, kafkaModule.example as unknown as Record<string, unknown>).ok).toBe(
      true,
    );
    const bad = registry.validate(kafkaModule, {
      bootstrap_servers: ['k:9092'],
      topic: 'f',
      compression: 'snappy',
      linger: 5,
    });
    expect(bad.ok).toBe(false);
    expect(bad.errors.map((e) => e.keyword).sort()).toEqual(['additionalProperties', 'enum']);
  });

  it('reads the tls files once into the connection options', () => {
    const dir = makeTempDir('rxsink');
    const file = (name: string, text: string): string => {
      fs.writeFileSync(path.join(dir, name), text);
      return path.join(dir, name);
    };
    const options = tlsConnectionOptions({
      ca_file: file('ca.pem', 'CA'),
      cert_file: file('cert.pem', 'CERT'),
      key_file: file('key.pem', 'KEY'),
      insecure_skip_verify: true,
      server_name: 'kafka.example',
    });
    expect(options).toEqual({
      ca: [Buffer.from('CA')],
      cert: Buffer.from('CERT'),
      key: Buffer.from('KEY'),
      rejectUnauthorized: false,
      servername: 'kafka.example',
    });
    expect(tlsConnectionOptions({})).toEqual({ rejectUnauthorized: true });
  });

  it('fails to build with a tls file that cannot be read, naming the option and the path', () => {
    const ledger = new Ledger();
    const context = { id: 'k', logger: silentLogger(), ledger, counters: ledger.stage('k', 'kafka', 'sink') };
    expect(() =>
      kafkaModule.build(
        { bootstrap_servers: ['k:9092'], topic: 'f', tls: { ca_file: '/nonexistent/ca.pem' } },
        context,
      ),
    ).toThrow(
      "kafka sink tls.ca_file /nonexistent/ca.pem: ENOENT: no such file or directory, open '/nonexistent/ca.pem'; check the path and its permissions",
    );
    expect(() =>
      kafkaModule.build({ bootstrap_servers: ['k:9092'], topic: 'f', tls: { cert_file: '/x.pem' } }, context),
    ).toThrow('kafka sink tls: cert_file and key_file go together; set both or neither');
  });
});
