/**
 * Flow records per second through the kafka sink into librdkafka's mock cluster (its own process,
 * on loopback), with one record per message and with 1000 records per message, JSON and protobuf.
 * The same-run baseline is kafkajs alone sending already-encoded messages of the same size: what
 * the client and the mock allow at best, before the sink encodes, keys and accounts anything.
 *
 * Each figure's note gives the CPU time of this process and of the mock per record: on a shared
 * two-core machine the rate depends on what else runs, CPU time per record much less.
 *
 * Compression: the batched JSON mode again with gzip, lz4 and zstd (baseline: the same mode
 * uncompressed; CPU time counts every thread, so the codecs' worker threads too), the size ratio
 * of those requests, and each codec alone on one partition batch: its speed, how long it holds
 * the event loop per batch, and, around NATIVE_SYNC_MAX_BYTES, what a koffi worker-thread call
 * costs against compressing on the JS thread. The records of pool() differ only in addresses,
 * ports and counters, so they compress better than real flows do.
 */
import fs from 'node:fs';
import { Kafka, logLevel, type Message } from 'kafkajs';
import { Subject } from 'rxjs';
import { KafkaMockCluster } from '../src/devtools/kafka-mock.js';
import { Ledger } from '../src/ledger.js';
import { silentLogger } from '../src/logger.js';
import type { FlowBatch, FlowRecord } from '../src/records/flow.js';
import kafkaModule, { type KafkaSinkConfig } from '../src/sinks/kafka.js';
import { NATIVE_SYNC_MAX_BYTES } from '../src/kafka/codec-native.js';
import { gzipBatch, lz4Batch, zstdBatch, type Compression } from '../src/kafka/compress.js';
import { RequestEncoder, flowKey } from '../src/sinks/kafka/encode.js';
import { BATCH_HEADER_BYTES } from '../src/kafka/record-batch.js';
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

/** Sends before the measured ones, for warm connections and code. */
export const WARMUP_SENDS = 20;

/**
 * Calls `send` (1000 messages each) until `total` messages went, at most 4 sends at once, after
 * WARMUP_SENDS unmeasured ones; `mockPid` is the mock cluster's process, for its CPU time.
 */
export async function measureSends(
  mockPid: number,
  send: () => Promise<unknown>,
  total: number,
): Promise<Run> {
  for (let i = 0; i < WARMUP_SENDS; i++) await send();
  const cpu0 = selfCpuMs();
  const mock0 = processCpuMs(mockPid);
  const t0 = process.hrtime.bigint();
  const inFlight: Promise<unknown>[] = [];
  for (let sent = 0; sent < total; sent += BATCH) {
    inFlight.push(send());
    if (inFlight.length >= 4) await inFlight.shift();
  }
  await Promise.all(inFlight);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpuMs = selfCpuMs() - cpu0;
  const mockMs = processCpuMs(mockPid) - mock0;
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
  try {
    return await measureSends(cluster.pid, send, total);
  } finally {
    await producer.disconnect();
  }
}

const BATCHED_JSON: Partial<KafkaSinkConfig> = {
  encoding: 'json',
  records_per_message: 1000,
  batch_max_records: 8000,
  batch_max_bytes: 8_000_000,
};

type Codec = Exclude<Compression, 'none'>;
const CODECS: Codec[] = ['gzip', 'lz4', 'zstd'];
const COMPRESS: Record<Codec, (batch: Buffer) => Promise<Buffer>> = {
  gzip: gzipBatch,
  lz4: lz4Batch,
  zstd: zstdBatch,
};

/** Bytes of one request of the batched JSON mode (8000 records, 4 partitions) without and with a codec. */
async function compressionRatio(compression: Codec): Promise<number> {
  const records = pool(8 * BATCH);
  const options = { encoding: 'json', recordsPerMessage: BATCH, key: 'flow' } as const;
  const plain = await new RequestEncoder({ ...options, compression: 'none' }).encode(
    records,
    PARTITIONS,
    500,
    Date.now(),
  );
  const packed = await new RequestEncoder({ ...options, compression }).encode(
    records,
    PARTITIONS,
    500,
    Date.now(),
  );
  return plain.bytes / packed.bytes;
}

/** One uncompressed partition batch of `count` records of pool(), 1000 per JSON message. */
async function jsonBatch(count: number): Promise<Buffer> {
  const encoder = new RequestEncoder({
    encoding: 'json',
    recordsPerMessage: BATCH,
    key: 'none',
    compression: 'none',
  });
  const out = await encoder.encode(pool(count), 1, 500, Date.now());
  return Buffer.from(out.batches[0]!.data);
}

/** How many pool() records (1000 per message) the largest batch whose records fit in `bytes` holds. */
async function recordsUpTo(bytes: number): Promise<number> {
  let count = 1;
  while ((await jsonBatch(count + 1)).length - BATCH_HEADER_BYTES <= bytes) count++;
  return count;
}

interface CompressRun {
  /** Wall time per batch, one at a time. */
  usPerBatch: number;
  /** Time per batch the call holds the JS thread before it returns its promise. */
  loopUsPerBatch: number;
}

