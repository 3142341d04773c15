import { connect, type KvEntry, type NatsConnection } from 'nats';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Subject } from 'rxjs';
import { afterAll, expect, it } from 'vitest';
import { ClockTranslator } from '../../src/ha/clock.js';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../src/ha/codec.js';
import { NatsSessionKv, type BucketOptions } from '../../src/ha/kv.js';
import { Replicator } from '../../src/ha/replicator.js';
import { SessionReplication } from '../../src/ha/replication.js';
import type { SessionEvent, SessionEventBatch } from '../../src/ha/session.js';
import { silentLogger } from '../../src/logger.js';
import { cleanup, makeTempDir } from '../fixtures/cleanup.js';
import { freePort, startNatsServer, type NatsServer } from '../fixtures/nats.js';
import { describeWith } from '../fixtures/privilege.js';
import { MapStore, ev, session, waitFor } from '../unit/ha/helpers.js';

const PREFIX = 'rxha';

function bucketOptions(bucket: string, history = 1): BucketOptions {
  return { bucket, replicas: 1, history, ttlMs: 0, requestTimeoutMs: 5000 };
}

/** Sessions on this host's monotonic clock, last seen `agoMs` ago. */
function liveSession(n: number, agoMs = 0) {
  const now = process.hrtime.bigint();
  return session(n, 0, { lastSeenNs: now - BigInt(agoMs) * 1_000_000n, createdNs: now - 60_000_000_000n });
}

/**
 * Reads the bucket over a fresh connection: a connection that lived through a server restart
 * loses requests sent before it has reconnected.
 */
async function withConnection<T>(url: string, fn: (nc: NatsConnection) => Promise<T>): Promise<T> {
  const nc = await connect({ servers: url });
  try {
    return await fn(nc);
  } finally {
    await nc.close();
  }
}

async function allEntries(url: string, bucket: string): Promise<Map<string, KvEntry>> {
  return withConnection(url, (nc) => readEntries(nc, bucket));
}

async function readEntries(nc: NatsConnection, bucket: string): Promise<Map<string, KvEntry>> {
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
}

async function revisions(url: string, bucket: string, key: string): Promise<KvEntry[]> {
  return withConnection(url, async (nc) => {
    const kv = await nc.jetstream().views.kv(bucket, { bindOnly: true });
    const out: KvEntry[] = [];
    for await (const e of await kv.history({ key })) out.push(e);
    return out;
  });
}

