import type { KvEntry, NatsConnection } from 'nats';
import { connect } from 'nats';
import { readFileSync } from 'node:fs';
import { Subject } from 'rxjs';
import { afterAll, expect, it } from 'vitest';
import { ClockTranslator } from '../../src/ha/clock.js';
import { decodeSessionValueOrThrow, sessionKvKey, toWire } from '../../src/ha/codec.js';
import { NatsSessionKv, connectNats, type BucketOptions } from '../../src/ha/kv.js';
import { Replicator } from '../../src/ha/replicator.js';
import type { SessionEvent, SessionEventBatch } from '../../src/ha/session.js';
import { silentLogger } from '../../src/logger.js';
import { cleanup } from '../fixtures/cleanup.js';
import { startNatsServer, type NatsServer } from '../fixtures/nats.js';
import { describeWith } from '../fixtures/privilege.js';
import { MapStore, ev, session, waitFor } from '../unit/ha/helpers.js';

const PREFIX = 'rxcut';
const BUCKET = 'rxha_netcut';
/** Client pings; with the two unanswered pings the connection allows, a dead link shows within about 3 intervals. */
const PING_INTERVAL_MS = 250;
const SYNC_INTERVAL_MS = 3000;
/** Longer than the stale-connection detection and than one sync interval, so a periodic sync falls inside the cut. */
const CUT_MS = 4000;

function bucketOptions(bucket: string): BucketOptions {
  return { bucket, replicas: 1, history: 1, ttlMs: 0, requestTimeoutMs: 5000 };
}

/** Sessions on this host's monotonic clock, last seen `agoMs` ago. */
function liveSession(n: number, agoMs = 0) {
  const now = process.hrtime.bigint();
  return session(n, 0, { lastSeenNs: now - BigInt(agoMs) * 1_000_000n, createdNs: now - 60_000_000_000n });
}

/** Every live key of the bucket, read over a fresh connection. */
async function allEntries(url: string, bucket: string): Promise<Map<string, KvEntry>> {
  const nc: NatsConnection = await connect({ servers: url });
  try {
    const kv = await nc.jetstream().views.kv(bucket, { bindOnly: true });
    // Awaiting inside the keys() iteration ends it early (nats.js 2.29), so the keys are read first.
    const keys: string[] = [];
    for await (const key of await kv.keys()) keys.push(key);
    const out = new Map<string, KvEntry>();
    for (const key of keys) {
      const e = await kv.get(key);
      if (e !== null && e.operation === 'PUT') out.set(key, e);
    }
    return out;
  } finally {
    await nc.close();
  }
}

/** The state letter of /proc/<pid>/stat: 'T' once a SIGSTOP took effect. */
function processState(pid: number): string | undefined {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
}

