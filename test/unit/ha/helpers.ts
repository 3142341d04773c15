import { Subject, type SchedulerLike } from 'rxjs';
import { ClockTranslator, type Clocks } from '../../../src/ha/clock.js';
import { sessionKvKey } from '../../../src/ha/codec.js';
import type { ConnectionChange, KvRecord, SessionKv, WriteCallback } from '../../../src/ha/kv.js';
import type { ReplicatedSession, SessionEvent, SessionKey, SessionStore } from '../../../src/ha/session.js';

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

/** A kernel session map in a Map; applies events the way the firewall would have. */
export class MapStore implements SessionStore {
  readonly sessions = new Map<string, ReplicatedSession>();
  restores = 0;

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
}

/**
 * A bucket in a Map. Writes apply at once and are recorded with the scheduler time; `writes$`
 * emits each, for marble assertions. `hold` keeps writes unsettled until released; `failNext`
 * makes the next n writes fail.
 */
export class FakeKv implements SessionKv {
  readonly data = new Map<string, Uint8Array>();
  readonly writes: Write[] = [];
  readonly writes$ = new Subject<Write>();
  readonly changes = new Subject<ConnectionChange>();
  readonly connection$ = this.changes.asObservable();
  connected = true;
  hold = false;
  failNext = 0;
  snapshots = 0;
  private held: { apply: () => void; done: WriteCallback }[] = [];

  constructor(private readonly scheduler: SchedulerLike) {}

  put(key: string, value: Uint8Array, done: WriteCallback): void {
    this.write({ op: 'put', key, at: this.scheduler.now(), value }, () => this.data.set(key, value), done);
  }

  delete(key: string, done: WriteCallback): void {
    this.write({ op: 'delete', key, at: this.scheduler.now() }, () => this.data.delete(key), done);
  }

  snapshot(): Promise<KvRecord[]> {
    this.snapshots++;
    if (!this.connected) return Promise.reject(new Error('not connected'));
    return Promise.resolve([...this.data].map(([key, value]) => ({ key, value })));
  }

  /** Settles every held write, in the order they were made. */
  release(): void {
    const held = this.held;
    this.held = [];
    for (const h of held) {
      h.apply();
      h.done();
    }
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

  /** Completes synchronously unless held, so virtual-time tests see writes settle when made. */
  private write(w: Write, apply: () => void, done: WriteCallback): void {
    this.writes.push(w);
    this.writes$.next(w);
    if (this.failNext > 0) {
      this.failNext--;
      done(new Error(`write ${w.key} failed`));
    } else if (this.hold) {
      this.held.push({ apply, done });
    } else {
      apply();
      done();
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
