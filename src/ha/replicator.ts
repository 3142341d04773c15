import type { Subscription } from 'rxjs';
import { beforeDeadline } from '../delivery/deadline.js';
import { OutageLog } from '../delivery/outage.js';
import type { StageCounters } from '../ledger.js';
import { encodeSessionValue, sessionKvKey, toWire, wireFingerprint } from './codec.js';
import { FullSync, kvViewOf, type SyncReport } from './full-sync.js';
import { HaError, messageOf } from './errors.js';
import { nodeRuntime, type NodeRuntime, type NodeRuntimeOptions } from './runtime.js';
import type { SessionKv } from './kv.js';
import type { ReplicatedSession, SessionEventBatch, SessionEvents, SessionStore } from './session.js';
import type { KvView, ReplicationCounts, UnreadableKvView } from './sync.js';

export type { SyncReport };

export interface ReplicatorOptions extends NodeRuntimeOptions {
  /** Updates of one session within this window become one write. Default 500. */
  coalesceMs?: number;
  /** Period of the full sync. Default 30000. */
  syncIntervalMs?: number;
  /** Writes in flight at once. Default 1024. */
  maxInFlight?: number;
  /** Delete other nodes' KV keys not local here and last seen longer ago than this. Off by default. */
  staleAfterMs?: number;
  /** Events received, written (sent) and folded into another write (merged). */
  counters?: StageCounters;
}

export interface ReplicationStatus {
  nodeId: string;
  connected: boolean;
  /** Counts of the last sync; undefined before the first one finished. */
  counts: ReplicationCounts | undefined;
  lastSync: SyncReport | undefined;
  /** Why the last sync attempt failed, if it did. */
  lastSyncError: string | undefined;
  /** Changes not yet acknowledged (waiting, coalescing, or in flight). */
  pending: number;
  inFlight: number;
  /** Age of the oldest change not yet acknowledged, ms; 0 when none. */
  lagMs: number;
  puts: number;
  deletes: number;
  failedWrites: number;
}

type Op = 'put' | 'delete';

/** One key's next write, folding every change to the key since the last write. */
interface Change {
  seq: number;
  key: string;
  op: Op;
  session: ReplicatedSession | undefined;
  /** Scheduler time of the oldest change folded in: the replication lag of this key. */
  since: number;
  /** Scheduler time it may be sent. */
  due: number;
  /** Session events folded in (0 for a sync repair). */
  events: number;
}

interface Waiter {
  target: number;
  resolve: () => void;
}

const DEFAULTS = {
  coalesceMs: 500,
  syncIntervalMs: 30_000,
  maxInFlight: 1024,
};

/**
 * Replicates the kernel's firewall sessions to a KV bucket.
 *
 * - A created or deleted session is written at once; updates of a session are coalesced: the
 *   first schedules a write `coalesceMs` later and the ones after it until then only replace what
 *   that write will carry (a trailing throttle, so steady updates still reach KV every window).
 * - Writes are pipelined: up to `maxInFlight` at once, never two for one key, so a key's writes
 *   reach the bucket in the order they were made even across failures and retries.
 * - A failed write is kept and sent again after `retryMs`; while the connection is down nothing is
 *   sent, and on reconnect a full sync runs, so what changed meanwhile (including events whose
 *   writes failed) reaches KV.
 * - The full sync (see sync.ts for who wins) runs every `syncIntervalMs` and repairs drift both ways.
 *
 * Timers run on `scheduler`, so tests drive coalescing and syncs in virtual time.
 */
export class Replicator {
  private readonly rt: NodeRuntime;
  private readonly coalesceMs: number;
  private readonly syncIntervalMs: number;
  private readonly maxInFlight: number;
  private readonly staleAfterMs: number | undefined;
  private readonly counters: StageCounters | undefined;

