/**
 * Kafka clients against each other, in one run, into the same librdkafka mock cluster (one topic
 * of 4 partitions): the same pre-encoded messages (JSON flow records of ~400 bytes with their flow
 * keys, partitioned by murmur2 of the key as Kafka's default partitioner does), 1000 messages per
 * send, 4 sends in flight (measureSends of kafka.bench.ts), acks -1, no compression, no idempotence:
 *
 * - rxflow: the client of src/kafka/ (kafkajsTransport: the kafkajs connections, record batches
 *   written by RecordBatchWriter, Produce requests of produce.ts), the batches encoded per send;
 * - @platformatic/kafka's Producer (its own connections and encoding);
 * - kafkajs's Producer, the second baseline.
 *
 * The clients take turns (rxflow, platformatic, kafkajs, then again, best of the rounds), so that
 * none of them has the warmer machine. What the kafka sink adds on top (record encoding, keys,
 * queueing, accounting) is bench/kafka.bench.ts's.
 *
 * @platformatic/kafka speaks to Kafka 3.5 and newer only (ApiVersions v3, Metadata v9 and up);
 * the mock cluster of librdkafka before 2.1 answers ApiVersions up to v2 and Metadata up to v2.
 * So every client talks to the mock through bench/kafka-shim.ts, which answers those two itself
 * and forwards the rest (Produce v7 for all three), each paying the same extra hop (in a process
 * of its own, outside the CPU time measured). The records each client wrote are counted back from
 * the broker's offsets after each run. Should a
 * client still be refused its API versions, its figures are left out and the run says why.
 */
import { Producer, ProduceAcks } from '@platformatic/kafka';
import { Kafka, logLevel, type Message } from 'kafkajs';
import { silentLogger } from '../src/logger.js';
import { kafkajsTransport } from '../src/kafka/client.js';
import { CONNECTION_DEFAULTS } from '../src/kafka/options.js';
import type { EncodedRequest, PartitionBatch } from '../src/kafka/produce.js';
import { BufferPool, RecordBatchWriter } from '../src/kafka/record-batch.js';
import { flowKey, partitionForKey } from '../src/sinks/kafka/encode.js';
import { WARMUP_SENDS, measureSends, pool, withCluster, type Run } from './kafka.bench.js';
import { startShimProcess } from './kafka-shim.js';
import type { BenchContext } from './lib.js';

const BATCH = 1000;
const PARTITIONS = 4;

interface Payload {
  key: string;
  keyBytes: Buffer;
  value: Buffer;
  partition: number;
}

/** 1000 distinct pre-encoded messages, sent again and again. */
function payloads(): Payload[] {
  return pool(BATCH).map((r) => {
    const key = flowKey(r);
    return {
      key,
      keyBytes: Buffer.from(key),
      value: Buffer.from(JSON.stringify(r)),
      partition: partitionForKey(key, PARTITIONS),
    };
  });
}

type Send = () => Promise<unknown>;

