/**
 * What the HA benchmarks (ha.bench.ts, ha-watch.bench.ts) share: the bucket they use, the
 * sessions they write, and the way a node writes them through its replicator.
 */
import type { BucketOptions } from '../src/ha/kv.js';
import type { Replicator } from '../src/ha/replicator.js';
import type { ReplicatedSession, SessionEventKind, SessionStore } from '../src/ha/session.js';

/** One replica, one revision a key, no TTL: a bucket on the one loopback nats-server of a bench. */
export function bucket(name: string): BucketOptions {
  return { bucket: name, replicas: 1, history: 1, ttlMs: 0, requestTimeoutMs: 30_000 };
}

/** A store with no sessions of its own, for a replicator that only writes what it is handed. */
export const noStore: SessionStore = { list: () => [], restore: () => ({ written: 0, skipped: 0 }) };

/**
 * n distinct established TCP sessions behind a GENEVE tunnel, last seen `ageMs` ago. Session j is
 * numbered `offset + j`: the same number, the same key.
 */
export function sessions(n: number, opts: { offset?: number; ageMs?: number } = {}): ReplicatedSession[] {
  const offset = opts.offset ?? 0;
  const now = process.hrtime.bigint() - BigInt(opts.ageMs ?? 0) * 1_000_000n;
  return Array.from({ length: n }, (_, j) => {
    const i = j + offset;
    return {
      key: {
        protocol: 6,
        srcAddr: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
        srcPort: 1024 + (i % 60000),
        dstAddr: '192.0.2.10',
        dstPort: 443,
        vni: 1000 + (i % 16),
      },
      tunnel: {
        type: 'geneve',
        vni: 1000 + (i % 16),
        cookie: '00112233445566ff',
        outerSrcAddr: '198.51.100.1',
        outerDstAddr: '198.51.100.2',
        outerSrcMac: '02:00:00:00:00:01',
        outerDstMac: '02:00:00:00:00:02',
        outerSrcPort: 40000 + (i % 20000),
        outerDstPort: 6081,
        ingressIfindex: 2,
      },
      verdict: {
        action: 'allow',
        direction: 'ingress',
        policyId: 1,
        ruleId: 1,
        reason: 'rule',
        redirectIfindex: 0,
      },
      tcpState: 'established',
      tcpFlags: 0x18,
      createdNs: now - 60_000_000_000n,
      lastSeenNs: now,
    };
  });
}

/**
 * Hands `all` to `replicator` as `kind` events in batches of 1000, then waits for every write to
 * be acknowledged.
 */
export async function replicate(
  replicator: Replicator,
  all: readonly ReplicatedSession[],
  kind: SessionEventKind,
): Promise<void> {
  for (let i = 0; i < all.length; i += 1000) {
    replicator.handle(all.slice(i, i + 1000).map((session) => ({ kind, session })));
    // Lets acknowledgements in between batches, as events arriving over time would.
    await new Promise((r) => setImmediate(r));
  }
  await replicator.flush();
}
