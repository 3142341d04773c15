import { Subject, map } from 'rxjs';
import { TestScheduler, type RunHelpers } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { ClockTranslator } from '../../../src/ha/clock.js';
import {
  decodeSessionValueOrThrow,
  encodeSessionValue,
  sessionKvKey,
  toWire,
} from '../../../src/ha/codec.js';
import { HaError } from '../../../src/ha/errors.js';
import { SessionReplication } from '../../../src/ha/replication.js';
import { Replicator } from '../../../src/ha/replicator.js';
import type { ReplicatedSession, SessionEvent, SessionEventBatch } from '../../../src/ha/session.js';
import { SessionWatch, type SessionWatchOptions, type WatchStatus } from '../../../src/ha/watch.js';
import { StageCounters } from '../../../src/ledger.js';
import { BOOT_WALL_MS, FakeKv, MapStore, ev, schedulerClock, session, type RemoteApply } from './helpers.js';

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

const K = (n: number): string => sessionKvKey(session(n).key);
const NAMES = new Map(Array.from({ length: 20 }, (_, n) => [K(n), `s${n}`]));

/** One applyRemote() call as 'w s1 w s2 d s3'. */
function summary(a: RemoteApply): string {
  return [
    ...a.written.map((k) => `w ${NAMES.get(k) ?? k}`),
    ...a.deleted.map((k) => `d ${NAMES.get(k) ?? k}`),
  ].join(' ');
}

const ms = (n: number): bigint => BigInt(n) * 1_000_000n;

/**
 * Two nodes on one bucket. Node A only writes into the bucket, as its replicator would; node B
 * runs a replicator for its own sessions and the watch under test, both on the bucket.
 */
function pair(
  scheduler: TestScheduler,
  options: Partial<SessionWatchOptions> & { clockB?: ClockTranslator } = {},
) {
  const { clockB: givenClockB, ...watchOptions } = options;
  const kv = new FakeKv(scheduler);
  const clockA = schedulerClock(scheduler);
  const clockB = givenClockB ?? schedulerClock(scheduler);
  const storeB = new MapStore(scheduler);
  const countersB = new StageCounters('ha', 'nats_sessions');
  const replicatorB = new Replicator(storeB, kv, {
    nodeId: 'node-b',
    scheduler,
    clock: clockB,
    syncIntervalMs: 3_600_000,
    counters: countersB,
  });
  const watch = new SessionWatch(storeB, kv, replicatorB, {
    nodeId: 'node-b',
    batchMs: 10,
    scheduler,
    clock: clockB,
    ...watchOptions,
  });
  const noop = (): void => undefined;
  return {
    kv,
    storeB,
    replicatorB,
    countersB,
    watch,
    /** Node A writes a session into the bucket. */
    putA: (s: ReplicatedSession): void =>
      kv.put(sessionKvKey(s.key), encodeSessionValue(toWire(s, clockA), 'node-a'), noop),
    deleteA: (n: number): void => kv.delete(K(n), noop),
    /** Traffic through node B: its kernel changes and its replicator hears of it. */
    trafficB: (events: SessionEvent[]): void => {
      storeB.apply(events);
      replicatorB.handle(events);
    },
    /** Writes node B made: puts carrying its id, and deletes it sent. */
    writesOfB: (): string[] =>
      kv.writes
        .filter((w) =>
          w.op === 'put' ? decodeSessionValueOrThrow(w.key, w.value!).node === 'node-b' : false,
        )
        .map((w) => `${w.op} ${NAMES.get(w.key) ?? w.key}`),
  };
}

type Pair = ReturnType<typeof pair>;

/**
 * A fresh pair whose watch starts from revision 0, with `script` run against it in virtual time
 * (it schedules what the nodes do); returns the pair once the scheduler ran everything.
 */
function watching(
  script: (s: Pair, scheduler: TestScheduler, helpers: RunHelpers) => void,
  options?: Parameters<typeof pair>[1],
): Pair {
  const scheduler = testScheduler();
  let s!: Pair;
  scheduler.run((helpers) => {
    s = pair(scheduler, options);
    void s.watch.start(0);
    script(s, scheduler, helpers);
  });
  return s;
}

const NONE_IGNORED = { own: 0, localNewer: 0, unreadable: 0, absent: 0, superseded: 0 };

