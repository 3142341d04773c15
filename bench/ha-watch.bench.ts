/**
 * The hot standby's watch against a real nats-server (JetStream, file store, loopback), applying
 * another node's sessions to the firewall's kernel session map (root and bpffs; an in-memory map
 * otherwise, said in the note):
 * - ha.watch_apply_backlog: remote updates applied per second when the watch reads a backlog
 *   (a standby catching up after a reconnect), against the same-run boot load of the same bucket
 *   (one snapshot read, then restore() in batches of 8192);
 * - ha.watch_lag_live_max: while the other node updates sessions the standby holds at a steady
 *   rate (a lookup and a replace each in the kernel), the longest time from a change being stored
 *   in KV to its kernel write, over the batches applied.
 */
import { connect, type NatsConnection } from 'nats';
import { FirewallCollection } from '../src/datapath/firewall/index.js';
import { sessionKvKey } from '../src/ha/codec.js';
import { FirewallSessionStore } from '../src/ha/firewall-store.js';
import { NatsSessionKv } from '../src/ha/kv.js';
import { loadSessions } from '../src/ha/loader.js';
import { Replicator } from '../src/ha/replicator.js';
import type {
  RemoteApplyResult,
  RemoteDecision,
  RemoteSessionStore,
  ReplicatedSession,
  SessionKey,
} from '../src/ha/session.js';
import { SessionWatch } from '../src/ha/watch.js';
import { silentLogger } from '../src/logger.js';
import { cleanup, makeBpffsDir } from '../test/fixtures/cleanup.js';
import { startNatsServer } from '../test/fixtures/nats.js';
import { bucket, noStore, replicate, sessions } from './ha-lib.js';
import type { BenchContext } from './lib.js';

const APPLY_TARGET = 20_000;

/** The kernel session map when this machine can load the firewall, else a Map. */
class MemoryStore implements RemoteSessionStore {
  readonly sessions = new Map<string, ReplicatedSession>();
  list(): ReplicatedSession[] {
    return [...this.sessions.values()];
  }
  restore(batch: readonly ReplicatedSession[]): { written: number; skipped: number } {
    let written = 0;
    for (const s of batch) {
      const k = sessionKvKey(s.key);
      if (this.sessions.has(k)) continue;
      this.sessions.set(k, s);
      written++;
    }
    return { written, skipped: batch.length - written };
  }
  applyRemote(
    keys: readonly SessionKey[],
    decide: (i: number, local: ReplicatedSession | undefined) => RemoteDecision,
  ): RemoteApplyResult {
    keys.forEach((key, i) => {
      const k = sessionKvKey(key);
      const d = decide(i, this.sessions.get(k));
      if (d === 'delete') this.sessions.delete(k);
      else if (d !== undefined) this.sessions.set(k, d);
    });
    return { failed: [] };
  }
}

interface Stores {
  make(): RemoteSessionStore;
  kind: string;
  close(): void;
}

function stores(maxSessions: number): Stores {
  const opened: FirewallCollection[] = [];
  const load = (): FirewallCollection => {
    const fw = FirewallCollection.load({ pinDir: makeBpffsDir('rxhw'), ingress: 'lo', maxSessions });
    opened.push(fw);
    return fw;
  };
  try {
    const probe = load();
    let first: FirewallCollection | undefined = probe;
    return {
      kind: 'kernel session map',
      make: () => {
        const fw = first ?? load();
        first = undefined;
        return new FirewallSessionStore(fw);
      },
      close: () => {
        for (const fw of opened) fw.close({ unpin: true });
      },
    };
  } catch (err) {
    return {
      kind: `in-memory map (the firewall cannot be loaded here: ${(err as Error).message})`,
      make: () => new MemoryStore(),
      close: () => undefined,
    };
  }
}

