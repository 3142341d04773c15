/**
 * Tiny components for the pipeline tests: a source of fixed batches, a transform that holds
 * everything until its input completes, a pass-through, and a sink that collects what it gets.
 */
import { Observable, type OperatorFunction } from 'rxjs';
import type {
  ComponentModule,
  Sink,
  SinkModule,
  SourceModule,
  TransformModule,
} from '../../../src/component.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';

export function flow(n: number): FlowRecord {
  return {
    ipVersion: 4,
    sourceIPv4Address: '10.0.0.1',
    destinationIPv4Address: '10.0.0.2',
    sourceTransportPort: 40000 + n,
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 100 * n,
    packetDeltaCount: n,
    flowStartMilliseconds: 1_700_000_000_000,
    flowEndMilliseconds: 1_700_000_000_000 + n,
    tcpControlBits: 0,
    ipDiffServCodePoint: 0,
    ingressInterface: 2,
    flowDirection: 0,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
  };
}

/** Batch `b` of a `fixed` source: `size` records numbered b*size+1 .. b*size+size. */
export function fixedBatch(b: number, size: number, first = 0): FlowBatch {
  return Array.from({ length: size }, (_, i) => flow(first + b * size + i + 1));
}

export interface FixedConfig {
  batches: number;
  size: number;
  first: number;
  complete: boolean;
}

/** Emits `batches` batches of `size` records at once, then completes unless `complete: false`. */
export const fixed: SourceModule<FixedConfig> = {
  type: 'fixed',
  kind: 'source',
  description: 'emits fixed batches',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      batches: { type: 'integer', minimum: 0, default: 3, description: 'how many batches' },
      size: { type: 'integer', minimum: 1, default: 2, description: 'records per batch' },
      first: { type: 'integer', minimum: 0, default: 0, description: 'number of the first record minus one' },
      complete: { type: 'boolean', default: true, description: 'complete after the last batch' },
    },
  },
  example: { batches: 3, size: 2, first: 0, complete: true },
  build(config, context) {
    return new Observable<FlowBatch>((subscriber) => {
      for (let b = 0; b < config.batches; b++) {
        const batch = fixedBatch(b, config.size, config.first);
        context.counters.addReceived(batch.length);
        context.counters.addSent(batch.length);
        subscriber.next(batch);
      }
      if (config.complete) subscriber.complete();
    });
  },
};

export interface HoldConfig {
  max_entries: number;
  evict_timeout_ms: number;
}

/** Keeps every record until its input completes, then emits them as one batch (an aggregator's drain). */
export const hold: TransformModule<HoldConfig> = {
  type: 'hold',
  kind: 'transform',
  description: 'holds records until the input completes',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      max_entries: { type: 'integer', minimum: 1, default: 1000, description: 'records held at most' },
      evict_timeout_ms: { type: 'integer', minimum: 0, default: 5000, description: 'unused here' },
    },
  },
  example: { max_entries: 10, evict_timeout_ms: 1000 },
  build(_config, context): OperatorFunction<FlowBatch, FlowBatch> {
    return (input) =>
      new Observable<FlowBatch>((subscriber) => {
        const held: FlowRecord[] = [];
        return input.subscribe({
          next: (batch) => {
            context.counters.addReceived(batch.length);
            held.push(...batch);
          },
          error: (err: unknown) => subscriber.error(err),
          complete: () => {
            context.counters.addSent(held.length);
            if (held.length > 0) subscriber.next(held.splice(0));
            subscriber.complete();
          },
        });
      });
  },
};

export interface PassConfig {
  mode: 'all' | 'first' | 'none';
  tags: string[];
}

/** Passes batches through; `mode: none` drops them (counted as sampled_out). */
export const pass: TransformModule<PassConfig> = {
  type: 'pass',
  kind: 'transform',
  description: 'passes batches through',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      mode: { type: 'string', enum: ['all', 'first', 'none'], default: 'all', description: 'what to pass' },
      tags: { type: 'array', items: { type: 'string', minLength: 1 }, default: [], description: 'labels' },
    },
  },
  example: { mode: 'all', tags: [] },
  build(config, context): OperatorFunction<FlowBatch, FlowBatch> {
    return (input) =>
      new Observable<FlowBatch>((subscriber) =>
        input.subscribe({
          next: (batch) => {
            context.counters.addReceived(batch.length);
            if (config.mode === 'none') {
              context.counters.addDropped('sampled_out', batch.length);
              return;
            }
            context.counters.addSent(batch.length);
            subscriber.next(batch);
          },
          error: (err: unknown) => subscriber.error(err),
          complete: () => subscriber.complete(),
        }),
      );
  },
};

/** What a `collect` sink saw and in which order its methods ran. */
export interface Collected {
  batches: FlowBatch[];
  events: string[];
}

export interface CollectConfig {
  retry: { attempts: number; backoff_ms: number };
  fail: boolean;
}

/** Sinks by id, filled as `collect` sinks are built. */
export type CollectStore = Map<string, Collected>;

/** A sink that keeps every batch; `fail: true` makes it fail on its first batch. */
export interface CollectHooks {
  /** Awaited in close(), before it records 'close'. */
  beforeClose?: () => Promise<void>;
  /** consume() fails at once, before subscribing, like a sink that cannot connect. */
  refuse?: boolean;
  /** The YAML type; 'collect' by default. */
  type?: string;
  /** Called with each batch as it arrives, before it is kept. */
  onBatch?: (batch: FlowBatch) => void;
}

export function collectModule(store: CollectStore, hooks: CollectHooks = {}): SinkModule<CollectConfig> {
  return {
    type: hooks.type ?? 'collect',
    kind: 'sink',
    description: 'keeps every batch in memory',
    schema: {
      type: 'object',
      additionalProperties: false,
      properties: {
        retry: {
          type: 'object',
          additionalProperties: false,
          default: {},
          description: 'retries',
          properties: {
            attempts: { type: 'integer', minimum: 1, default: 3 },
            backoff_ms: { type: 'integer', minimum: 0, default: 100 },
          },
        },
        fail: { type: 'boolean', default: false },
      },
    },
    example: { retry: { attempts: 3, backoff_ms: 100 }, fail: false },
    build(config, context): Sink {
      const collected: Collected = { batches: [], events: [] };
      store.set(context.id, collected);
      let closed = false;
      return {
        consume(input) {
          if (hooks.refuse) return Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:9092'));
          return new Promise<void>((resolve, reject) => {
            const subscription = input.subscribe({
              next: (batch) => {
                context.counters.addReceived(batch.length);
                if (config.fail) {
                  context.counters.addDropped('sink_failed', batch.length);
                  subscription.unsubscribe();
                  reject(new Error('broker unreachable'));
                  return;
                }
                hooks.onBatch?.(batch);
                collected.batches.push(batch);
                context.counters.addSent(batch.length);
              },
              error: (err: unknown) => {
                collected.events.push('error');
                reject(err instanceof Error ? err : new Error(String(err)));
              },
              complete: () => {
                collected.events.push('complete');
                resolve();
              },
            });
          });
        },
        flush() {
          collected.events.push('flush');
          return Promise.resolve();
        },
        async close() {
          if (closed) return;
          closed = true;
          await hooks.beforeClose?.();
          collected.events.push('close');
        },
      };
    },
  };
}

export function testRegistry(store: CollectStore = new Map(), hooks: CollectHooks = {}): ComponentRegistry {
  const modules: ComponentModule[] = [fixed, hold, pass, collectModule(store, hooks)];
  return new ComponentRegistry(modules);
}

/** Polls `condition` every 5 ms; fails naming `what` after `ms`. */
export async function until(condition: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