describe('session watch: other nodes’ changes reach the kernel (virtual time)', () => {
  it('applies creates, updates and deletes of another node in one batch per window, on this node’s clock', () => {
    const scheduler = testScheduler();
    let s!: Pair;
    scheduler.run(({ expectObservable }) => {
      // Node B booted 1000 s before node A: the same wall-clock time is 1000 s more on its clock.
      const clockB = new ClockTranslator({
        monotonicNs: () => ms(scheduler.now() + 1_000_000),
        wallMs: () => BOOT_WALL_MS + scheduler.now(),
      });
      s = pair(scheduler, { clockB });
      void s.watch.start(0);
      expectObservable(s.storeB.applies$.pipe(map(summary)), '^ 1s !').toBe('10ms a 299ms b 299ms c', {
        a: 'w s1 w s2 w s3',
        b: 'd s2',
        c: 'w s1',
      });
      scheduler.schedule(() => {
        s.putA(session(1, 0));
        s.putA(session(2, 0));
      }, 0);
      scheduler.schedule(() => s.putA(session(3, 5)), 5);
      scheduler.schedule(() => s.deleteA(2), 300);
      scheduler.schedule(() => s.putA(session(1, 600, { tcpState: 'fin_wait' })), 600);
    });
    expect([...s.storeB.sessions.keys()].sort()).toEqual([K(1), K(3)].sort());
    expect(s.storeB.sessions.get(K(1))).toEqual(
      session(1, 0, { tcpState: 'fin_wait', lastSeenNs: ms(1_000_600), createdNs: ms(1_000_001) }),
    );
    expect(s.storeB.sessions.get(K(3))).toEqual(
      session(3, 0, { lastSeenNs: ms(1_000_005), createdNs: ms(1_000_001) }),
    );
    expect(s.watch.status()).toEqual<WatchStatus>({
      active: true,
      revision: 5,
      applied: 5,
      appliedDeletes: 1,
      ignored: 0,
      ignoredBy: NONE_IGNORED,
      failed: 0,
      pending: 0,
      backlog: 0,
      lagMs: 10,
      starts: 1,
      lastError: undefined,
      lastWriteError: undefined,
    });
    // Node B wrote nothing back.
    expect(s.kv.writes).toHaveLength(5);
    expect(s.writesOfB()).toEqual([]);
    expect(s.replicatorB.status()).toMatchObject({ puts: 0, deletes: 0, pending: 0 });
  });

  it('ignores this node’s own puts and deletes coming back, also a delete seen before its acknowledgement', () => {
    let beforeAck!: WatchStatus;
    const s = watching((s, scheduler) => {
      scheduler.schedule(() => s.trafficB([ev('created', session(1, 0)), ev('created', session(2, 0))]), 0);
      scheduler.schedule(() => s.trafficB([ev('deleted', session(1, 50))]), 50);
      scheduler.schedule(() => {
        s.kv.holdAcks = true;
        s.trafficB([ev('deleted', session(2, 100))]);
      }, 100);
      scheduler.schedule(() => (beforeAck = s.watch.status()), 150);
      scheduler.schedule(() => {
        s.kv.holdAcks = false;
        s.kv.release();
      }, 200);
    });
    // The delete of session 2 was in the bucket, its write unacknowledged: it waited.
    expect(beforeAck).toMatchObject({ pending: 1, ignoredBy: { ...NONE_IGNORED, own: 3 } });
    expect(s.storeB.applies).toEqual([]);
    expect(s.watch.status()).toMatchObject({
      applied: 0,
      ignored: 4,
      ignoredBy: { ...NONE_IGNORED, own: 4 },
      pending: 0,
    });
    expect(s.kv.writes.map((w) => `${w.op} ${NAMES.get(w.key)}`)).toEqual([
      'put s1',
      'put s2',
      'delete s1',
      'delete s2',
    ]);
    expect(s.replicatorB.status()).toMatchObject({ puts: 2, deletes: 2, pending: 0 });
  });

  it('keeps a session this node’s traffic saw more recently; within the tolerance the remote copy wins, last-seen never going back', () => {
    let afterOlder: ReplicatedSession | undefined;
    const s = watching((s, scheduler) => {
      scheduler.schedule(() => {
        s.storeB.set([session(1, 5000, { tcpState: 'fin_wait' })]);
        // Node A's copy was last seen 2 s before node B's traffic: older by more than the 1 s tolerance.
        s.putA(session(1, 3000));
      }, 5000);
      scheduler.schedule(() => (afterOlder = s.storeB.sessions.get(K(1))), 5100);
      scheduler.schedule(() => s.putA(session(1, 4500)), 5200);
    });
    expect(afterOlder).toEqual(session(1, 5000, { tcpState: 'fin_wait' }));
    expect(s.storeB.sessions.get(K(1))).toEqual(session(1, 5000, { tcpState: 'established' }));
    expect(s.watch.status()).toMatchObject({
      applied: 1,
      ignoredBy: { ...NONE_IGNORED, localNewer: 1 },
    });
    expect(s.replicatorB.knownView(K(1))).toMatchObject({ node: 'node-a', lastSeenMs: BOOT_WALL_MS + 4500 });
    expect(s.writesOfB()).toEqual([]);
  });

  it('deletes the kernel copy on a remote delete, unless this node’s traffic saw it after the deleting node’s last value', () => {
    const s = watching((s, scheduler) => {
      scheduler.schedule(() => {
        s.putA(session(1, 1000));
        s.putA(session(2, 1000));
      }, 1000);
      scheduler.schedule(() => s.deleteA(1), 2000);
      // Traffic through node B refreshes session 2, then node A deletes it.
      scheduler.schedule(() => s.trafficB([ev('updated', session(2, 4000))]), 4000);
      scheduler.schedule(() => s.deleteA(2), 4100);
      // A delete of a session node B never had.
      scheduler.schedule(() => s.deleteA(3), 4200);
    });
    expect(s.storeB.applies.map((a) => [a.at, summary(a)])).toEqual([
      [1010, 'w s1 w s2'],
      [2010, 'd s1'],
      [4110, ''],
      [4210, ''],
    ]);
    expect([...s.storeB.sessions.values()]).toEqual([session(2, 4000)]);
    // Node B's own update went out after its window, and came back as its own.
    expect(s.writesOfB()).toEqual(['put s2']);
    expect(s.kv.writes.at(-1)).toMatchObject({ op: 'put', key: K(2), at: 4500 });
    expect(s.watch.status()).toMatchObject({
      applied: 3,
      appliedDeletes: 1,
      ignored: 3,
      ignoredBy: { ...NONE_IGNORED, own: 1, localNewer: 1, absent: 1 },
    });
  });

  it('leaves values it cannot read alone and counts them', () => {
    const s = watching((s, scheduler) => {
      scheduler.schedule(() => {
        s.storeB.set([session(1, 0)]);
        s.kv.put(K(1), Buffer.from('not json'), () => undefined);
        s.kv.put(K(2), Buffer.from('{"v":9,"node":"node-c"}'), () => undefined);
        s.kv.delete('config.defaults', () => undefined);
      }, 0);
    });
    expect(s.storeB.applies).toEqual([]);
    expect([...s.storeB.sessions.values()]).toEqual([session(1, 0)]);
    expect(s.watch.status()).toMatchObject({
      applied: 0,
      ignored: 3,
      ignoredBy: { ...NONE_IGNORED, unreadable: 3 },
    });
    expect(s.replicatorB.knownView(K(1))).toEqual({ unreadable: true, newer: false });
    expect(s.replicatorB.knownView(K(2))).toEqual({ unreadable: true, newer: true });
  });

  it('applies in batches of at most max batch, collapsing several changes of one key to the last', () => {
    const s = watching(
      (s, scheduler) => {
        scheduler.schedule(() => {
          for (let n = 0; n < 5000; n++) s.putA(session(n, 0));
        }, 0);
        scheduler.schedule(() => {
          s.putA(session(7, 100));
          s.putA(session(7, 101, { tcpState: 'closed' }));
        }, 100);
      },
      { maxBatch: 2048 },
    );
    expect(s.storeB.applies.map((a) => [a.at, a.keys.length, a.written.length])).toEqual([
      [10, 2048, 2048],
      [10, 2048, 2048],
      [10, 904, 904],
      [110, 1, 1],
    ]);
    expect(s.storeB.sessions.size).toBe(5000);
    expect(s.storeB.sessions.get(K(7))).toEqual(session(7, 101, { tcpState: 'closed' }));
    expect(s.watch.status()).toMatchObject({
      applied: 5001,
      ignoredBy: { ...NONE_IGNORED, superseded: 1 },
    });
  });

  it('counts a kernel write that fails, leaving the view of KV as it was, and applies the next change of the key', () => {
    let failing!: WatchStatus;
    let known: unknown;
    const s = watching((s, scheduler) => {
      scheduler.schedule(() => {
        s.storeB.failing.add(K(1));
        s.putA(session(1, 0));
      }, 0);
      scheduler.schedule(() => {
        failing = s.watch.status();
        known = s.replicatorB.knownView(K(1));
        s.storeB.failing.clear();
        s.putA(session(1, 100));
      }, 100);
    });
    expect(failing).toMatchObject({ applied: 0, failed: 1, lastWriteError: 'map full' });
    expect(known).toBeUndefined();
    expect(s.replicatorB.knownView(K(1))).toMatchObject({ lastSeenMs: BOOT_WALL_MS + 100 });
    expect(s.storeB.sessions.get(K(1))).toEqual(session(1, 100));
    expect(s.watch.status()).toMatchObject({ applied: 1, failed: 1, lastWriteError: undefined });
  });
});

