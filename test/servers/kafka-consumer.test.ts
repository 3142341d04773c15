import { execFileSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { CompressionCodecs, CompressionTypes, Kafka, logLevel, type Message } from 'kafkajs';
import { pino } from 'pino';
import protobuf from 'protobufjs';
import { Subject, from } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { CliIo } from '../../src/cli/io.js';
import { runCli } from '../../src/cli/program.js';
import type { ComponentContext } from '../../src/component.js';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger, type Logger } from '../../src/logger.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import type { FlowBatch, FlowRecord } from '../../src/records/flow.js';
import fileSinkModule from '../../src/sinks/file.js';
import kafkaSinkModule, { type KafkaSinkConfig } from '../../src/sinks/kafka.js';
import { registerCodecs } from '../../src/kafka/kafkajs-codecs.js';
import kafkaConsumerModule, { type KafkaConsumerConfig } from '../../src/sources/kafka_consumer.js';
import { cleanup, makeTempDir } from '../fixtures/cleanup.js';
import { startKafkaMock } from '../fixtures/kafka.js';
import { variedFlowRecord } from '../fixtures/records.js';

/**
 * The kafka_consumer source against a real Kafka-protocol broker (librdkafka's mock cluster in its
 * own process), reading what the real kafka sink wrote.
 */

const PROTO = new URL('../../src/sinks/flow.proto', import.meta.url);
const root = protobuf.parse(fs.readFileSync(PROTO, 'utf8'), { keepCase: true }).root;
const FlowRecordType = root.lookupType('rxflow.v1.FlowRecord');
const FlowBatchType = root.lookupType('rxflow.v1.FlowBatch');

const T0 = 1_700_000_000_000;

/** Record i; every few carry IPv6, ICMP or tunnel fields. flowStartMilliseconds - T0 is i. */
function record(i: number): FlowRecord {
  const r = variedFlowRecord(i);
  if (r.encapsulationType !== undefined) {
    r.tunnelSourceTransportPort = 49152;
    r.tunnelDestinationTransportPort = 4789;
  }
  if (i % 13 === 6 && r.ipVersion === 4) {
    r.protocolIdentifier = 1;
    r.icmpTypeIPv4 = 8;
    r.icmpCodeIPv4 = 0;
    r.samplingInterval = 10;
  }
  if (i % 7 === 2) {
    // As dedupe merges a flow seen on two interfaces.
    r.observedInterfaces = [
      { ingressInterface: 3, flowDirection: 0, interfaceName: 'eth1' },
      { egressInterface: 70_000, flowDirection: 1 },
    ];
  }
  return r;
}

const records = (first: number, count: number): FlowRecord[] =>
  Array.from({ length: count }, (_, k) => record(first + k));

const indexOf = (r: FlowRecord): number => r.flowStartMilliseconds - T0;
const byIndex = (all: FlowRecord[]): FlowRecord[] => [...all].sort((a, b) => indexOf(a) - indexOf(b));

function batchesOf(all: FlowRecord[], size: number): FlowBatch[] {
  const out: FlowBatch[] = [];
  for (let i = 0; i < all.length; i += size) out.push(all.slice(i, i + size));
  return out;
}

