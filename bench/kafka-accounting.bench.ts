/**
 * What confirmed-write accounting costs the kafka sink: a batch counts as written only by its own
 * answer, and no batch goes out five or more places after its partition's oldest unacknowledged
 * one (src/kafka/idempotence.ts). The bookkeeping of each request (stamp, sendable, settle on its
 * answer), driven through a steady state of 4 requests in flight on 4 partitions with the sink's
 * own record batches; and the sink's throughput into the mock cluster in the same modes, same run.
 *
 * share = bookkeeping ns per record / the sink's ns per record (1e9 / records/s), as a percentage
 * of its throughput (all the bookkeeping of idempotence, producer id stamping and its CRC
 * included); the target is 5 %.
 */
import { silentLogger } from '../src/logger.js';
import type { KafkaSinkConfig } from '../src/sinks/kafka.js';
import { RequestEncoder } from '../src/sinks/kafka/encode.js';
import { ProducerSequences } from '../src/kafka/idempotence.js';
import type { PartitionBatch } from '../src/kafka/produce.js';
import { pool, runSink, withCluster } from './kafka.bench.js';
import type { BenchContext } from './lib.js';

const PARTITIONS = 4;
const IN_FLIGHT = 4;
const SHARE_TARGET_PERCENT = 5;

interface Bookkeeping {
  start(): Promise<void>;
  stamp(batches: readonly PartitionBatch[]): Promise<void> | undefined;
  sendable(batches: readonly PartitionBatch[]): PartitionBatch[];
  settle(batches: readonly PartitionBatch[]): void;
}

function options() {
  let id = 100n;
  return {
    acquire: () => Promise.resolve({ producerId: id++, producerEpoch: 0 }),
    sleep: () => Promise.resolve(),
    backoff: () => 1,
    stopped: () => false,
    retries: 1,
    logger: silentLogger(),
    failing: () => undefined,
  };
}

const make = (): Bookkeeping => new ProducerSequences(options());

/** The partition batches of one sink request of `mode`, as the sink encodes them. */
async function requestOf(config: { recordsPerMessage: number; records: number }): Promise<PartitionBatch[]> {
  const encoder = new RequestEncoder({
    encoding: 'json',
    recordsPerMessage: config.recordsPerMessage,
    key: 'flow',
    compression: 'none',
    stamped: true,
  });
  const encoded = await encoder.encode(pool(config.records), PARTITIONS, 500, Date.now());
  return encoded.batches.map((b) => ({ ...b, data: Buffer.from(b.data) }));
}

/**
 * ns per record of the bookkeeping for `requests` requests: each stamped and let out as the sink
 * does, up to 4 in flight, the oldest acknowledged (all its batches written) as the next goes.
 */
async function bookkeepingNs(template: PartitionBatch[], requests: number): Promise<number> {
  const seq = make();
  await seq.start();
  const records = template.reduce((n, b) => n + b.records, 0);
  const fresh = (): PartitionBatch[] => template.map((b) => ({ ...b, written: false }));
  // The first request goes alone: until a partition knows the producer only its oldest goes.
  const first = fresh();
  if (seq.stamp(first) !== undefined || seq.sendable(first).length !== first.length)
    throw new Error('kafka accounting bench: the first request did not go out whole');
  for (const b of first) b.written = true;
  seq.settle(first);
  const inFlight: PartitionBatch[][] = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < requests; i++) {
    const request = fresh();
    if (seq.stamp(request) !== undefined) throw new Error('kafka accounting bench: stamp had to wait');
    if (seq.sendable(request).length !== request.length)
      throw new Error('kafka accounting bench: a request did not go out whole');
    inFlight.push(request);
    if (inFlight.length >= IN_FLIGHT) {
      const answered = inFlight.shift()!;
      for (const b of answered) b.written = true;
      seq.settle(answered);
    }
  }
  const ns = Number(process.hrtime.bigint() - t0);
  return ns / (requests * records);
}

async function best(template: PartitionBatch[], requests: number, rounds: number): Promise<number> {
  let min = Infinity;
  for (let r = 0; r < rounds; r++) min = Math.min(min, await bookkeepingNs(template, requests));
  return min;
}

export default async function kafkaAccountingBench(ctx: BenchContext): Promise<void> {
  const modes: {
    name: string;
    sink: Partial<KafkaSinkConfig>;
    request: { recordsPerMessage: number; records: number };
    total: number;
  }[] = [
    {
      name: 'json_1_per_message',
      sink: { encoding: 'json' },
      request: { recordsPerMessage: 1, records: 1000 },
      total: ctx.quick ? 50_000 : 300_000,
    },
    {
      name: 'json_1000_per_message',
      sink: {
        encoding: 'json',
        records_per_message: 1000,
        batch_max_records: 8000,
        batch_max_bytes: 8_000_000,
      },
      request: { recordsPerMessage: 1000, records: 8000 },
      total: ctx.quick ? 200_000 : 1_500_000,
    },
  ];
  const requests = ctx.quick ? 200 : 2000;
  const rounds = ctx.quick ? 3 : 7;
  for (const mode of modes) {
    const template = await requestOf(mode.request);
    const confirmed = await best(template, requests, rounds);
    const run = await withCluster((c) => runSink(c, mode.sink, Math.floor(mode.total / 10), mode.total));
    const sinkNs = 1e9 / run.recordsPerSecond;
    const name = `kafka.accounting.${mode.name}`;
    ctx.report({
      name: `${name}.confirmed`,
      value: confirmed,
      unit: 'ns/record',
      note: 'bookkeeping per record, each batch settled by its own answer only',
    });
    ctx.report({
      name: `${name}.sink`,
      value: run.recordsPerSecond,
      unit: 'records/s',
      note: `the sink with confirmed accounting into the mock: ${sinkNs.toFixed(0)} ns/record`,
    });
    ctx.report({
      name: `${name}.share_total`,
      value: (100 * confirmed) / sinkNs,
      unit: '% of sink throughput',
      target: { value: SHARE_TARGET_PERCENT, better: 'lower' },
      note: 'all of the bookkeeping (stamping and its CRC included) over the sink ns/record',
    });
  }
}
