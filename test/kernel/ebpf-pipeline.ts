/**
 * An `ebpf_flows` pipeline from YAML on one interface of a namespace, into a `collect` sink, with
 * its log lines captured: for tests of the source's options (drops, rtt).
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { buildPipeline, type Pipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import type { FlowRecord } from '../../src/records/flow.js';
import ebpfFlowsModule from '../../src/sources/ebpf_flows.js';
import { collectModule, type CollectStore } from '../unit/pipeline/components.js';

export interface LogLine {
  level: number;
  msg: string;
  hook?: string;
  unmatched?: Record<string, number>;
}

export const WARN = 40;

export interface EbpfPipelineOptions {
  /** Names the pipeline file and, with the pid, the instance. */
  name: string;
  iface: string;
  netns: string;
  pinRoot: string;
  /** More lines of the source, indented by four spaces. */
  options: string;
  /** Default [ingress, egress]. */
  directions?: ('ingress' | 'egress')[];
}

export async function startEbpfPipeline(o: EbpfPipelineOptions) {
  const store: CollectStore = new Map();
  const logs: LogLine[] = [];
  const registry = new ComponentRegistry([ebpfFlowsModule, collectModule(store)]);
  const yaml = `
sources:
  kernel:
    type: ebpf_flows
    interfaces: ['\${IFACE}']
    netns: \${NETNS}
    directions: [${(o.directions ?? ['ingress', 'egress']).join(', ')}]
    instance: \${INSTANCE}
    pin_root: \${PIN_ROOT}
    eviction_interval_ms: 1h
${o.options}
sinks:
  out:
    type: collect
    inputs: [kernel]
`;
  const config = parsePipeline(yaml, `${o.name}.yaml`, {
    registry,
    env: { IFACE: o.iface, NETNS: o.netns, INSTANCE: `${o.name}-${process.pid}`, PIN_ROOT: o.pinRoot },
  });
  const pipeline = await startLogged(config, logs);
  const collected = (): FlowRecord[] => [...store.values()].flatMap((c) => c.batches.flat());
  return { pipeline, collected, logs };
}

/** Builds and starts `config`, its log lines (pino at info, as JSON) parsed into `logs`. */
export async function startLogged<L>(config: ReturnType<typeof parsePipeline>, logs: L[]): Promise<Pipeline> {
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as L);
      done();
    },
  });
  const pipeline = await buildPipeline(config, { logger: pino({ level: 'info' }, stream) });
  await pipeline.start();
  return pipeline;
}
