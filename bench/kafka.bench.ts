/**
 * Flow records per second through the kafka sink into librdkafka's mock cluster (its own process,
 * on loopback), with one record per message and with 1000 records per message, JSON and protobuf.
 * The same-run baseline is kafkajs alone sending already-encoded messages of the same size: what
 * the client and the mock allow at best, before the sink encodes, keys and accounts anything.
 *
 * Each figure's note gives the CPU time of this process and of the mock per record: on a shared
 * two-core machine the rate depends on what else runs, CPU time per record much less.
 */
import fs from 'node:fs';
import { Kafka, logLevel, type Message } from 'kafkajs';
import { Subject } from 'rxjs';
import { KafkaMockCluster } from '../src/devtools/kafka-mock.js';
import { Ledger } from '../src/ledger.js';
import { silentLogger } from '../src/logger.js';
import type { FlowBatch, FlowRecord } from '../src/records.js';
import kafkaModule, { type KafkaSinkConfig } from '../src/sinks/kafka.js';
import { flowKey } from '../src/sinks/kafka/encode.js';
import type { BenchContext, Figure } from './lib.js';

export const SINGLE_TARGET = 100_000;
export const BATCHED_TARGET = 500_000;
const BATCH = 1000;
const PARTITIONS = 4;

/** Distinct flows as the map tracer emits them (decorated, IPv4), reused round robin. */
export function pool(n: number): FlowRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    ipVersion: 4,
    sourceIPv4Address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
    destinationIPv4Address: '192.0.2.10',
    sourceTransportPort: 1024 + (i % 60000),
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 1500 * (1 + (i % 100)),
    packetDeltaCount: 1 + (i % 100),
    flowStartMilliseconds: 1_700_000_000_000 + i,
    flowEndMilliseconds: 1_700_000_005_000 + i,
    tcpControlBits: 0x18,
    ipDiffServCodePoint: 0,
    ingressInterface: 2,
    flowDirection: (i & 1) as 0 | 1,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
    interfaceName: 'eth0',
  }));
}

/** utime + stime of a process in ms, from /proc (clock ticks of 10 ms on Linux). */
export function processCpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

export function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

export interface Run {
  recordsPerSecond: number;
  cpuUsPerRecord: number;
  mockCpuUsPerRecord: number;
}

export async function withCluster<T>(fn: (cluster: KafkaMockCluster) => Promise<T>): Promise<T> {
  const cluster = await KafkaMockCluster.start();
  try {
    await cluster.createTopic('bench', PARTITIONS);
    return await fn(cluster);
  } finally {
    await cluster.stop();
  }
}

/** Pushes `total` records in batches of 1000, keeping at most `window` records held by the sink. */
export async function runSink(
  cluster: KafkaMockCluster,
  config: Partial<KafkaSinkConfig>,
  warmup: number,
  total: number,
): Promise<Run> {
  const ledger = new Ledger();
  const counters = ledger.stage('bench', 'kafka', 'sink');
  const sink = kafkaModule.build(
    { bootstrap_servers: cluster.brokers, topic: 'bench', buffer_max_records: 1_000_000, ...config },
    { id: 'bench', logger: silentLogger(), ledger, counters },
  );
  const records = pool(50 * BATCH);
  const input = new Subject<FlowBatch>();
  const consumed = sink.consume(input);
  const window = 200 * BATCH;
  let offset = 0;
  const feed = async (n: number): Promise<void> => {
    const end = counters.received + n;
    while (counters.received < end) {
      while (counters.received - counters.sent - counters.droppedTotal() >= window) {
        await new Promise((r) => setImmediate(r));
      }
      input.next(records.slice(offset, offset + BATCH));
      offset = (offset + BATCH) % records.length;
    }
    await sink.flush();
  };
  await feed(warmup);
  const cpu0 = selfCpuMs();
  const mock0 = processCpuMs(cluster.pid);
  const t0 = process.hrtime.bigint();
  await feed(total);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpuMs = selfCpuMs() - cpu0;
  const mockMs = processCpuMs(cluster.pid) - mock0;
  input.complete();
  await consumed;
  await sink.close();
  if (counters.droppedTotal() > 0 || counters.sent !== warmup + total) {
    throw new Error(
      `kafka bench: ${counters.sent} of ${warmup + total} sent, dropped ${JSON.stringify(counters.snapshot().dropped)}`,
    );
  }
  return {
    recordsPerSecond: total / seconds,
    cpuUsPerRecord: (cpuMs * 1000) / total,
    mockCpuUsPerRecord: (mockMs * 1000) / total,
  };
}

