import type { Observable, OperatorFunction, SchedulerLike } from 'rxjs';
import type { Ledger, StageCounters } from './ledger.js';
import type { Logger } from './logger.js';
import type { FlowBatch } from './records.js';

/**
 * Every component module (one file per YAML `type`) exports a `ComponentModule`. `schema` is a
 * JSON Schema (draft-07) object with `additionalProperties: false` at every level: it validates
 * the user's config and makes up the editor schema of the pipeline format. Option names carry
 * their unit (`_ms`, `_bytes`).
 */
export type ComponentKind = 'source' | 'transform' | 'sink';

export interface JsonSchema {
  [key: string]: unknown;
}

/**
 * The longest wait a Node timer holds: setTimeout and setInterval take a signed 32-bit count of
 * milliseconds and turn anything longer into 1 ms (with only a warning), so "almost never" would
 * become "every millisecond". Every `*_ms` option stops here.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The schema of a `*_ms` option: an integer of milliseconds from `minimum` to `maximum` (by default
 * the longest a timer holds), with its default if any.
 */
export function msOption(
  description: string,
  defaultValue: number | undefined,
  minimum: number,
  maximum: number = MAX_TIMER_MS,
): JsonSchema {
  return {
    type: 'integer',
    minimum,
    maximum,
    ...(defaultValue === undefined ? {} : { default: defaultValue }),
    description,
  };
}

export interface ComponentContext {
  /** The id the user gave the component in the pipeline file. */
  id: string;
  /**
   * The pipeline's name (its file name without the extension), which tells agents on one host
   * apart: it names the status socket, and the metrics sink's service.instance.id.
   */
  pipeline?: string;
  logger: Logger;
  ledger: Ledger;
  /** This component's counters in the ledger. */
  counters: StageCounters;
  /** Timers run on this scheduler, so tests can drive them in virtual time. */
  scheduler?: SchedulerLike;
  /**
   * Emits once when the pipeline drains. A source whose module sets `drainsOnStop` emits what it
   * still holds (e.g. the kernel map) and completes; other sources are unsubscribed.
   */
  stop$?: Observable<void>;
  /**
   * Where the component says it cannot do its job (a port taken, a broker unreachable, a disk
   * full) and when it can again; shown by `rxflow status`, the health endpoint and the logs.
   */
  health?: HealthReporter;
  /**
   * Emits on a flush on demand (`rxflow flush`): a source that holds what the kernel counted (a
   * map tracer) reads and removes it now instead of at its next eviction.
   */
  flush$?: Observable<void>;
  /** Where a firewall's session replication (nats_sessions) offers its status to other components. */
  replication?: ReplicationStatusBoard;
}

/**
 * What a metrics source reads of a firewall's replication status: the part of the session
 * replication's live status (src/ha: liveStatus()) it publishes, declared here so that neither side
 * depends on the other's module.
 */
export interface ReplicationStatusView {
  connected: boolean;
  ready: boolean;
  /** The kernel map compared with the bucket; undefined before the first comparison. */
  counts: { local: number; kv: number; both: number; onlyLocal: number; onlyKv: number } | undefined;
  /** Age of the oldest change not yet in the bucket, ms; 0 when none. */
  lagMs: number;
  /** Changes not yet acknowledged. */
  pending: number;
  puts: number;
  deletes: number;
  failedWrites: number;
  /** The last full sync; undefined before the first. */
  lastSync: { atMs: number } | undefined;
}

/** Reads a firewall instance's replication status now; undefined while replication has not started. */
export type ReplicationStatusReader = () => Promise<ReplicationStatusView | undefined>;

/**
 * The replication status of each firewall instance a pipeline replicates: the sink replicating it
 * offers a reader, and a metrics source reads it at each sample; neither imports the other.
 */
export interface ReplicationStatusBoard {
  offer(instance: string, read: ReplicationStatusReader): void;
  /** The reader of `instance`; undefined when nothing in the pipeline replicates it. */
  reader(instance: string): ReplicationStatusReader | undefined;
}

/** A component's health, as it reports it. */
export interface HealthReporter {
  /** The component cannot do its job right now; `reason` says why and what to do. */
  degraded(reason: string): void;
  /** It can again. */
  healthy(): void;
}

export interface Sink {
  /** Subscribes the sink to its input; returns when the input completes and everything is written. */
  consume(input: Observable<FlowBatch>): Promise<void>;
  /** Writes everything buffered; safe to call more than once. */
  flush(): Promise<void>;
  /**
   * Flushes, then releases connections; safe to call more than once. With `timeoutMs`, resolves
   * within it: what is still held then is counted `shutdown` in the ledger.
   */
  close(timeoutMs?: number): Promise<void>;
}

interface ModuleBase<C> {
  type: string;
  kind: ComponentKind;
  /** One line, shown by `rxflow validate --list` and in the JSON Schema. */
  description: string;
  schema: JsonSchema;
  /** A complete example config, which a test parses with `schema`. */
  example: C;
}

export interface SourceModule<C> extends ModuleBase<C> {
  kind: 'source';
  /** The source completes by itself after a final flush when context.stop$ emits. */
  drainsOnStop?: boolean;
  /** The source reads the kernel at once when context.flush$ emits (`rxflow flush`). */
  flushesOnDemand?: boolean;
  build(config: C, context: ComponentContext): Observable<FlowBatch>;
}

export interface TransformModule<C> extends ModuleBase<C> {
  kind: 'transform';
  build(config: C, context: ComponentContext): OperatorFunction<FlowBatch, FlowBatch>;
}

export interface SinkModule<C> extends ModuleBase<C> {
  kind: 'sink';
  build(config: C, context: ComponentContext): Sink;
}

export type ComponentModule<C = unknown> = SourceModule<C> | TransformModule<C> | SinkModule<C>;
