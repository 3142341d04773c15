import { Subject, asyncScheduler, interval, map, take, type Observable } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../../src/ha/codec.js';
import { Replicator, type ReplicatorOptions } from '../../../src/ha/replicator.js';
import type { SessionEventBatch } from '../../../src/ha/session.js';
import { StageCounters } from '../../../src/ledger.js';
import { BOOT_WALL_MS, FakeKv, MapStore, ev, schedulerClock, session, type Write } from './helpers.js';

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

const K1 = sessionKvKey(session(1).key);
const K2 = sessionKvKey(session(2).key);
const K3 = sessionKvKey(session(3).key);

/** What a write carried: op, key and the session's last seen (wall ms) for puts. */
function summary(w: Write): string {
  if (w.op === 'delete') return `del ${w.key}`;
  const rec = decodeSessionValueOrThrow(w.key, w.value!);
  return `put ${w.key} @${rec.session.lastSeenMs - BOOT_WALL_MS} by ${rec.node}`;
}

function setup(scheduler: TestScheduler | typeof asyncScheduler, options: Partial<ReplicatorOptions> = {}) {
  const kv = new FakeKv(scheduler);
  const store = new MapStore();
  const counters = new StageCounters('ha', 'nats_sessions');
  const replicator = new Replicator(store, kv, {
    nodeId: 'node-a',
    scheduler,
    clock: schedulerClock(scheduler),
    syncIntervalMs: 60_000,
    counters,
    ...options,
  });
  /** Events go to the kernel fake and the replicator, as the firewall would deliver them. */
  const feed = (events: Observable<SessionEventBatch>) =>
    events.subscribe((batch) => {
      store.apply(batch);
      replicator.handle(batch);
    });
  return { kv, store, replicator, feed, counters };
}

describe('replicator: coalescing and immediate writes (virtual time)', () => {
  it('writes 50 updates of one session within 500 ms as one write, carrying the last update', () => {
    const scheduler = testScheduler();
    scheduler.run(({ expectObservable }) => {
      const { kv, feed } = setup(scheduler);
      // Updates at 10, 20, ..., 500 ms (50 within 490 ms); the 50th says last seen 490.
      expectObservable(kv.writes$.pipe(map(summary)), '^ 3s !').toBe('510ms a', {
        a: `put ${K1} @490 by node-a`,
      });
      feed(
        interval(10).pipe(
          take(50),
          map((i) => [ev('updated', session(1, i * 10))]),
        ),
      );
    });
  });

  it('keeps writing a steadily updated session once per window, not starving it', () => {
    const scheduler = testScheduler();
    scheduler.run(({ expectObservable }) => {
      const { kv, feed } = setup(scheduler);
      // An update every 8 ms from 8 to 1200 ms, each last seen at its own time: the first opens
      // a window to 508, the first after that (512) one to 1012, then 1016 one to 1516.
      expectObservable(kv.writes$.pipe(map((w) => summary(w).split(' ')[2])), '^ 3s !').toBe(
        '508ms a 503ms b 503ms c',
        { a: '@504', b: '@1008', c: '@1200' },
      );
      feed(
        interval(8).pipe(
          take(150),
          map((i) => [ev('updated', session(1, (i + 1) * 8))]),
        ),
      );
    });
  });

  it('writes creates and deletes at once, and a create overtakes a coalescing update', () => {
    const scheduler = testScheduler();
    scheduler.run(({ cold, expectObservable }) => {
      const { kv, feed } = setup(scheduler);
      // The update of session 2 at 200 is folded into the create at 250: no write at 700.
      expectObservable(kv.writes$.pipe(map(summary)), '^ 2s !').toBe('a 99ms b 149ms d', {
        a: `put ${K1} @0 by node-a`,
        b: `del ${K1}`,
        d: `put ${K2} @250 by node-a`,
      });
      feed(
        cold<SessionEventBatch>('a 99ms b 99ms c 49ms d', {
          a: [ev('created', session(1, 0))],
          b: [ev('deleted', session(1, 100))],
          c: [ev('updated', session(2, 200))],
          d: [ev('created', session(2, 250))],
        }),
      );
    });
  });

  it('turns updates followed by a delete within the window into the delete alone', () => {
    const scheduler = testScheduler();
    scheduler.run(({ cold, expectObservable }) => {
      const { kv, feed } = setup(scheduler);
      expectObservable(kv.writes$.pipe(map(summary)), '^ 2s !').toBe('200ms c', { c: `del ${K1}` });
      feed(
        cold<SessionEventBatch>('a 99ms b 99ms c', {
          a: [ev('updated', session(1, 0))],
          b: [ev('updated', session(1, 100))],
          c: [ev('deleted', session(1, 200))],
        }),
      );
    });
  });

  it('flushes coalescing updates on close instead of waiting out the window', () => {
    const scheduler = testScheduler();
    scheduler.run(({ cold, expectObservable }) => {
      const { kv, feed, replicator } = setup(scheduler);
      expectObservable(kv.writes$.pipe(map(summary)), '^ 2s !').toBe('100ms (abc)', {
        a: `put ${K1} @10 by node-a`,
        b: `put ${K2} @0 by node-a`,
        c: `put ${K3} @10 by node-a`,
      });
      feed(
        cold<SessionEventBatch>('a 9ms b', {
          a: [ev('updated', session(1, 0)), ev('updated', session(2, 0))],
          b: [ev('updated', session(3, 10)), ev('updated', session(1, 10))],
        }),
      );
      scheduler.schedule(() => void replicator.close(), 100);
    });
  });

  it('counts events received, written and folded into another write', async () => {
    const scheduler = testScheduler();
    let counters!: StageCounters;
    let flushed!: Promise<void>;
    scheduler.run(() => {
      const s = setup(scheduler);
      counters = s.counters;
      s.feed(
        interval(10).pipe(
          take(50),
          map((i) => [ev('updated', session(1, i * 10))]),
        ),
      );
      scheduler.schedule(() => s.replicator.handle([ev('created', session(2, 600))]), 600);
      scheduler.schedule(() => void (flushed = s.replicator.flush()), 700);
    });
    await flushed;
    expect(counters.snapshot()).toEqual({
      id: 'ha',
      type: 'nats_sessions',
      received: 51,
      sent: 2,
      merged: 49,
      dropped: {},
      inFlight: 0,
    });
  });
});

