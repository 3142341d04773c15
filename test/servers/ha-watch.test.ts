/**
 * The hot standby against a real nats-server: two nodes replicate into one bucket, and node B's
 * watch applies node A's changes to its session map as they happen, ignores its own writes coming
 * back, writes nothing back for A's sessions, and goes on after nats-server restarts.
 */
import { connect, type KvEntry } from 'nats';
import { Subject } from 'rxjs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../src/ha/codec.js';
import { NatsSessionKv, putAsync, type BucketOptions, type WatchEntry } from '../../src/ha/kv.js';
import { SessionReplication, type NodeReplicationStatus } from '../../src/ha/replication.js';
import type { ReplicatedSession, SessionEvent, SessionEventBatch } from '../../src/ha/session.js';
import { silentLogger } from '../../src/logger.js';
import { cleanup } from '../fixtures/cleanup.js';
import { startNatsServer, type NatsServer } from '../fixtures/nats.js';
import { describeWith } from '../fixtures/privilege.js';
import { MapStore, ev, session, waitFor } from '../unit/ha/helpers.js';

const PREFIX = 'rxhw';
const BUCKET = 'rxhw_watch';

function bucketOptions(): BucketOptions {
  // Every revision kept, so the test can read who wrote what.
  return { bucket: BUCKET, replicas: 1, history: 64, ttlMs: 0, requestTimeoutMs: 5000 };
}

/** A session on this host's monotonic clock, last seen now. */
function liveSession(n: number, overrides: Partial<ReplicatedSession> = {}): ReplicatedSession {
  const now = process.hrtime.bigint();
  return session(n, 0, { lastSeenNs: now, createdNs: now - 60_000_000_000n, ...overrides });
}

interface Node {
  store: MapStore;
  replication: SessionReplication;
  /** This node's traffic: its kernel changes and its replicator hears of it. */
  emit(batch: SessionEvent[]): void;
  status(): NodeReplicationStatus;
}

async function startNode(nats: NatsServer, nodeId: string): Promise<Node> {
  const store = new MapStore();
  const events = new Subject<SessionEventBatch>();
  const replication = await SessionReplication.start(store, events, {
    nats: { servers: [nats.url], reconnectWaitMs: 100, connectTimeoutMs: 2000 },
    bucket: bucketOptions(),
    // A full sync only at start and after reconnects: only the watch can bring other nodes' changes.
    replicator: { nodeId, syncIntervalMs: 3_600_000, retryMs: 200 },
  });
  return {
    store,
    replication,
    emit: (batch) => {
      store.apply(batch);
      events.next(batch);
    },
    status: () => replication.status(),
  };
}

/** Every revision the bucket keeps, read over a fresh connection. */
async function allRevisions(url: string): Promise<KvEntry[]> {
  const nc = await connect({ servers: url });
  try {
    const kv = await nc.jetstream().views.kv(BUCKET, { bindOnly: true });
    const out: KvEntry[] = [];
    for await (const e of await kv.history()) out.push(e);
    return out;
  } finally {
    await nc.close();
  }
}