  private readonly pending = new Map<string, Change>();
  private readonly inFlight = new Map<string, Change>();
  /** Every unacknowledged change by seq; seq order is age order, so the first is the oldest. */
  private readonly outstanding = new Map<number, Change>();
  /** Pending keys due now, in the order they became due. */
  private readonly ready = new Set<string>();
  /** Coalesced updates by due time; the window is constant, so arrival order is due order. */
  private coalescing: { key: string; due: number }[] = [];
  private coalescingHead = 0;
  private coalesceTimer: Subscription | undefined;
  private retryTimer: Subscription | undefined;
  private pausedUntil = -Infinity;
  private syncTimer: Subscription | undefined;
  /** What the bucket holds as far as this node knows: from syncs, the boot load and acknowledged writes. */
  private readonly known = new Map<string, KvView | UnreadableKvView>();
  /** While a full sync reads the bucket: the keys changed since the read began, and how. */
  private changedSinceRead: Map<string, KvView | UnreadableKvView | undefined> | undefined;
  private seq = 0;
  private waiters: Waiter[] = [];
  private subscriptions: Subscription[] = [];
  private readonly fullSync: FullSync;
  private puts = 0;
  private deletes = 0;
  private failedWrites = 0;
  private readonly outage: OutageLog;
  private started = false;
  private closed = false;
  private pumping = false;
  private pumpAgain = false;
  /** With a watch: the revision of this node's acknowledged writes the watch has not seen yet. */
  private ownRevisions: Map<string, number> | undefined;
  private settledHook: ((key: string) => void) | undefined;

  constructor(
    private readonly store: SessionStore,
    private readonly kv: SessionKv,
    options: ReplicatorOptions,
  ) {
    this.rt = nodeRuntime(options);
    this.outage = new OutageLog({
      logger: this.rt.logger,
      scheduler: this.rt.scheduler,
      recovered: 'replicator: writing to KV again',
    });
    this.coalesceMs = options.coalesceMs ?? DEFAULTS.coalesceMs;
    this.syncIntervalMs = options.syncIntervalMs ?? DEFAULTS.syncIntervalMs;
    this.maxInFlight = options.maxInFlight ?? DEFAULTS.maxInFlight;
    this.staleAfterMs = options.staleAfterMs;
    this.counters = options.counters;
    if (!(this.maxInFlight >= 1))
      throw new HaError('EBADCONFIG', `replicator: max_in_flight must be at least 1`);
    if (!(this.syncIntervalMs > 0))
      throw new HaError('EBADCONFIG', `replicator: sync_interval_ms must be above 0`);
    this.fullSync = new FullSync(
      store,
      kv,
      {
        isClosed: () => this.closed,
        busy: (key) => this.pending.has(key) || this.inFlight.has(key),
        reading: () => {
          this.changedSinceRead = new Map();
        },
        readFailed: () => {
          this.changedSinceRead = undefined;
        },
        replaceKnown: (views) => {
          // Writes acknowledged and changes watched while the bucket was read are newer than
          // what the read returned.
          const since = this.changedSinceRead ?? new Map<string, KvView | UnreadableKvView | undefined>();
          this.changedSinceRead = undefined;
          this.known.clear();
          for (const [k, v] of views) this.known.set(k, v);
          for (const [k, v] of since) this.setKnown(k, v);
        },
        knownView: (key) => this.known.get(key),
        repair: (puts, deletes) => this.repair(puts, deletes),
      },
      {
        nodeId: this.rt.nodeId,
        toleranceMs: this.rt.toleranceMs,
        syncIntervalMs: this.syncIntervalMs,
        staleAfterMs: this.staleAfterMs,
        scheduler: this.rt.scheduler,
        logger: this.rt.logger,
        clock: this.rt.clock,
      },
    );
  }

  /**
   * Tells the replicator what the bucket held when the boot loader read it, so sessions it loaded
   * and the kernel then reports as created are not written back unchanged.
   */
  seedKnown(records: Iterable<{ key: string; value: Uint8Array }>): void {
    for (const r of records) this.known.set(r.key, kvViewOf(r.value));
  }

  /**
   * Starts replicating `events`: subscribes to them and to connection changes, runs a first full
   * sync at once and then every `syncIntervalMs`.
   */
  start(events: SessionEvents): void {
    if (this.started || this.closed) throw new HaError('ECLOSED', 'replicator: start() was already called');
    this.started = true;
    this.subscriptions.push(
      events.subscribe({
        next: (batch) => this.handle(batch),
        error: (err: unknown) =>
          this.rt.logger.error({ err }, 'replicator: the session events failed; only syncs repair KV now'),
      }),
      this.kv.connection$.subscribe((change) => {
        if (change === 'up') {
          this.pump();
          void this.sync();
        }
      }),
    );
    this.armSyncTimer();
    void this.sync();
  }

  /** Takes a batch of session events. */
  handle(batch: SessionEventBatch): void {
    if (this.closed) return;
    this.counters?.addReceived(batch.length);
    for (const event of batch) {
      const key = sessionKvKey(event.session.key);
      switch (event.kind) {
        case 'created':
          if (this.unchanged(key, event.session)) this.counters?.addMerged(1);
          else this.enqueue(key, 'put', event.session, true, 1);
          break;
        case 'updated':
          this.enqueue(key, 'put', event.session, false, 1);
          break;
        case 'deleted':
          if (this.foreign(key)) this.counters?.addMerged(1);
          else this.enqueue(key, 'delete', undefined, true, 1);
          break;
      }
    }
    this.pump();
  }

