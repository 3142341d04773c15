/**
 * The live replication status, asked while 1,000 sessions/s change (500 created into the kernel
 * session map and 500 updated, each handed to the node as the firewall_sessions source would):
 * - its counts equal an independent read of the kernel map (bpftool) and of the bucket (a second
 *   NATS client) made just before and just after it, within the writes in flight;
 * - its lag (age of the oldest change not yet in the bucket) is within 100 ms of the lag the test
 *   measures itself: with everything written, one update is handed over and held by the
 *   coalescer, and the age of that update when status is asked is the lag.
 * Real nats-server, real kernel map (the firewall loaded, not attached: the test writes sessions).
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { connect, type NatsConnection } from 'nats';
import { Subject } from 'rxjs';
import { afterAll, expect } from 'vitest';
import { FW_MAPS, FirewallCollection } from '../../src/datapath/firewall/index.js';
import { FirewallSessionStore } from '../../src/ha/firewall-store.js';
import { SessionReplication, type NodeReplicationStatus } from '../../src/ha/replication.js';
import type { ReplicatedSession, SessionEventBatch } from '../../src/ha/session.js';
import { silentLogger } from '../../src/logger.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { startNatsServer, type NatsServer } from '../fixtures/nats.js';
import { kernelDescribe, kernelTest } from '../fixtures/privilege.js';
import { session } from '../unit/ha/helpers.js';

const BUCKET = 'hanode_status';
const TICK_MS = 10;
/** Per tick: 5 created and 5 updated, 1,000 changes a second. */
const PER_TICK = 5;
const LAG_WITHIN_MS = 100;
/** Long enough that the update the lag is measured on is still held when status is asked. */
const COALESCE_MS = 5000;

function live(n: number): ReplicatedSession {
  const now = process.hrtime.bigint();
  return session(n, 0, { lastSeenNs: now, createdNs: now - 60_000_000_000n });
}

/** Sessions in the pinned kernel map, as bpftool dumps it. */
function kernelCount(pinDir: string): number {
  const out = execFileSync(
    'bpftool',
    ['-j', 'map', 'dump', 'pinned', join(pinDir, 'maps', FW_MAPS.sessions)],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  return (JSON.parse(out) as unknown[]).length;
}

async function bucketCount(nc: NatsConnection): Promise<number> {
  const kv = await nc.jetstream().views.kv(BUCKET, { bindOnly: true });
  let n = 0;
  for await (const _ of await kv.keys()) n++;
  return n;
}

kernelDescribe('live replication status while sessions change', () => {
  let nats: NatsServer | undefined;
  let fw: FirewallCollection | undefined;
  let node: SessionReplication | undefined;
  let reader: NatsConnection | undefined;
  let timer: NodeJS.Timeout | undefined;
  afterAll(async () => {
    clearInterval(timer);
    await node?.close();
    await reader?.close();
    fw?.close({ unpin: true });
    await nats?.stop();
    await cleanup.dispose();
  });

  kernelTest(
    'counts equal bpftool and a second NATS client within the writes in flight; lag within 100 ms of the measured',
    async () => {
      nats = await startNatsServer({ prefix: 'hanode' });
      const pinDir = makeBpffsDir('hanode');
      fw = FirewallCollection.load({ pinDir, ingress: 'lo', maxSessions: 16384 });
      const store = new FirewallSessionStore(fw);
      const events = new Subject<SessionEventBatch>();
      node = await SessionReplication.start(store, events, {
        nats: { servers: [nats.url] },
        bucket: { bucket: BUCKET, replicas: 1, history: 1, ttlMs: 0, requestTimeoutMs: 5000 },
        replicator: { nodeId: 'hanode-a', syncIntervalMs: 3_600_000, coalesceMs: COALESCE_MS },
        logger: silentLogger(),
      });
      reader = await connect({ servers: nats.url });

      let next = 0;
      const tick = (): void => {
        const created = Array.from({ length: PER_TICK }, () => live(next++));
        store.restore(created);
        const updated = Array.from({ length: Math.min(PER_TICK, next) }, (_, i) =>
          live((next * 7 + i * 13) % next),
        );
        events.next([
          ...created.map((s) => ({ kind: 'created' as const, session: s })),
          ...updated.map((s) => ({ kind: 'updated' as const, session: s })),
        ]);
      };
      timer = setInterval(tick, TICK_MS);
      await new Promise((r) => setTimeout(r, 1000));

      for (let round = 0; round < 3; round++) {
        // bpftool runs synchronously: no change is made while it reads.
        const kernelBefore = kernelCount(pinDir);
        const bucketBefore = await bucketCount(reader);
        const st: NodeReplicationStatus = await node.liveStatus();
        const kernelAfter = kernelCount(pinDir);
        const bucketAfter = await bucketCount(reader);
        expect(st.compareSource).toBe('watch');
        expect(st.counts).toBeDefined();
        const c = st.counts!;
        expect(c.local).toBeGreaterThanOrEqual(kernelBefore);
        expect(c.local).toBeLessThanOrEqual(kernelAfter);
        // The node counts a write once acknowledged: one stored before the first read may be
        // acknowledged after the status (in flight then), none after the second read.
        expect(c.kv).toBeGreaterThanOrEqual(bucketBefore - st.inFlight);
        expect(c.kv).toBeLessThanOrEqual(bucketAfter);
        // Every key in the bucket came from this kernel.
        expect(c.onlyKv).toBe(0);
        expect(c.both).toBe(c.kv);
        expect(c.onlyLocal).toBe(c.local - c.kv);
        await new Promise((r) => setTimeout(r, 200));
      }

      // The lag: everything written, then one update handed over, which the coalescer holds for
      // COALESCE_MS: the oldest (only) change not in the bucket, whose age the test knows.
      clearInterval(timer);
      await node.flush();
      expect(node.replicator.status().pending).toBe(0);
      const update = live(0);
      const handedAt = Date.now();
      events.next([{ kind: 'updated', session: update }]);
      await new Promise((r) => setTimeout(r, 300));
      const askedAt = Date.now();
      const st = await node.liveStatus();
      const answeredAt = Date.now();
      expect(answeredAt - handedAt).toBeLessThan(COALESCE_MS);
      expect(st.pending).toBe(1);
      expect(st.lagMs).toBeGreaterThanOrEqual(askedAt - handedAt - LAG_WITHIN_MS);
      expect(st.lagMs).toBeLessThanOrEqual(answeredAt - handedAt + LAG_WITHIN_MS);
    },
    60_000,
  );
});
