/**
 * The full sync of a replicator: reads the bucket (one snapshot) and the kernel map, plans the
 * repairs both ways (sync.ts decides who wins), hands them to the replicator's write queue, waits
 * for them (at most one sync interval) and reports what it found and did. One runs at a time; a
 * sync asked for while one runs joins it and runs once more after it.
 */
import type { SchedulerLike } from 'rxjs';
import { beforeDeadline } from '../delivery/deadline.js';
import type { Logger } from '../logger.js';
import type { ClockTranslator } from './clock.js';
import {
  decodeSessionValue,
  isSessionRecord,
  sessionKvKey,
  toWire,
  wireFingerprint,
  type SessionRecord,
  type UndecodableValue,
} from './codec.js';
import { messageOf } from './errors.js';
import type { SessionKv } from './kv.js';
import type { ReplicatedSession, SessionStore } from './session.js';
import {
  compare,
  planSync,
  type KvView,
  type ReplicationCounts,
  type SyncView,
  type UnreadableKvView,
} from './sync.js';

/** What the last full sync found and did. */
export interface SyncReport {
  /** Wall-clock ms when the sync finished. */
  atMs: number;
  durationMs: number;
  /** Local sessions against KV keys, after the repairs that were acknowledged. */
  counts: ReplicationCounts;
  /** The comparison before repairing. */
  before: ReplicationCounts;
  puts: number;
  deletes: number;
  /** Repairs not acknowledged when the sync ended (they stay queued). */
  unsettled: number;
}

/** What the full sync needs of the replicator whose queue carries its repairs. */
export interface SyncQueue {
  /** The replicator was closed: no sync runs any more. */
  isClosed(): boolean;
  /** A write of `key` is waiting or in flight: that write settles it, the sync leaves it. */
  busy(key: string): boolean;
  /** A read of the bucket begins: changes from now on are newer than what it returns. */
  reading(): void;
  /** The read failed: nothing replaces what the replicator knows. */
  readFailed(): void;
  /** The bucket as read, with the changes since the read began: what the replicator knows it holds. */
  replaceKnown(views: ReadonlyMap<string, KvView | UnreadableKvView>): void;
  /** What the replicator knows the bucket holds for `key` (after its acknowledged writes). */
  knownView(key: string): KvView | UnreadableKvView | undefined;
  /** Queues the repairs to be written at once; resolves when all are acknowledged. */
  repair(puts: readonly [string, ReplicatedSession][], deletes: readonly string[]): Promise<void>;
}

export interface FullSyncOptions {
  nodeId: string;
  toleranceMs: number;
  /** Also the longest a sync waits for its repairs. */
  syncIntervalMs: number;
  staleAfterMs: number | undefined;
  scheduler: SchedulerLike;
  logger: Logger;
  clock: ClockTranslator;
}

/** How the sync and the watch see a decoded KV value. */
export function kvViewOfDecoded(decoded: SessionRecord | UndecodableValue): KvView | UnreadableKvView {
  if (!isSessionRecord(decoded)) return { unreadable: true, newer: decoded.newer };
  return {
    node: decoded.node,
    lastSeenMs: decoded.session.lastSeenMs,
    fingerprint: wireFingerprint(decoded.session),
  };
}

export function kvViewOf(value: Uint8Array): KvView | UnreadableKvView {
  return kvViewOfDecoded(decodeSessionValue(value));
}

/** The kernel's sessions as the sync compares them, by KV key; `byKey` collects the sessions. */
export function localViews(
  sessions: readonly ReplicatedSession[],
  clock: ClockTranslator,
  byKey?: Map<string, ReplicatedSession>,
): Map<string, SyncView> {
  const local = new Map<string, SyncView>();
  for (const s of sessions) {
    const key = sessionKvKey(s.key);
    const wire = toWire(s, clock);
    local.set(key, { lastSeenMs: wire.lastSeenMs, fingerprint: wireFingerprint(wire) });
    byKey?.set(key, s);
  }
  return local;
}

