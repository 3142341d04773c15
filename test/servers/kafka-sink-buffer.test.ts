/**
 * The buffer the pipeline keeps in front of a sink, with a Kafka sink whose only broker is away:
 * a file_replay pipeline built from YAML, the topic read back with kcat. drop_newest keeps the
 * first buffer_max_records, drop_oldest the last, each dropping the rest as sink_buffer_full;
 * block drops nothing and holds the replay until the broker is back, and holds a kafka_consumer
 * reading another cluster the same way (its next fetch waits).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import { buildPipeline, type Pipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import { modules } from '../../src/pipeline/registry.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeTempDir } from '../fixtures/cleanup.js';
import { readWithKcat, startKafkaMock } from '../fixtures/kafka.js';
import { describeWith } from '../fixtures/privilege.js';
import { flowRecord } from '../fixtures/records.js';

const T0 = 1_700_000_000_000;
const N = 100;
const BATCH = 7;
const MAX = 10;

/** Record `i`: its index rides in flowStartMilliseconds, so every message read back names its record. */
const record = (i: number): FlowRecord =>
  flowRecord({
    flowStartMilliseconds: T0 + i,
    flowEndMilliseconds: T0 + i + 1000,
    sourceTransportPort: 1024 + i,
  });

const range = (from: number, count: number): number[] => Array.from({ length: count }, (_, k) => from + k);

