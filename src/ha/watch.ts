import type { Subscription } from 'rxjs';
import {
  decodeSessionValue,
  fromWire,
  isSessionRecord,
  parseSessionKvKey,
  type SessionRecord,
  type UndecodableValue,
} from './codec.js';
import { HaError, messageOf } from './errors.js';
import type { KvWatch, SessionKv, WatchEntry } from './kv.js';
import { nodeRuntime, type NodeRuntime, type NodeRuntimeOptions } from './runtime.js';
import { kvViewOfDecoded } from './full-sync.js';
import type { Replicator } from './replicator.js';
import type {
  RemoteApplyResult,
  RemoteDecision,
  RemoteSessionStore,
  ReplicatedSession,
  SessionKey,
} from './session.js';
import { isUnreadable } from './sync.js';

export interface SessionWatchOptions extends NodeRuntimeOptions {
  /**
   * Changes arriving within this window are applied as one batch. Default 0: the changes the
   * connection delivered together (one socket read holds many).
   */
  batchMs?: number;
  /** Changes per call of the store. Default 4096. */
  maxBatch?: number;
}

/**
 * Why a change changed nothing in the kernel:
 * - own: this node wrote it (its own write coming back);
 * - localNewer: this node's traffic saw the session more recently than the change says;
 * - unreadable: a value this version cannot read (or a key that is not a session's);
 * - absent: a delete of a session the kernel does not hold;
 * - superseded: a later write of the key, here or by this node, replaced it before it was applied.
 */
export type WatchIgnoreReason = 'own' | 'localNewer' | 'unreadable' | 'absent' | 'superseded';

export interface WatchStatus {
  /** A watch is set up and delivering (false while disconnected or setting it up again). */
  active: boolean;
  /** The last revision received; the watch goes on from the next one. */
  revision: number;
  /** Other nodes' changes written into the kernel map (puts and deletes). */
  applied: number;
  /** Of applied, deletes. */
  appliedDeletes: number;
  /** Changes that changed nothing in the kernel. */
  ignored: number;
  ignoredBy: Record<WatchIgnoreReason, number>;
  /** Changes whose kernel write failed. */
  failed: number;
  /** Changes received and not applied yet (batching, or waiting for this node's write of the key). */
  pending: number;
  /** Changes the server had still to deliver after the last one received. */
  backlog: number;
  /** For the last batch applied: the time from its oldest change being stored in KV to its application, ms. */
  lagMs: number;
  /** Watches set up, the first included: more than one means it was set up again (reconnects). */
  starts: number;
  /** Why the watch last ended or could not be set up; undefined once it is set up again. */
  lastError: string | undefined;
  /** Why the last failed kernel write failed; undefined after a batch without failures. */
  lastWriteError: string | undefined;
}

interface Candidate {
  entry: WatchEntry;
  /** The decoded value of a put; undefined for a delete. */
  record: SessionRecord | undefined;
  outcome: 'put' | 'delete' | 'absent' | 'localNewer' | undefined;
}

const DEFAULTS = { batchMs: 0, maxBatch: 4096 };

function keyOf(r: SessionRecord): SessionKey {
  const w = r.session;
  return {
    protocol: w.protocol,
    srcAddr: w.srcAddr,
    srcPort: w.srcPort,
    dstAddr: w.dstAddr,
    dstPort: w.dstPort,
    vni: w.vni,
  };
}

/**
 * Keeps a standby hot: watches the bucket from the revision the boot load read and applies the
 * other nodes' changes to this node's kernel session map as they arrive, instead of only at boot.
 *
 * Who wins is the full sync's rule (sync.ts) seen from the kernel's side:
 * - a put written by this node is its own write coming back and is ignored: the kernel it came
 *   from already has it, and nothing is written back to KV (no echo);
 * - a put of another node is written into the kernel, replacing its copy (packet counters kept,
 *   last-seen never moved back), unless the kernel's copy was last seen more than `toleranceMs`
 *   after it: this node's own traffic is newer, and the replicator writes that to KV itself;
 * - a delete removes the kernel's copy on the same condition, measured against the last value
 *   the deleting node knew (or the time of the delete when there was none). A delete this node
 *   made is recognised by the revision its write was acknowledged with;
 * - a value this version cannot read is left alone, as the loader and the sync do.
 *
 * The replicator's view of KV follows every change, so a session the watch wrote is not written
 * back when the kernel reports it, a key another node owns is not deleted when its copy here idles
 * out, and a write of this node still waiting for a key another node just replaced is dropped.
 * A change of a key whose write from this node is in flight waits until that write settles: the
 * revision it gets says which of the two the bucket kept.
 *
 * Changes are applied in batches: one store call (one kernel lookup and one write per session)
 * per `batchMs` window, at most `maxBatch` at a time; several changes of one key in a batch
 * collapse to the last. Timers run on `scheduler`, so tests drive them in virtual time.
 */
