import { countAgainst, readKvViews } from './inspect.js';
import type { NatsConnection } from 'nats';
import type { StageCounters } from '../ledger.js';
import { silentLogger, type Logger } from '../logger.js';
import { ClockTranslator } from './clock.js';
import { HaError, messageOf } from './errors.js';
import { NatsSessionKv, connectNats, type BucketOptions, type NatsConnectOptions } from './kv.js';
import { loadSessions, type LoadResult } from './loader.js';
import { Readiness, type ReadinessOptions } from './readiness.js';
import { Replicator, type ReplicationStatus, type ReplicatorOptions } from './replicator.js';
import { canApplyRemote, type SessionEvents, type SessionStore } from './session.js';
import { SessionWatch, type WatchStatus } from './watch.js';

export interface SessionReplicationOptions {
  nats: NatsConnectOptions;
  bucket: BucketOptions;
  replicator: Omit<ReplicatorOptions, 'logger' | 'counters' | 'clock'>;
  /** Load every session of the bucket into the kernel before reporting ready. Default true. */
  loadOnStart?: boolean;
  /** Sessions last seen longer ago are not loaded (they would expire at once). */
  loadMaxAgeMs?: number;
  /**
   * Watch the bucket and apply other nodes' changes to the kernel as they arrive (a hot standby),
   * from the revision the boot load read. Needs a store that can apply them. Default true.
   */
  watch?: boolean;
  readiness?: Omit<ReadinessOptions, 'status' | 'logger'>;
  /** How long close() waits for pending writes. Default 30000. */
  shutdownTimeoutMs?: number;
  logger?: Logger;
  counters?: StageCounters;
  /** Aborts a start that still waits for NATS. */
  signal?: AbortSignal;
}

/**
 * The replication status with what the boot load did, as /status and the CLI show it. `counts`
 * compare the kernel map with the bucket at the moment status() was asked (`comparedAtMs`), and
 * `lagMs` is the replication lag at that moment; when the bucket cannot be read, they are the last
 * sync's and `compareError` says why.
 */
export interface NodeReplicationStatus extends ReplicationStatus {
  /** Wall-clock ms of the comparison `counts` come from; undefined when they are the last sync's. */
  comparedAtMs?: number | undefined;
  /** How long reading the bucket and the kernel map took, ms. */
  compareMs?: number | undefined;
  compareError?: string | undefined;
  /** Where the bucket's side came from: this node's watch of it, or a read of it. */
  compareSource?: 'watch' | 'bucket';
  bucket: string;
  ready: boolean;
  load: Omit<LoadResult, 'records'> | undefined;
  /** Other nodes' changes applied to the kernel as they arrive; undefined with the watch off. */
  watch: WatchStatus | undefined;
}

/**
 * One node's session replication, in the order a failover needs: connect to NATS, bind the
 * bucket, load every replicated session into the kernel, watch the bucket from there on (other
 * nodes' changes reach the kernel as they happen), report ready, then replicate this node's
 * session events and sync periodically. The readiness endpoint answers 503 from the start until
 * the load is done.
 */
export class SessionReplication {
  private closed: Promise<boolean> | undefined;

  private constructor(
    private readonly store: SessionStore,
    readonly replicator: Replicator,
    readonly kv: NatsSessionKv,
    readonly readiness: Readiness,
    readonly load: LoadResult | undefined,
    readonly watch: SessionWatch | undefined,
    private readonly nc: NatsConnection,
    private readonly options: SessionReplicationOptions,
    private readonly logger: Logger,
  ) {}

