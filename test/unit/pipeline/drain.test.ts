import { NEVER, Observable } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { Sink, SinkModule, SourceModule } from '../../../src/component.js';
import { buildPipeline } from '../../../src/pipeline/build.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { PipelineConfigError } from '../../../src/config/errors.js';
import { parsePipeline } from '../../../src/pipeline/load.js';
import type { FlowBatch } from '../../../src/records/flow.js';
import { fixedBatch } from './components.js';

/** A source that emits one batch of 5 and then runs until the pipeline stops. */
const endless: SourceModule<Record<string, never>> = {
  type: 'endless',
  kind: 'source',
  description: 'one batch, then nothing until stopped',
  schema: { type: 'object', additionalProperties: false, properties: {} },
  example: {},
  build: (_config, context) =>
    new Observable<FlowBatch>((subscriber) => {
      context.counters.addReceived(5);
      context.counters.addSent(5);
      subscriber.next(fixedBatch(0, 5));
      return NEVER.subscribe(subscriber);
    }),
};

interface SlowConfig {
  /** How long writing what it holds takes; -1: forever (the brokers are away). */
  write_ms: number;
  /** close() never resolves and consume() never ends: a sink that ignores the deadline. */
  stuck?: boolean;
}

/** A sink that holds what it gets until it has written it (write_ms after its input ends). */
function slowModule(closes: (number | undefined)[]): SinkModule<SlowConfig> {
  return {
    type: 'slow',
    kind: 'sink',
    description: 'writes slowly',
    schema: {
      type: 'object',
      additionalProperties: false,
      required: ['write_ms'],
      properties: { write_ms: { type: 'integer', minimum: -1 }, stuck: { type: 'boolean' } },
    },
    example: { write_ms: 0 },
    build(config, context): Sink {
      let held = 0;
      let written: (() => void) | undefined;
      let ended: (() => void) | undefined;
      const flushed = new Promise<void>((resolve) => (written = resolve));
      return {
        consume(input) {
          return new Promise<void>((resolve) => {
            ended = resolve;
            input.subscribe({
              next: (batch) => {
                context.counters.addReceived(batch.length);
                held += batch.length;
              },
              complete: () => {
                if (config.write_ms >= 0) {
                  setTimeout(() => {
                    context.counters.addSent(held);
                    held = 0;
                    written!();
                  }, config.write_ms);
                }
                void flushed.then(resolve);
              },
            });
          });
        },
        flush: () => flushed,
        close(timeoutMs) {
          closes.push(timeoutMs);
          if (config.stuck === true) return new Promise<void>(() => undefined);
          context.counters.addDropped('shutdown', held);
          held = 0;
          ended?.();
          return Promise.resolve();
        },
      };
    },
  };
}

function pipelineText(drain: string | undefined, writeMs: number, stuck = false): string {
  return `${drain === undefined ? '' : `drain_timeout_ms: ${drain}\n`}sources:
  flows: {type: endless}
sinks:
  out: {type: slow, write_ms: ${writeMs}, stuck: ${stuck}, inputs: [flows]}
`;
}

describe('the pipeline drain deadline', () => {
  it('drain_timeout_ms: 20 s unless set, a duration, within 0 to 1 h', () => {
    const closes: (number | undefined)[] = [];
    const registry = new ComponentRegistry([endless, slowModule(closes)]);
    const parse = (drain: string | undefined) =>
      parsePipeline(pipelineText(drain, 0), 'x.yaml', { registry, env: {} }).settings;
    expect(parse(undefined)).toEqual({ drain_timeout_ms: 20_000 });
    expect(parse('5s')).toEqual({ drain_timeout_ms: 5000 });
    expect(parse('1500')).toEqual({ drain_timeout_ms: 1500 });
    const problems = (drain: string) => {
      try {
        parse(drain);
      } catch (err) {
        return (err as PipelineConfigError).problems.map((p) => p.message);
      }
      return [];
    };
    expect(problems('soon')).toEqual([
      'bad duration "soon"; write milliseconds as an integer (5000) or a number with a unit: 500ms, 5s, 1m, 1h, 1m30s',
    ]);
    expect(problems('2h')).toEqual(['must be from 0 to 3600000 ms (1h); got 7200000']);
  });

  it('stop() with a sink that cannot write: at drain_timeout_ms the sink is closed with no time left, what it holds counted shutdown', async () => {
    const closes: (number | undefined)[] = [];
    const registry = new ComponentRegistry([endless, slowModule(closes)]);
    const config = parsePipeline(pipelineText('300ms', -1), 'x.yaml', { registry, env: {} });
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    const stoppedAt = Date.now();
    await pipeline.stop();
    const took = Date.now() - stoppedAt;
    expect(took).toBeGreaterThanOrEqual(300);
    expect(took).toBeLessThan(300 + 2000);
    expect(closes).toEqual([0]);
    expect(pipeline.totals().sinks).toMatchObject([
      { id: 'out', handed: 5, exported: 0, dropped: { shutdown: 5 }, inFlight: 0 },
    ]);
  });

  it('stop() with a sink that writes in time: it is closed after its flush, with the time left', async () => {
    const closes: (number | undefined)[] = [];
    const registry = new ComponentRegistry([endless, slowModule(closes)]);
    const config = parsePipeline(pipelineText('10s', 50), 'x.yaml', { registry, env: {} });
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    await pipeline.stop();
    expect(closes).toHaveLength(1);
    expect(closes[0]).toBeGreaterThan(5000);
    expect(closes[0]).toBeLessThanOrEqual(10_000);
    expect(pipeline.totals().sinks).toMatchObject([
      { id: 'out', handed: 5, exported: 5, dropped: {}, inFlight: 0 },
    ]);
  });

  it('a sink that ignores the deadline is left behind a second after it: stop() resolves, the pipeline stops', async () => {
    const closes: (number | undefined)[] = [];
    const registry = new ComponentRegistry([endless, slowModule(closes)]);
    const config = parsePipeline(pipelineText('300ms', -1, true), 'x.yaml', { registry, env: {} });
    const pipeline = await buildPipeline(config);
    await pipeline.start();
    const stoppedAt = Date.now();
    await pipeline.stop();
    const took = Date.now() - stoppedAt;
    expect(took).toBeGreaterThanOrEqual(300 + 1000);
    expect(took).toBeLessThan(300 + 1000 + 1000);
    expect(closes).toEqual([0]);
    expect(pipeline.state).toBe('stopped');
    // It still holds its 5 records: in flight, not lost without a reason.
    expect(pipeline.totals().sinks).toMatchObject([
      { id: 'out', handed: 5, exported: 0, dropped: {}, inFlight: 5 },
    ]);
  });
});
