import { Subject, type SchedulerLike } from 'rxjs';
import { ClockTranslator, type Clocks } from '../../../src/ha/clock.js';
import { sessionKvKey } from '../../../src/ha/codec.js';
import type {
  ConnectionChange,
  KvSnapshot,
  KvWatch,
  SessionKv,
  WatchEntry,
  WatchHandlers,
  WriteCallback,
} from '../../../src/ha/kv.js';
import type {
  RemoteApplyResult,
  RemoteDecision,
  RemoteSessionStore,
  ReplicatedSession,
  SessionEvent,
  SessionKey,
} from '../../../src/ha/session.js';

/** Wall-clock ms the fake clocks read when the monotonic clock reads 0. */
export const BOOT_WALL_MS = 1_700_000_000_000;

/** Clocks whose monotonic time is the scheduler's time (ms) and whose wall clock is BOOT_WALL_MS later. */
export function schedulerClocks(scheduler: SchedulerLike, bootWallMs = BOOT_WALL_MS): Clocks {
  return {
    monotonicNs: () => BigInt(Math.round(scheduler.now())) * 1_000_000n,
    wallMs: () => bootWallMs + scheduler.now(),
  };
}

export function schedulerClock(scheduler: SchedulerLike, bootWallMs = BOOT_WALL_MS): ClockTranslator {
  return new ClockTranslator(schedulerClocks(scheduler, bootWallMs));
}

export function sessionKey(n: number, overrides: Partial<SessionKey> = {}): SessionKey {
  return {
    protocol: 6,
    srcAddr: `10.0.${(n >> 8) & 255}.${n & 255}`,
    srcPort: 40000 + (n % 20000),
    dstAddr: '10.1.0.1',
    dstPort: 443,
    vni: 0,
    ...overrides,
  };
}

/** A session of key n, last seen at monotonic `lastSeenMs` (ms). */
export function session(
  n: number,
  lastSeenMs = 0,
  overrides: Partial<ReplicatedSession> = {},
): ReplicatedSession {
  return {
    key: sessionKey(n),
    tunnel: {
      type: 'geneve',
      vni: 4242,
      cookie: '00112233445566ff',
      outerSrcAddr: '192.168.0.1',
      outerDstAddr: '192.168.0.2',
      outerSrcMac: '02:00:00:00:00:01',
      outerDstMac: '02:00:00:00:00:02',
      outerSrcPort: 6081,
      outerDstPort: 6081,
      ingressIfindex: 3,
    },
    verdict: {
      action: 'allow',
      direction: 'ingress',
      policyId: 1,
      ruleId: 2,
      reason: 'rule',
      redirectIfindex: 0,
    },
    tcpState: 'established',
    tcpFlags: 0x12,
    createdNs: 1_000_000n,
    lastSeenNs: BigInt(lastSeenMs) * 1_000_000n,
    ...overrides,
  };
}

export const ev = (kind: SessionEvent['kind'], s: ReplicatedSession): SessionEvent => ({ kind, session: s });

/** One applyRemote() call: its scheduler time and what it wrote and deleted. */
export interface RemoteApply {
  at: number;
  keys: string[];
  written: string[];
  deleted: string[];
}

/** A kernel session map in a Map; applies events the way the firewall would have. */
export class MapStore implements RemoteSessionStore {
  readonly sessions = new Map<string, ReplicatedSession>();
  restores = 0;
  readonly applies: RemoteApply[] = [];
  readonly applies$ = new Subject<RemoteApply>();
  /** Keys whose kernel write fails, as a full map would make it. */
  readonly failing = new Set<string>();

  constructor(private readonly scheduler?: SchedulerLike) {}

  list(): ReplicatedSession[] {
    return [...this.sessions.values()];
  }

  restore(sessions: readonly ReplicatedSession[]): { written: number; skipped: number } {
    this.restores++;
    let written = 0;
    for (const s of sessions) {
      const key = sessionKvKey(s.key);
      if (this.sessions.has(key)) continue;
      this.sessions.set(key, s);
      written++;
    }
    return { written, skipped: sessions.length - written };
  }

  applyRemote(
    keys: readonly SessionKey[],
    decide: (index: number, local: ReplicatedSession | undefined) => RemoteDecision,
  ): RemoteApplyResult {
    const call: RemoteApply = {
      at: this.scheduler?.now() ?? 0,
      keys: keys.map(sessionKvKey),
      written: [],
      deleted: [],
    };
    const failed: number[] = [];
    keys.forEach((k, i) => {
      const key = sessionKvKey(k);
      const d = decide(i, this.sessions.get(key));
      if (d === undefined) return;
      if (this.failing.has(key)) {
        failed.push(i);
      } else if (d === 'delete') {
        this.sessions.delete(key);
        call.deleted.push(key);
      } else {
        this.sessions.set(key, d);
        call.written.push(key);
      }
    });
    this.applies.push(call);
    this.applies$.next(call);
    return failed.length > 0 ? { failed, error: new Error('map full') } : { failed };
  }

  /** Sets sessions, replacing any of the same key (what traffic would do). */
  set(sessions: readonly ReplicatedSession[]): void {
    for (const s of sessions) this.sessions.set(sessionKvKey(s.key), s);
  }