  static async start(
    store: SessionStore,
    events: SessionEvents,
    options: SessionReplicationOptions,
  ): Promise<SessionReplication> {
    const logger = options.logger ?? silentLogger();
    let status: (() => unknown) | undefined;
    const readiness = await Readiness.start({
      ...options.readiness,
      logger,
      status: () => (status === undefined ? { ready: false, state: 'starting' } : status()),
    });
    const watching = options.watch ?? true;
    if (watching && !canApplyRemote(store)) {
      await readiness.close();
      throw new HaError(
        'EBADCONFIG',
        "session replication: this session store cannot apply other nodes' changes; turn the watch off",
      );
    }
    readiness.setNotReady('connecting to nats');
    let nc: NatsConnection | undefined;
    let kv: NatsSessionKv | undefined;
    let watch: SessionWatch | undefined;
    try {
      nc = await connectNats(options.nats, { logger, ...(options.signal ? { signal: options.signal } : {}) });
      kv = await NatsSessionKv.open(nc, options.bucket, logger);
      const clock = new ClockTranslator();
      let load: LoadResult | undefined;
      if (options.loadOnStart ?? true) {
        readiness.setNotReady('loading sessions from kv');
        load = await loadSessions(kv, store, {
          clock,
          logger,
          ...(options.loadMaxAgeMs !== undefined ? { maxAgeMs: options.loadMaxAgeMs } : {}),
        });
      }
      const replicator = new Replicator(store, kv, {
        ...options.replicator,
        clock,
        logger,
        ...(options.counters ? { counters: options.counters } : {}),
      });
      if (load !== undefined) replicator.seedKnown(load.records);
      if (watching && canApplyRemote(store)) {
        watch = new SessionWatch(store, kv, replicator, {
          nodeId: options.replicator.nodeId,
          ...(options.replicator.toleranceMs !== undefined
            ? { toleranceMs: options.replicator.toleranceMs }
            : {}),
          ...(options.replicator.retryMs !== undefined ? { retryMs: options.replicator.retryMs } : {}),
          ...(options.replicator.scheduler !== undefined ? { scheduler: options.replicator.scheduler } : {}),
          clock,
          logger,
        });
        // Right after the load's revision: every change since the load, none of those it read.
        // Set up before reporting ready, so a node that says it is ready is a hot standby.
        readiness.setNotReady('watching kv');
        await watch.start(load?.revision);
      }
      const node = new SessionReplication(store, replicator, kv, readiness, load, watch, nc, options, logger);
      status = () => node.liveStatus();
      replicator.start(events);
      readiness.setReady({ loaded: load?.loaded ?? 0, node: options.replicator.nodeId });
      logger.info(
        {
          bucket: options.bucket.bucket,
          node: options.replicator.nodeId,
          loaded: load?.loaded ?? 0,
          watch: watch !== undefined,
          revision: load?.revision,
        },
        'session replication ready',
      );
      return node;
    } catch (err) {
      watch?.stop();
      await kv?.close().catch(() => undefined);
      await nc?.close().catch(() => undefined);
      await readiness.close();
      if (err instanceof HaError) throw err;
      throw new HaError('ELOAD', `session replication: ${messageOf(err)}`, { cause: err });
    }
  }

  /** The status as the replicator last knew it: `counts` are the last full sync's. */
  status(): NodeReplicationStatus {
    return { ...this.replicator.status(), ...this.describe() };
  }

  /**
   * The status now, what /status serves: the kernel map's keys (one batch read, matched as bytes, no
   * session decoded) compared with the bucket
   * as a full sync compares them, without writing anything, and the replication lag taken at that
   * moment. While the watch of the bucket is active, the bucket is what this node knows it holds
   * (the last sync's read, its acknowledged writes and every change the watch delivered since, so
   * no read of the bucket is needed: `compareSource` 'watch'); otherwise it is read (one snapshot,
   * 'bucket'). Writes in flight are in neither until acknowledged.
   */
  async liveStatus(): Promise<NodeReplicationStatus> {
    const base = this.describe();
    const started = performance.now();
    const nodeId = this.options.replicator.nodeId;
    let compareError: string | undefined;
    if (this.kv.connected) {
      try {
        const watching = this.watch?.status().active === true;
        const views = watching ? this.replicator.knownViews() : await readKvViews(this.kv);
        const counts = countAgainst(this.store, views, nodeId);
        return {
          ...this.replicator.status(),
          ...base,
          counts,
          comparedAtMs: Date.now(),
          compareMs: Math.round(performance.now() - started),
          compareSource: watching ? 'watch' : 'bucket',
          compareError: undefined,
        };
      } catch (err) {
        compareError = messageOf(err);
      }
    } else {
      compareError = 'not connected to nats';
    }
    return {
      ...this.replicator.status(),
      ...base,
      comparedAtMs: undefined,
      compareMs: undefined,
      compareError,
    };
  }

  private describe(): Pick<NodeReplicationStatus, 'bucket' | 'ready' | 'load' | 'watch'> {
    let load: Omit<LoadResult, 'records'> | undefined;
    if (this.load !== undefined) {
      const { records: _records, ...rest } = this.load;
      load = rest;
    }
    return {
      bucket: this.options.bucket.bucket,
      ready: this.readiness.isReady,
      load,
      watch: this.watch?.status(),
    };
  }

  flush(): Promise<void> {
    return this.replicator.flush();
  }

  /**
   * Not ready at once (a load balancer stops sending), then writes what is pending (up to
   * shutdownTimeoutMs) and disconnects. Resolves true when nothing was left unwritten.
   */
  close(): Promise<boolean> {
    this.closed ??= (async () => {
      this.readiness.setNotReady('shutting down');
      this.watch?.stop();
      const flushed = await this.replicator.close(this.options.shutdownTimeoutMs ?? 30_000);
      await this.kv.close();
      try {
        await this.nc.drain();
      } catch (err) {
        this.logger.debug({ err }, 'nats: drain failed');
      }
      await this.readiness.close();
      return flushed;
    })();
    return this.closed;
  }
}