export class FullSync {
  lastSync: SyncReport | undefined;
  /** Why the last sync attempt failed, if it did. */
  lastSyncError: string | undefined;
  private running: Promise<SyncReport | undefined> | undefined;
  private again = false;

  constructor(
    private readonly store: SessionStore,
    private readonly kv: SessionKv,
    private readonly queue: SyncQueue,
    private readonly options: FullSyncOptions,
  ) {}

  /** Runs a full sync now (or joins the one running) and resolves with its report. */
  run(): Promise<SyncReport | undefined> {
    if (this.queue.isClosed()) return Promise.resolve(undefined);
    if (this.running !== undefined) {
      this.again = true;
      return this.running;
    }
    this.running = this.runOnce().finally(() => {
      this.running = undefined;
      if (this.again && !this.queue.isClosed()) {
        this.again = false;
        void this.run();
      }
    });
    return this.running;
  }

  private async runOnce(): Promise<SyncReport | undefined> {
    const { nodeId, scheduler, logger, clock } = this.options;
    if (!this.kv.connected) {
      // The reconnect runs a sync.
      this.lastSyncError = 'not connected to nats';
      return undefined;
    }
    const startedAt = scheduler.now();
    let records;
    this.queue.reading();
    try {
      ({ records } = await this.kv.snapshot());
    } catch (err) {
      this.queue.readFailed();
      this.lastSyncError = messageOf(err);
      logger.warn(
        { err: this.lastSyncError },
        'replicator: full sync could not read the bucket; trying again later',
      );
      return undefined;
    }
    if (this.queue.isClosed()) return undefined;
    const kvViews = new Map<string, KvView | UnreadableKvView>();
    for (const r of records) kvViews.set(r.key, kvViewOf(r.value));
    this.queue.replaceKnown(kvViews);

    clock.resample();
    let sessions: ReplicatedSession[];
    try {
      sessions = this.store.list();
    } catch (err) {
      this.lastSyncError = messageOf(err);
      logger.warn({ err: this.lastSyncError }, 'replicator: full sync could not list the kernel sessions');
      return undefined;
    }
    const byKey = new Map<string, ReplicatedSession>();
    const local = localViews(sessions, clock, byKey);
    const busy = { has: (k: string) => this.queue.busy(k) };
    const plan = planSync({
      nodeId,
      local,
      kv: kvViews,
      toleranceMs: this.options.toleranceMs,
      skip: busy,
      staleBeforeMs:
        this.options.staleAfterMs === undefined
          ? undefined
          : clock.toWallMs(clock.monotonicNowNs()) - this.options.staleAfterMs,
    });
    const settled = this.queue.repair(
      plan.puts.map((key) => [key, byKey.get(key)!]),
      plan.deletes,
    );
    if (plan.puts.length + plan.deletes.length > 0) {
      await beforeDeadline(settled, this.options.syncIntervalMs, scheduler);
    }
    let unsettled = 0;
    const after = new Map(kvViews);
    for (const key of plan.puts) {
      if (busy.has(key)) unsettled++;
      else after.set(key, this.queue.knownView(key) ?? { node: nodeId, lastSeenMs: 0, fingerprint: '' });
    }
    for (const key of plan.deletes) {
      if (busy.has(key)) unsettled++;
      else after.delete(key);
    }
    const report: SyncReport = {
      atMs: Date.now(),
      durationMs: scheduler.now() - startedAt,
      counts: compare(nodeId, local, after),
      before: plan.before,
      puts: plan.puts.length,
      deletes: plan.deletes.length,
      unsettled,
    };
    this.lastSync = report;
    this.lastSyncError = undefined;
    const drift = plan.puts.length + plan.deletes.length;
    logger[drift > 0 ? 'info' : 'debug'](
      {
        puts: report.puts,
        deletes: report.deletes,
        unsettled,
        ...report.counts,
        duration_ms: report.durationMs,
      },
      'replicator: full sync',
    );
    return report;
  }
}