describe('replicator: ordering, failures and lag (fake timers)', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 0 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('never lets a delete overtake the put of the same key still in flight', async () => {
    const { kv, replicator } = setup(asyncScheduler);
    kv.hold = true;
    replicator.handle([ev('created', session(1, 0)), ev('created', session(2, 0))]);
    replicator.handle([ev('deleted', session(1, 1))]);
    expect(kv.writes.map((w) => `${w.op} ${w.key}`)).toEqual([`put ${K1}`, `put ${K2}`]);
    kv.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(kv.writes.map((w) => `${w.op} ${w.key}`)).toEqual([`put ${K1}`, `put ${K2}`, `delete ${K1}`]);
    kv.release();
    await vi.advanceTimersByTimeAsync(0);
    expect([...kv.data.keys()]).toEqual([K2]);
  });

  it('keeps at most max_in_flight writes outstanding', async () => {
    const { kv, replicator } = setup(asyncScheduler, { maxInFlight: 3 });
    kv.hold = true;
    replicator.handle([1, 2, 3, 4, 5, 6, 7].map((n) => ev('created', session(n, 0))));
    expect(kv.writes.length).toBe(3);
    expect(replicator.status().inFlight).toBe(3);
    expect(replicator.status().pending).toBe(7);
    kv.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(kv.writes.length).toBe(6);
    kv.release();
    await vi.advanceTimersByTimeAsync(0);
    kv.release();
    await vi.advanceTimersByTimeAsync(0);
    expect(kv.writes.length).toBe(7);
    expect(kv.data.size).toBe(7);
    expect(replicator.status().pending).toBe(0);
  });

  it('retries a failed write after retry_ms with the latest state, and reports the lag of the oldest change', async () => {
    const { kv, replicator } = setup(asyncScheduler, { retryMs: 1000 });
    kv.failNext = 1;
    replicator.handle([ev('created', session(1, 0))]);
    await vi.advanceTimersByTimeAsync(300);
    expect(kv.writes.length).toBe(1);
    expect(replicator.status()).toMatchObject({ pending: 1, failedWrites: 1, lagMs: 300 });
    // A newer update while waiting to retry is what the retry carries.
    replicator.handle([ev('updated', session(1, 300))]);
    await vi.advanceTimersByTimeAsync(700);
    expect(kv.writes.map(summary)).toEqual([`put ${K1} @0 by node-a`, `put ${K1} @300 by node-a`]);
    expect(replicator.status()).toMatchObject({ pending: 0, lagMs: 0, puts: 1 });
  });

  it('holds writes while disconnected and syncs on reconnect, so changes made meanwhile reach KV', async () => {
    const { kv, store, replicator } = setup(asyncScheduler);
    kv.down();
    const events = [ev('created', session(1, 0)), ev('created', session(2, 0))];
    store.apply(events);
    replicator.handle(events);
    await vi.advanceTimersByTimeAsync(5000);
    expect(kv.writes).toEqual([]);
    expect(replicator.status()).toMatchObject({ connected: false, pending: 2, lagMs: 5000 });
    // A change the replicator never heard of (its event was lost): only the sync finds it.
    store.set([session(3, 4000)]);
    replicator.start(new Subject<SessionEventBatch>());
    kv.up();
    await vi.advanceTimersByTimeAsync(0);
    expect(new Set(kv.data.keys())).toEqual(new Set([K1, K2, K3]));
    expect(replicator.status()).toMatchObject({
      pending: 0,
      counts: { local: 3, kv: 3, both: 3, onlyLocal: 0, onlyKv: 0, onlyKvOtherNodes: 0 },
    });
    await replicator.close();
  });

  it('keeps a write acknowledged while a full sync reads the bucket in what it knows the bucket holds', async () => {
    const { kv, replicator } = setup(asyncScheduler);
    // The read returns the bucket as it was when asked, and answers only once released.
    let release!: () => void;
    const answered = new Promise<void>((resolve) => (release = resolve));
    const read = kv.snapshot.bind(kv);
    kv.snapshot = async () => {
      const snapshot = await read();
      await answered;
      return snapshot;
    };
    const sync = replicator.sync();
    replicator.handle([ev('created', session(1, 0))]);
    await vi.advanceTimersByTimeAsync(0);
    expect([...kv.data.keys()]).toEqual([K1]);
    release();
    await sync;
    expect([...replicator.knownViews().keys()]).toEqual([K1]);
  });

  it('does not write back sessions it loaded unchanged, nor delete keys another node owns', async () => {
    const { kv, replicator } = setup(asyncScheduler);
    const other = setup(asyncScheduler, { nodeId: 'node-b' });
    other.replicator.handle([ev('created', session(1, 0))]);
    await vi.advanceTimersByTimeAsync(0);
    kv.data.set(K1, other.kv.data.get(K1)!);
    replicator.seedKnown([{ key: K1, value: kv.data.get(K1)! }]);
    replicator.handle([ev('created', session(1, 0))]);
    replicator.handle([ev('deleted', session(1, 0))]);
    await vi.advanceTimersByTimeAsync(0);
    expect(kv.writes).toEqual([]);
    // Traffic through this node makes it the owner; then its delete is its own to make.
    replicator.handle([ev('updated', session(1, 5000))]);
    await vi.advanceTimersByTimeAsync(500);
    replicator.handle([ev('deleted', session(1, 5600))]);
    await vi.advanceTimersByTimeAsync(0);
    expect(kv.writes.map(summary)).toEqual([`put ${K1} @5000 by node-a`, `del ${K1}`]);
  });

  it('close() with nats down gives up after its timeout and counts the unwritten events as shutdown drops', async () => {
    const { kv, replicator, counters } = setup(asyncScheduler);
    kv.down();
    replicator.handle([ev('created', session(1, 0)), ev('updated', session(2, 0))]);
    const closed = replicator.close(2000);
    await vi.advanceTimersByTimeAsync(2000);
    expect(await closed).toBe(false);
    expect(counters.snapshot().dropped).toEqual({ shutdown: 2 });
    expect(kv.writes).toEqual([]);
  });
});