/** Writes `all` with the real kafka sink. */
async function writeWithSink(config: KafkaSinkConfig, all: FlowRecord[]): Promise<void> {
  const ledger = new Ledger();
  const sink = kafkaSinkModule.build(config, {
    id: 'out',
    logger: silentLogger(),
    ledger,
    counters: ledger.stage('out', 'kafka', 'sink'),
  });
  await sink.consume(from(batchesOf(all, 200)));
  await sink.close();
  expect(ledger.stage('out', 'kafka').snapshot()).toMatchObject({ sent: all.length, dropped: {} });
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Consuming {
  batches: FlowBatch[];
  context: ComponentContext & { stop$: Subject<void> };
  done: Promise<void>;
  completed: () => boolean;
  logs: Record<string, unknown>[];
  records: () => FlowRecord[];
}

function startConsumer(
  config: KafkaConsumerConfig,
  onBatch?: (batch: FlowBatch) => void,
  module = kafkaConsumerModule,
): Consuming {
  const ledger = new Ledger();
  const logs: Record<string, unknown>[] = [];
  const logger: Logger = pino(
    { level: 'info' },
    { write: (s: string) => void logs.push(JSON.parse(s) as Record<string, unknown>) },
  );
  const context = {
    id: 'in',
    logger,
    ledger,
    counters: ledger.stage('in', 'kafka_consumer', 'source'),
    stop$: new Subject<void>(),
  };
  const batches: FlowBatch[] = [];
  let completed = false;
  const done = new Promise<void>((resolve, reject) => {
    module.build(config, context).subscribe({
      next: (b) => {
        batches.push(b);
        onBatch?.(b);
      },
      error: reject,
      complete: () => {
        completed = true;
        resolve();
      },
    });
  });
  return { batches, context, done, completed: () => completed, logs, records: () => batches.flat() };
}

/** Consumes until `count` records were received, then drains. */
async function consumeCount(config: KafkaConsumerConfig, count: number): Promise<Consuming> {
  const c = startConsumer(config);
  await waitFor(`${count} records`, () => c.context.counters.received >= count);
  c.context.stop$.next();
  await c.done;
  return c;
}

let groups = 0;
const group = (name: string): string => `${name}-${process.pid}-${++groups}`;

describe('kafka_consumer against the mock cluster', () => {
  let cluster: KafkaMockCluster;
  let kafka: Kafka;

  beforeAll(async () => {
    cluster = await startKafkaMock();
    kafka = new Kafka({ clientId: 'rxflow-test', brokers: cluster.brokers, logLevel: logLevel.NOTHING });
  });

  afterAll(async () => {
    await cluster?.stop();
    await cleanup.dispose();
  });

  const sinkConfig = (topic: string, extra: Partial<KafkaSinkConfig> = {}): KafkaSinkConfig => ({
    bootstrap_servers: cluster.brokers,
    topic,
    linger_ms: 2,
    ...extra,
  });

  const consumerConfig = (topic: string, extra: Partial<KafkaConsumerConfig> = {}): KafkaConsumerConfig => ({
    bootstrap_servers: cluster.brokers,
    topic,
    group_id: group(topic),
    from_beginning: true,
    fetch_max_wait_ms: 100,
    retry_initial_ms: 50,
    retry_max_ms: 500,
    ...extra,
  });

  async function produceRaw(topic: string, messages: Message[]): Promise<void> {
    const producer = kafka.producer();
    await producer.connect();
    try {
      await producer.send({ topic, messages });
    } finally {
      await producer.disconnect();
    }
  }

  const shapes = [
    { name: 'json-single', sink: { encoding: 'json', records_per_message: 1 } },
    { name: 'json-array', sink: { encoding: 'json', records_per_message: 100 } },
    { name: 'json-gzip', sink: { encoding: 'json', records_per_message: 50, compression: 'gzip' } },
    { name: 'pb-single', sink: { encoding: 'protobuf', records_per_message: 1 } },
    { name: 'pb-batch', sink: { encoding: 'protobuf', records_per_message: 250 } },
    { name: 'json-lz4', sink: { encoding: 'json', records_per_message: 1, compression: 'lz4' } },
    { name: 'json-zstd', sink: { encoding: 'json', records_per_message: 20, compression: 'zstd' } },
    { name: 'pb-lz4', sink: { encoding: 'protobuf', records_per_message: 250, compression: 'lz4' } },
    { name: 'pb-zstd', sink: { encoding: 'protobuf', records_per_message: 1, compression: 'zstd' } },
  ] as const;

  it.each(shapes)('reads back exactly the records the kafka sink wrote: $name', async ({ name, sink }) => {
    await cluster.createTopic(name, 3);
    const sent = records(0, 3000);
    await writeWithSink(sinkConfig(name, sink), sent);
    const c = await consumeCount(consumerConfig(name, { encoding: sink.encoding }), 3000);
    expect(c.completed()).toBe(true);
    expect(byIndex(c.records())).toEqual(sent);
    expect(c.context.counters.snapshot()).toEqual({
      id: 'in',
      type: 'kafka_consumer',
      received: 3000,
      sent: 3000,
      dropped: {},
      inFlight: 0,
    });
  });

  it.each(['lz4', 'zstd'] as const)(
    'reads multi-megabyte %s batches the kafka sink wrote (decompressed on worker threads) exactly',
    async (compression) => {
      const topic = `big-${compression}`;
      await cluster.createTopic(topic, 1);
      const sent = records(0, 20_000);
      const sink = { compression, batch_max_records: 10_000, batch_max_bytes: 8_000_000 } as const;
      await writeWithSink(sinkConfig(topic, sink), sent);
      const c = await consumeCount(consumerConfig(topic, { max_bytes_per_partition: 8 << 20 }), 20_000);
      // The sink may have the two requests in flight at once, so they need not land in order.
      expect(byIndex(c.records())).toEqual(sent);
      expect(Math.max(...c.batches.map((b) => b.length))).toBeGreaterThan(5000);
      expect(c.context.counters.snapshot()).toMatchObject({ received: 20_000, sent: 20_000, dropped: {} });
    },
  );

  it.each(['lz4', 'zstd', 'snappy'] as const)(
    'reads %s batches librdkafka (kcat) wrote: frames of another producer, zstd without content size, snappy as librdkafka frames it',
    async (compression) => {
      const topic = `kcat-${compression}`;
      await cluster.createTopic(topic, 2);
      const sent = records(0, 2000);
      const file = path.join(makeTempDir('rxkc'), 'records.jsonl');
      fs.writeFileSync(file, sent.map((r) => JSON.stringify(r)).join('\n') + '\n');
      execFileSync(
        'kcat',
        ['-P', '-b', cluster.bootstrap, '-t', topic, '-z', compression, '-X', 'linger.ms=200', '-l', file],
        { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 },
      );
      const c = await consumeCount(consumerConfig(topic), 2000);
      expect(byIndex(c.records())).toEqual(sent);
      // librdkafka put many records in each batch.
      expect(c.batches.length).toBeLessThan(200);
      expect(c.context.counters.snapshot()).toMatchObject({ received: 2000, sent: 2000, dropped: {} });
    },
  );

  it('in rxflow run, writes to a file sink exactly the lines kcat produced compressed with snappy', async () => {
    const topic = 'kcat-snappy-run';
    await cluster.createTopic(topic, 2);
    const sent = records(0, 1500);
    const dir = makeTempDir('rxkc');
    const input = path.join(dir, 'in.jsonl');
    fs.writeFileSync(input, sent.map((r) => JSON.stringify(r)).join('\n') + '\n');
    execFileSync(
      'kcat',
      ['-P', '-b', cluster.bootstrap, '-t', topic, '-z', 'snappy', '-X', 'linger.ms=200', '-l', input],
      { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 },
    );
    const out = path.join(dir, 'out.jsonl');
    const yaml = path.join(dir, 'run.yaml');
    fs.writeFileSync(
      yaml,
      `sources:\n  in: {type: kafka_consumer, bootstrap_servers: ['${cluster.bootstrap}'], topic: ${topic}, ` +
        `group_id: ${group('snappy')}, from_beginning: true, fetch_max_wait_ms: 100}\n` +
        `sinks:\n  out: {type: file, inputs: [in], path: '${out}'}\n`,
    );
    const signals = new EventEmitter();
    const err: string[] = [];
    const io: CliIo = {
      out: () => undefined,
      err: (text) => void err.push(text),
      env: {},
      registry: new ComponentRegistry([kafkaConsumerModule, fileSinkModule]),
      signals,
      exit: () => undefined,
      logger: silentLogger(),
    };
    const code = runCli(['run', yaml, '--no-status-socket'], io);
    const lines = (): string[] =>
      fs.existsSync(out) ? fs.readFileSync(out, 'utf8').split('\n').filter(Boolean) : [];
    await waitFor('1500 lines', () => lines().length >= 1500);
    signals.emit('SIGTERM', 'SIGTERM');
    expect(await code).toBe(0);
    expect(err).toEqual([]);
    const produced = fs.readFileSync(input, 'utf8').split('\n').filter(Boolean);
    expect(lines()).toHaveLength(produced.length);
    expect(byIndex(lines().map((l) => JSON.parse(l) as FlowRecord))).toEqual(
      byIndex(produced.map((l) => JSON.parse(l) as FlowRecord)),
    );
  });

  it('picks the decoder by the content-type header: protobuf the sink wrote read with encoding json, exactly', async () => {
    const topic = 'ct-protobuf';
    await cluster.createTopic(topic, 2);
    const single = records(0, 300);
    const batched = records(300, 300);
    await writeWithSink(sinkConfig(topic, { encoding: 'protobuf', records_per_message: 1 }), single);
    await writeWithSink(sinkConfig(topic, { encoding: 'protobuf', records_per_message: 60 }), batched);
    const c = await consumeCount(consumerConfig(topic, { encoding: 'json' }), 600);
    expect(byIndex(c.records())).toEqual([...single, ...batched]);
    expect(c.context.counters.snapshot()).toMatchObject({ received: 600, sent: 600, dropped: {} });
  });

  it('picks the decoder by the content-type header: JSON kcat wrote with the header read with encoding protobuf, exactly', async () => {
    const topic = 'ct-kcat-json';
    await cluster.createTopic(topic, 1);
    const sent = records(0, 200);
    const file = path.join(makeTempDir('rxkc'), 'records.jsonl');
    fs.writeFileSync(file, sent.map((r) => JSON.stringify(r)).join('\n') + '\n');
    execFileSync(
      'kcat',
      [
        '-P',
        '-b',
        cluster.bootstrap,
        '-t',
        topic,
        '-H',
        'content-type=application/json; charset=utf-8',
        '-l',
        file,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 },
    );
    // Without the header the same lines are not protobuf: counted as parse_failed.
    execFileSync('kcat', ['-P', '-b', cluster.bootstrap, '-t', topic, '-l', file], {
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 30_000,
    });
    const c = await consumeCount(consumerConfig(topic, { encoding: 'protobuf' }), 400);
    expect(byIndex(c.records())).toEqual(sent);
    expect(c.context.counters.snapshot()).toMatchObject({
      received: 400,
      sent: 200,
      dropped: { parse_failed: 200 },
    });
  });

  it('skips a batch that does not decompress: its records count as parse_failed with the reason, the rest is read and committed', async () => {
    const topic = 'undecompressable';
    await cluster.createTopic(topic, 1);
    registerCodecs(silentLogger());
    await writeWithSink(sinkConfig(topic, { compression: 'lz4' }), records(0, 10));
    // Batches another producer compressed badly: kafkajs writes them through codecs that return
    // what they are given here instead.
    const writeBadly = async (type: CompressionTypes, compressed: Buffer, count: number): Promise<void> => {
      const codecs = CompressionCodecs as Record<number, () => unknown>;
      const ours = codecs[type]!;
      codecs[type] = () => ({ compress: () => Promise.resolve(compressed) });
      const producer = kafka.producer();
      await producer.connect();
      try {
        const messages = Array.from({ length: count }, (_, i) => ({
          value: JSON.stringify(record(100 + i)),
        }));
        await producer.send({ topic, messages, compression: type });
      } finally {
        codecs[type] = ours;
        await producer.disconnect();
      }
    };
    // Offsets 10-12: not an LZ4 frame at all.
    await writeBadly(CompressionTypes.LZ4, Buffer.from('this is not an lz4 frame'), 3);
    // Offsets 13-14: a sound zstd frame, whose content is no records.
    const noRecords = execFileSync('zstd', ['-c', '-q'], { input: Buffer.from('no records in here') });
    await writeBadly(CompressionTypes.ZSTD, noRecords, 2);
    await writeWithSink(sinkConfig(topic, { compression: 'zstd' }), records(10, 10));

    const groupId = group(topic);
    const c = await consumeCount(consumerConfig(topic, { group_id: groupId }), 25);
    expect(c.completed()).toBe(true);
    expect(byIndex(c.records())).toEqual(records(0, 20));
    expect(c.context.counters.snapshot()).toMatchObject({
      received: 25,
      sent: 20,
      dropped: { parse_failed: 5 },
      inFlight: 0,
    });
    const warnings = c.logs.filter((l) => l.level === 40);
    expect(warnings.map((w) => w.msg)).toEqual(
      warnings.map(() => 'kafka consumer undecompressable: undecodable records dropped'),
    );
    expect(warnings[0]!.cause).toBe(
      'partition 0 offset 10: record batch skipped: kafka consumer decompression lz4: invalid LZ4 data (ERROR_frameType_unknown); check the producer that wrote it',
    );
    expect(warnings.at(-1)!.cause).toBe(
      "partition 0 offset 14: record batch skipped: kafka consumer decompression zstd: the data is not the batch's 2 records; check the producer that wrote it",
    );
    const dropped = warnings.reduce((n, w) => n + (w.dropped as { parse_failed: number }).parse_failed, 0);
    expect(dropped).toBe(5);

    // Committed past the skipped batches, like any other.
    const admin = kafka.admin();
    await admin.connect();
    try {
      const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
      expect(committed[0]!.partitions.map((p) => [p.partition, p.offset])).toEqual([[0, '25']]);
    } finally {
      await admin.disconnect();
    }
  });

  it('without liblz4.so.1: starts, warns once naming the package, retries lz4 batches without skipping them; with the library the group reads them all', async () => {
    const topic = 'no-lz4';
    await cluster.createTopic(topic, 1);
    await writeWithSink(sinkConfig(topic, { compression: 'lz4' }), records(0, 50));
    const codecs = CompressionCodecs as Record<number, unknown>;
    const saved = { ...codecs };
    const hint =
      'kafka consumer decompression lz4: liblz4.so.1 not found; install liblz4-1 (bash scripts/setup.sh)';
    const groupId = group(topic);
    const member = { group_id: groupId, session_timeout_ms: 6000, retries: 1 };
    vi.resetModules();
    vi.doMock('koffi', async (importOriginal) => {
      const actual = (await importOriginal<{ default: { load: (f: string) => unknown } }>()).default;
      const load = (f: string): unknown => {
        if (f === 'liblz4.so.1')
          throw new Error(`${f}: cannot open shared object file: No such file or directory`);
        return actual.load(f);
      };
      return { default: Object.assign(Object.create(actual) as object, { load }) };
    });
    try {
      const fresh = (await import('../../src/sources/kafka_consumer.js')).default;
      const c = startConsumer(consumerConfig(topic, member), undefined, fresh);
      await waitFor('a retry warning', () =>
        c.logs.some(
          (l) => l.msg === 'kafka consumer: cannot decompress the fetched record batches; retrying',
        ),
      );
      const missing = c.logs.filter(
        (l) =>
          l.msg ===
          'kafka consumer: a codec library is missing; record batches it compressed cannot be read until it is installed',
      );
      // pino appends the cause's message: what the loader said.
      expect(missing.map((l) => [l.level, l.codec, (l.err as { message: string }).message])).toEqual([
        [40, 'lz4', `${hint}: liblz4.so.1: cannot open shared object file: No such file or directory`],
      ]);
      const retrying = c.logs.find(
        (l) => l.msg === 'kafka consumer: cannot decompress the fetched record batches; retrying',
      )!;
      expect([retrying.level, (retrying.err as { message: string }).message]).toEqual([40, hint]);
      expect(c.context.counters.snapshot()).toMatchObject({ received: 0, sent: 0, dropped: {} });
      c.context.stop$.next();
      await c.done;
    } finally {
      vi.doUnmock('koffi');
      vi.resetModules();
      Object.assign(codecs, saved);
    }
    // Nothing was committed: the same group, with the library, reads every record.
    const again = await consumeCount(consumerConfig(topic, member), 50);
    expect(byIndex(again.records())).toEqual(records(0, 50));
    expect(again.context.counters.snapshot()).toMatchObject({ received: 50, sent: 50, dropped: {} });
  }, 60_000);

  it('reads a topic holding single and batch JSON messages alike', async () => {
    await cluster.createTopic('json-mixed', 2);
    await writeWithSink(sinkConfig('json-mixed', { records_per_message: 1 }), records(0, 300));
    await writeWithSink(sinkConfig('json-mixed', { records_per_message: 40 }), records(300, 300));
    const c = await consumeCount(consumerConfig('json-mixed'), 600);
    expect(byIndex(c.records())).toEqual(records(0, 600));
  });

  it('counts undecodable JSON messages and items as parse_failed and logs partition and offset', async () => {
    await cluster.createTopic('json-bad', 1);
    await writeWithSink(sinkConfig('json-bad'), records(0, 10));
    await produceRaw('json-bad', [
      { value: 'not json' },
      { value: '42' },
      { value: '{"ipVersion":4}' },
      { value: JSON.stringify([record(10), { x: 1 }, record(11)]) },
      { value: '' },
      { value: null },
    ]);
    await writeWithSink(sinkConfig('json-bad'), records(12, 10));
    // 20 single records, 3 array items, 5 other messages.
    const c = await consumeCount(consumerConfig('json-bad'), 28);
    expect(byIndex(c.records())).toEqual(records(0, 22));
    expect(c.context.counters.snapshot()).toMatchObject({
      received: 28,
      sent: 22,
      dropped: { parse_failed: 6 },
      inFlight: 0,
    });
    const warnings = c.logs.filter((l) => l.level === 40);
    expect([warnings[0]!.msg, warnings[0]!.dropped]).toEqual([
      'kafka consumer json-bad: undecodable records dropped',
      { parse_failed: 1 },
    ]);
    expect(warnings[0]!.cause).toMatch(/^partition 0 offset 10: not JSON: /);
    const dropped = warnings.reduce((n, w) => n + (w.dropped as { parse_failed: number }).parse_failed, 0);
    expect(dropped).toBe(6);
    expect(warnings.at(-1)!.cause).toBe('partition 0 offset 15: empty message');
  });

  it('counts undecodable protobuf messages and batch items as parse_failed', async () => {
    await cluster.createTopic('pb-bad', 1);
    await writeWithSink(sinkConfig('pb-bad', { encoding: 'protobuf' }), records(0, 10));
    const encodeRecord = (r: object): Buffer =>
      Buffer.from(FlowRecordType.encode(FlowRecordType.fromObject(r)).finish());
    const { sourceIPv4Address: _s, ...noSource } = record(11);
    await produceRaw('pb-bad', [
      { value: Buffer.from([0x08, 0x84]) },
      { value: encodeRecord({ ...record(10), ipVersion: 5 }) },
      {
        value: Buffer.from(
          FlowBatchType.encode(
            FlowBatchType.fromObject({ records: [record(12), noSource, record(13)] }),
          ).finish(),
        ),
      },
      { value: Buffer.alloc(0) },
    ]);
    await writeWithSink(
      sinkConfig('pb-bad', { encoding: 'protobuf', records_per_message: 5 }),
      records(14, 10),
    );
    // 20 records written by the sink, 3 batch items, 3 other messages.
    const c = await consumeCount(consumerConfig('pb-bad', { encoding: 'protobuf' }), 26);
    expect(byIndex(c.records())).toEqual([...records(0, 10), record(12), record(13), ...records(14, 10)]);
    expect(c.context.counters.snapshot()).toMatchObject({
      received: 26,
      sent: 22,
      dropped: { parse_failed: 4 },
      inFlight: 0,
    });
    const causes = c.logs.filter((l) => l.level === 40).map((l) => l.cause);
    expect(causes[0]).toMatch(/^partition 0 offset 10: not a protobuf FlowRecord: /);
    expect(causes.at(-1)).toBe('partition 0 offset 13: empty message');
  });

  it('commits what it handed downstream: the same group after a drain reads only newer records', async () => {
    await cluster.createTopic('commits', 2);
    await writeWithSink(sinkConfig('commits'), records(0, 1000));
    const groupId = group('commits');
    // The mock cluster frees a group's partitions only once the member that left times out.
    const member = { group_id: groupId, session_timeout_ms: 6000 };
    const first = await consumeCount(consumerConfig('commits', member), 1000);
    expect(byIndex(first.records())).toEqual(records(0, 1000));

    const admin = kafka.admin();
    await admin.connect();
    try {
      const high = await admin.fetchTopicOffsets('commits');
      const committed = await admin.fetchOffsets({ groupId, topics: ['commits'] });
      expect(committed[0]!.partitions.map((p) => [p.partition, p.offset]).sort()).toEqual(
        high.map((p) => [p.partition, p.high]).sort(),
      );
    } finally {
      await admin.disconnect();
    }

    await writeWithSink(sinkConfig('commits'), records(1000, 500));
    const second = await consumeCount(consumerConfig('commits', member), 500);
    expect(byIndex(second.records())).toEqual(records(1000, 500));
  });

  it('stopped after its first batch, a second member of the group reads exactly the rest', async () => {
    await cluster.createTopic('halfway', 2);
    const sent = records(0, 2000);
    await writeWithSink(sinkConfig('halfway'), sent);
    const groupId = group('halfway');
    // Small fetches: many batches, so the drain starts with most of the topic unread.
    const small = { group_id: groupId, max_bytes_per_partition: 4096, session_timeout_ms: 6000 };
    let firstBatch = true;
    const first = startConsumer(consumerConfig('halfway', small), () => {
      if (firstBatch) first.context.stop$.next();
      firstBatch = false;
    });
    await first.done;
    const a = first.records();
    expect(a.length).toBeGreaterThan(0);
    expect(a.length).toBeLessThan(2000);

    const second = await consumeCount(consumerConfig('halfway', small), 2000 - a.length);
    const b = second.records();
    expect(second.context.counters.received).toBe(2000 - a.length);
    expect(byIndex([...a, ...b])).toEqual(sent);
  });

  it('keeps retrying while the broker is down, warns, and reads once it is back', async () => {
    await cluster.createTopic('outage', 1);
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    await cluster.brokerDown(1);
    let c: Consuming;
    try {
      c = startConsumer(consumerConfig('outage', { connection_timeout_ms: 300, retries: 1 }));
      await waitFor('a warning', () =>
        c.logs.some(
          (l) => l.level === 40 && l.msg === 'kafka consumer: cannot consume from the brokers; retrying',
        ),
      );
      expect(c.context.counters.received).toBe(0);
    } finally {
      await cluster.brokerUp(1);
    }
    await writeWithSink(sinkConfig('outage'), records(0, 100));
    await waitFor('100 records', () => c.context.counters.received >= 100);
    c.context.stop$.next();
    await c.done;
    process.off('unhandledRejection', onUnhandled);
    expect(unhandled).toEqual([]);
    expect(byIndex(c.records())).toEqual(records(0, 100));
    expect(c.logs.some((l) => l.msg === 'kafka consumer: consuming again')).toBe(true);
  }, 60_000);

  it('rides out a broker outage while consuming: warns, rejoins, and every record arrives at least once', async () => {
    await cluster.createTopic('midway', 2);
    await writeWithSink(sinkConfig('midway'), records(0, 100));
    const c = startConsumer(
      consumerConfig('midway', { connection_timeout_ms: 300, retries: 1, session_timeout_ms: 6000 }),
    );
    await waitFor('100 records', () => c.context.counters.received >= 100);
    await cluster.brokerDown(1);
    try {
      await waitFor('a warning', () =>
        c.logs.some(
          (l) => l.level === 40 && l.msg === 'kafka consumer: cannot consume from the brokers; retrying',
        ),
      );
    } finally {
      await cluster.brokerUp(1);
    }
    await writeWithSink(sinkConfig('midway'), records(100, 100));
    const distinct = (): number => new Set(c.records().map(indexOf)).size;
    await waitFor('200 distinct records', () => distinct() >= 200, 60_000);
    c.context.stop$.next();
    await c.done;
    expect([...new Set(c.records().map(indexOf))].sort((x, y) => x - y)).toEqual(
      Array.from({ length: 200 }, (_, i) => i),
    );
    expect(c.context.counters.snapshot()).toMatchObject({ dropped: {}, inFlight: 0 });
    expect(c.logs.some((l) => l.msg === 'kafka consumer: consuming again')).toBe(true);
  }, 90_000);

  it('drains without waiting out shutdown_timeout_ms when stopped while the broker cannot be reached', async () => {
    await cluster.createTopic('unreachable', 1);
    await cluster.brokerDown(1);
    try {
      const c = startConsumer(
        consumerConfig('unreachable', { connection_timeout_ms: 300, retries: 1, shutdown_timeout_ms: 5000 }),
      );
      await waitFor('a warning', () => c.logs.some((l) => l.level === 40));
      c.context.stop$.next();
      await waitFor('completion', c.completed, 10_000);
      expect(c.context.counters.snapshot()).toMatchObject({ received: 0, sent: 0, dropped: {} });
      expect(c.logs.filter((l) => String(l.msg).includes('shutdown_timeout_ms'))).toEqual([]);
    } finally {
      await cluster.brokerUp(1);
    }
  }, 30_000);

  it('in rxflow run, drains on SIGTERM: the file sink gets every record and the command exits 0', async () => {
    await cluster.createTopic('run', 2);
    const sent = records(0, 2000);
    await writeWithSink(sinkConfig('run', { records_per_message: 100 }), sent);
    const dir = makeTempDir('rxkc');
    const out = path.join(dir, 'out.jsonl');
    const yaml = path.join(dir, 'run.yaml');
    fs.writeFileSync(
      yaml,
      `sources:\n  in: {type: kafka_consumer, bootstrap_servers: ['${cluster.bootstrap}'], topic: run, ` +
        `group_id: ${group('run')}, from_beginning: true, fetch_max_wait_ms: 100}\n` +
        `sinks:\n  out: {type: file, inputs: [in], path: '${out}'}\n`,
    );
    const signals = new EventEmitter();
    const err: string[] = [];
    const io: CliIo = {
      out: () => undefined,
      err: (text) => void err.push(text),
      env: {},
      registry: new ComponentRegistry([kafkaConsumerModule, fileSinkModule]),
      signals,
      exit: () => undefined,
      logger: silentLogger(),
    };
    const code = runCli(['run', yaml, '--no-status-socket'], io);
    const lines = (): string[] =>
      fs.existsSync(out) ? fs.readFileSync(out, 'utf8').split('\n').filter(Boolean) : [];
    await waitFor('2000 lines', () => lines().length >= 2000);
    signals.emit('SIGTERM', 'SIGTERM');
    expect(await code).toBe(0);
    expect(err).toEqual([]);
    expect(byIndex(lines().map((l) => JSON.parse(l) as FlowRecord))).toEqual(sent);
  });
});