describeWith(
  { commands: ['nats-server'] },
  'hot standby: the watch of the bucket against nats-server',
  () => {
    let nats: NatsServer;

    beforeAll(async () => {
      nats = await startNatsServer({ prefix: PREFIX });
    });
    afterAll(async () => {
      await cleanup.dispose();
    });

    it('delivers every change written while it runs once, in revision order, also around deletes (purges)', async () => {
      const nc = await connect({ servers: nats.url });
      const kv = await NatsSessionKv.open(nc, { ...bucketOptions(), bucket: 'rxhw_order' }, silentLogger());
      const seen: WatchEntry[] = [];
      const noop = (): void => undefined;
      try {
        for (let i = 0; i < 300; i++) await putAsync(kv, `k${i}`, Buffer.from(`v${i}`));
        let started!: () => void;
        const isStarted = new Promise<void>((resolve) => (started = resolve));
        const watch = kv.watch(301, { started, entry: (e) => seen.push(e), end: noop });
        await isStarted;
        // Interleaved puts and deletes, pipelined: the deletes (rollups) are what made
        // nats-server 2.9.10 skip messages of live consumers.
        await Promise.all(
          Array.from({ length: 100 }, (_, i) => [
            putAsync(kv, `n${i}`, Buffer.from(`n${i}`)),
            ...(i < 50
              ? [
                  new Promise<void>((resolve, reject) =>
                    kv.delete(`k${250 + i}`, (err) => (err ? reject(err) : resolve())),
                  ),
                ]
              : []),
          ]).flat(),
        );
        await waitFor('450 revisions', 10_000, () => (seen.at(-1)?.revision === 450 ? true : undefined));
        watch.stop();
        expect(seen.map((e) => e.revision)).toEqual(Array.from({ length: 150 }, (_, i) => 301 + i));
        expect(
          seen
            .filter((e) => e.op === 'delete')
            .map((e) => e.key)
            .sort(),
        ).toEqual(Array.from({ length: 50 }, (_, i) => `k${250 + i}`).sort());
        expect(
          seen
            .filter((e) => e.op === 'put')
            .map((e) => new TextDecoder().decode(e.value))
            .sort(),
        ).toEqual(Array.from({ length: 100 }, (_, i) => `n${i}`).sort());
      } finally {
        await kv.close();
        await nc.close();
      }
    });

    it('node B applies node A’s changes as they happen, writes none back, ignores its own, and goes on after nats-server restarts', async () => {
      const a = await startNode(nats, 'node-a');
      const b = await startNode(nats, 'node-b');
      const nodes = [a, b];
      try {
        expect(b.status().watch).toMatchObject({ active: true, revision: 0, applied: 0 });
        const written = () =>
          waitFor('node A to write everything', 10_000, () => (a.status().pending === 0 ? true : undefined));

        // 300 sessions through A.
        a.emit(Array.from({ length: 300 }, (_, i) => ev('created', liveSession(i))));
        await waitFor('300 sessions in B', 10_000, () => (b.store.sessions.size === 300 ? true : undefined));
        for (const [key, s] of a.store.sessions) {
          const copy = b.store.sessions.get(key)!;
          expect({ ...copy, lastSeenNs: 0n, createdNs: 0n }).toEqual({ ...s, lastSeenNs: 0n, createdNs: 0n });
          // Same host, same clock: the translation gives back the times within a millisecond or two.
          expect(Math.abs(Number(copy.lastSeenNs - s.lastSeenNs))).toBeLessThanOrEqual(2_000_000);
        }

        // 20 of them close on A (an update each, coalesced), 50 end.
        a.emit(Array.from({ length: 20 }, (_, i) => ev('updated', liveSession(i, { tcpState: 'fin_wait' }))));
        a.emit(Array.from({ length: 50 }, (_, i) => ev('deleted', liveSession(250 + i))));
        await waitFor('the closes and ends in B', 10_000, () =>
          b.store.sessions.size === 250 &&
          b.store.sessions.get(sessionKvKey(session(19).key))?.tcpState === 'fin_wait'
            ? true
            : undefined,
        );

        // B's own traffic: B writes those, and its watch sees them come back.
        b.emit(Array.from({ length: 20 }, (_, i) => ev('created', liveSession(1000 + i))));
        await waitFor('B’s own writes back through its watch', 10_000, () =>
          b.status().watch?.ignoredBy.own === 20 ? true : undefined,
        );
        await written();

        // nats-server restarts; A's changes made meanwhile reach B once both are back.
        await nats.stop();
        await waitFor('both nodes to see the disconnect', 10_000, () =>
          nodes.every((n) => !n.status().connected) ? true : undefined,
        );
        expect(b.status().watch?.active).toBe(false);
        a.emit(Array.from({ length: 40 }, (_, i) => ev('created', liveSession(2000 + i))));
        const restartedAt = Date.now();
        await nats.start();
        await waitFor('the 40 sessions made during the restart in B', 15_000, () =>
          b.store.sessions.size === 310 ? true : undefined,
        );
        await written();
        // The full sync after the reconnect finds nothing of A's for B to write either.
        await waitFor('B’s sync after the reconnect', 10_000, () =>
          (b.status().lastSync?.atMs ?? 0) > restartedAt ? true : undefined,
        );

        const sa = a.status();
        const sb = b.status();
        const w = sb.watch!;
        // Every write of A was applied once, or collapsed into a later write of its key in one batch.
        expect(w.applied + w.ignoredBy.superseded).toBe(sa.puts + sa.deletes);
        expect(w.appliedDeletes).toBe(50);
        expect(w).toMatchObject({
          active: true,
          failed: 0,
          pending: 0,
          ignoredBy: { own: 20, localNewer: 0, unreadable: 0, absent: 0 },
        });
        expect(w.starts).toBeGreaterThanOrEqual(2);
        expect(sb).toMatchObject({ puts: 20, deletes: 0, failedWrites: 0 });
        expect([...b.store.sessions.keys()].sort()).toEqual(
          [
            ...new Set([
              ...a.store.sessions.keys(),
              ...Array.from({ length: 20 }, (_, i) => sessionKvKey(session(1000 + i).key)),
            ]),
          ].sort(),
        );

        // What B wrote, from the bucket itself: its own 20 sessions, once each, nothing of A's.
        const revisions = await allRevisions(nats.url);
        const byB = revisions
          .filter((e) => e.operation === 'PUT' && decodeSessionValueOrThrow(e.key, e.value).node === 'node-b')
          .map((e) => e.key)
          .sort();
        expect(byB).toEqual(Array.from({ length: 20 }, (_, i) => sessionKvKey(session(1000 + i).key)).sort());
      } finally {
        for (const n of nodes) expect(await n.replication.close()).toBe(true);
      }
      // Closed: the watch is stopped.
      expect(b.status().watch).toMatchObject({ active: false, pending: 0 });
    });
  },
);
