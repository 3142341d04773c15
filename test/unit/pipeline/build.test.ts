import { describe, expect, it } from 'vitest';
import { Observable } from 'rxjs';
import type { ComponentModule, SinkModule, SourceModule } from '../../../src/component.js';
import { buildPipeline } from '../../../src/pipeline/build.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import { PipelineError } from '../../../src/config/errors.js';
import { parsePipeline } from '../../../src/pipeline/load.js';
import type { FlowBatch } from '../../../src/records/flow.js';
import { collectModule, fixed, fixedBatch, hold, pass, type CollectStore } from './components.js';

function setup(text: string, extra: ComponentModule[] = []) {
  const store: CollectStore = new Map();
  const registry = new ComponentRegistry([fixed, hold, pass, collectModule(store), ...extra]);
  const config = parsePipeline(text, 'test.yaml', { registry, env: {} });
  return { store, config };
}

describe('buildPipeline', () => {
  it('moves exact batches from a source through a transform to a sink, and the ledger balances', async () => {
    const { store, config } = setup(`sources:
  flows: {type: fixed, batches: 3, size: 2}
transforms:
  p: {type: pass, inputs: [flows]}
sinks:
  out: {type: collect, inputs: [p]}
`);
    const pipeline = await buildPipeline(config);
    expect(pipeline.state).toBe('built');
    await pipeline.start();
    await pipeline.done;
    expect(pipeline.state).toBe('stopped');
    const out = store.get('out')!;
    expect(out.batches).toEqual([fixedBatch(0, 2), fixedBatch(1, 2), fixedBatch(2, 2)]);
    expect(out.events).toEqual(['complete', 'flush', 'close']);
    const totals = pipeline.totals();
    expect(totals).toMatchObject({
      seen: 6,
      delivered: 6,
      dropped: {},
      droppedTotal: 0,
      inFlight: 0,
      sinks: [
        { id: 'out', type: 'collect', handed: 6, exported: 6, dropped: {}, droppedTotal: 0, inFlight: 0 },
      ],
    });
    expect(totals.stages).toEqual([
      { id: 'flows', type: 'fixed', received: 6, sent: 6, dropped: {}, inFlight: 0 },
      { id: 'p', type: 'pass', received: 6, sent: 6, dropped: {}, inFlight: 0 },
      { id: 'out', type: 'collect', received: 6, sent: 6, dropped: {}, inFlight: 0 },
    ]);
  });

  it('counts what a transform drops, so seen = delivered + dropped', async () => {
    const { store, config } = setup(`sources:
  flows: {type: fixed, batches: 2, size: 5}
transforms:
  p: {type: pass, inputs: [flows], mode: none}
sinks:
  out: {type: collect, inputs: [p]}
`);
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    await pipeline.done;
    expect(store.get('out')!.batches).toEqual([]);
    expect(pipeline.totals()).toMatchObject({
      seen: 10,
      delivered: 0,
      dropped: { sampled_out: 10 },
      droppedTotal: 10,
      inFlight: 0,
    });
  });

  it('shares a node read by several consumers: each gets every batch, the node runs once', async () => {
    const { store, config } = setup(`sources:
  flows: {type: fixed, batches: 2, size: 3}
transforms:
  p: {type: pass, inputs: [flows]}
sinks:
  a: {type: collect, inputs: [p]}
  b: {type: collect, inputs: [p]}
  raw: {type: collect, inputs: [flows]}
`);
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    await pipeline.done;
    const expected = [fixedBatch(0, 3), fixedBatch(1, 3)];
    expect(store.get('a')!.batches).toEqual(expected);
    expect(store.get('b')!.batches).toEqual(expected);
    expect(store.get('raw')!.batches).toEqual(expected);
    const stages = Object.fromEntries(pipeline.totals().stages.map((s) => [s.id, s]));
    expect(stages.flows).toMatchObject({ received: 6, sent: 6 });
    expect(stages.p).toMatchObject({ received: 6, sent: 6 });
    // flows reaches the sinks twice, raw and through p; each sink has its own account.
    const totals = pipeline.totals();
    expect(totals).toMatchObject({ seen: 6, delivered: 12, droppedTotal: 0, inFlight: 0 });
    expect(totals.sinks.map((k) => [k.id, k.handed, k.exported, k.droppedTotal, k.inFlight])).toEqual([
      ['a', 6, 6, 0, 0],
      ['b', 6, 6, 0, 0],
      ['raw', 6, 6, 0, 0],
    ]);
    expect(totals).not.toHaveProperty('exported');
  });

  it('merges several inputs into one transform', async () => {
    const { store, config } = setup(`sources:
  one: {type: fixed, batches: 2, size: 1}
  two: {type: fixed, batches: 1, size: 2, first: 100}
transforms:
  all: {type: hold, inputs: [one, two]}
sinks:
  out: {type: collect, inputs: [all]}
`);
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    await pipeline.done;
    // hold emits once, after both inputs completed.
    expect(store.get('out')!.batches).toEqual([
      [...fixedBatch(0, 1), ...fixedBatch(1, 1), ...fixedBatch(0, 2, 100)],
    ]);
    expect(pipeline.totals()).toMatchObject({ seen: 4, delivered: 4, inFlight: 0, sinks: [{ exported: 4 }] });
  });

  it('stop() drains: records a transform holds reach the sink before it is flushed and closed', async () => {
    const { store, config } = setup(`sources:
  flows: {type: fixed, batches: 3, size: 2, complete: false}
transforms:
  acct: {type: hold, inputs: [flows]}
sinks:
  out: {type: collect, inputs: [acct]}
`);
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    const out = store.get('out')!;
    expect(pipeline.state).toBe('running');
    expect(out.batches).toEqual([]);
    expect(pipeline.totals()).toMatchObject({ seen: 6, delivered: 0, inFlight: 6, sinks: [{ handed: 0 }] });

    const stopping = pipeline.stop();
    expect(pipeline.state).toBe('stopping');
    await stopping;
    expect(pipeline.state).toBe('stopped');
    expect(out.batches).toEqual([[...fixedBatch(0, 2), ...fixedBatch(1, 2), ...fixedBatch(2, 2)]]);
    expect(out.events).toEqual(['complete', 'flush', 'close']);
    expect(pipeline.totals()).toMatchObject({
      seen: 6,
      delivered: 6,
      droppedTotal: 0,
      inFlight: 0,
      sinks: [{ handed: 6, exported: 6, inFlight: 0 }],
    });
    await expect(pipeline.stop()).resolves.toBeUndefined();
    expect(out.events).toEqual(['complete', 'flush', 'close']);
  });

  it('unsubscribes a source that never completes when stopped', async () => {
    let tornDown = 0;
    const endless: SourceModule<Record<string, never>> = {
      type: 'endless',
      kind: 'source',
      description: 'never completes',
      schema: { type: 'object', additionalProperties: false, properties: {} },
      example: {},
      build: () =>
        new Observable<FlowBatch>((subscriber) => {
          subscriber.next(fixedBatch(0, 1));
          return () => void tornDown++;
        }),
    };
    const { store, config } = setup(
      `sources:\n  s: {type: endless}\nsinks:\n  o: {type: collect, inputs: [s]}\n`,
      [endless],
    );
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    expect(tornDown).toBe(0);
    await pipeline.stop();
    expect(tornDown).toBe(1);
    expect(store.get('o')!.batches).toEqual([fixedBatch(0, 1)]);
  });

  it('lets a source that drains on stop emit what it still holds, then complete by itself', async () => {
    let tornDown = 0;
    const draining: SourceModule<Record<string, never>> = {
      type: 'draining',
      kind: 'source',
      description: 'holds records until stop, like the kernel map',
      drainsOnStop: true,
      schema: { type: 'object', additionalProperties: false, properties: {} },
      example: {},
      build: (_config, context) =>
        new Observable<FlowBatch>((subscriber) => {
          subscriber.next(fixedBatch(0, 1));
          const stop = context.stop$!.subscribe(() => {
            subscriber.next(fixedBatch(1, 2));
            subscriber.complete();
          });
          return () => {
            stop.unsubscribe();
            tornDown++;
          };
        }),
    };
    const { store, config } = setup(
      `sources:\n  s: {type: draining}\nsinks:\n  o: {type: collect, inputs: [s]}\n`,
      [draining],
    );
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    await pipeline.stop();
    expect(tornDown).toBe(1);
    expect(store.get('o')!.batches).toEqual([fixedBatch(0, 1), fixedBatch(1, 2)]);
    expect(store.get('o')!.events).toEqual(['complete', 'flush', 'close']);
  });

  it('refuses a second start', async () => {
    const { config } = setup(`sources:\n  s: {type: fixed}\nsinks:\n  o: {type: collect, inputs: [s]}\n`);
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    await expect(pipeline.start()).rejects.toMatchObject({
      code: 'ESTATE',
      message: 'start test.yaml: the pipeline was already started',
    });
    await pipeline.done;
  });

  it('stop() before start() closes the sinks', async () => {
    const { store, config } = setup(
      `sources:\n  s: {type: fixed}\nsinks:\n  o: {type: collect, inputs: [s]}\n`,
    );
    const pipeline = await buildPipeline(config);
    await pipeline.stop();
    expect(pipeline.state).toBe('stopped');
    expect(store.get('o')!.events).toEqual(['flush', 'close']);
  });

  it('drains the rest and rejects done when a sink fails', async () => {
    const { store, config } = setup(`sources:
  flows: {type: fixed, batches: 2, size: 2, complete: false}
  other: {type: fixed, batches: 1, size: 1, complete: false}
sinks:
  bad: {type: collect, inputs: [flows], fail: true}
  good: {type: collect, inputs: [other]}
`);
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    const err = await pipeline.done.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PipelineError);
    expect(err).toMatchObject({ code: 'ERUN', message: 'run sinks.bad (collect): broker unreachable' });
    expect((err as PipelineError).cause).toEqual(new Error('broker unreachable'));
    expect(pipeline.state).toBe('stopped');
    expect(store.get('good')!.batches).toEqual([fixedBatch(0, 1)]);
    expect(store.get('good')!.events).toEqual(['complete', 'flush', 'close']);
    expect(store.get('bad')!.events).toEqual(['flush', 'close']);
    expect(pipeline.totals()).toMatchObject({
      seen: 5,
      // flows emitted its second batch after bad had failed and let go of its input.
      delivered: 5,
      droppedTotal: 0,
      sinks: [
        { id: 'bad', handed: 2, exported: 0, dropped: { sink_failed: 2 } },
        { id: 'good', handed: 1, exported: 1, droppedTotal: 0 },
      ],
    });
    await expect(pipeline.stop()).rejects.toBe(err);
  });

  it('names the source an error started in, stops the other sources and drains', async () => {
    const failing: SourceModule<Record<string, never>> = {
      type: 'failing',
      kind: 'source',
      description: 'fails after one batch',
      schema: { type: 'object', additionalProperties: false, properties: {} },
      example: {},
      build: () =>
        new Observable<FlowBatch>((subscriber) => {
          subscriber.next(fixedBatch(0, 1, 50));
          subscriber.error(new Error('ring buffer closed'));
        }),
    };
    const { store, config } = setup(
      `sources:
  other: {type: fixed, batches: 1, size: 2, complete: false}
  bad: {type: failing}
transforms:
  acct: {type: hold, inputs: [other]}
  p: {type: pass, inputs: [bad]}
sinks:
  held: {type: collect, inputs: [acct]}
  direct: {type: collect, inputs: [p]}
`,
      [failing],
    );
    const pipeline = await buildPipeline(config);
    // The source fails while start() connects it, so start() reports it too.
    const err = await pipeline.start().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERUN', message: 'run sources.bad (failing): ring buffer closed' });
    await expect(pipeline.done).rejects.toBe(err);
    expect(store.get('direct')!.batches).toEqual([fixedBatch(0, 1, 50)]);
    expect(store.get('direct')!.events).toEqual(['error', 'flush', 'close']);
    // 'other' never completes by itself: the failure stopped it, and what acct held was delivered.
    expect(store.get('held')!.batches).toEqual([fixedBatch(0, 2)]);
    expect(store.get('held')!.events).toEqual(['complete', 'flush', 'close']);
  });

  it('rejects start() when a sink fails before it subscribes, and still closes every sink', async () => {
    const store: CollectStore = new Map();
    const registry = new ComponentRegistry([
      fixed,
      collectModule(store),
      collectModule(store, { type: 'refusing', refuse: true }),
    ]);
    const config = parsePipeline(
      `sources:
  flows: {type: fixed, complete: false}
sinks:
  good: {type: collect, inputs: [flows]}
  kafka: {type: refusing, inputs: [flows]}
`,
      'test.yaml',
      { registry, env: {} },
    );
    const pipeline = await buildPipeline(config);
    await expect(pipeline.start()).rejects.toMatchObject({
      code: 'ERUN',
      message: 'run sinks.kafka (refusing): connect ECONNREFUSED 127.0.0.1:9092',
    });
    await expect(pipeline.done).rejects.toMatchObject({ code: 'ERUN' });
    // The sources were stopped before they started, so nothing flowed.
    expect(store.get('good')!.batches).toEqual([]);
    expect(store.get('good')!.events).toEqual(['complete', 'flush', 'close']);
    expect(store.get('kafka')!.events).toEqual(['flush', 'close']);
  });

  it('names the component whose build failed and closes the sinks built before it', async () => {
    const broken: SinkModule<Record<string, never>> = {
      type: 'broken',
      kind: 'sink',
      description: 'fails to build',
      schema: { type: 'object', additionalProperties: false, properties: {} },
      example: {},
      build() {
        throw new Error('no such interface eth9');
      },
    };
    const { store, config } = setup(
      `sources:
  s: {type: fixed}
sinks:
  first: {type: collect, inputs: [s]}
  late: {type: broken, inputs: [s]}
`,
      [broken],
    );
    await expect(buildPipeline(config)).rejects.toMatchObject({
      code: 'EBUILD',
      message: 'build sinks.late (broken): no such interface eth9',
    });
    expect(store.get('first')!.events).toEqual(['close']);
  });
});