async function compressRun(
  compress: (b: Buffer) => Promise<Buffer>,
  batch: Buffer,
  n: number,
): Promise<CompressRun> {
  for (let i = 0; i < 5; i++) await compress(batch);
  let held = 0n;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const c0 = process.hrtime.bigint();
    const done = compress(batch);
    held += process.hrtime.bigint() - c0;
    await done;
  }
  const total = process.hrtime.bigint() - t0;
  return { usPerBatch: Number(total) / 1000 / n, loopUsPerBatch: Number(held) / 1000 / n };
}

/** Reports the compression figures; returns the most CPU the mock spent per record in them. */
async function reportCompression(ctx: BenchContext, batchedPlain: Figure): Promise<number> {
  let mockMax = 0;
  for (const codec of CODECS) {
    const run = await withCluster((c) =>
      runSink(
        c,
        { ...BATCHED_JSON, compression: codec },
        Math.floor(batchedTotal(ctx) / 10),
        batchedTotal(ctx),
      ),
    );
    mockMax = Math.max(mockMax, run.mockCpuUsPerRecord);
    const name = `kafka.sink_json_1000_per_message_${codec}`;
    ctx.report({
      name,
      value: run.recordsPerSecond,
      unit: 'records/s',
      baseline: { name: batchedPlain.name, value: batchedPlain.value },
      note: note(run),
    });
    ctx.report({ name: `${name}.cpu`, value: run.cpuUsPerRecord, unit: 'us/record (cpu)', note: note(run) });
    ctx.report({
      name: `kafka.compression_ratio_json_1000_per_message_${codec}`,
      value: await compressionRatio(codec),
      unit: 'x (uncompressed/compressed)',
      note: 'bytes of one 8000-record request over 4 partitions, headers included',
    });
  }

  const big = await jsonBatch(2400);
  const mb = (big.length - BATCH_HEADER_BYTES) / 1e6;
  const rounds = ctx.quick ? 40 : 200;
  for (const codec of CODECS) {
    const run = await compressRun(COMPRESS[codec], big, rounds);
    ctx.report({
      name: `kafka.compress_${codec}_1MB`,
      value: mb / (run.usPerBatch / 1e6),
      unit: 'MB/s (one at a time)',
      note: `${run.usPerBatch.toFixed(0)} us per ${mb.toFixed(2)} MB batch of records`,
    });
    ctx.report({
      name: `kafka.compress_${codec}_1MB.loop`,
      value: run.loopUsPerBatch,
      unit: 'us/batch on the JS thread',
      note: 'from the call until it returns its promise (copies, dispatch); the rest runs on a worker thread',
    });
  }

  // Around the threshold: the largest batch compressed on the JS thread, and one a record larger
  // that goes to a worker thread.
  const fit = await recordsUpTo(NATIVE_SYNC_MAX_BYTES);
  const sync = await jsonBatch(fit);
  const worker = await jsonBatch(fit + 1);
  const syncBytes = sync.length - BATCH_HEADER_BYTES;
  const workerBytes = worker.length - BATCH_HEADER_BYTES;
  for (const codec of ['lz4', 'zstd'] as const) {
    const s = await compressRun(COMPRESS[codec], sync, rounds * 10);
    const a = await compressRun(COMPRESS[codec], worker, rounds * 10);
    const onThread = `kafka.compress_${codec}_at_sync_max.js_thread`;
    ctx.report({
      name: onThread,
      value: s.usPerBatch,
      unit: 'us/batch',
      note: `${syncBytes} B of records, up to NATIVE_SYNC_MAX_BYTES (${NATIVE_SYNC_MAX_BYTES}): all of it holds the event loop`,
    });
    ctx.report({
      name: `kafka.compress_${codec}_above_sync_max.worker`,
      value: a.usPerBatch,
      unit: 'us/batch',
      baseline: { name: onThread, value: s.usPerBatch },
      note: `${workerBytes} B of records, on a koffi worker thread: ${a.loopUsPerBatch.toFixed(1)} us of it on the JS thread`,
    });
  }
  return mockMax;
}

function batchedTotal(ctx: BenchContext): number {
  return ctx.quick ? 200_000 : 1_500_000;
}

export function note(run: Run, extra = ''): string {
  return `cpu ${run.cpuUsPerRecord.toFixed(2)} us/record here, ${run.mockCpuUsPerRecord.toFixed(2)} in the mock${extra}`;
}

export default async function kafkaBench(ctx: BenchContext): Promise<void> {
  const single = ctx.quick ? 50_000 : 300_000;
  const batched = batchedTotal(ctx);

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
      config: BATCHED_JSON,
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
  let batchedPlain: Figure | undefined;
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
    if (mode.config === BATCHED_JSON) batchedPlain = figure;
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
  mockMax = Math.max(mockMax, await reportCompression(ctx, batchedPlain!));
  ctx.report({
    name: 'kafka.mock_cluster_cpu_max',
    value: mockMax,
    unit: 'us/record (cpu)',
    note: 'the most CPU the mock cluster spent per record in any mode above',
  });
}