/** Waits for `cond`, polling; fails naming `what` after `ms`. */
async function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describeWith({ commands: ['kcat'] }, 'the buffer in front of a kafka sink whose broker is away', () => {
  let cluster: KafkaMockCluster;
  let input: string;

  beforeAll(async () => {
    cluster = await startKafkaMock();
    input = path.join(makeTempDir('rxbuf'), 'in.jsonl');
    fs.writeFileSync(
      input,
      range(0, N)
        .map((i) => `${JSON.stringify(record(i))}\n`)
        .join(''),
    );
  });

  afterAll(async () => {
    await cluster?.stop();
    await cleanup.dispose();
  });

  async function pipelineTo(topic: string, whenFull: string): Promise<Pipeline> {
    const config = parsePipeline(
      `sources:
  in: {type: file_replay, paths: ['${input}'], batch_size: ${BATCH}}
sinks:
  out:
    type: kafka
    inputs: [in]
    bootstrap_servers: ['${cluster.brokers.join("', '")}']
    topic: ${topic}
    linger_ms: 2
    buffer_max_records: ${MAX}
    when_full: ${whenFull}
    retry_initial_ms: 50
    retry_max_ms: 200
    connection_timeout_ms: 300
`,
      `${topic}.yaml`,
      { registry: new ComponentRegistry(modules), env: {} },
    );
    return buildPipeline(config);
  }

  const stage = (pipeline: Pipeline, id: string) => pipeline.totals().stages.find((s) => s.id === id)!;
  const indexes = async (topic: string): Promise<number[]> =>
    (await readWithKcat(cluster.bootstrap, topic)).map(
      (m) => (JSON.parse(m.value!) as FlowRecord).flowStartMilliseconds - T0,
    );

  it('drop_newest keeps the first buffer_max_records, drop_oldest the last; the rest count as sink_buffer_full', async () => {
    for (const [topic, whenFull, kept] of [
      ['buf-newest', 'drop_newest', range(0, MAX)],
      ['buf-oldest', 'drop_oldest', range(N - MAX, MAX)],
    ] as const) {
      await cluster.createTopic(topic, 1);
      await cluster.brokerDown(1);
      const pipeline = await pipelineTo(topic, whenFull);
      await pipeline.start();
      await until(() => stage(pipeline, 'out').received === N, 'the replay to end');
      expect(pipeline.totals().sinks, whenFull).toEqual([
        expect.objectContaining({
          id: 'out',
          handed: N,
          exported: 0,
          dropped: { sink_buffer_full: N - MAX },
          inFlight: MAX,
        }),
      ]);
      await cluster.brokerUp(1);
      await pipeline.done;
      expect(await indexes(topic), whenFull).toEqual(kept);
      expect(pipeline.totals().sinks[0], whenFull).toMatchObject({
        handed: N,
        exported: MAX,
        dropped: { sink_buffer_full: N - MAX },
        inFlight: 0,
      });
    }
  }, 60_000);

  it('block holds a kafka_consumer while the sink is full and drops nothing: every record reaches the other cluster once', async () => {
    const upstream = await startKafkaMock();
    try {
      await upstream.createTopic('buf-up', 1);
      // Records into the upstream cluster, written by a replay into its kafka sink.
      const write = async (from: number, count: number): Promise<void> => {
        const file = path.join(path.dirname(input), `up-${from}.jsonl`);
        fs.writeFileSync(
          file,
          range(from, count)
            .map((i) => `${JSON.stringify(record(i))}\n`)
            .join(''),
        );
        const writer = await buildPipeline(
          parsePipeline(
            `sources:
  in: {type: file_replay, paths: ['${file}'], batch_size: ${BATCH}}
sinks:
  out: {type: kafka, inputs: [in], bootstrap_servers: ['${upstream.bootstrap}'], topic: buf-up, linger_ms: 2}
`,
            `writer-${from}.yaml`,
            { registry: new ComponentRegistry(modules), env: {} },
          ),
        );
        await writer.start();
        await writer.done;
        expect(writer.totals().sinks[0]).toMatchObject({ handed: count, exported: count });
      };
      const FIRST = 2 * MAX;
      await write(0, FIRST);

      await cluster.createTopic('buf-down', 1);
      await cluster.brokerDown(1);
      const pipeline = await buildPipeline(
        parsePipeline(
          `sources:
  in:
    type: kafka_consumer
    bootstrap_servers: ['${upstream.bootstrap}']
    topic: buf-up
    group_id: buf-block
    from_beginning: true
    encoding: json
sinks:
  out:
    type: kafka
    inputs: [in]
    bootstrap_servers: ['${cluster.brokers.join("', '")}']
    topic: buf-down
    linger_ms: 2
    buffer_max_records: ${MAX}
    when_full: block
    retry_initial_ms: 50
    retry_max_ms: 200
    connection_timeout_ms: 300
`,
          'consumer.yaml',
          { registry: new ComponentRegistry(modules), env: {} },
        ),
      );
      await pipeline.start();
      await until(() => stage(pipeline, 'in').sent === FIRST, 'the consumer to read the first records');
      // The sink holds more than buffer_max_records: the consumer must not fetch what comes next.
      await write(FIRST, N - FIRST);
      await new Promise((r) => setTimeout(r, 1000));
      expect(stage(pipeline, 'in').sent).toBe(FIRST);
      expect(stage(pipeline, 'out')).toMatchObject({ received: FIRST, sent: 0, dropped: {} });

      await cluster.brokerUp(1);
      await until(() => stage(pipeline, 'out').sent === N, 'every record in the topic', 30_000);
      await pipeline.stop();
      expect((await indexes('buf-down')).sort((a, b) => a - b)).toEqual(range(0, N));
      expect(pipeline.totals().sinks[0]).toMatchObject({ handed: N, exported: N, dropped: {}, inFlight: 0 });
    } finally {
      await upstream.stop();
    }
  }, 60_000);

  it('block holds the replay while the sink is full and drops nothing: every record reaches the topic once, in order', async () => {
    await cluster.createTopic('buf-block', 1);
    await cluster.brokerDown(1);
    const pipeline = await pipelineTo('buf-block', 'block');
    await pipeline.start();
    await until(() => stage(pipeline, 'out').received >= MAX, 'the sink to hold buffer_max_records');
    // The sink retries its connection meanwhile; the replay stays held at most one batch past the bound.
    await new Promise((r) => setTimeout(r, 500));
    expect(stage(pipeline, 'in').sent).toBeLessThanOrEqual(MAX + BATCH);
    expect(stage(pipeline, 'out')).toMatchObject({
      received: stage(pipeline, 'in').sent,
      sent: 0,
      dropped: {},
    });

    await cluster.brokerUp(1);
    await pipeline.done;
    expect(await indexes('buf-block')).toEqual(range(0, N));
    expect(pipeline.totals().sinks[0]).toMatchObject({ handed: N, exported: N, dropped: {}, inFlight: 0 });
  }, 60_000);
});