describe('session watch: keys this node is writing (virtual time)', () => {
  it('holds a remote change back while this node’s earlier write of the key is in flight, then applies it', () => {
    let held!: WatchStatus;
    const s = watching((s, scheduler, { expectObservable }) => {
      expectObservable(s.storeB.applies$.pipe(map(summary)), '^ 1s !').toBe('50ms a', { a: 'w s1' });
      scheduler.schedule(() => {
        s.kv.holdAcks = true;
        s.trafficB([ev('created', session(1, 0))]);
      }, 0);
      scheduler.schedule(() => s.putA(session(1, 20, { tcpState: 'fin_wait' })), 20);
      scheduler.schedule(() => (held = s.watch.status()), 35);
      scheduler.schedule(() => {
        s.kv.holdAcks = false;
        s.kv.release();
      }, 40);
    });
    expect(held).toMatchObject({ pending: 1, applied: 0 });
    expect(s.storeB.sessions.get(K(1))).toEqual(session(1, 20, { tcpState: 'fin_wait' }));
    expect(s.watch.status()).toMatchObject({
      applied: 1,
      pending: 0,
      ignoredBy: { ...NONE_IGNORED, own: 1 },
    });
    expect(s.replicatorB.knownView(K(1))).toMatchObject({ node: 'node-a' });
  });

  it('drops a remote change older than this node’s write of the key, whether the watch sees the two together or apart', () => {
    const scheduler = testScheduler();
    let together!: Pair;
    let apart!: Pair;
    scheduler.run(() => {
      // Together: node A's change waits for node B's write in flight; then both arrive at once.
      together = pair(scheduler);
      void together.watch.start(0);
      scheduler.schedule(() => {
        together.kv.hold = true;
        together.trafficB([ev('created', session(1, 0))]);
        together.kv.hold = false;
      }, 0);
      scheduler.schedule(() => together.putA(session(1, 5, { tcpState: 'fin_wait' })), 5);
      scheduler.schedule(() => together.kv.release(), 40);
      // Apart: the watch lags; node B's write is acknowledged before node A's older change arrives.
      apart = pair(scheduler, { batchMs: 0 });
      apart.kv.deliveryDelayMs = 30;
      void apart.watch.start(0);
      scheduler.schedule(() => apart.putA(session(1, 0, { tcpState: 'fin_wait' })), 0);
      scheduler.schedule(() => apart.trafficB([ev('created', session(1, 5))]), 5);
    });
    for (const s of [together, apart]) {
      expect(s.storeB.applies.flatMap((a) => a.written)).toEqual([]);
      expect(s.storeB.sessions.get(K(1))?.tcpState).toBe('established');
      expect(s.watch.status()).toMatchObject({
        applied: 0,
        ignoredBy: { ...NONE_IGNORED, own: 1, superseded: 1 },
      });
      expect(decodeSessionValueOrThrow(K(1), s.kv.data.get(K(1))!).node).toBe('node-b');
    }
    expect(apart.watch.status().lagMs).toBe(30);
  });

  it('drops this node’s waiting write of a key when a newer copy from another node replaced it', () => {
    const s = watching((s, scheduler) => {
      // Node B's update waits out its 500 ms window; node A's newer copy arrives meanwhile.
      scheduler.schedule(() => s.trafficB([ev('updated', session(1, 100))]), 100);
      scheduler.schedule(() => s.putA(session(1, 200, { tcpState: 'fin_wait' })), 200);
    });
    expect(s.storeB.sessions.get(K(1))).toEqual(session(1, 200, { tcpState: 'fin_wait' }));
    expect(s.writesOfB()).toEqual([]);
    expect(s.replicatorB.status()).toMatchObject({ pending: 0, puts: 0 });
    expect(s.countersB.snapshot()).toMatchObject({ received: 1, sent: 0, merged: 1 });
  });

  it('does not write back a session it applied when the kernel reports it, nor delete another node’s key when it idles out here', () => {
    const s = watching((s, scheduler) => {
      scheduler.schedule(() => s.putA(session(1, 0)), 0);
      scheduler.schedule(() => s.replicatorB.handle([ev('created', s.storeB.sessions.get(K(1))!)]), 100);
      scheduler.schedule(() => s.trafficB([ev('deleted', s.storeB.sessions.get(K(1))!)]), 200);
    });
    expect(s.kv.writes).toHaveLength(1);
    expect(s.kv.data.has(K(1))).toBe(true);
    expect(s.countersB.snapshot()).toMatchObject({ received: 2, sent: 0, merged: 2 });
  });
});

