import type { Observable, OperatorFunction, SchedulerLike } from 'rxjs';
import type { Ledger, StageCounters } from './ledger.js';
import type { Logger } from './logger.js';
import type { FlowBatch } from './records/flow.js';

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
  /**
   * Sources: set by the pipeline when a sink downstream has `when_full: block`. While that sink's
   * buffer is full, `ready()` returns a promise that resolves once it has room; a source that can
   * wait (a file read, a consumer fetch) awaits it before it emits its next batch.
   */
  hold?: SourceHold;
  /**
   * Sources: set by the pipeline. A source whose start goes on after it is subscribed, without
   * holding up the event loop (the kernel source attaching to 1,000 interfaces), hands the
   * promise of that start here: the pipeline's start() resolves, and the pipeline is ready, once
   * it has settled. A start that fails errors the source's Observable before the promise settles.
   */
  starting?: (started: Promise<unknown>) => void;
  /**
   * Sources: set by the pipeline. A source whose stop goes on after it completes, off the event
   * loop (the kernel source detaching 1,000 interfaces), hands it here: the pipeline waits for
   * `done` until the drain deadline, then calls `atDeadline`, which must let go of the rest at
   * once (and say what it left); it waits for `done` a second more, as it does for the sinks.
   */
  releasing?: (release: PendingRelease) => void;
  /**
   * Sources: set by the pipeline. While it drains, the milliseconds left until its deadline (0
   * once passed); undefined otherwise. A source that must do something before its final batch
   * (the kernel source detaching its links, so that batch holds every packet they counted) bounds
   * it by this.
   */
  drainLeft?: () => number | undefined;
  /**
   * Sinks: true when the pipeline reads the sink's input through the buffer it keeps in front of
   * the sink (src/sinks/buffer.ts), which counts what the sink is handed and applies
   * buffer_max_records and when_full. Unset, the sink puts the same buffer in front of itself
   * (a sink built on its own, as tests do).
   */
  bufferedByPipeline?: boolean;
}

/** A source's stop still under way (see ComponentContext.releasing). */
export interface PendingRelease {
  readonly done: Promise<void>;
  atDeadline(): void;
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

/** What a source that can wait asks before each batch, when a sink downstream blocks upstream. */
export interface SourceHold {
  /** Undefined while every blocking sink downstream has room; else resolves once they have. */
  ready(): Promise<void> | undefined;
}

/**
 * What a sink's buffer does with a record that finds it full (buffer_max_records held): drop it
 * (`drop_newest`), drop the oldest record still waiting to make room (`drop_oldest`), or keep it
 * and hold the sources upstream until the sink has room (`block`).
 */
export type WhenFull = 'drop_newest' | 'drop_oldest' | 'block';

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
  /**
   * Optional, for `when_full: drop_oldest`: drops up to `n` of the oldest records the sink holds
   * that no write has taken yet, and returns how many it dropped (the buffer in front of the sink
   * counts them `sink_buffer_full`). A sink without it gives nothing back: what does not fit is
   * then the oldest of the arriving records.
   */
  evictOldest?(n: number): number;
}

interface ModuleBase<C> {
  type: string;
  kind: ComponentKind;
  /** One line, shown by `rxflow validate --list` and in the JSON Schema. */
  description: string;
  schema: JsonSchema;
  /** A complete example config, which a test parses with `schema`. */
  example: C;
  /**
   * Problems across options that the schema cannot say (one option's bound set by another), for
   * `validate` to report at the option's key; the config has passed the schema.
   */
  check?(config: C): { option: string; message: string }[];
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
  /**
   * True for a sink that holds records (a queue, writes in flight): the pipeline reads its input
   * through the buffer it keeps in front of the sink (src/sinks/buffer.ts), configured by the
   * sink's `buffer_max_records` and `when_full`, which counts what the sink is handed (the sink
   * counts only what it writes or drops). A sink without it takes each batch as it comes and
   * counts it itself (an aggregation such as top, a service such as nats_sessions).
   */
  buffered?: true;
  build(config: C, context: ComponentContext): Sink;
}

export type ComponentModule<C = unknown> = SourceModule<C> | TransformModule<C> | SinkModule<C>;