/** Writes `all` as node A would: pipelined through a replicator, every change at once. */
async function writeAsNodeA(
  kv: NatsSessionKv,
  all: ReplicatedSession[],
  kind: 'created' | 'updated',
): Promise<void> {
  const a = new Replicator(noStore, kv, { nodeId: 'bench-a', syncIntervalMs: 3_600_000, coalesceMs: 0 });
  await replicate(a, all, kind);
  await a.close();
}

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`ha-watch bench: ${what} not done within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function standby(
  nc: NatsConnection,
  name: string,
  store: RemoteSessionStore,
): Promise<{ kv: NatsSessionKv; watch: SessionWatch }> {
  const kv = await NatsSessionKv.open(nc, bucket(name), silentLogger());
  const replicator = new Replicator(store, kv, { nodeId: 'bench-b', syncIntervalMs: 3_600_000 });
  return { kv, watch: new SessionWatch(store, kv, replicator, { nodeId: 'bench-b' }) };
}

export default async function haWatch(ctx: BenchContext): Promise<void> {
  const nats = await startNatsServer({ prefix: 'rxhw' });
  const nc = await connect({ servers: nats.url });
  const n = ctx.quick ? 10_000 : 50_000;
  const s = stores(n * 2);
  try {
    const name = 'bench_watch';
    const kvA = await NatsSessionKv.open(nc, bucket(name), silentLogger());
    await writeAsNodeA(kvA, sessions(n, { ageMs: 1000 }), 'created');

    // Baseline: the boot load of the same bucket into a fresh map.
    const kvLoad = await NatsSessionKv.open(nc, bucket(name), silentLogger());
    const t0 = process.hrtime.bigint();
    const loaded = await loadSessions(kvLoad, s.make(), { batchSize: 8192 });
    const loadRate = n / (Number(process.hrtime.bigint() - t0) / 1e9);
    await kvLoad.close();
    if (loaded.loaded !== n) throw new Error(`ha-watch bench: the load wrote ${loaded.loaded} of ${n}`);

    // The watch reading the same sessions as a backlog, from the start of the bucket.
    const b = await standby(nc, name, s.make());
    const cpu0 = process.cpuUsage();
    const t1 = process.hrtime.bigint();
    await b.watch.start(0);
    await until(() => b.watch.status().applied === n, 120_000, 'the backlog');
    const backlogRate = n / (Number(process.hrtime.bigint() - t1) / 1e9);
    const cpu = process.cpuUsage(cpu0);
    ctx.report({
      name: 'ha.watch_apply_backlog',
      value: Math.round(backlogRate),
      unit: 'updates/s',
      baseline: { name: 'ha boot load of the same bucket', value: Math.round(loadRate) },
      target: { value: APPLY_TARGET, better: 'higher' },
      note: `${n} creates into the ${s.kind}; ${((cpu.user + cpu.system) / n).toFixed(1)} us CPU per update`,
    });

    // Live: node A updates sessions at a steady rate while the standby watches; the lag of
    // each batch the watch applies is sampled.
    const live = ctx.quick ? 5000 : 20_000;
    const perTick = 250;
    const tickMs = 50;
    const updates = sessions(live);
    const lags: number[] = [];
    let lastApplied = b.watch.status().applied;
    const sampler = setInterval(() => {
      const st = b.watch.status();
      if (st.applied !== lastApplied) {
        lastApplied = st.applied;
        lags.push(st.lagMs);
      }
    }, 1);
    const t2 = process.hrtime.bigint();
    for (let i = 0; i < live; i += perTick) {
      void writeAsNodeA(kvA, updates.slice(i, i + perTick), 'updated');
      await new Promise((r) => setTimeout(r, tickMs));
    }
    await until(() => b.watch.status().applied === n + live, 60_000, 'the live updates');
    const seconds = Number(process.hrtime.bigint() - t2) / 1e9;
    clearInterval(sampler);
    lags.sort((x, y) => x - y);
    const p50 = lags[Math.floor(lags.length / 2)] ?? 0;
    const max = lags.at(-1) ?? 0;
    const st = b.watch.status();
    ctx.report({
      name: 'ha.watch_lag_live_max',
      value: max,
      unit: 'ms',
      target: { value: 100, better: 'lower' },
      note: `${live} updates of held sessions at ${Math.round((perTick * 1000) / tickMs)}/s (${Math.round(live / seconds)}/s applied) into the ${s.kind}; lag from store in KV to kernel write, per batch: median ${p50} ms over ${lags.length} samples; ignored ${st.ignored}, failed ${st.failed}`,
    });
    b.watch.stop();
    await b.kv.close();
    await kvA.close();
  } finally {
    s.close();
    await nc.close();
    await nats.stop();
    await cleanup.dispose();
  }
}
