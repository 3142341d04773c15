/**
 * The live replication status against a real nats-server (JetStream, file store, loopback) and
 * the firewall's kernel session map (root and bpffs; an in-memory list otherwise, said in the note):
 * - ha.status_live: one live status as /status and `rxflow firewall replication status --url` ask
 *   it of a node with a watch of the bucket: the kernel map's keys (one batch read, matched as
 *   bytes, no session decoded) compared with the node's watched view of the bucket, for 100k sessions held both locally and in KV (10k with
 *   --quick). Target: under 500 ms. Compared with the same made by reading the bucket (one
 *   snapshot, what a node without a watch and `--nats` do).
 */
import { connect } from 'nats';
import { FirewallCollection } from '../src/datapath/firewall/index.js';
import { FirewallSessionStore } from '../src/ha/firewall-store.js';
import { decodeSessionValue } from '../src/ha/codec.js';
import { countAgainst, readKvViews } from '../src/ha/inspect.js';
import { NatsSessionKv } from '../src/ha/kv.js';
import { kvViewOfDecoded } from '../src/ha/full-sync.js';
import { Replicator } from '../src/ha/replicator.js';
import type { KvView, UnreadableKvView } from '../src/ha/sync.js';
import type { ReplicatedSession, SessionStore } from '../src/ha/session.js';
import { silentLogger } from '../src/logger.js';
import { cleanup, makeBpffsDir } from '../test/fixtures/cleanup.js';
import { startNatsServer } from '../test/fixtures/nats.js';
import { bucket, noStore, replicate, sessions } from './ha-lib.js';
import type { BenchContext } from './lib.js';

const TARGET_MS = 500;

function localStore(all: readonly ReplicatedSession[]): { store: SessionStore; kind: string; close(): void } {
  try {
    const fw = FirewallCollection.load({
      pinDir: makeBpffsDir('rxhs'),
      ingress: 'lo',
      maxSessions: Math.max(1024, all.length * 2),
    });
    const store = new FirewallSessionStore(fw);
    for (let i = 0; i < all.length; i += 8192) store.restore(all.slice(i, i + 8192));
    return { store, kind: 'kernel session map', close: () => fw.close({ unpin: true }) };
  } catch (err) {
    return {
      store: { list: () => [...all], restore: () => ({ written: 0, skipped: 0 }) },
      kind: `in-memory list (the firewall cannot be loaded here: ${(err as Error).message})`,
      close: () => undefined,
    };
  }
}

export default async function haStatus(ctx: BenchContext): Promise<void> {
  const nats = await startNatsServer({ prefix: 'rxhs' });
  const nc = await connect({ servers: nats.url });
  const n = ctx.quick ? 10_000 : 100_000;
  const all = sessions(n, { ageMs: 1000 });
  const local = localStore(all);
  try {
    const kv = await NatsSessionKv.open(nc, bucket('bench_status'), silentLogger());
    const writer = new Replicator(noStore, kv, {
      nodeId: 'bench-a',
      syncIntervalMs: 3_600_000,
      coalesceMs: 0,
    });
    await replicate(writer, all, 'created');
    await writer.close();
    const median = async (fn: () => unknown): Promise<number[]> => {
      const times: number[] = [];
      for (let round = 0; round < 3; round++) {
        const t0 = process.hrtime.bigint();
        await fn();
        times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      return times.sort((a, b) => a - b);
    };
    // The running node's view of the bucket, as its sync and watch keep it.
    const views = new Map<string, KvView | UnreadableKvView>();
    for (const r of (await kv.snapshot()).records)
      views.set(r.key, kvViewOfDecoded(decodeSessionValue(r.value)));
    const first0 = process.hrtime.bigint();
    const counts = countAgainst(local.store, views, 'bench-a');
    const firstMs = Math.round(Number(process.hrtime.bigint() - first0) / 1e6);
    if (counts.both !== n || counts.local !== n || counts.kv !== n)
      throw new Error(`ha-status bench: compared ${JSON.stringify(counts)}, not ${n} in both`);
    const cpu0 = process.cpuUsage();
    const live = await median(() => countAgainst(local.store, views, 'bench-a'));
    const cpu = process.cpuUsage(cpu0);
    // CPU time (user and system, the kernel's batch read included) per ask: what the ask costs on
    // a machine whose other work stretches the wall-clock figure.
    const cpuMs = Math.round((cpu.user + cpu.system) / 3 / 1000);
    const read = await median(async () => countAgainst(local.store, await readKvViews(kv), 'bench-a'));
    ctx.report({
      name: 'ha.status_live',
      value: Math.round(live[1]!),
      unit: 'ms',
      baseline: { name: 'the same with the bucket read (snapshot)', value: Math.round(read[1]!) },
      target: { value: TARGET_MS, better: 'lower' },
      note: `${n} sessions in the ${local.kind} and in KV, compared against the watched view of the bucket; median of 3; the first ask, which decodes every key (later ones decode only keys new since the last), took ${firstMs} ms; CPU ${cpuMs} ms per ask`,
    });
    await kv.close();
  } finally {
    local.close();
    await nc.close();
    await nats.stop();
    await cleanup.dispose();
  }
}
