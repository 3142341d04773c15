import fs from 'node:fs';
import { Kafka, logLevel } from 'kafkajs';
import protobuf from 'protobufjs';
import { Subject, from } from 'rxjs';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import type { ComponentContext } from '../../src/component.js';
import { KafkaApiKey, KafkaErrorCode, type KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import type { FlowBatch, FlowRecord } from '../../src/records/flow.js';
import kafkaModule, { type KafkaSink, type KafkaSinkConfig } from '../../src/sinks/kafka.js';
import { flowKey } from '../../src/sinks/kafka/encode.js';
import { cleanup } from '../fixtures/cleanup.js';
import { readWithKcat, startKafkaMock } from '../fixtures/kafka.js';
import { IdempotentBrokerProxy, KafkaCode } from '../fixtures/kafka-idempotent-broker.js';
import { run } from '../fixtures/netns.js';
import { describeWith } from '../fixtures/privilege.js';

/**
 * The kafka sink against a real Kafka-protocol broker (librdkafka's mock cluster in its own
 * process), read back with kcat (JSON) or a kafkajs consumer (protobuf bytes).
 */

const PROTO = new URL('../../src/sinks/flow.proto', import.meta.url);
const root = protobuf.parse(fs.readFileSync(PROTO, 'utf8'), { keepCase: true }).root;
const FlowRecordType = root.lookupType('rxflow.v1.FlowRecord');
const FlowBatchType = root.lookupType('rxflow.v1.FlowBatch');

/**
 * Record i of a test run; records 2k and 2k+1 are the two directions of one flow. Every few carry
 * IPv6, ICMP or tunnel fields, so each encoding is exercised on the optional fields too.
 */
function record(i: number): FlowRecord {
  const flow = Math.floor(i / 2);
  const reverse = i % 2 === 1;
  const v6 = flow % 5 === 3;
  const a = v6 ? `2001:db8::${(flow % 200) + 1}` : `10.1.${flow % 250}.1`;
  const b = v6 ? `2001:db8:1::${(flow % 100) + 1}` : `10.2.${(flow * 7) % 250}.2`;
  const pa = 1024 + (flow % 50000);
  const pb = flow % 3 === 0 ? 443 : 53;
  const r: FlowRecord = {
    ipVersion: v6 ? 6 : 4,
    sourceTransportPort: reverse ? pb : pa,
    destinationTransportPort: reverse ? pa : pb,
    protocolIdentifier: flow % 3 === 0 ? 6 : 17,
    octetDeltaCount: 1000 + i * 3,
    packetDeltaCount: 1 + (i % 17),
    // Unique per record: how the tests match what they read to what they sent.
    flowStartMilliseconds: 1_700_000_000_000 + i,
    flowEndMilliseconds: 1_700_000_000_500 + i,
    tcpControlBits: flow % 3 === 0 ? 0x12 : 0,
    ipDiffServCodePoint: i % 4 === 0 ? 46 : 0,
    ingressInterface: 2 + (i % 3),
    flowDirection: reverse ? 1 : 0,
    sourceMacAddress: reverse ? '02:00:00:00:00:02' : '02:00:00:00:00:01',
    destinationMacAddress: reverse ? '02:00:00:00:00:01' : '02:00:00:00:00:02',
    ethernetType: v6 ? 0x86dd : 0x0800,
    interfaceName: `eth${i % 3}`,
  };
  if (v6) {
    r.sourceIPv6Address = reverse ? b : a;
    r.destinationIPv6Address = reverse ? a : b;
  } else {
    r.sourceIPv4Address = reverse ? b : a;
    r.destinationIPv4Address = reverse ? a : b;
  }
  if (flow % 11 === 4) {
    r.encapsulationType = 'vxlan';
    r.virtualNetworkIdentifier = 4242;
    r.tunnelSourceIPAddress = '192.0.2.1';
    r.tunnelDestinationIPAddress = '192.0.2.2';
    r.tunnelSourceTransportPort = 49152 + (flow % 1000);
    r.tunnelDestinationTransportPort = 4789;
    r.flowEndReason = 2;
    r.duplicate = true;
  }
  if (flow % 13 === 6 && !v6) {
    r.protocolIdentifier = 1;
    r.sourceTransportPort = 0;
    r.destinationTransportPort = 0;
    r.icmpTypeIPv4 = reverse ? 0 : 8;
    r.icmpCodeIPv4 = 0;
    r.samplingInterval = 10;
  }
  return r;
}

function records(from: number, count: number): FlowRecord[] {
  return Array.from({ length: count }, (_, k) => record(from + k));
}

function batches(all: FlowRecord[], size: number): FlowBatch[] {
  const out: FlowBatch[] = [];
  for (let i = 0; i < all.length; i += size) out.push(all.slice(i, i + size));
  return out;
}

const indexOf = (r: { flowStartMilliseconds: number }): number => r.flowStartMilliseconds - 1_700_000_000_000;

function contextFor(id: string, ledger = new Ledger(), logger = silentLogger()): ComponentContext {
  return { id, logger, ledger, counters: ledger.stage(id, 'kafka', 'sink') };
}

interface RawMessage {
  partition: number;
  key: string | null;
  value: Buffer;
}

/** Every message of a topic, as bytes: consumes until the count reaches the topic's high watermarks. */
async function readRaw(brokers: string[], topic: string): Promise<RawMessage[]> {
  const kafka = new Kafka({ clientId: 'rxflow-test-raw', brokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const offsets = await admin.fetchTopicOffsets(topic);
  await admin.disconnect();
  const total = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
  const consumer = kafka.consumer({ groupId: `rxflow-raw-${process.pid}-${topic}` });
  const out: RawMessage[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      if (total === 0) resolve();
      const timer = setTimeout(
        () => reject(new Error(`read ${topic}: ${out.length} of ${total} messages in 20 s`)),
        20_000,
      );
      consumer
        .run({
          eachMessage: ({ partition, message }) => {
            out.push({
              partition,
              key: message.key?.toString('utf8') ?? null,
              value: message.value ?? Buffer.alloc(0),
            });
            if (out.length >= total) {
              clearTimeout(timer);
              resolve();
            }
            return Promise.resolve();
          },
        })
        .catch(reject);
    });
  } finally {
    await consumer.disconnect();
  }
  return out;
}

/**
 * The codecs of the record batches a topic holds, as librdkafka names them when it fetches them
 * (kcat's `-d msg` log has a line per fetched message set, ending in its codec).
 */
async function storedCodecs(bootstrap: string, topic: string): Promise<string[]> {
  const { stderr } = await run(
    'kcat',
    ['-C', '-b', bootstrap, '-t', topic, '-o', 'beginning', '-e', '-q', '-d', 'msg', '-f', ''],
    { timeoutMs: 20_000 },
  );
  const codecs = [...stderr.matchAll(/Enqueue \d+ message\(s\) .* aborted msgsets, (\w+)\)/g)].map(
    (m) => m[1]!,
  );
  return [...new Set(codecs)];
}

