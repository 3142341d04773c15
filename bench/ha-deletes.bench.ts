/**
 * Delete propagation to the standby against a real nats-server (JetStream, file store, loopback)
 * and the firewall's kernel session map on the standby (root and bpffs):
 * - ha.delete_propagation_p99: node A is handed the end of its sessions at 1,000 closes/s (the
 *   `deleted` events its firewall_sessions source emits when a connection closes) and writes the
 *   deletes through its replicator as a running node does; node B, a hot standby that loaded the
 *   same sessions, watches the bucket and removes them from its kernel map. Each session's time
 *   from the close handed to A to the return of B's kernel delete; p50 and p99. Target: p99 under
 *   1 s.
 */
import { connect } from 'nats';
import { FirewallCollection } from '../src/datapath/firewall/index.js';
import { sessionKvKey } from '../src/ha/codec.js';
import { FirewallSessionStore } from '../src/ha/firewall-store.js';
import { NatsSessionKv } from '../src/ha/kv.js';
import { loadSessions } from '../src/ha/loader.js';
import { Replicator } from '../src/ha/replicator.js';
import type { RemoteApplyResult, RemoteDecision, ReplicatedSession, SessionKey } from '../src/ha/session.js';
import { SessionWatch } from '../src/ha/watch.js';
import { silentLogger } from '../src/logger.js';
import { cleanup, makeBpffsDir } from '../test/fixtures/cleanup.js';
import { startNatsServer } from '../test/fixtures/nats.js';
import { bucket, noStore, replicate, sessions } from './ha-lib.js';
import type { BenchContext } from './lib.js';

const TARGET_MS = 1000;
const CLOSES_PER_S = 1000;
const TICK_MS = 10;

/** B's kernel map, noting when each key's delete returned. */
class TimedStore extends FirewallSessionStore {
  readonly deletedAt = new Map<string, number>();

  override applyRemote(
    keys: readonly SessionKey[],
    decide: (index: number, local: ReplicatedSession | undefined) => RemoteDecision,
  ): RemoteApplyResult {
    const deleting: number[] = [];
    const result = super.applyRemote(keys, (i, local) => {
      const d = decide(i, local);
      if (d === 'delete') deleting.push(i);
      return d;
    });
    const now = performance.now();
    const failed = new Set(result.failed);
    for (const i of deleting) if (!failed.has(i)) this.deletedAt.set(sessionKvKey(keys[i]!), now);
    return result;
  }
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
}

export default async function haDeletes(ctx: BenchContext): Promise<void> {
  const nats = await startNatsServer({ prefix: 'rxhd' });
  const nc = await connect({ servers: nats.url });
  const n = ctx.quick ? 2000 : 5000;
  const all = sessions(n, { ageMs: 100 });
  const fw = FirewallCollection.load({ pinDir: makeBpffsDir('hanode'), ingress: 'lo', maxSessions: n * 2 });
  try {
    const name = 'bench_deletes';
    const kvA = await NatsSessionKv.open(nc, bucket(name), silentLogger());
    const a = new Replicator(noStore, kvA, { nodeId: 'bench-a', syncIntervalMs: 3_600_000 });
    await replicate(a, all, 'created');

    const kvB = await NatsSessionKv.open(nc, bucket(name), silentLogger());
    const store = new TimedStore(fw);
    const load = await loadSessions(kvB, store);
    if (load.loaded !== n) throw new Error(`ha-deletes bench: B loaded ${load.loaded} of ${n}`);
    const b = new Replicator(store, kvB, { nodeId: 'bench-b', syncIntervalMs: 3_600_000 });
    b.seedKnown(load.records);
    const watch = new SessionWatch(store, kvB, b, { nodeId: 'bench-b' });
    await watch.start(load.revision);

    // The closes, CLOSES_PER_S a second in ticks of TICK_MS, as A's source would hand them over.
    const closedAt = new Map<string, number>();
    // When A's delete of each key settled (the bucket acknowledged it): the share of the bucket.
    const ackedAt = new Map<string, number>();
    a.attachWatch((key) => ackedAt.set(key, performance.now()));
    const perTick = (CLOSES_PER_S * TICK_MS) / 1000;
    const t0 = performance.now();
    for (let i = 0; i < n; i += perTick) {
      const due = t0 + (i / perTick) * TICK_MS;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const batch = all.slice(i, i + perTick);
      const now = performance.now();
      for (const s of batch) closedAt.set(sessionKvKey(s.key), now);
      a.handle(batch.map((session) => ({ kind: 'deleted' as const, session })));
    }
    const seconds = (performance.now() - t0) / 1000;
    const deadline = Date.now() + 60_000;
    while (store.deletedAt.size < n) {
      if (Date.now() > deadline)
        throw new Error(`ha-deletes bench: B deleted ${store.deletedAt.size} of ${n} within 60 s`);
      await new Promise((r) => setTimeout(r, 5));
    }
    const left = fw.sessionKeys().count;
    if (left !== 0) throw new Error(`ha-deletes bench: B's kernel map still holds ${left} sessions`);
    const latencies = [...closedAt].map(([key, at]) => store.deletedAt.get(key)! - at).sort((x, y) => x - y);
    const acks = [...closedAt].map(([key, at]) => ackedAt.get(key)! - at).sort((x, y) => x - y);
    const p50 = percentile(latencies, 50);
    const p99 = percentile(latencies, 99);
    ctx.report({
      name: 'ha.delete_propagation_p99',
      value: Math.round(p99),
      unit: 'ms',
      target: { value: TARGET_MS, better: 'lower' },
      note: `${n} closes at ${Math.round(n / seconds)}/s handed to node A, each until node B's kernel delete returned: p50 ${Math.round(p50)} ms, p99 ${Math.round(p99)} ms, max ${Math.round(latencies.at(-1) ?? 0)} ms; A's delete acknowledged by the bucket: p50 ${Math.round(percentile(acks, 50))} ms, p99 ${Math.round(percentile(acks, 99))} ms`,
    });
    watch.stop();
    await b.close();
    await a.close();
    await kvB.close();
    await kvA.close();
  } finally {
    fw.close({ unpin: true });
    await nc.close();
    await nats.stop();
    await cleanup.dispose();
  }
}