  /** Runs a full sync now (or joins the one running) and resolves with its report. */
  sync(): Promise<SyncReport | undefined> {
    return this.fullSync.run();
  }

  /** Writes every change held now, coalescing ones included; resolves when all are acknowledged. */
  flush(): Promise<void> {
    const now = this.rt.scheduler.now();
    for (const change of this.pending.values()) {
      if (change.due > now) {
        change.due = now;
        this.ready.add(change.key);
      }
    }
    const target = this.seq;
    const done = this.settledUpTo(target);
    this.pump();
    return done;
  }

  /**
   * Stops taking events and syncing, then flushes: resolves true once everything held was
   * written, or false after `timeoutMs` with the rest unwritten (counted as dropped `shutdown`).
   * Safe to call more than once.
   */
  async close(timeoutMs = 30_000): Promise<boolean> {
    if (this.closed) return this.pending.size === 0 && this.inFlight.size === 0;
    for (const s of this.subscriptions) s.unsubscribe();
    this.subscriptions = [];
    this.syncTimer?.unsubscribe();
    const outcome = await beforeDeadline(this.flush(), timeoutMs, this.rt.scheduler);
    this.closed = true;
    this.coalesceTimer?.unsubscribe();
    this.retryTimer?.unsubscribe();
    if (outcome === 'late') {
      let events = 0;
      for (const c of this.outstanding.values()) events += c.events;
      this.counters?.addDropped('shutdown', events);
      this.rt.logger.warn(
        { unwritten: this.outstanding.size, timeout_ms: timeoutMs },
        'replicator: closed with session changes not written to KV',
      );
    }
    for (const w of this.waiters) w.resolve();
    this.waiters = [];
    return outcome === 'done';
  }

  status(): ReplicationStatus {
    return {
      nodeId: this.rt.nodeId,
      connected: this.kv.connected,
      counts: this.fullSync.lastSync?.counts,
      lastSync: this.fullSync.lastSync,
      lastSyncError: this.fullSync.lastSyncError,
      pending: this.outstanding.size,
      inFlight: this.inFlight.size,
      lagMs: this.lagMs(),
      puts: this.puts,
      deletes: this.deletes,
      failedWrites: this.failedWrites,
    };
  }

  /** Age of the oldest change not yet acknowledged, ms. */
  lagMs(): number {
    const first = this.outstanding.values().next();
    return first.done === true ? 0 : this.rt.scheduler.now() - first.value.since;
  }

  // ------------------------------------------------------------------------------------------
  // Other nodes' changes, as a watch of the bucket delivers them (see watch.ts)

  /**
   * Lets a watch of the bucket consult this replicator. From now on the revision of each
   * acknowledged write is kept until the watch has seen it (a delete carries no node id, so its
   * revision is how the watch tells this node's deletes from others'), and `settled` is called
   * with the key whenever a write settles, so a change the watch held back for it can be decided.
   */
  attachWatch(settled: (key: string) => void): void {
    this.ownRevisions ??= new Map();
    this.settledHook = settled;
  }

  /** Which of this node's writes of `key` is unsettled: one in flight, one waiting, or none. */
  writeState(key: string): 'in_flight' | 'pending' | undefined {
    if (this.inFlight.has(key)) return 'in_flight';
    return this.pending.has(key) ? 'pending' : undefined;
  }

  /** The revision of this node's last acknowledged write of `key`, while the watch has not seen it. */
  ownRevision(key: string): number | undefined {
    return this.ownRevisions?.get(key);
  }

  /** The watch has read `key` up to `revision`: own revisions up to it are no longer needed. */
  seen(key: string, revision: number): void {
    const own = this.ownRevisions?.get(key);
    if (own !== undefined && own <= revision) this.ownRevisions!.delete(key);
  }

  /**
   * What this node believes the bucket holds: the last sync's read, then its own acknowledged
   * writes and, with a watch attached, every other node's change the watch delivered.
   */
  knownViews(): ReadonlyMap<string, KvView | UnreadableKvView> {
    return this.known;
  }

  /** What this node believes the bucket holds for `key`. */
  knownView(key: string): KvView | UnreadableKvView | undefined {
    return this.known.get(key);
  }

