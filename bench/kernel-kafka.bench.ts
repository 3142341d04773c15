/**
 * Kernel -> Kafka: flow records per second from a full kernel flow map to the mock cluster. The
 * flow map of bpf/flow.o is filled with N distinct flows by running the flow program (test runs
 * over N distinct frames, not timed); the timed part is one eviction as the ebpf_flows source does
 * it (swap of the flow maps, batch drain, decode) followed by the kafka sink until every record is
 * acknowledged. One record per message and batched messages, JSON and protobuf, each against a
 * same-run baseline: the same sink on the same number of pre-built records (bench/kafka.bench.ts),
 * so the difference is what reading the kernel map adds. Needs root.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Subject } from 'rxjs';
import type { KafkaMockCluster } from '../src/devtools/kafka-mock.js';
import { FlowMaps, setFlowMapMaxEntries } from '../src/datapath/flow/maps.js';
import { decodeFlowMapBatch, monotonicToWallClockOffsetMs } from '../src/datapath/flow/types.js';
import { ObjectSpec, type Collection, type Program } from '../src/datapath/index.js';
import { Ledger } from '../src/ledger.js';
import { silentLogger } from '../src/logger.js';
import type { FlowBatch } from '../src/records/flow.js';
import kafkaModule, { type KafkaSinkConfig } from '../src/sinks/kafka.js';
import {
  BATCHED_TARGET,
  SINGLE_TARGET,
  note,
  processCpuMs,
  runSink,
  selfCpuMs,
  withCluster,
  type Run,
} from './kafka.bench.js';
import type { BenchContext, Figure } from './lib.js';

/** Records handed to the sink per next(), as the map tracer emits an eviction in slices. */
const SLICE = 1000;

function repoRoot(): string {
  // Runs from bench/ (tsx) or dist/bench/ (npm run bench).
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'bpf', 'flow.c'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('kernel-kafka bench: bpf/flow.c not found above the bench file');
    dir = up;
  }
  return dir;
}

/**
 * Ethernet + IPv4 + UDP (18 bytes of payload) from 10.a.b.c:port to 198.51.100.2:53; flow i gets
 * its own source address and port, so N frames are N flows.
 */
function udpFrame(i: number): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + 18);
  const port = 1024 + (i % 50_000);
  const host = Math.floor(i / 50_000);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00], 0);
  f.set(
    [0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17, 0, 0, 10, (host >> 8) & 255, host & 255, 1, 198, 51, 100, 2],
    14,
  );
  f.set([port >> 8, port & 0xff, 0, 53, 0, 26, 0, 0], 34);
  return f;
}

/** Counts every frame once into the active flow map: N new flows. */
function fill(program: Program, frames: Uint8Array[]): void {
  for (const f of frames) {
    const { retval } = program.testRun(f);
    // TC_ACT_UNSPEC: the program passes every packet on.
    if (retval !== -1) throw new Error(`kernel-kafka bench: flow_ingress returned ${retval}`);
  }
}

/**
 * `rounds` times: fill the map with the frames' flows (not timed), then evict, decode and write
 * them with the sink until flushed (timed). The sink is built once, as the pipeline builds it.
 */
