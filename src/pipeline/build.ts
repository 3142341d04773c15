import {
  ReplaySubject,
  Subject,
  connectable,
  defer,
  merge,
  share,
  takeUntil,
  tap,
  type Connectable,
  type Observable,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';
import type {
  ComponentContext,
  ComponentKind,
  PendingRelease,
  ReplicationStatusBoard,
  ReplicationStatusReader,
  Sink,
  SourceHold,
} from '../component.js';
import { Ledger, type LedgerTotals } from '../ledger.js';
import { HealthBoard } from '../health.js';
import { silentLogger, type Logger } from '../logger.js';
import type { FlowBatch } from '../records/flow.js';
import { PipelineError } from '../config/errors.js';
import { SinkBuffer, bufferSettings } from '../sinks/buffer.js';
import type { ComponentSpec, PipelineConfig } from './load.js';
import { pipelineName } from './name.js';
import { DEFAULT_DRAIN_TIMEOUT_MS } from './settings.js';

export interface BuildOptions {
  /** The root logger; each component gets `child({ component: id, type })`. Silent by default. */
  logger?: Logger;
  /** Where every component counts; a new one by default. */
  ledger?: Ledger;
  /** Handed to components for their timers, so tests can run them in virtual time. */
  scheduler?: SchedulerLike;
  /** Where every component reports its health; a new one by default. */
  health?: HealthBoard;
  /** The drain deadline; the pipeline's drain_timeout_ms (or its default) when absent. */
  drainTimeoutMs?: number;
}

/** Past the drain deadline, how long a sink's close() may still take before it is left behind. */
const CLOSE_GRACE_MS = 1000;

export type PipelineState = 'built' | 'running' | 'stopping' | 'stopped';

const SECTION: Record<ComponentKind, string> = { source: 'sources', transform: 'transforms', sink: 'sinks' };

function label(spec: ComponentSpec): string {
  return `${SECTION[spec.kind]}.${spec.id} (${spec.type})`;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** The replication status readers of a pipeline, by firewall instance. */
class StatusReaders implements ReplicationStatusBoard {
  private readonly readers = new Map<string, ReplicationStatusReader>();

  offer(instance: string, read: ReplicationStatusReader): void {
    this.readers.set(instance, read);
  }

  reader(instance: string): ReplicationStatusReader | undefined {
    return this.readers.get(instance);
  }
}

/**
 * The first failure of a running pipeline, named after the component it started in: an error
 * passes through every stage below its origin, and only the first stage to see it is the culprit.
 */
class FirstFailure {
  error: PipelineError | undefined;

  constructor(private readonly logger: Logger) {}

  record(spec: ComponentSpec, err: unknown): void {
    if (this.error) return;
    const cause = asError(err);
    this.logger.error({ err: cause, component: spec.id }, 'pipeline component failed');
    this.error = new PipelineError('ERUN', `run ${label(spec)}: ${cause.message}`, { cause });
  }
}

/**
 * What a source waits on while a sink downstream with `when_full: block` has a full buffer: one per
 * source, held while any of those buffers is full.
 */
class SourceGate implements SourceHold {
  private full = 0;
  private waiters: (() => void)[] = [];

  /** Holds the source while `buffer` is full. */
  track(buffer: SinkBuffer): void {
    buffer.onFull((full) => {
      if (full) {
        this.full++;
        return;
      }
      this.full--;
      if (this.full > 0) return;
      const waiters = this.waiters;
      this.waiters = [];
      for (const resolve of waiters) resolve();
    });
  }

  ready(): Promise<void> | undefined {
    if (this.full === 0) return undefined;
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }
}

/** The ids of the sources `spec` reads from, directly or through transforms. */
function sourcesOf(config: PipelineConfig, spec: ComponentSpec, found = new Set<string>()): Set<string> {
  for (const id of spec.inputs) {
    const input = config.components.get(id);
    if (input === undefined || found.has(id)) continue;
    if (input.kind === 'source') found.add(id);
    else sourcesOf(config, input, found);
  }
  return found;
}

interface BuiltSink {
  spec: ComponentSpec;
  sink: Sink;
  input: Observable<FlowBatch>;
  /** close(), once called. */
  closing?: Promise<void>;
}

/**
 * Builds every component of a checked pipeline and wires them with RxJS: a component with several
 * inputs reads their merge; a component read by several others is shared, so it runs once. Nothing
 * flows until `start()`.
 */
export async function buildPipeline(config: PipelineConfig, options: BuildOptions = {}): Promise<Pipeline> {
  const logger = options.logger ?? silentLogger();
  const ledger = options.ledger ?? new Ledger();
  const health = options.health ?? new HealthBoard();
  // Replays, so a source connected after stop() completes at once instead of running forever.
  const stopping = new ReplaySubject<void>(1);
  const flushing = new Subject<void>();
  const replication = new StatusReaders();
  const flushable: string[] = [];
  const failures = new FirstFailure(logger);
  // A failed stage stops every source, so the rest of the pipeline drains instead of running on.
  const watch = (spec: ComponentSpec) =>
    tap<FlowBatch>({
      error: (err: unknown) => {
        failures.record(spec, err);
        stopping.next();
      },
    });
  const outputs = new Map<string, Observable<FlowBatch>>();
  // Every source may wait on a sink downstream that blocks upstream when full.
  const gates = new Map<string, SourceGate>();
  const sources: Connectable<FlowBatch>[] = [];
  // What the sources hand context.starting when they are connected.
  const starts: Promise<unknown>[] = [];
  // What the sources hand context.releasing when they stop.
  const releases: PendingRelease[] = [];
  // The pipeline, once built: the sources ask it for the time left to drain.
  const ready: { pipeline?: Pipeline } = {};
  const sinks: BuiltSink[] = [];
  const inputOf = (spec: ComponentSpec): Observable<FlowBatch> => {
    const inputs = spec.inputs.map((id) => outputs.get(id)!);
    return inputs.length === 1 ? inputs[0]! : merge(...inputs);
  };

  // What a stage read by sinks emits is counted once, before it fans out to them.
  const delivered = (spec: ComponentSpec) =>
    spec.outputs.some((id) => config.components.get(id)?.kind === 'sink')
      ? tap<FlowBatch>((batch) => ledger.addDelivered(batch.length))
      : tap<FlowBatch>();
  for (const spec of config.order) {
    const componentLogger = logger.child({ component: spec.id, type: spec.type });
    const context: ComponentContext = {
      id: spec.id,
      pipeline: pipelineName(config.file),
      logger: componentLogger,
      ledger,
      counters: ledger.stage(spec.id, spec.type, spec.kind),
      health: health.reporter(spec.id, spec.type, componentLogger),
      flush$: flushing.asObservable(),
      replication,
    };
    if (options.scheduler) context.scheduler = options.scheduler;
    try {
      const module = spec.module;
      switch (module.kind) {
        case 'source': {
          const gate = new SourceGate();
          gates.set(spec.id, gate);
          context.hold = gate;
          context.starting = (started) => starts.push(started);
          context.releasing = (release) => releases.push(release);
          context.drainLeft = () => ready.pipeline?.drainLeft();
          // A source that drains on stop (the kernel map) emits what it holds and completes by
          // itself; any other source is cut off when the pipeline stops.
          if (module.flushesOnDemand) flushable.push(spec.id);
          const built = module.drainsOnStop
            ? module.build(spec.config, { ...context, stop$: stopping.asObservable() })
            : module.build(spec.config, context).pipe(takeUntil(stopping));
          // A Subject that starts on connect(): every consumer subscribes first, so none misses
          // the first batches of a source that emits synchronously.
          const source = connectable(built.pipe(watch(spec), delivered(spec)), {
            connector: () => new Subject<FlowBatch>(),
            resetOnDisconnect: false,
          });
          sources.push(source);
          outputs.set(spec.id, source);
          break;
        }
        case 'transform': {
          const output = inputOf(spec).pipe(module.build(spec.config, context), watch(spec), delivered(spec));
          outputs.set(spec.id, spec.outputs.length > 1 ? output.pipe(share()) : output);
          break;
        }
        case 'sink': {
          if (module.buffered !== true) {
            sinks.push({ spec, sink: module.build(spec.config, context), input: inputOf(spec) });
            break;
          }
          // The sink's buffer: it counts what the sink is handed and applies the sink's
          // buffer_max_records and when_full (src/sinks/buffer.ts).
          const settings = bufferSettings(spec.config);
          const buffer = new SinkBuffer(
            settings,
            context.counters,
            componentLogger,
            spec.id,
            context.scheduler,
          );
          const sink = module.build(spec.config, { ...context, bufferedByPipeline: true });
          buffer.attach(sink);
          if (settings.whenFull === 'block') {
            for (const id of sourcesOf(config, spec)) gates.get(id)?.track(buffer);
          }
          sinks.push({ spec, sink, input: inputOf(spec).pipe(buffer.operator()) });
          break;
        }
      }
    } catch (err) {
      await Promise.allSettled(sinks.map((s) => s.sink.close()));
      throw new PipelineError('EBUILD', `build ${label(spec)}: ${asError(err).message}`, { cause: err });
    }
  }
  const drainTimeoutMs =
    options.drainTimeoutMs ?? config.settings?.drain_timeout_ms ?? DEFAULT_DRAIN_TIMEOUT_MS;
  const pipeline = new Pipeline(
    config,
    ledger,
    health,
    logger,
    stopping,
    failures,
    sources,
    sinks,
    { flushing, sources: flushable },
    starts,
    drainTimeoutMs,
    releases,
  );
  ready.pipeline = pipeline;
  return pipeline;
}

/** A built pipeline: `start()` lets data flow, `stop()` drains it, `done` settles when it has ended. */
export class Pipeline {
  private currentState: PipelineState = 'built';
  private readonly subscriptions: Subscription[] = [];
  private connected = false;
  private resolveDone!: () => void;
  private rejectDone!: (err: Error) => void;
  /** When the drain must be over (Date.now() ms); set when it starts. */
  private drainBy: number | undefined;
  /** The drain deadline has passed: sinks closed from now on get no time at all. */
  private drainExpired = false;
  private drainTimer: NodeJS.Timeout | undefined;
  private overdueTimer: NodeJS.Timeout | undefined;
  /**
   * Settles once every sink has finished and been closed: after the sources completed on their own,
   * after `stop()`, or after a component failed (then it rejects with that failure).
   */
  readonly done: Promise<void>;

  /** @internal use buildPipeline() */
  constructor(
    readonly config: PipelineConfig,
    readonly ledger: Ledger,
    /** The components' health, as they report it. */
    readonly health: HealthBoard,
    private readonly logger: Logger,
    private readonly stopping: ReplaySubject<void>,
    private readonly failures: FirstFailure,
    private readonly sources: readonly Connectable<FlowBatch>[],
    private readonly sinks: readonly BuiltSink[],
    /** Emits a flush on demand to the sources; `sources` are those that act on it. */
    private readonly onDemand: { flushing: Subject<void>; sources: readonly string[] },
    /** The starts the sources report when connected (ComponentContext.starting). */
    private readonly starts: readonly Promise<unknown>[],
    /** How long a drain may take; then every sink is closed and what it holds counted shutdown. */
    readonly drainTimeoutMs = DEFAULT_DRAIN_TIMEOUT_MS,
    /** The stops the sources report when they end (ComponentContext.releasing). */
    private readonly releases: readonly PendingRelease[] = [],
  ) {
    this.done = new Promise<void>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // Whoever awaits `done` sees the failure; nobody awaiting it is not a crash.
    this.done.catch(() => undefined);
  }

  get state(): PipelineState {
    return this.currentState;
  }

  /**
   * A flush on demand: every source that reads the kernel on a timer (map tracers) reads and
   * removes what it holds now, and its records go down the pipeline as any eviction's do. Returns
   * the ids of those sources; it does not wait for the records to reach the sinks. Only while
   * running: throws ESTATE otherwise.
   */
  flush(): string[] {
    if (this.currentState !== 'running') {
      throw new PipelineError(
        'ESTATE',
        this.currentState === 'built'
          ? `flush ${this.config.file}: the pipeline is not running yet; flush it once it logs 'ready'`
          : `flush ${this.config.file}: the pipeline is ${this.currentState}; its drain reads the kernel maps a last time`,
      );
    }
    this.logger.info({ file: this.config.file, sources: this.onDemand.sources }, 'pipeline flush requested');
    this.onDemand.flushing.next();
    return [...this.onDemand.sources];
  }

  /** The ledger's totals right now. */
  totals(): LedgerTotals {
    return this.ledger.totals();
  }

  /**
   * Subscribes every sink, then starts the sources, and resolves once the starts they report have
   * settled (ComponentContext.starting). Rejects if a sink fails before it subscribes, or a source
   * fails to start.
   */
  async start(): Promise<void> {
    if (this.currentState !== 'built') {
      throw new PipelineError('ESTATE', `start ${this.config.file}: the pipeline was already started`);
    }
    this.currentState = 'running';
    const subscribed: Promise<void>[] = [];
    const consumed = this.sinks.map(({ spec, sink, input }) => {
      let onSubscribe!: () => void;
      subscribed.push(new Promise<void>((resolve) => (onSubscribe = resolve)));
      const watched = defer(() => {
        onSubscribe();
        return input;
      });
      return Promise.resolve()
        .then(() => sink.consume(watched))
        .catch((err: unknown) => this.fail(spec, err));
    });
    // finish() catches its own failures and settles `done`.
    void Promise.all(consumed).then(() => this.finish());
    this.logger.info({ file: this.config.file, components: this.config.order.length }, 'pipeline starting');
    await Promise.race([Promise.all(subscribed), this.done]);
    this.connect();
    if (this.starts.length > 0) await Promise.race([Promise.allSettled(this.starts), this.done]);
    if (this.failures.error) throw this.failures.error;
  }

  /**
   * Drains: completes the sources, so transforms emit what they hold and sinks write it, then
   * flushes and closes every sink. Resolves when that is done; safe to call more than once.
   */
  async stop(): Promise<void> {
    if (this.currentState === 'built') {
      this.currentState = 'stopping';
      void this.finish();
    } else if (this.currentState === 'running') {
      this.currentState = 'stopping';
      this.logger.info(
        { file: this.config.file, drain_timeout_ms: this.drainTimeoutMs },
        'pipeline draining',
      );
      this.startDrain();
      this.stopping.next();
      this.connect();
    }
    return this.done;
  }

  /** Starts the drain deadline; at it, every sink not closed yet is, with no time left. */
  private startDrain(): void {
    if (this.drainBy !== undefined) return;
    this.drainBy = Date.now() + this.drainTimeoutMs;
    this.drainTimer = setTimeout(() => {
      // A timer may fire a millisecond before Date.now() says the time has come.
      this.drainExpired = true;
      this.logger.warn(
        { file: this.config.file, drain_timeout_ms: this.drainTimeoutMs },
        'pipeline drain deadline reached; what the sinks still hold is counted as shutdown',
      );
      for (const built of this.sinks) void this.close(built);
      // A sink whose consume() does not end on close() does not hold up the exit.
      this.overdueTimer = setTimeout(() => void this.finish(), CLOSE_GRACE_MS);
    }, this.drainTimeoutMs);
  }

  /** Time left to drain, or undefined when not draining (sources ended by themselves). */
  drainLeft(): number | undefined {
    if (this.drainBy === undefined) return undefined;
    return this.drainExpired ? 0 : Math.max(0, this.drainBy - Date.now());
  }

  /** Closes a sink once, with the drain time left; never rejects. */
  private close(built: BuiltSink): Promise<void> {
    built.closing ??= Promise.resolve()
      .then(() => built.sink.close(this.drainLeft()))
      .catch((err: unknown) => this.fail(built.spec, err));
    return built.closing;
  }

  /** `work`, or less when draining: resolves by the deadline (plus `graceMs`) at the latest. */
  private async bounded(work: Promise<void>, graceMs: number): Promise<boolean> {
    if (this.drainBy === undefined) {
      await work;
      return true;
    }
    const wait = Math.max(0, this.drainBy + graceMs - Date.now());
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), wait)));
    const settled = await Promise.race([work.then(() => true as const), late]);
    clearTimeout(timer);
    return settled;
  }

  private connect(): void {
    if (this.connected) return;
    this.connected = true;
    for (const source of this.sources) this.subscriptions.push(source.connect());
  }

  private fail(spec: ComponentSpec, err: unknown): void {
    this.failures.record(spec, err);
    if (this.currentState === 'running') this.currentState = 'stopping';
    this.startDrain();
    this.stopping.next();
    this.connect();
  }

  private finishing: Promise<void> | undefined;

  private finish(): Promise<void> {
    this.finishing ??= this.finishOnce();
    return this.finishing;
  }

  private async finishOnce(): Promise<void> {
    // Promise.resolve().then() turns a synchronous throw into a rejection too.
    for (const { spec, sink } of this.sinks) {
      const flushed = Promise.resolve()
        .then(() => sink.flush())
        .catch((err: unknown) => this.fail(spec, err));
      await this.bounded(flushed, 0);
    }
    for (const built of this.sinks) {
      if (!(await this.bounded(this.close(built), CLOSE_GRACE_MS))) {
        this.logger.warn(
          { component: built.spec.id, drain_timeout_ms: this.drainTimeoutMs },
          'sink did not close by the drain deadline; leaving it',
        );
      }
    }
    clearTimeout(this.drainTimer);
    clearTimeout(this.overdueTimer);
    for (const s of this.subscriptions) s.unsubscribe();
    // Sources that go on stopping off the event loop: until the deadline, then they let go.
    const released = Promise.all(this.releases.map((r) => r.done.catch(() => undefined))).then(
      () => undefined,
    );
    if (!(await this.bounded(released, 0))) {
      for (const r of this.releases) r.atDeadline();
      await this.bounded(released, CLOSE_GRACE_MS);
    }
    this.currentState = 'stopped';
    const totals = this.ledger.totals();
    this.logger.info(
      {
        file: this.config.file,
        seen: totals.seen,
        delivered: totals.delivered,
        dropped: totals.droppedTotal,
        sinks: Object.fromEntries(
          totals.sinks.map((k) => [
            k.id,
            { handed: k.handed, exported: k.exported, dropped: k.droppedTotal },
          ]),
        ),
      },
      'pipeline stopped',
    );
    if (this.failures.error) this.rejectDone(this.failures.error);
    else this.resolveDone();
  }
}