/** kafkajs alone: pre-encoded JSON values with flow keys, 1000 messages per send, 4 sends in flight. */
async function runRawKafkajs(cluster: KafkaMockCluster, total: number): Promise<Run> {
  const kafka = new Kafka({ clientId: 'bench', brokers: cluster.brokers, logLevel: logLevel.NOTHING });
  const producer = kafka.producer();
  await producer.connect();
  const messages: Message[] = pool(BATCH).map((r) => ({
    key: flowKey(r),
    value: Buffer.from(JSON.stringify(r)),
  }));
  const send = (): Promise<unknown> => producer.send({ topic: 'bench', messages, acks: -1 });
  for (let i = 0; i < 20; i++) await send();
  const cpu0 = selfCpuMs();
  const mock0 = processCpuMs(cluster.pid);
  const t0 = process.hrtime.bigint();
  const inFlight: Promise<unknown>[] = [];
  for (let sent = 0; sent < total; sent += BATCH) {
    inFlight.push(send());
    if (inFlight.length >= 4) await inFlight.shift();
  }
  await Promise.all(inFlight);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpuMs = selfCpuMs() - cpu0;
  const mockMs = processCpuMs(cluster.pid) - mock0;
  await producer.disconnect();
  return {
    recordsPerSecond: total / seconds,
    cpuUsPerRecord: (cpuMs * 1000) / total,
    mockCpuUsPerRecord: (mockMs * 1000) / total,
  };
}

export function note(run: Run, extra = ''): string {
  return `cpu ${run.cpuUsPerRecord.toFixed(2)} us/record here, ${run.mockCpuUsPerRecord.toFixed(2)} in the mock${extra}`;
}

export default async function kafkaBench(ctx: BenchContext): Promise<void> {
  const single = ctx.quick ? 50_000 : 300_000;
  const batched = ctx.quick ? 200_000 : 1_500_000;

  const raw = await withCluster((c) => runRawKafkajs(c, single));
  const baseline = { name: 'kafka.kafkajs_preencoded_1_per_message', value: raw.recordsPerSecond };
  ctx.report({ ...baseline, unit: 'records/s', note: note(raw) });
  ctx.report({
    name: `${baseline.name}.cpu`,
    value: raw.cpuUsPerRecord,
    unit: 'us/record (cpu)',
    note: note(raw),
  });

  const modes: { name: string; config: Partial<KafkaSinkConfig>; total: number; target: number }[] = [
    {
      name: 'kafka.sink_json_1_per_message',
      config: { encoding: 'json' },
      total: single,
      target: SINGLE_TARGET,
    },
    {
      name: 'kafka.sink_protobuf_1_per_message',
      config: { encoding: 'protobuf' },
      total: single,
      target: SINGLE_TARGET,
    },
    {
      name: 'kafka.sink_json_1000_per_message',
      config: {
        encoding: 'json',
        records_per_message: 1000,
        batch_max_records: 8000,
        batch_max_bytes: 8_000_000,
      },
      total: batched,
      target: BATCHED_TARGET,
    },
    {
      name: 'kafka.sink_protobuf_1000_per_message',
      config: {
        encoding: 'protobuf',
        records_per_message: 1000,
        batch_max_records: 8000,
        batch_max_bytes: 8_000_000,
      },
      total: batched,
      target: BATCHED_TARGET,
    },
  ];
  let mockMax = raw.mockCpuUsPerRecord;
  for (const mode of modes) {
    const run = await withCluster((c) => runSink(c, mode.config, Math.floor(mode.total / 10), mode.total));
    const figure: Figure = {
      name: mode.name,
      value: run.recordsPerSecond,
      unit: 'records/s',
      target: { value: mode.target, better: 'higher' },
      note: note(run),
    };
    if (mode.total === single) figure.baseline = baseline;
    ctx.report(figure);
    // CPU time per record: what one core allows whatever else the machine runs.
    ctx.report({
      name: `${mode.name}.cpu`,
      value: run.cpuUsPerRecord,
      unit: 'us/record (cpu)',
      note: note(run),
    });
    mockMax = Math.max(mockMax, run.mockCpuUsPerRecord);
  }
  ctx.report({
    name: 'kafka.mock_cluster_cpu_max',
    value: mockMax,
    unit: 'us/record (cpu)',
    note: 'the most CPU the mock cluster spent per record in any mode above',
  });
}