export class SessionWatch {
  private readonly rt: NodeRuntime;
  private readonly batchMs: number;
  private readonly maxBatch: number;

  private queue: WatchEntry[] = [];
  private queueHead = 0;
  /** Changes of keys with a write of this node in flight, the last per key. */
  private readonly deferred = new Map<string, WatchEntry>();
  private revision: number | undefined;
  private watch: KvWatch | undefined;
  /** Bumped whenever a watch is dropped, so late calls of its handlers are ignored. */
  private generation = 0;
  private active = false;
  private flushTimer: Subscription | undefined;
  private retryTimer: Subscription | undefined;
  private connection: Subscription | undefined;
  private started = false;
  private stopped = false;
  private failing = false;
  private firstSettled: (() => void) | undefined;

  private applied = 0;
  private appliedDeletes = 0;
  private readonly ignoredBy: Record<WatchIgnoreReason, number> = {
    own: 0,
    localNewer: 0,
    unreadable: 0,
    absent: 0,
    superseded: 0,
  };
  private failed = 0;
  private backlog = 0;
  private lagMs = 0;
  private starts = 0;
  private lastError: string | undefined;
  private lastWriteError: string | undefined;

  constructor(
    private readonly store: RemoteSessionStore,
    private readonly kv: SessionKv,
    private readonly replicator: Replicator,
    options: SessionWatchOptions,
  ) {
    this.maxBatch = options.maxBatch ?? DEFAULTS.maxBatch;
    if (!(this.maxBatch >= 1)) throw new HaError('EBADCONFIG', 'session watch: max batch must be at least 1');
    this.batchMs = options.batchMs ?? DEFAULTS.batchMs;
    this.rt = nodeRuntime(options);
  }

  /**
   * Starts watching the changes after revision `afterRevision` (what the boot load read), or,
   * when undefined, the changes from now on. After a reconnect the watch goes on after the last
   * revision it received. Resolves once the first watch is set up, or failed to be (it is then
   * set up again every retryMs; lastError says why).
   */
  start(afterRevision: number | undefined): Promise<void> {
    if (this.started || this.stopped)
      throw new HaError('ECLOSED', 'session watch: start() was already called');
    this.started = true;
    const settled = new Promise<void>((resolve) => (this.firstSettled = resolve));
    this.revision = afterRevision;
    this.replicator.attachWatch((key) => {
      if (this.deferred.has(key)) this.scheduleFlush();
    });
    this.connection = this.kv.connection$.subscribe((change) => {
      // The subscription of the old watch may or may not have survived the reconnect; a new one
      // from the last revision received is certain, and the revision check drops any overlap.
      this.dropWatch();
      if (change === 'up') this.open();
    });
    this.open();
    if (!this.kv.connected) this.settleFirst();
    return settled;
  }