/** proto3 has no absent repeated field: a record without observedInterfaces decodes with [], dropped here. */
function withoutEmptyLists(r: Record<string, unknown>): Record<string, unknown> {
  if (Array.isArray(r.observedInterfaces) && r.observedInterfaces.length === 0) delete r.observedInterfaces;
  return r;
}

function decodeRecord(bytes: Uint8Array, type = FlowRecordType): Record<string, unknown> {
  const o = type.toObject(type.decode(bytes), { longs: Number, defaults: true });
  if (Array.isArray(o.records)) for (const r of o.records as Record<string, unknown>[]) withoutEmptyLists(r);
  return withoutEmptyLists(o);
}

/** Runs a sink over `input` to completion and closes it. */
async function runSink(config: KafkaSinkConfig, input: FlowBatch[], ledger = new Ledger()): Promise<Ledger> {
  const sink = kafkaModule.build(config, contextFor('out', ledger));
  await sink.consume(from(input));
  await sink.close();
  return ledger;
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Both directions of every flow went to one partition, and the flows spread over several. */
function expectFlowsKeptTogether(placed: { index: number; partition: number }[], partitions: number): void {
  const byFlow = new Map<number, Set<number>>();
  for (const { index, partition } of placed) {
    const flow = Math.floor(index / 2);
    byFlow.set(flow, (byFlow.get(flow) ?? new Set()).add(partition));
  }
  for (const [flow, parts] of byFlow)
    expect({ flow, partitions: [...parts] }).toEqual({ flow, partitions: [...parts].slice(0, 1) });
  expect(new Set(placed.map((p) => p.partition)).size).toBe(partitions);
}

describeWith({ commands: ['kcat'] }, 'kafka sink against the mock cluster', () => {
  let cluster: KafkaMockCluster;

  beforeAll(async () => {
    cluster = await startKafkaMock();
  });

  afterAll(async () => {
    await cluster?.stop();
    await cleanup.dispose();
  });

  const base = (topic: string): KafkaSinkConfig => ({
    bootstrap_servers: cluster.brokers,
    topic,
    linger_ms: 2,
  });

  it('writes K JSON records as K messages with IPFIX names, keyed so both directions share a partition', async () => {
    await cluster.createTopic('json-single', 4);
    const sent = records(0, 3000);
    const ledger = await runSink(base('json-single'), batches(sent, 128));

    const read = await readWithKcat(cluster.bootstrap, 'json-single');
    expect(read).toHaveLength(3000);
    const got = read.map((m) => JSON.parse(m.value!) as FlowRecord).sort((x, y) => indexOf(x) - indexOf(y));
    expect(got).toEqual(sent);
    // The key names the flow by its two endpoints in a fixed order, whichever way the record goes.
    const byIndex = new Map(read.map((m) => [indexOf(JSON.parse(m.value!) as FlowRecord), m]));
    expect(byIndex.get(0)!.key).toBe('6/10.1.0.1:1024/10.2.0.2:443');
    expect(byIndex.get(1)!.key).toBe('6/10.1.0.1:1024/10.2.0.2:443');
    expect(byIndex.get(17)!.key).toBe('17/[2001:db8:1::9]:53/[2001:db8::9]:1032');
    expectFlowsKeptTogether(
      read.map((m) => ({ index: indexOf(JSON.parse(m.value!) as FlowRecord), partition: m.partition })),
      4,
    );
    expect(ledger.stage('out', 'kafka').snapshot()).toEqual({
      id: 'out',
      type: 'kafka',
      received: 3000,
      sent: 3000,
      dropped: {},
      inFlight: 0,
    });
  });

  it('writes protobuf FlowRecord messages that decode with the committed flow.proto to the exact records', async () => {
    await cluster.createTopic('pb-single', 3);
    const sent = records(0, 2000);
    await runSink({ ...base('pb-single'), encoding: 'protobuf' }, batches(sent, 100));

    const read = await readRaw(cluster.brokers, 'pb-single');
    expect(read).toHaveLength(2000);
    const got = read
      .map((m) => decodeRecord(m.value))
      .sort((x, y) => indexOf(x as never) - indexOf(y as never));
    // proto3 reads the always-present fields back with their zero values, and optional ones only when set.
    expect(got).toEqual(sent);
    expectFlowsKeptTogether(
      read.map((m) => ({ index: indexOf(decodeRecord(m.value) as never), partition: m.partition })),
      3,
    );
  });

  const contentTypes = [
    { encoding: 'json', perMessage: 1, compression: 'none', type: 'application/json' },
    { encoding: 'json', perMessage: 50, compression: 'lz4', type: 'application/json' },
    {
      encoding: 'protobuf',
      perMessage: 1,
      compression: 'none',
      type: 'application/x-protobuf; messageType=rxflow.v1.FlowRecord',
    },
    {
      encoding: 'protobuf',
      perMessage: 40,
      compression: 'gzip',
      type: 'application/x-protobuf; messageType=rxflow.v1.FlowBatch',
    },
  ] as const;

  it.each(contentTypes)(
    'every $encoding message ($perMessage per message, $compression) carries content-type: $type, as kcat reads it',
    async ({ encoding, perMessage, compression, type }) => {
      const topic = `ct-${encoding}-${perMessage}`;
      await cluster.createTopic(topic, 2);
      const sent = records(0, 400);
      await runSink(
        { ...base(topic), encoding, records_per_message: perMessage, compression },
        batches(sent, 100),
      );
      // kcat prints each message's headers (key=value) and its payload length: one line each.
      const { stdout } = await run(
        'kcat',
        [
          '-C',
          '-b',
          cluster.bootstrap,
          '-t',
          topic,
          '-X',
          'check.crcs=true',
          '-o',
          'beginning',
          '-e',
          '-q',
        ].concat(['-f', '%h|%S\n']),
        { timeoutMs: 20_000 },
      );
      const lines = stdout.split('\n').filter((l) => l !== '');
      if (perMessage === 1) expect(lines).toHaveLength(400);
      const headers = new Set(lines.map((l) => l.slice(0, l.lastIndexOf('|'))));
      expect([...headers]).toEqual([`content-type=${type}`]);
      // The values are what they were without the header.
      if (encoding === 'json') {
        const read = await readWithKcat(cluster.bootstrap, topic);
        expect(read).toHaveLength(lines.length);
        const got = read.flatMap((m) => {
          const v = JSON.parse(m.value!) as FlowRecord | FlowRecord[];
          return Array.isArray(v) ? v : [v];
        });
        expect(got.sort((x, y) => indexOf(x) - indexOf(y))).toEqual(sent);
      } else {
        const read = await readRaw(cluster.brokers, topic);
        expect(read).toHaveLength(lines.length);
        const got = read.flatMap((m) =>
          perMessage === 1
            ? [decodeRecord(m.value)]
            : (decodeRecord(m.value, FlowBatchType) as { records: Record<string, unknown>[] }).records,
        );
        expect(got.sort((x, y) => indexOf(x as never) - indexOf(y as never))).toEqual(sent);
      }
    },
  );

  for (const compression of ['none', 'gzip', 'lz4', 'zstd'] as const) {
    it(`writes record batches with compression ${compression} that kcat reads back exactly, with acks 1 and 0`, async () => {
      for (const acks of [1, 0] as const) {
        const topic = `${compression}-acks${acks}`;
        await cluster.createTopic(topic, 2);
        const sent = records(0, 700);
        // Idempotence needs acks -1.
        const ledger = await runSink(
          { ...base(topic), compression, acks, idempotence: false },
          batches(sent, 100),
        );
        const read = await readWithKcat(cluster.bootstrap, topic);
        expect(read).toHaveLength(700);
        const got = read.map((m) => JSON.parse(m.value!) as FlowRecord);
        expect(read.map((m, i) => m.key === flowKey(got[i]!)).filter((same) => !same)).toEqual([]);
        expect(got.sort((x, y) => indexOf(x) - indexOf(y))).toEqual(sent);
        // librdkafka names no compression "uncompressed".
        expect(await storedCodecs(cluster.bootstrap, topic)).toEqual([
          compression === 'none' ? 'uncompressed' : compression,
        ]);
        expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
          received: 700,
          sent: 700,
          dropped: {},
        });
      }
    });
  }

  it('writes lz4 and zstd batches of JSON arrays, hundreds of kilobytes each (compressed on worker threads), that kcat reads back exactly', async () => {
    for (const compression of ['lz4', 'zstd'] as const) {
      const topic = `${compression}-arrays`;
      await cluster.createTopic(topic, 2);
      const sent = records(0, 8000);
      const ledger = await runSink(
        {
          ...base(topic),
          compression,
          records_per_message: 500,
          batch_max_records: 4000,
          batch_max_bytes: 4_000_000,
        },
        batches(sent, 1000),
      );
      const read = await readWithKcat(cluster.bootstrap, topic);
      const got = read.flatMap((m) => JSON.parse(m.value!) as FlowRecord[]);
      expect(got.sort((x, y) => indexOf(x) - indexOf(y))).toEqual(sent);
      expect(await storedCodecs(cluster.bootstrap, topic)).toEqual([compression]);
      expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
        received: 8000,
        sent: 8000,
        dropped: {},
      });
    }
  });

  it('writes JSON arrays of records_per_message records, grouped so both directions share a partition', async () => {
    await cluster.createTopic('json-batch', 4);
    const sent = records(0, 5000);
    await runSink({ ...base('json-batch'), records_per_message: 100 }, batches(sent, 250));

    const read = await readWithKcat(cluster.bootstrap, 'json-batch');
    const placed: { index: number; partition: number }[] = [];
    const got: FlowRecord[] = [];
    for (const m of read) {
      expect(m.key).toBeNull();
      const arr = JSON.parse(m.value!) as FlowRecord[];
      expect(arr.length).toBeGreaterThan(0);
      expect(arr.length).toBeLessThanOrEqual(100);
      for (const r of arr) {
        got.push(r);
        placed.push({ index: indexOf(r), partition: m.partition });
      }
    }
    expect(got.sort((x, y) => indexOf(x) - indexOf(y))).toEqual(sent);
    expectFlowsKeptTogether(placed, 4);
  });

  it('writes protobuf FlowBatch messages that decode with the committed flow.proto', async () => {
    await cluster.createTopic('pb-batch', 2);
    const sent = records(0, 4000);
    await runSink(
      { ...base('pb-batch'), encoding: 'protobuf', records_per_message: 500 },
      batches(sent, 1000),
    );

    const read = await readRaw(cluster.brokers, 'pb-batch');
    const got: Record<string, unknown>[] = [];
    const placed: { index: number; partition: number }[] = [];
    for (const m of read) {
      const batch = decodeRecord(m.value, FlowBatchType) as {
        records: Record<string, unknown>[];
      };
      expect(batch.records.length).toBeLessThanOrEqual(500);
      for (const r of batch.records) {
        got.push(r);
        placed.push({ index: indexOf(r as never), partition: m.partition });
      }
    }
    expect(got.sort((x, y) => indexOf(x as never) - indexOf(y as never))).toEqual(sent);
    expectFlowsKeptTogether(placed, 2);
  });

  it('retries partitions the broker answers with a retriable error and writes every record exactly once', async () => {
    await cluster.createTopic('retriable', 3);
    // The next three produce requests fail: the leader moved, then not enough replicas.
    await cluster.pushRequestErrors(KafkaApiKey.Produce, 2, KafkaErrorCode.NOT_LEADER_OR_FOLLOWER);
    await cluster.pushRequestErrors(KafkaApiKey.Produce, 1, KafkaErrorCode.NOT_ENOUGH_REPLICAS);
    const sent = records(0, 600);
    const ledger = await runSink(
      { ...base('retriable'), retries: 5, retry_initial_ms: 10, retry_max_ms: 50 },
      batches(sent, 100),
    );
    const read = await readWithKcat(cluster.bootstrap, 'retriable');
    const got = read.map((m) => JSON.parse(m.value!) as FlowRecord).sort((x, y) => indexOf(x) - indexOf(y));
    expect(got).toEqual(sent);
    expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({ received: 600, sent: 600, dropped: {} });
  });

  it('counts a request the broker refuses for good as sink_failed at once, and keeps writing the next', async () => {
    await cluster.createTopic('refused', 1);
    await cluster.pushRequestErrors(KafkaApiKey.Produce, 1, KafkaErrorCode.TOPIC_AUTHORIZATION_FAILED);
    const ledger = new Ledger();
    const sink = kafkaModule.build(
      {
        ...base('refused'),
        batch_max_records: 50,
        max_in_flight: 1,
        retries: 5,
        delivery_timeout_ms: 600_000,
      },
      contextFor('out', ledger),
    );
    // A refusal ends the request's attempts; were it retried, it would hold the test until the
    // delivery timeout, past the test's own.
    await sink.consume(from(batches(records(0, 100), 50)));
    await sink.close();
    const read = await readWithKcat(cluster.bootstrap, 'refused');
    expect(read.map((m) => indexOf(JSON.parse(m.value!) as FlowRecord))).toEqual(
      Array.from({ length: 50 }, (_, i) => 50 + i),
    );
    expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
      received: 100,
      sent: 50,
      dropped: { sink_failed: 50 },
    });
  });

  it('with partitions led by three brokers, sends each its own partitions and every record arrives once', async () => {
    const three = await startKafkaMock({ brokers: 3 });
    try {
      await three.createTopic('spread', 6);
      const sent = records(0, 3000);
      const ledger = await runSink(
        { ...base('spread'), bootstrap_servers: three.brokers, batch_max_records: 500 },
        batches(sent, 250),
      );
      const read = await readWithKcat(three.bootstrap, 'spread');
      const got = read.map((m) => JSON.parse(m.value!) as FlowRecord).sort((x, y) => indexOf(x) - indexOf(y));
      expect(got).toEqual(sent);
      expectFlowsKeptTogether(
        read.map((m) => ({ index: indexOf(JSON.parse(m.value!) as FlowRecord), partition: m.partition })),
        6,
      );
      expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
        received: 3000,
        sent: 3000,
        dropped: {},
      });
    } finally {
      await three.stop();
    }
  });

  it('through a 10 s broker outage every record ends up in Kafka or counted as dropped, and nothing throws', async () => {
    await cluster.createTopic('outage', 2);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const ledger = new Ledger();
    const context = contextFor('out', ledger);
    const counters = context.counters;
    const sink = kafkaModule.build(
      {
        ...base('outage'),
        buffer_max_records: 4000,
        delivery_timeout_ms: 6000,
        retry_initial_ms: 50,
        retry_max_ms: 500,
        retries: 1,
        request_timeout_ms: 2000,
        connection_timeout_ms: 500,
      },
      context,
    );
    const input = new Subject<FlowBatch>();
    let consumeFailed: unknown;
    const consumed = sink.consume(input).catch((err: unknown) => {
      consumeFailed = err;
    });
    // 100 records every 50 ms, from a timer: the pipeline keeps pushing through the outage.
    let next = 0;
    const feeder = setInterval(() => {
      input.next(records(next, 100));
      next += 100;
    }, 50);
    try {
      await waitFor('records written before the outage', () => counters.sent >= 1000);
      await cluster.brokerDown(1);
      const sentAtDown = counters.sent;
      await new Promise((r) => setTimeout(r, 10_000));
      await cluster.brokerUp(1);
      // Something failed or overflowed while the broker was away, and writing resumes after.
      expect(
        (counters.dropped.get('sink_failed') ?? 0) + (counters.dropped.get('sink_buffer_full') ?? 0),
      ).toBeGreaterThan(0);
      const sentAtUp = counters.sent;
      await waitFor('records written after the outage', () => counters.sent >= sentAtUp + 1000);
      expect(sentAtDown).toBeGreaterThan(0);
    } finally {
      clearInterval(feeder);
    }
    input.complete();
    await consumed;
    await sink.close();
    process.off('unhandledRejection', onUnhandled);

    expect(consumeFailed).toBeUndefined();
    expect(unhandled).toEqual([]);
    const read = await readWithKcat(cluster.bootstrap, 'outage');
    const snap = ledger.stage('out', 'kafka').snapshot();
    const dropped = Object.values(snap.dropped).reduce((a, b) => a + b, 0);
    expect(snap.received).toBe(next);
    expect(snap.inFlight).toBe(0);
    // The exact account: what Kafka holds plus what the sink says it dropped is what it was given.
    expect({ inKafka: read.length, dropped, total: read.length + dropped }).toEqual({
      inKafka: snap.sent,
      dropped,
      total: next,
    });
    const indexes = read.map((m) => indexOf(JSON.parse(m.value!) as FlowRecord));
    expect(new Set(indexes).size).toBe(read.length);
    // Records waited longer than delivery_timeout_ms (sink_failed) and the buffer overflowed (sink_buffer_full).
    expect(Object.keys(snap.dropped).sort()).toEqual(['sink_buffer_full', 'sink_failed']);
  }, 90_000);

  it('holds at most buffer_max_records while the broker is away: drop_newest keeps the first, drop_oldest the last', async () => {
    for (const [topic, whenFull, kept] of [
      ['tiny-newest', 'drop_newest', records(0, 10)],
      ['tiny-oldest', 'drop_oldest', records(90, 10)],
    ] as const) {
      await cluster.createTopic(topic, 1);
      await cluster.brokerDown(1);
      const ledger = new Ledger();
      const context = contextFor('out', ledger);
      const sink = kafkaModule.build(
        {
          ...base(topic),
          buffer_max_records: 10,
          when_full: whenFull,
          retry_initial_ms: 50,
          retry_max_ms: 200,
          connection_timeout_ms: 300,
        },
        context,
      );
      const consumed = sink.consume(from(batches(records(0, 100), 7)));
      expect(context.counters.snapshot()).toMatchObject({
        received: 100,
        sent: 0,
        dropped: { sink_buffer_full: 90 },
        inFlight: 10,
      });
      await cluster.brokerUp(1);
      await consumed;
      await sink.close();
      expect(context.counters.snapshot()).toMatchObject({
        received: 100,
        sent: 10,
        dropped: { sink_buffer_full: 90 },
        inFlight: 0,
      });
      const read = await readWithKcat(cluster.bootstrap, topic);
      expect(read.map((m) => JSON.parse(m.value!) as FlowRecord)).toEqual(kept);
    }
  }, 60_000);
});