  apply(events: readonly SessionEvent[]): void {
    for (const e of events) {
      if (e.kind === 'deleted') this.sessions.delete(sessionKvKey(e.session.key));
      else this.sessions.set(sessionKvKey(e.session.key), e.session);
    }
  }
}

export interface Write {
  op: 'put' | 'delete';
  key: string;
  at: number;
  value?: Uint8Array;
  /** Given when the bucket stores it. */
  revision?: number;
}

/**
 * A bucket in a Map. Writes apply at once and are recorded with the scheduler time; `writes$`
 * emits each, for marble assertions. Every stored write gets the next revision and goes to the
 * watches (not while disconnected: a watch set up again after `up()` reads what it missed).
 * `hold` keeps writes unstored and unsettled until released; `holdAcks` stores writes at once but
 * holds their acknowledgement until released; `failNext` makes the next n writes fail;
 * `deliveryDelayMs` makes watches receive changes that much later than they are stored (a watch
 * lagging behind the acknowledgements).
 */
export class FakeKv implements SessionKv {
  readonly data = new Map<string, Uint8Array>();
  readonly writes: Write[] = [];
  readonly writes$ = new Subject<Write>();
  readonly changes = new Subject<ConnectionChange>();
  readonly connection$ = this.changes.asObservable();
  connected = true;
  hold = false;
  holdAcks = false;
  failNext = 0;
  deliveryDelayMs = 0;
  snapshots = 0;
  /** Every stored change, in revision order. */
  readonly log: WatchEntry[] = [];
  watchesStarted = 0;
  private revision = 0;
  private held: { apply: () => number; done: WriteCallback }[] = [];
  private readonly watchers = new Set<WatchHandlers>();

  constructor(private readonly scheduler: SchedulerLike) {}

  put(key: string, value: Uint8Array, done: WriteCallback): void {
    const w: Write = { op: 'put', key, at: this.scheduler.now(), value };
    this.write(w, () => this.store(w, () => this.data.set(key, value)), done);
  }

  delete(key: string, done: WriteCallback): void {
    const w: Write = { op: 'delete', key, at: this.scheduler.now() };
    this.write(w, () => this.store(w, () => this.data.delete(key)), done);
  }

  snapshot(): Promise<KvSnapshot> {
    this.snapshots++;
    if (!this.connected) return Promise.reject(new Error('not connected'));
    return Promise.resolve({
      records: [...this.data].map(([key, value]) => ({ key, value })),
      revision: this.revision,
    });
  }

  watch(fromRevision: number | undefined, handlers: WatchHandlers): KvWatch {
    this.watchesStarted++;
    this.watchers.add(handlers);
    handlers.started?.();
    if (fromRevision !== undefined) {
      for (const e of this.log) if (e.revision >= fromRevision) handlers.entry(e);
    }
    return { stop: () => this.watchers.delete(handlers) };
  }

  /** Watches running now. */
  get watchCount(): number {
    return this.watchers.size;
  }

  /** Ends every watch as a server would, with `err`. */
  endWatches(err?: Error): void {
    const watchers = [...this.watchers];
    this.watchers.clear();
    for (const w of watchers) w.end(err);
  }

  /** Settles every held write, in the order they were made. */
  release(): void {
    const held = this.held;
    this.held = [];
    for (const h of held) h.done(undefined, h.apply());
  }

  get heldCount(): number {
    return this.held.length;
  }

  down(): void {
    this.connected = false;
    this.changes.next('down');
  }

  up(): void {
    this.connected = true;
    this.changes.next('up');
  }

  /** Stores a change: gives it the next revision and sends it to the watches. */
  private store(w: Write, apply: () => void): number {
    apply();
    const revision = ++this.revision;
    w.revision = revision;
    const entry: WatchEntry = {
      key: w.key,
      revision,
      op: w.op,
      value: w.value ?? new Uint8Array(0),
      atMs: BOOT_WALL_MS + this.scheduler.now(),
      backlog: 0,
    };
    this.log.push(entry);
    if (this.deliveryDelayMs > 0) this.scheduler.schedule(() => this.deliver(entry), this.deliveryDelayMs);
    else this.deliver(entry);
    return revision;
  }

  private deliver(entry: WatchEntry): void {
    if (this.connected) for (const h of [...this.watchers]) h.entry(entry);
  }

  /** Completes synchronously unless held, so virtual-time tests see writes settle when made. */
  private write(w: Write, apply: () => number, done: WriteCallback): void {
    this.writes.push(w);
    this.writes$.next(w);
    if (this.failNext > 0) {
      this.failNext--;
      done(new Error(`write ${w.key} failed`));
    } else if (this.hold) {
      this.held.push({ apply, done });
    } else if (this.holdAcks) {
      const revision = apply();
      this.held.push({ apply: () => revision, done });
    } else {
      done(undefined, apply());
    }
  }
}

/** Waits until `check` returns a value other than undefined, or fails after `timeoutMs` saying what it waited for. */
export async function waitFor<T>(
  what: string,
  timeoutMs: number,
  check: () => T | undefined | Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