/** Messages in the topic, from the broker's offsets (asked directly, not through the shim). */
async function topicEnd(brokers: string[]): Promise<number> {
  const admin = new Kafka({ clientId: 'bench', brokers, logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets('bench');
    return offsets.reduce((n, o) => n + Number(o.high), 0);
  } finally {
    await admin.disconnect();
  }
}

/** The mock cluster as the clients see it: its process (for CPU time) and the shim's addresses. */
interface Target {
  pid: number;
  brokers: string[];
}

const copyValue = (value: Buffer, out: Buffer, pos: number): number =>
  pos + value.length <= out.length ? pos + value.copy(out, pos) : -1;

/** rxflow's client: the messages written into a record batch per partition, one Produce per leader. */
async function rxflowClient(cluster: Target, messages: Payload[]) {
  const transport = kafkajsTransport({
    connection: { ...CONNECTION_DEFAULTS, bootstrap_servers: cluster.brokers, client_id: 'bench' },
    topic: 'bench',
    acks: -1,
    logger: silentLogger(),
  });
  await transport.connect();
  if ((await transport.partitions()) !== PARTITIONS) throw new Error('kafka clients bench: not 4 partitions');
  const buffers = new BufferPool(64 << 20);
  const byPartition = Array.from({ length: PARTITIONS }, (_, p) => messages.filter((m) => m.partition === p));
  const send: Send = async () => {
    const writers: RecordBatchWriter[] = [];
    const batches: PartitionBatch[] = [];
    const now = Date.now();
    for (let p = 0; p < PARTITIONS; p++) {
      const list = byPartition[p]!;
      if (list.length === 0) continue;
      const writer = new RecordBatchWriter(buffers, 512 * list.length);
      for (const m of list) {
        writer.startRecord(m.key);
        writer.writeValue(copyValue, m.value);
        writer.endRecord();
      }
      writers.push(writer);
      batches.push({ partition: p, data: writer.finish(now), records: list.length, written: false });
    }
    const request: EncodedRequest = { batches, records: messages.length, bytes: 0, writers };
    try {
      await transport.send(request);
    } finally {
      for (const w of writers) w.release();
    }
  };
  return { send, close: () => transport.disconnect() };
}

function platformaticClient(cluster: Target, messages: Payload[]) {
  const producer = new Producer({
    clientId: 'bench',
    bootstrapBrokers: cluster.brokers,
    idempotent: false,
    acks: ProduceAcks.ALL,
    compression: 'none',
  });
  const batch = messages.map((m) => ({ topic: 'bench', key: m.keyBytes, value: m.value }));
  return Promise.resolve({
    send: () => producer.send({ messages: batch }),
    close: () => producer.close(),
  });
}

async function kafkajsClient(cluster: Target, messages: Payload[]) {
  const kafka = new Kafka({ clientId: 'bench', brokers: cluster.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer({ idempotent: false });
  await producer.connect();
  const batch: Message[] = messages.map((m) => ({ key: m.keyBytes, value: m.value }));
  return {
    send: () => producer.send({ topic: 'bench', messages: batch, acks: -1 }),
    close: () => producer.disconnect(),
  };
}

/** Why a client cannot run against this mock cluster, if it cannot: the broker refused its API versions. */
function unsupported(err: unknown): string | undefined {
  const inner = (err as { errors?: { apiId?: string }[] }).errors ?? [];
  if (!inner.some((e) => e.apiId === 'UNSUPPORTED_VERSION')) return undefined;
  return `the mock cluster refuses its API versions (${err instanceof Error ? err.message : String(err)})`;
}

const CLIENTS = {
  rxflow: rxflowClient,
  platformatic: platformaticClient,
  kafkajs: kafkajsClient,
} as const;
type ClientName = keyof typeof CLIENTS;

export default async function kafkaClientsBench(ctx: BenchContext): Promise<void> {
  const total = ctx.quick ? 50_000 : 300_000;
  const rounds = ctx.quick ? 1 : 3;
  const messages = payloads();
  const best = new Map<ClientName, Run>();
  const skipped = new Set<ClientName>();
  await withCluster(async (mock) => {
    const shim = await startShimProcess(mock.brokers);
    const cluster: Target = { pid: mock.pid, brokers: shim.brokers };
    try {
      for (let round = 0; round < rounds; round++) {
        for (const name of Object.keys(CLIENTS) as ClientName[]) {
          if (skipped.has(name)) continue;
          const before = await topicEnd(mock.brokers);
          const client = await CLIENTS[name](cluster, messages);
          try {
            const run = await measureSends(cluster.pid, client.send, total);
            const written = (await topicEnd(mock.brokers)) - before;
            const expected = (WARMUP_SENDS + Math.ceil(total / BATCH)) * BATCH;
            if (written !== expected)
              throw new Error(`kafka clients bench: ${name} wrote ${written} messages, not ${expected}`);
            const kept = best.get(name);
            if (kept === undefined || run.recordsPerSecond > kept.recordsPerSecond) best.set(name, run);
          } catch (err) {
            const why = unsupported(err);
            if (why === undefined) throw err;
            skipped.add(name);
            console.error(`kafka clients bench: ${name} not measured: ${why}`);
          } finally {
            await client.close().catch(() => undefined);
          }
        }
      }
    } finally {
      await shim.stop();
    }
  });
  const rxflow = best.get('rxflow')!;
  const note = (run: Run): string =>
    `best of ${rounds}; cpu ${run.cpuUsPerRecord.toFixed(2)} us/record here, ${run.mockCpuUsPerRecord.toFixed(2)} in the mock`;
  const baselines = (['platformatic', 'kafkajs'] as const).filter((name) => best.has(name));
  for (const name of baselines) {
    const run = best.get(name)!;
    ctx.report({
      name: `kafka_clients.${name}_preencoded`,
      value: run.recordsPerSecond,
      unit: 'records/s',
      note: note(run),
    });
  }
  for (const name of baselines) {
    const run = best.get(name)!;
    ctx.report({
      name: `kafka_clients.rxflow_preencoded.vs_${name}`,
      value: rxflow.recordsPerSecond,
      unit: 'records/s',
      baseline: { name: `kafka_clients.${name}_preencoded`, value: run.recordsPerSecond },
      note: note(rxflow),
    });
  }
  for (const [name, run] of best) {
    ctx.report({
      name: `kafka_clients.${name}_preencoded.cpu`,
      value: run.cpuUsPerRecord,
      unit: 'us/record (cpu)',
    });
  }
}