describeWith({ commands: ['kcat'] }, 'kafka sink idempotence against the mock cluster', () => {
  // The mock checks sequences only for transactional producers, so the sink reaches it through
  // IdempotentBrokerProxy, which answers Produce requests as a Kafka broker does for an idempotent
  // producer and injects the faults. kcat reads the topics from the mock itself.
  let cluster: KafkaMockCluster;
  let proxy: IdempotentBrokerProxy | undefined;

  beforeAll(async () => {
    cluster = await startKafkaMock();
  });

  afterAll(async () => {
    await proxy?.stop();
    await cluster?.stop();
    await cleanup.dispose();
  });

  /** A fresh proxy for each run: its fault plan and counts are per run. */
  const through = async (): Promise<IdempotentBrokerProxy> => {
    await proxy?.stop();
    proxy = await IdempotentBrokerProxy.start(cluster.brokers);
    return proxy;
  };

  const config = (topic: string, brokers: string[]): KafkaSinkConfig => ({
    bootstrap_servers: brokers,
    topic,
    linger_ms: 2,
    batch_max_records: 200,
    request_timeout_ms: 500,
    retry_initial_ms: 50,
    retry_max_ms: 200,
  });

  const indexesRead = async (topic: string): Promise<number[]> =>
    (await readWithKcat(cluster.bootstrap, topic)).map((m) => indexOf(JSON.parse(m.value!) as FlowRecord));

  it('a produce answer lost with its connection, or later than request_timeout_ms: the broker takes the retry as a duplicate and the topic holds every record once', async () => {
    for (const maxInFlight of [1, 5]) {
      const topic = `idem-lost-${maxInFlight}`;
      await cluster.createTopic(topic, 3);
      const broker = await through();
      // Request 2's answer is lost with its connection after the broker wrote it; the answer to
      // the next request written from 5 on comes 1.5 s late, past the 500 ms request timeout.
      broker.faults = [
        { at: 2, fault: 'lose' },
        { at: 5, fault: { delayMs: 1500 } },
      ];
      const sent = records(0, 3000);
      const ledger = await runSink(
        { ...config(topic, broker.brokers), max_in_flight: maxInFlight },
        batches(sent, 100),
      );
      expect((await indexesRead(topic)).sort((a, b) => a - b)).toEqual(sent.map(indexOf));
      expect(broker.lostRecords).toBeGreaterThan(0);
      expect(broker.faults).toEqual([]);
      // Both retries reach the broker and are answered as duplicates: a batch is settled by its
      // own answer, never by the acknowledgement of a later batch of its partition.
      expect(broker.model.counts.duplicates).toBeGreaterThanOrEqual(2);
      expect(broker.model.producerIds.size).toBe(1);
      expect(broker.problems).toEqual([]);
      expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
        received: 3000,
        sent: 3000,
        dropped: {},
        inFlight: 0,
      });
    }
  }, 60_000);

  it('without idempotence the same lost answer writes the request twice: the records it held are in the topic twice', async () => {
    await cluster.createTopic('idem-off', 3);
    const broker = await through();
    broker.faults = [{ at: 2, fault: 'lose' }];
    const sent = records(0, 3000);
    const ledger = await runSink(
      { ...config('idem-off', broker.brokers), max_in_flight: 1, idempotence: false },
      batches(sent, 100),
    );
    const read = await indexesRead('idem-off');
    const times = new Map<number, number>();
    for (const i of read) times.set(i, (times.get(i) ?? 0) + 1);
    const twice = [...times].filter(([, n]) => n === 2).length;
    expect(broker.lostRecords).toBeGreaterThan(0);
    expect({ read: read.length, twice, distinct: times.size }).toEqual({
      read: 3000 + broker.lostRecords,
      twice: broker.lostRecords,
      distinct: 3000,
    });
    expect(broker.model.producerIds.size).toBe(0);
    // The sink counted each record sent once: only the topic shows the duplicates.
    expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
      received: 3000,
      sent: 3000,
      dropped: {},
    });
  }, 60_000);

  it('after a batch is refused for good, the later batches go out under a new producer id: export continues and the account is exact', async () => {
    await cluster.createTopic('idem-gap', 1);
    const broker = await through();
    // Requests 2 to 5 go out together once request 1 is acknowledged; request 3 is refused, so
    // 4 and 5 reach a gap in the partition's sequence.
    broker.faults = [{ at: 3, fault: { refuse: KafkaCode.MESSAGE_TOO_LARGE } }];
    const ledger = new Ledger();
    const sink = kafkaModule.build(
      { ...config('idem-gap', broker.brokers), max_in_flight: 5, batch_max_records: 100 },
      contextFor('out', ledger),
    ) as KafkaSink;
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    input.next(records(0, 1000));
    await sink.flush();
    input.next(records(1000, 500));
    input.complete();
    await consumed;
    await sink.close();

    const read = await indexesRead('idem-gap');
    const refused = broker.refusedRecords;
    expect(refused).toBe(100);
    expect(new Set(read).size).toBe(read.length);
    expect(read.length).toBe(1500 - refused);
    expect(broker.model.counts.outOfOrder).toBeGreaterThan(0);
    expect(broker.model.counts.duplicates).toBe(0);
    expect(broker.model.producerIds.size).toBe(2);
    expect(broker.problems).toEqual([]);
    expect(sink.idempotence()).toMatchObject({ state: 'on', producerIds: 2 });
    expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
      received: 1500,
      sent: 1500 - refused,
      dropped: { sink_failed: refused },
      inFlight: 0,
    });
  }, 60_000);

  it('when the cluster refuses a producer id, the sink warns once and writes every record without one', async () => {
    await cluster.createTopic('idem-refused', 2);
    const broker = await through();
    await cluster.pushRequestErrors(KafkaApiKey.InitProducerId, 1, 31); // CLUSTER_AUTHORIZATION_FAILED
    const logger = silentLogger();
    const warn = vi.spyOn(logger, 'warn');
    const ledger = new Ledger();
    const sink = kafkaModule.build(
      config('idem-refused', broker.brokers),
      contextFor('out', ledger, logger),
    ) as KafkaSink;
    const sent = records(0, 1000);
    await sink.consume(from(batches(sent, 100)));
    await sink.close();
    expect((await indexesRead('idem-refused')).sort((a, b) => a - b)).toEqual(sent.map(indexOf));
    expect(broker.model.producerIds.size).toBe(0);
    expect(broker.model.counts.unsequenced).toBeGreaterThan(0);
    expect(sink.idempotence()).toMatchObject({ state: 'unavailable', producerIds: 0 });
    expect(warn.mock.calls.map((c) => c[1])).toEqual([
      "kafka sink: the brokers refused a producer id (CLUSTER_AUTHORIZATION_FAILED); writing without idempotence, so a retry after a lost response may write records twice; grant the sink's principal IdempotentWrite on the cluster (Kafka before 2.8; later ones need Write on the topic), or set idempotence to false",
    ]);
    expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({
      received: 1000,
      sent: 1000,
      dropped: {},
    });
  });
});