  /**
   * Another node changed `key`: the bucket now holds `view` (undefined: deleted), which becomes
   * this node's view of the key, so its session events are compared with what is really there (a
   * copy the watch wrote into the kernel is not written back; a key another node owns is not
   * deleted). When `replacedLocal`, the change also replaced or removed the kernel's copy; a write
   * of the key still waiting here was made from that older copy and is dropped, as it would put the
   * older state back.
   */
  remoteChanged(key: string, view: KvView | UnreadableKvView | undefined, replacedLocal: boolean): void {
    this.setKnown(key, view);
    if (!replacedLocal || this.inFlight.has(key)) return;
    const change = this.pending.get(key);
    if (change === undefined) return;
    this.pending.delete(key);
    this.ready.delete(key);
    this.outstanding.delete(change.seq);
    if (change.events > 0) this.counters?.addMerged(change.events);
    this.checkWaiters();
  }

  // ------------------------------------------------------------------------------------------
  // Changes

  /** The bucket now holds `view` for `key` (undefined: nothing). */
  private setKnown(key: string, view: KvView | UnreadableKvView | undefined): void {
    if (view === undefined) this.known.delete(key);
    else this.known.set(key, view);
    this.changedSinceRead?.set(key, view);
  }

  private unchanged(key: string, session: ReplicatedSession): boolean {
    if (this.pending.has(key) || this.inFlight.has(key)) return false;
    const k = this.known.get(key);
    if (k === undefined || 'unreadable' in k) return false;
    const wire = toWire(session, this.rt.clock);
    return (
      k.fingerprint === wireFingerprint(wire) &&
      Math.abs(k.lastSeenMs - wire.lastSeenMs) <= this.rt.toleranceMs
    );
  }

  /** A key another node wrote and this node never claimed: its deletion here is not this node's to make. */
  private foreign(key: string): boolean {
    if (this.pending.has(key) || this.inFlight.has(key)) return false;
    const k = this.known.get(key);
    return k !== undefined && !('unreadable' in k) && k.node !== this.rt.nodeId;
  }

  private enqueue(
    key: string,
    op: Op,
    session: ReplicatedSession | undefined,
    immediate: boolean,
    events: number,
  ): void {
    const now = this.rt.scheduler.now();
    const existing = this.pending.get(key);
    if (existing !== undefined) {
      existing.op = op;
      existing.session = session;
      existing.events += events;
      if (immediate && existing.due > now) {
        existing.due = now;
        this.ready.add(key);
      }
      return;
    }
    const change: Change = {
      seq: ++this.seq,
      key,
      op,
      session,
      since: now,
      due: immediate ? now : now + this.coalesceMs,
      events,
    };
    this.pending.set(key, change);
    this.outstanding.set(change.seq, change);
    if (immediate) {
      this.ready.add(key);
    } else {
      this.coalescing.push({ key, due: change.due });
      this.armCoalesceTimer(now);
    }
  }

  private armCoalesceTimer(now: number): void {
    if (this.coalesceTimer !== undefined || this.closed) return;
    const head = this.coalescing[this.coalescingHead];
    if (head === undefined) return;
    this.coalesceTimer = this.rt.scheduler.schedule(
      () => {
        this.coalesceTimer = undefined;
        this.releaseCoalesced();
      },
      Math.max(0, head.due - now),
    );
  }

  private releaseCoalesced(): void {
    const now = this.rt.scheduler.now();
    while (this.coalescingHead < this.coalescing.length) {
      const head = this.coalescing[this.coalescingHead]!;
      if (head.due > now) break;
      this.coalescingHead++;
      // The change may have been sent already (a create or delete made it immediate) and a newer
      // one be coalescing now; its own entry releases it.
      const change = this.pending.get(head.key);
      if (change !== undefined && change.due <= now) this.ready.add(head.key);
    }
    if (this.coalescingHead > 4096 && this.coalescingHead * 2 > this.coalescing.length) {
      this.coalescing = this.coalescing.slice(this.coalescingHead);
      this.coalescingHead = 0;
    }
    this.armCoalesceTimer(now);
    this.pump();
  }

  // ------------------------------------------------------------------------------------------
  // Writing