  /** Stops watching; changes received and not applied yet are dropped. Safe to call more than once. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.connection?.unsubscribe();
    this.flushTimer?.unsubscribe();
    this.retryTimer?.unsubscribe();
    this.dropWatch();
    this.queue = [];
    this.queueHead = 0;
    this.deferred.clear();
    this.settleFirst();
  }

  status(): WatchStatus {
    let ignored = 0;
    for (const n of Object.values(this.ignoredBy)) ignored += n;
    return {
      active: this.active,
      revision: this.revision ?? 0,
      applied: this.applied,
      appliedDeletes: this.appliedDeletes,
      ignored,
      ignoredBy: { ...this.ignoredBy },
      failed: this.failed,
      pending: this.queue.length - this.queueHead + this.deferred.size,
      backlog: this.backlog,
      lagMs: this.lagMs,
      starts: this.starts,
      lastError: this.lastError,
      lastWriteError: this.lastWriteError,
    };
  }

  // ------------------------------------------------------------------------------------------
  // The watch

  private open(): void {
    if (this.stopped || this.watch !== undefined || !this.kv.connected) return;
    const gen = ++this.generation;
    this.starts++;
    const handle = this.kv.watch(this.revision === undefined ? undefined : this.revision + 1, {
      started: () => {
        if (gen !== this.generation) return;
        this.active = true;
        this.lastError = undefined;
        this.settleFirst();
      },
      entry: (e) => {
        if (gen === this.generation) this.receive(e);
      },
      end: (err) => {
        if (gen === this.generation) this.ended(err);
      },
    });
    // A fake bucket may end the watch inside watch().
    if (gen === this.generation) this.watch = handle;
    else handle.stop();
  }

  private dropWatch(): void {
    this.generation++;
    this.active = false;
    const w = this.watch;
    this.watch = undefined;
    w?.stop();
  }

  private settleFirst(): void {
    const resolve = this.firstSettled;
    this.firstSettled = undefined;
    resolve?.();
  }

  private ended(err: Error | undefined): void {
    this.dropWatch();
    this.settleFirst();
    if (this.stopped) return;
    this.lastError = err === undefined ? 'the watch ended' : messageOf(err);
    this.rt.logger.warn(
      { err: this.lastError, revision: this.revision, retry_ms: this.rt.retryMs },
      'session watch: the watch of the bucket ended; setting it up again',
    );
    if (this.retryTimer !== undefined) return;
    this.retryTimer = this.rt.scheduler.schedule(() => {
      this.retryTimer = undefined;
      this.open();
    }, this.rt.retryMs);
  }

  private receive(e: WatchEntry): void {
    // A watch set up again may start before the last revision received; those were read already.
    if (this.revision !== undefined && e.revision <= this.revision) return;
    this.revision = e.revision;
    this.backlog = e.backlog;
    this.queue.push(e);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushTimer !== undefined || this.stopped) return;
    this.flushTimer = this.rt.scheduler.schedule(() => {
      this.flushTimer = undefined;
      this.flush();
    }, this.batchMs);
  }

  // ------------------------------------------------------------------------------------------
  // Applying a batch

  private flush(): void {
    if (this.stopped) return;
    // Deferred changes first: a newer change of the same key replaces them.
    const latest = new Map<string, WatchEntry>(this.deferred);
    this.deferred.clear();
    const end = Math.min(this.queue.length, this.queueHead + this.maxBatch);
    for (let i = this.queueHead; i < end; i++) {
      const e = this.queue[i]!;
      if (latest.has(e.key)) this.ignoredBy.superseded++;
      latest.set(e.key, e);
    }
    this.queueHead = end;
    if (this.queueHead >= this.queue.length) {
      this.queue = [];
      this.queueHead = 0;
    } else if (this.flushTimer === undefined) {
      // The rest in the next turn, so a large backlog does not hold the event loop.
      this.flushTimer = this.rt.scheduler.schedule(() => {
        this.flushTimer = undefined;
        this.flush();
      }, 0);
    }
    if (latest.size === 0) return;

    let oldestMs = Infinity;
    const keys: SessionKey[] = [];
    const candidates: Candidate[] = [];
    for (const e of latest.values()) {
      if (e.atMs < oldestMs) oldestMs = e.atMs;
      let decoded: SessionRecord | UndecodableValue | undefined;
      if (e.op === 'put') {
        decoded = decodeSessionValue(e.value);
        if (isSessionRecord(decoded) && decoded.node === this.rt.nodeId) {
          this.replicator.seen(e.key, e.revision);
          this.ignoredBy.own++;
          continue;
        }
      } else if (this.replicator.ownRevision(e.key) === e.revision) {
        this.replicator.seen(e.key, e.revision);
        this.ignoredBy.own++;
        continue;
      }
      if (this.replicator.writeState(e.key) === 'in_flight') {
        // Decided once the write settles: its revision tells which of the two came last.
        this.deferred.set(e.key, e);
        continue;
      }
      const own = this.replicator.ownRevision(e.key);
      if (own !== undefined && own > e.revision) {
        this.ignoredBy.superseded++;
        continue;
      }
      this.replicator.seen(e.key, e.revision);
      let key: SessionKey;
      if (decoded !== undefined) {
        if (!isSessionRecord(decoded)) {
          this.replicator.remoteChanged(e.key, kvViewOfDecoded(decoded), false);
          this.ignoredBy.unreadable++;
          this.rt.logger.debug(
            { key: e.key, err: decoded.error },
            'session watch: unreadable value left alone',
          );
          continue;
        }
        key = keyOf(decoded);
      } else {
        try {
          key = parseSessionKvKey(e.key);
        } catch {
          this.ignoredBy.unreadable++;
          continue;
        }
      }
      keys.push(key);
      candidates.push({ entry: e, record: decoded, outcome: undefined });
    }

    if (candidates.length > 0) this.apply(keys, candidates);
    this.lagMs = Math.max(0, this.rt.clock.toWallMs(this.rt.clock.monotonicNowNs()) - oldestMs);
  }

  private apply(keys: SessionKey[], candidates: Candidate[]): void {
    const tolerance = this.rt.toleranceMs;
    const decide = (i: number, local: ReplicatedSession | undefined): RemoteDecision => {
      const c = candidates[i]!;
      const localMs = local === undefined ? undefined : this.rt.clock.toWallMs(local.lastSeenNs);
      if (c.record !== undefined) {
        const wire = c.record.session;
        if (localMs !== undefined && localMs > wire.lastSeenMs + tolerance) {
          c.outcome = 'localNewer';
          return undefined;
        }
        const remote = fromWire(wire, this.rt.clock);
        if (local !== undefined) {
          // Within the tolerance the remote copy wins, but the session's times never go back.
          if (local.lastSeenNs > remote.lastSeenNs) remote.lastSeenNs = local.lastSeenNs;
          if (local.createdNs < remote.createdNs) remote.createdNs = local.createdNs;
        }
        c.outcome = 'put';
        return remote;
      }
      if (local === undefined) {
        c.outcome = 'absent';
        return undefined;
      }
      const known = this.replicator.knownView(c.entry.key);
      const refMs = known !== undefined && !isUnreadable(known) ? known.lastSeenMs : c.entry.atMs;
      if (localMs! > refMs + tolerance) {
        c.outcome = 'localNewer';
        return undefined;
      }
      c.outcome = 'delete';
      return 'delete';
    };
    let result: RemoteApplyResult;
    try {
      result = this.store.applyRemote(keys, decide);
    } catch (err) {
      result = { failed: candidates.map((_, i) => i), error: err };
    }
    const failed = new Set(result.failed);
    for (let i = 0; i < candidates.length; i++) {
      const c = candidates[i]!;
      const key = c.entry.key;
      if (failed.has(i) || c.outcome === undefined) {
        this.failed++;
        continue;
      }
      switch (c.outcome) {
        case 'put':
          this.applied++;
          this.replicator.remoteChanged(key, kvViewOfDecoded(c.record!), true);
          break;
        case 'delete':
          this.applied++;
          this.appliedDeletes++;
          this.replicator.remoteChanged(key, undefined, true);
          break;
        case 'absent':
          this.ignoredBy.absent++;
          this.replicator.remoteChanged(key, undefined, true);
          break;
        case 'localNewer':
          this.ignoredBy.localNewer++;
          this.replicator.remoteChanged(
            key,
            c.record === undefined ? undefined : kvViewOfDecoded(c.record),
            false,
          );
          break;
      }
    }
    if (failed.size > 0) {
      this.lastWriteError = messageOf(result.error);
      if (!this.failing) {
        this.failing = true;
        this.rt.logger.warn(
          { failed: failed.size, err: this.lastWriteError },
          "session watch: cannot write other nodes' sessions into the kernel map; the next change of each retries",
        );
      }
    } else {
      this.lastWriteError = undefined;
      if (this.failing) {
        this.failing = false;
        this.rt.logger.info('session watch: writing into the kernel map again');
      }
    }
    this.rt.logger.debug(
      { changes: candidates.length, applied: this.applied, failed: failed.size, revision: this.revision },
      'session watch: applied a batch',
    );
  }
}