describeWith({ commands: ['nats-server'] }, 'session replication across a network cut', () => {
  let nats: NatsServer | undefined;

  afterAll(async () => {
    await cleanup.dispose();
  });

  it('notices a silent link, reconnects and repairs KV within one sync interval after the cut', async () => {
    nats = await startNatsServer({ prefix: PREFIX });
    const server = nats;
    // The replicator's own connection settings (never-ending reconnects, two pings outstanding),
    // with short timers so the test sees the stale link quickly.
    const nc = await connectNats({
      servers: [server.url],
      pingIntervalMs: PING_INTERVAL_MS,
      reconnectWaitMs: 100,
      connectTimeoutMs: 1000,
    });
    const kv = await NatsSessionKv.open(nc, bucketOptions(BUCKET), silentLogger());
    const store = new MapStore();
    const replicator = new Replicator(store, kv, {
      nodeId: 'node-a',
      syncIntervalMs: SYNC_INTERVAL_MS,
      retryMs: 200,
    });
    const events = new Subject<SessionEventBatch>();
    const emit = (batch: SessionEvent[]) => {
      store.apply(batch);
      events.next(batch);
    };
    const pid = server.pid!;
    let frozen = false;
    replicator.start(events);
    try {
      emit(Array.from({ length: 300 }, (_, i) => ev('created', liveSession(i, 5000))));
      await waitFor('300 sessions written', 10_000, () =>
        replicator.status().pending === 0 ? true : undefined,
      );
      expect((await allEntries(server.url, BUCKET)).size).toBe(300);

      // A frozen server keeps its sockets open and answers nothing, as behind a cut link: no RST,
      // no FIN, so only the client's unanswered pings can reveal it.
      process.kill(pid, 'SIGSTOP');
      frozen = true;
      const cutAt = Date.now();
      await waitFor('nats-server to stop', 2000, () => (processState(pid) === 'T' ? true : undefined));
      expect(replicator.status().connected).toBe(true);
      // Before the client notices: writes go into the dead socket, and a full sync starts
      // against a bucket that never answers.
      emit(Array.from({ length: 25 }, (_, i) => ev('created', liveSession(1000 + i))));
      emit(Array.from({ length: 20 }, (_, i) => ev('deleted', liveSession(i))));
      emit(Array.from({ length: 5 }, (_, i) => ev('updated', liveSession(100 + i))));
      void replicator.sync();

      await waitFor('the replicator to notice the dead link', 4 * PING_INTERVAL_MS + 2000, () =>
        replicator.status().connected ? undefined : true,
      );
      // After it noticed: more changes, and 5 sessions the kernel got without an event reaching
      // the replicator (only the full sync can find those).
      emit(Array.from({ length: 25 }, (_, i) => ev('created', liveSession(1100 + i))));
      emit(Array.from({ length: 20 }, (_, i) => ev('deleted', liveSession(20 + i))));
      emit(Array.from({ length: 5 }, (_, i) => ev('updated', liveSession(110 + i))));
      emit([ev('updated', liveSession(1000))]);
      emit([ev('deleted', liveSession(1001))]);
      store.set(Array.from({ length: 5 }, (_, i) => liveSession(2000 + i)));
      expect(replicator.status().pending).toBeGreaterThanOrEqual(100);

      // Nothing got through the cut.
      expect(replicator.status()).toMatchObject({ connected: false, puts: 300, deletes: 0 });
      const rest = CUT_MS - (Date.now() - cutAt);
      if (rest > 0) await new Promise((r) => setTimeout(r, rest));
      process.kill(pid, 'SIGCONT');
      frozen = false;
      const resumedAt = Date.now();

      const status = await waitFor('a sync after the cut with no drift', SYNC_INTERVAL_MS, () => {
        const s = replicator.status();
        return s.connected &&
          s.lastSync !== undefined &&
          s.lastSync.atMs > resumedAt &&
          s.pending === 0 &&
          s.counts?.onlyLocal === 0 &&
          s.counts.onlyKv === 0
          ? s
          : undefined;
      });
      // 300 + 50 created - 40 deleted - 1 deleted + 5 without events.
      expect(store.sessions.size).toBe(314);
      expect(status.counts).toEqual({
        local: 314,
        kv: 314,
        both: 314,
        onlyLocal: 0,
        onlyKv: 0,
        onlyKvOtherNodes: 0,
      });

      const entries = await allEntries(server.url, BUCKET);
      expect([...entries.keys()].sort()).toEqual([...store.sessions.keys()].sort());
      const clock = new ClockTranslator();
      for (const [key, local] of store.sessions) {
        const stored = decodeSessionValueOrThrow(key, entries.get(key)!.value);
        expect(stored.node).toBe('node-a');
        const want = toWire(local, clock);
        expect(Math.abs(stored.session.lastSeenMs - want.lastSeenMs)).toBeLessThanOrEqual(2);
        expect({ ...stored.session, lastSeenMs: 0, createdMs: 0 }).toEqual({
          ...want,
          lastSeenMs: 0,
          createdMs: 0,
        });
      }
      expect(entries.has(sessionKvKey(liveSession(0).key))).toBe(false);
    } finally {
      if (frozen) process.kill(pid, 'SIGCONT');
      await replicator.close(5000);
      await kv.close();
      await nc.close();
    }
  }, 30_000);
});