  private pump(): void {
    // A write may complete inside send() (a fake bucket, a closed connection): settle() then asks
    // for another pump while this one iterates; the outer loop picks that up instead.
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        if (this.closed && this.waiters.length === 0) return;
        for (const key of this.ready) {
          // Checked per write: a write failing inside send() pauses the rest.
          if (!this.kv.connected || this.rt.scheduler.now() < this.pausedUntil) return;
          if (this.inFlight.size >= this.maxInFlight) break;
          this.ready.delete(key);
          const change = this.pending.get(key);
          // A key with a write in flight waits for it, so a key's writes never overtake each
          // other; settle() makes it ready again.
          if (change === undefined || this.inFlight.has(key)) continue;
          this.send(change);
        }
      } while (this.pumpAgain);
    } finally {
      this.pumping = false;
    }
  }

  private send(change: Change): void {
    this.pending.delete(change.key);
    this.inFlight.set(change.key, change);
    let view: KvView | undefined;
    const done = (err?: Error, revision?: number): void => this.settle(change, view, err, revision);
    try {
      if (change.op === 'put') {
        const wire = toWire(change.session!, this.rt.clock);
        view = { node: this.rt.nodeId, lastSeenMs: wire.lastSeenMs, fingerprint: wireFingerprint(wire) };
        this.kv.put(change.key, encodeSessionValue(wire, this.rt.nodeId), done);
      } else {
        this.kv.delete(change.key, done);
      }
    } catch (err) {
      done(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private settle(
    change: Change,
    view: KvView | undefined,
    err: Error | undefined,
    revision: number | undefined,
  ): void {
    this.inFlight.delete(change.key);
    const now = this.rt.scheduler.now();
    if (err === undefined) {
      this.outstanding.delete(change.seq);
      if (this.ownRevisions !== undefined && revision !== undefined) {
        this.ownRevisions.set(change.key, revision);
      }
      if (change.op === 'put') {
        this.puts++;
        this.setKnown(change.key, view);
      } else {
        this.deletes++;
        this.setKnown(change.key, undefined);
      }
      if (change.events > 0) {
        this.counters?.addSent(1);
        this.counters?.addMerged(change.events - 1);
      }
      this.recovered();
    } else {
      this.failedWrites++;
      this.failing(err);
      const newer = this.pending.get(change.key);
      if (newer !== undefined) {
        // The newer change carries the key's latest state; it inherits the failed one's place
        // (its seq and age), so the lag and flush() still see the oldest unwritten change.
        this.outstanding.delete(newer.seq);
        newer.seq = change.seq;
        newer.since = change.since;
        newer.events += change.events;
        newer.due = Math.min(newer.due, now);
        this.outstanding.set(change.seq, newer);
      } else {
        change.due = now;
        this.pending.set(change.key, change);
      }
      this.ready.add(change.key);
      this.pauseForRetry(now);
    }
    const next = this.pending.get(change.key);
    if (next !== undefined && next.due <= now) this.ready.add(change.key);
    this.checkWaiters();
    this.pump();
    this.settledHook?.(change.key);
  }

  private pauseForRetry(now: number): void {
    this.pausedUntil = now + this.rt.retryMs;
    if (this.retryTimer !== undefined || this.closed) return;
    this.retryTimer = this.rt.scheduler.schedule(() => {
      this.retryTimer = undefined;
      this.pump();
    }, this.rt.retryMs);
  }

  private failing(err: unknown): void {
    this.outage.failing(
      { err: messageOf(err) },
      'replicator: cannot write sessions to KV; keeping them and retrying',
    );
  }

  private recovered(): void {
    this.outage.recovered();
  }

  private settledUpTo(target: number): Promise<void> {
    if (this.isSettledUpTo(target)) return Promise.resolve();
    return new Promise<void>((resolve) => this.waiters.push({ target, resolve }));
  }

  private isSettledUpTo(target: number): boolean {
    const first = this.outstanding.keys().next();
    return first.done === true || first.value > target;
  }

  private checkWaiters(): void {
    if (this.waiters.length === 0) return;
    const waiting: Waiter[] = [];
    for (const w of this.waiters) {
      if (this.isSettledUpTo(w.target)) w.resolve();
      else waiting.push(w);
    }
    this.waiters = waiting;
  }

  // ------------------------------------------------------------------------------------------
  // Full sync

  /** A full sync's repairs, written at once; resolves when they (and every older change) settled. */
  private repair(puts: readonly [string, ReplicatedSession][], deletes: readonly string[]): Promise<void> {
    for (const [key, session] of puts) this.enqueue(key, 'put', session, true, 0);
    for (const key of deletes) this.enqueue(key, 'delete', undefined, true, 0);
    const target = this.seq;
    this.pump();
    return puts.length + deletes.length === 0 ? Promise.resolve() : this.settledUpTo(target);
  }

  private armSyncTimer(): void {
    this.syncTimer = this.rt.scheduler.schedule(() => {
      if (this.closed || this.subscriptions.length === 0) return;
      void this.sync();
      this.armSyncTimer();
    }, this.syncIntervalMs);
  }
}