describe('replicator: full sync against a fake bucket', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 0 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('writes missing and outdated sessions, deletes its own stale keys, keeps other nodes keys', async () => {
    const a = setup(asyncScheduler);
    const b = setup(asyncScheduler, { nodeId: 'node-b' });
    // node-b wrote sessions 4 and 5; node-a wrote 1 (still local, outdated) and 2 (gone).
    b.replicator.handle([ev('created', session(4, 0)), ev('created', session(5, 0))]);
    a.replicator.handle([ev('created', session(1, 0)), ev('created', session(2, 0))]);
    await vi.advanceTimersByTimeAsync(0);
    for (const [k, v] of b.kv.data) a.kv.data.set(k, v);
    a.kv.writes.length = 0;
    await vi.advanceTimersByTimeAsync(10_000);
    a.store.set([session(1, 10_000), session(3, 9_000)]);

    const report = await a.replicator.sync();
    expect(a.kv.writes.map(summary).sort()).toEqual(
      [`put ${K1} @10000 by node-a`, `del ${K2}`, `put ${K3} @9000 by node-a`].sort(),
    );
    expect(report).toMatchObject({
      puts: 2,
      deletes: 1,
      unsettled: 0,
      before: { local: 2, kv: 4, both: 1, onlyLocal: 1, onlyKv: 3, onlyKvOtherNodes: 2 },
      counts: { local: 2, kv: 4, both: 2, onlyLocal: 0, onlyKv: 2, onlyKvOtherNodes: 2 },
    });
    expect(a.replicator.status().lastSync?.atMs).toBe(Date.now());
  });

  it('deletes other nodes keys last seen before stale_after_ms, and only those', async () => {
    const a = setup(asyncScheduler, { staleAfterMs: 60_000 });
    const b = setup(asyncScheduler, { nodeId: 'node-b' });
    b.replicator.handle([ev('created', session(4, 0))]);
    await vi.advanceTimersByTimeAsync(30_000);
    b.replicator.handle([ev('created', session(5, 30_000))]);
    await vi.advanceTimersByTimeAsync(40_000);
    for (const [k, v] of b.kv.data) a.kv.data.set(k, v);
    await a.replicator.sync();
    expect(a.kv.writes.map(summary)).toEqual([`del ${sessionKvKey(session(4).key)}`]);
  });
});