describe('session watch: reconnects and stop (virtual time)', () => {
  it('goes on after a reconnect from the last revision received: nothing missed, nothing twice', () => {
    let down!: WatchStatus;
    const s = watching((s, scheduler, { expectObservable }) => {
      expectObservable(s.storeB.applies$.pipe(map(summary)), '^ 1s !').toBe('10ms a 499ms b', {
        a: 'w s1',
        b: 'w s2 w s3',
      });
      scheduler.schedule(() => s.putA(session(1, 0)), 0);
      scheduler.schedule(() => s.kv.down(), 100);
      scheduler.schedule(() => {
        s.putA(session(2, 200));
        s.putA(session(3, 200));
        down = s.watch.status();
      }, 200);
      scheduler.schedule(() => s.kv.up(), 500);
    });
    expect(down).toMatchObject({ active: false, revision: 1 });
    expect(s.watch.status()).toMatchObject({ active: true, applied: 3, revision: 3, starts: 2 });
    expect(s.kv.watchesStarted).toBe(2);
    expect(s.kv.watchCount).toBe(1);
  });

  it('sets the watch up again after retry_ms when the server ends it, from where it was', () => {
    let ended!: WatchStatus;
    const s = watching(
      (s, scheduler) => {
        scheduler.schedule(() => {
          s.kv.endWatches(new HaError('EWATCH', 'nats kv bucket b: watch ended: consumer deleted'));
          ended = s.watch.status();
        }, 0);
        scheduler.schedule(() => s.putA(session(1, 100)), 100);
      },
      { retryMs: 1000 },
    );
    expect(ended).toMatchObject({
      active: false,
      lastError: 'nats kv bucket b: watch ended: consumer deleted',
    });
    expect(s.storeB.applies.map((a) => [a.at, summary(a)])).toEqual([[1010, 'w s1']]);
    expect(s.watch.status()).toMatchObject({ active: true, starts: 2, applied: 1, lastError: undefined });
  });

  it('applies nothing after stop(), not even changes it had received', () => {
    const s = watching((s, scheduler) => {
      scheduler.schedule(() => s.putA(session(1, 0)), 0);
      scheduler.schedule(() => s.putA(session(2, 50)), 50);
      scheduler.schedule(() => s.watch.stop(), 55);
      scheduler.schedule(() => s.putA(session(3, 100)), 100);
    });
    expect(s.storeB.applies.map(summary)).toEqual(['w s1']);
    expect([...s.storeB.sessions.keys()]).toEqual([K(1)]);
    expect(s.kv.watchCount).toBe(0);
    expect(s.watch.status()).toMatchObject({ active: false, pending: 0 });
  });

  it('starting from no revision watches from now on', () => {
    const scheduler = testScheduler();
    let s!: Pair;
    scheduler.run(() => {
      s = pair(scheduler);
      scheduler.schedule(() => s.putA(session(1, 0)), 0);
      scheduler.schedule(() => void s.watch.start(undefined), 5);
      scheduler.schedule(() => s.putA(session(2, 10)), 10);
    });
    expect(s.storeB.applies.map(summary)).toEqual(['w s2']);
  });
});

describe('session replication with a watch', () => {
  it('refuses a store that cannot apply other nodes’ changes, before connecting', async () => {
    const store = { list: () => [], restore: () => ({ written: 0, skipped: 0 }) };
    await expect(
      SessionReplication.start(store, new Subject<SessionEventBatch>(), {
        nats: { servers: ['nats://127.0.0.1:1'] },
        bucket: { bucket: 'b', replicas: 1, history: 1, ttlMs: 0, requestTimeoutMs: 1000 },
        replicator: { nodeId: 'node-b' },
      }),
    ).rejects.toThrow(
      "session replication: this session store cannot apply other nodes' changes; turn the watch off",
    );
  });
});