describeWith({ commands: ['nats-server'] }, 'session replication against a real nats-server', () => {
  let nats: NatsServer;

  afterAll(async () => {
    await cleanup.dispose();
  });

  it('writes 50 coalesced updates of a session as one KV revision after its create', async () => {
    nats = await startNatsServer({ prefix: PREFIX });
    const nc = await connect({ servers: nats.url });
    const kv = await NatsSessionKv.open(nc, bucketOptions('rxha_coalesce', 64), silentLogger());
    const store = new MapStore();
    const replicator = new Replicator(store, kv, { nodeId: 'node-a', syncIntervalMs: 600_000 });
    const events = new Subject<SessionEventBatch>();
    const emit = (batch: SessionEvent[]) => {
      store.apply(batch);
      events.next(batch);
    };
    replicator.start(events);
    try {
      const key = sessionKvKey(session(1).key);
      const first = liveSession(1);
      emit([ev('created', first)]);
      await waitFor('the create to be written', 5000, () =>
        replicator.status().pending === 0 ? true : undefined,
      );
      // 50 updates 2 ms apart: all inside one 500 ms window.
      let last = first;
      for (let i = 1; i <= 50; i++) {
        last = { ...first, lastSeenNs: first.lastSeenNs + BigInt(i) * 1_000_000n };
        emit([ev('updated', last)]);
        await new Promise((r) => setTimeout(r, 2));
      }
      await waitFor('the coalesced update to be written', 5000, () =>
        replicator.status().pending === 0 ? true : undefined,
      );
      const history = await revisions(nats.url, 'rxha_coalesce', key);
      expect(history.map((e) => e.operation)).toEqual(['PUT', 'PUT']);
      const clock = new ClockTranslator();
      const stored = decodeSessionValueOrThrow(key, history[1]!.value);
      expect(stored.node).toBe('node-a');
      expect(Math.abs(stored.session.lastSeenMs - clock.toWallMs(last.lastSeenNs))).toBeLessThanOrEqual(2);
      expect(replicator.status()).toMatchObject({ puts: 2, failedWrites: 0 });
    } finally {
      await replicator.close();
      await kv.close();
      await nc.close();
    }
  });

  it('converges to zero only-local and zero only-KV within one sync interval after nats-server restarts', async () => {
    const syncIntervalMs = 3000;
    const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const kv = await NatsSessionKv.open(nc, bucketOptions('rxha_restart'), silentLogger());
    const store = new MapStore();
    const replicator = new Replicator(store, kv, { nodeId: 'node-a', syncIntervalMs, retryMs: 200 });
    const events = new Subject<SessionEventBatch>();
    const emit = (batch: SessionEvent[]) => {
      store.apply(batch);
      events.next(batch);
    };
    replicator.start(events);
    try {
      emit(Array.from({ length: 300 }, (_, i) => ev('created', liveSession(i))));
      await waitFor('300 sessions written', 10_000, () =>
        replicator.status().pending === 0 ? true : undefined,
      );
      expect((await allEntries(nats.url, 'rxha_restart')).size).toBe(300);

      await nats.stop();
      // While the server is away: 50 new sessions, 40 ended, 10 updated, and 5 the kernel got
      // without an event reaching the replicator (only the sync can find those).
      emit(Array.from({ length: 50 }, (_, i) => ev('created', liveSession(1000 + i))));
      emit(Array.from({ length: 40 }, (_, i) => ev('deleted', liveSession(i))));
      emit(Array.from({ length: 10 }, (_, i) => ev('updated', liveSession(100 + i))));
      store.set(Array.from({ length: 5 }, (_, i) => liveSession(2000 + i)));
      await waitFor('the replicator to see the disconnect', 10_000, () =>
        replicator.status().connected ? undefined : true,
      );
      expect(replicator.status().pending).toBeGreaterThanOrEqual(100);

      await nats.start();
      const restartedAt = Date.now();
      const status = await waitFor('a sync after the restart with no drift', syncIntervalMs + 2000, () => {
        const s = replicator.status();
        return s.lastSync !== undefined &&
          s.lastSync.atMs > restartedAt &&
          s.pending === 0 &&
          s.counts?.onlyLocal === 0
          ? s
          : undefined;
      });
      expect(status.counts).toEqual({
        local: 315,
        kv: 315,
        both: 315,
        onlyLocal: 0,
        onlyKv: 0,
        onlyKvOtherNodes: 0,
      });
      const entries = await allEntries(nats.url, 'rxha_restart');
      expect([...entries.keys()].sort()).toEqual([...store.sessions.keys()].sort());
    } finally {
      await replicator.close();
      await kv.close();
      await nc.close();
    }
  });

  it('flushes every pending update on graceful shutdown: nothing is lost', async () => {
    const nc = await connect({ servers: nats.url });
    const kv = await NatsSessionKv.open(nc, bucketOptions('rxha_shutdown'), silentLogger());
    const store = new MapStore();
    const replicator = new Replicator(store, kv, { nodeId: 'node-a', syncIntervalMs: 600_000 });
    const events = new Subject<SessionEventBatch>();
    replicator.start(events);
    const clock = new ClockTranslator();
    const updated = Array.from({ length: 2000 }, (_, i) => liveSession(i));
    // Updates only: every one is still waiting out its 500 ms window when close() is called.
    const batch = updated.map((s) => ev('updated', s));
    store.apply(batch);
    events.next(batch);
    expect(replicator.status().pending).toBe(2000);
    expect(await replicator.close()).toBe(true);
    await kv.close();
    await nc.close();
    const entries = await allEntries(nats.url, 'rxha_shutdown');
    expect(entries.size).toBe(2000);
    for (const s of updated) {
      const key = sessionKvKey(s.key);
      const stored = decodeSessionValueOrThrow(key, entries.get(key)!.value);
      expect(Math.abs(stored.session.lastSeenMs - clock.toWallMs(s.lastSeenNs))).toBeLessThanOrEqual(2);
    }
  });

  it('loads every session of the bucket before reporting ready, translating last-seen times', async () => {
    // Node A writes 500 sessions; node B boots against the same bucket.
    const ncA = await connect({ servers: nats.url });
    const kvA = await NatsSessionKv.open(ncA, bucketOptions('rxha_boot'), silentLogger());
    const a = new Replicator(new MapStore(), kvA, { nodeId: 'node-a', syncIntervalMs: 600_000 });
    const written = Array.from({ length: 500 }, (_, i) => liveSession(i, 1000 + i));
    a.handle(written.map((s) => ev('created', s)));
    await a.flush();
    await a.close();
    await kvA.close();
    await ncA.close();

    const port = await freePort();
    const dir = makeTempDir(PREFIX, cleanup);
    const readyFile = join(dir, 'ready');
    await nats.stop();
    const storeB = new MapStore();
    const starting = SessionReplication.start(storeB, new Subject<SessionEventBatch>(), {
      nats: { servers: [nats.url], reconnectWaitMs: 100 },
      bucket: bucketOptions('rxha_boot'),
      replicator: { nodeId: 'node-b', syncIntervalMs: 600_000 },
      readiness: { file: readyFile, listen: { host: '127.0.0.1', port } },
    });
    const url = `http://127.0.0.1:${port}/ready`;
    const notReady = await waitFor('the readiness endpoint', 5000, async () => {
      try {
        const r = await fetch(url);
        return { status: r.status, body: await r.text() };
      } catch {
        return undefined;
      }
    });
    expect(notReady).toEqual({ status: 503, body: 'connecting to nats\n' });
    expect(existsSync(readyFile)).toBe(false);
    expect(storeB.sessions.size).toBe(0);

    await nats.start();
    const node = await starting;
    try {
      expect(node.load).toMatchObject({ loaded: 500, present: 0, unreadable: 0, newer: 0 });
      expect(storeB.sessions.size).toBe(500);
      const ready = await fetch(url);
      expect(ready.status).toBe(200);
      expect(existsSync(readyFile)).toBe(true);
      // Same host, so the same monotonic clock: the translation must give back the times written.
      for (const s of written) {
        const loaded = storeB.sessions.get(sessionKvKey(s.key))!;
        expect(Math.abs(Number(loaded.lastSeenNs - s.lastSeenNs))).toBeLessThanOrEqual(2_000_000);
        expect({ ...loaded, lastSeenNs: 0n, createdNs: 0n }).toEqual({ ...s, lastSeenNs: 0n, createdNs: 0n });
      }
      const status = (await (await fetch(`http://127.0.0.1:${port}/status`)).json()) as Record<
        string,
        unknown
      >;
      expect(status).toMatchObject({
        nodeId: 'node-b',
        bucket: 'rxha_boot',
        ready: true,
        load: { loaded: 500 },
      });
    } finally {
      expect(await node.close()).toBe(true);
    }
    expect(existsSync(readyFile)).toBe(false);
    await expect(fetch(url)).rejects.toThrow();
  });
});