async function runKernelToKafka(
  cluster: KafkaMockCluster,
  flow: Collection,
  frames: Uint8Array[],
  config: Partial<KafkaSinkConfig>,
  rounds: number,
): Promise<Run & { evictMs: number; drainMs: number }> {
  const program = flow.program('flow_ingress');
  const maps = new FlowMaps(flow);
  const offsetMs = monotonicToWallClockOffsetMs();
  const ledger = new Ledger();
  const counters = ledger.stage('bench', 'kafka', 'sink');
  const sink = kafkaModule.build(
    { bootstrap_servers: cluster.brokers, topic: 'bench', buffer_max_records: 1_000_000, ...config },
    { id: 'bench', logger: silentLogger(), ledger, counters },
  );
  const input = new Subject<FlowBatch>();
  const consumed = sink.consume(input);
  let evicted = 0;
  let drainNs = 0;
  const round = async (): Promise<number> => {
    const t0 = process.hrtime.bigint();
    const drained = maps.evict();
    const tDrained = process.hrtime.bigint();
    const records = decodeFlowMapBatch(drained, maps.active.valueBufferSize, offsetMs);
    const t1 = process.hrtime.bigint();
    drainNs += Number(tDrained - t0);
    if (records.length !== frames.length) {
      throw new Error(`kernel-kafka bench: evicted ${records.length} flows, filled ${frames.length}`);
    }
    evicted += records.length;
    for (let i = 0; i < records.length; i += SLICE) input.next(records.slice(i, i + SLICE));
    await sink.flush();
    return Number(t1 - t0);
  };

  // Warm-up: connection, metadata, JIT.
  fill(program, frames);
  await round();
  drainNs = 0;
  let seconds = 0;
  let evictNs = 0;
  let cpuMs = 0;
  let mockMs = 0;
  for (let r = 0; r < rounds; r++) {
    fill(program, frames);
    const cpu0 = selfCpuMs();
    const mock0 = processCpuMs(cluster.pid);
    const t0 = process.hrtime.bigint();
    evictNs += await round();
    seconds += Number(process.hrtime.bigint() - t0) / 1e9;
    cpuMs += selfCpuMs() - cpu0;
    mockMs += processCpuMs(cluster.pid) - mock0;
  }
  input.complete();
  await consumed;
  await sink.close();
  if (counters.droppedTotal() > 0 || counters.sent !== evicted) {
    throw new Error(
      `kernel-kafka bench: ${counters.sent} of ${evicted} sent, dropped ${JSON.stringify(counters.snapshot().dropped)}`,
    );
  }
  const total = frames.length * rounds;
  return {
    recordsPerSecond: total / seconds,
    cpuUsPerRecord: (cpuMs * 1000) / total,
    mockCpuUsPerRecord: (mockMs * 1000) / total,
    evictMs: evictNs / rounds / 1e6,
    drainMs: drainNs / rounds / 1e6,
  };
}

export default async function kernelKafkaBench(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('kernel-kafka bench: needs root to load bpf/flow.o; run it as root');
  const flows = ctx.quick ? 20_000 : 100_000;
  const rounds = ctx.quick ? 1 : 3;
  const frames = Array.from({ length: flows }, (_, i) => udpFrame(i));
  const batched = { records_per_message: 1000, batch_max_records: 8000, batch_max_bytes: 8_000_000 };
  const modes: { name: string; config: Partial<KafkaSinkConfig>; target: number }[] = [
    { name: 'json_1_per_message', config: { encoding: 'json' }, target: SINGLE_TARGET },
    { name: 'protobuf_1_per_message', config: { encoding: 'protobuf' }, target: SINGLE_TARGET },
    { name: 'json_1000_per_message', config: { encoding: 'json', ...batched }, target: BATCHED_TARGET },
    {
      name: 'protobuf_1000_per_message',
      config: { encoding: 'protobuf', ...batched },
      target: BATCHED_TARGET,
    },
  ];

  const flow = setFlowMapMaxEntries(
    ObjectSpec.open(join(repoRoot(), 'bpf', 'flow.o')),
    Math.ceil(flows * 1.25),
  ).load();
  try {
    for (const mode of modes) {
      const alone = await withCluster((c) => runSink(c, mode.config, flows, flows * rounds));
      const baseline = { name: `kernel_kafka.sink_alone_${mode.name}`, value: alone.recordsPerSecond };
      ctx.report({ ...baseline, unit: 'records/s', note: note(alone, ', pre-built records') });
      const run = await withCluster((c) => runKernelToKafka(c, flow, frames, mode.config, rounds));
      const figure: Figure = {
        name: `kernel_kafka.${mode.name}`,
        value: run.recordsPerSecond,
        unit: 'records/s',
        baseline,
        target: { value: mode.target, better: 'higher' },
        note: note(
          run,
          `; evict of ${flows} flows ${run.evictMs.toFixed(1)} ms (swap+drain ${run.drainMs.toFixed(1)}, decode the rest); ${rounds} rounds`,
        ),
      };
      ctx.report(figure);
    }
  } finally {
    flow.close();
  }
}
