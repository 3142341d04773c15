/**
 * HA session replication against a real nats-server (JetStream, file store, loopback):
 * - ha.replicate_pipelined: session creates per second through the Replicator (writes pipelined,
 *   up to max_in_flight acknowledged writes outstanding), against the same-run baseline of
 *   nats.js `kv.put` awaited one by one;
 * - ha.boot_load_100k: time to read 100k sessions from the bucket and write them into the
 *   firewall's kernel session map (needs root and bpffs; skipped with a note otherwise).
 */
import { connect, type NatsConnection } from 'nats';
import { ClockTranslator } from '../src/ha/clock.js';
import { encodeSessionValue, sessionKvKey, toWire } from '../src/ha/codec.js';
import { FirewallSessionStore } from '../src/ha/firewall-store.js';
import { NatsSessionKv } from '../src/ha/kv.js';
import { loadSessions } from '../src/ha/loader.js';
import { Replicator } from '../src/ha/replicator.js';
import { FirewallCollection } from '../src/datapath/firewall/index.js';
import { silentLogger } from '../src/logger.js';
import { cleanup, makeBpffsDir } from '../test/fixtures/cleanup.js';
import { startNatsServer } from '../test/fixtures/nats.js';
import { bucket, noStore, replicate, sessions } from './ha-lib.js';
import type { BenchContext } from './lib.js';

const PIPELINED_TARGET = 20_000;
const LOAD_TARGET_MS = 10_000;

/** CPU time of this process per session in the last pipelined run, us: steadier than the rate on a shared machine. */
let lastCpuUsPerSession = 0;

/** Creates per second through the replicator: batches of 1000 events, then a flush. */
async function pipelined(nc: NatsConnection, name: string, n: number): Promise<number> {
  const kv = await NatsSessionKv.open(nc, bucket(name), silentLogger());
  const replicator = new Replicator(noStore, kv, { nodeId: 'bench', syncIntervalMs: 3_600_000 });
  const all = sessions(n);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await replicate(replicator, all, 'created');
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  lastCpuUsPerSession = (cpu.user + cpu.system) / n;
  const status = replicator.status();
  await replicator.close();
  await kv.close();
  if (status.puts !== n || status.failedWrites !== 0) {
    throw new Error(`ha bench: ${status.puts} of ${n} written, ${status.failedWrites} failed`);
  }
  return n / seconds;
}

/** nats.js kv.put, each awaited before the next: what a naive replicator does. */
async function awaited(nc: NatsConnection, name: string, n: number): Promise<number> {
  const kv = await nc.jetstream().views.kv(name, { history: 1 });
  const clock = new ClockTranslator();
  const all = sessions(n, { offset: 500_000 });
  const t0 = process.hrtime.bigint();
  for (const s of all) await kv.put(sessionKvKey(s.key), encodeSessionValue(toWire(s, clock), 'bench'));
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

export default async function ha(ctx: BenchContext): Promise<void> {
  const nats = await startNatsServer({ prefix: 'rxha' });
  const nc = await connect({ servers: nats.url });
  try {
    const n = ctx.quick ? 10_000 : 50_000;
    await pipelined(nc, 'bench_warmup', 5000);
    const baseline = await awaited(nc, 'bench_awaited', ctx.quick ? 1000 : 5000);
    const rate = await pipelined(nc, 'bench_pipelined', n);
    ctx.report({
      name: 'ha.replicate_pipelined',
      value: Math.round(rate),
      unit: 'sessions/s',
      baseline: { name: 'ha.replicate_awaited (nats.js kv.put one at a time)', value: Math.round(baseline) },
      target: { value: PIPELINED_TARGET, better: 'higher' },
      note: `${n} creates, max_in_flight 1024; ${lastCpuUsPerSession.toFixed(1)} us CPU of this process per session`,
    });

    const total = ctx.quick ? 20_000 : 100_000;
    await pipelined(nc, 'bench_boot', total);
    let fw: FirewallCollection | undefined;
    try {
      fw = FirewallCollection.load({ pinDir: makeBpffsDir('rxha'), ingress: 'lo', maxSessions: 262_144 });
    } catch (err) {
      ctx.report({
        name: 'ha.boot_load_100k',
        value: NaN,
        unit: 'ms',
        note: `skipped: the firewall cannot be loaded here (${(err as Error).message})`,
      });
      return;
    }
    try {
      const kv = await NatsSessionKv.open(nc, bucket('bench_boot'), silentLogger());
      const t0 = process.hrtime.bigint();
      const result = await loadSessions(kv, new FirewallSessionStore(fw), { batchSize: 8192 });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      await kv.close();
      if (result.loaded !== total) throw new Error(`ha bench: loaded ${result.loaded} of ${total} sessions`);
      ctx.report({
        name: total === 100_000 ? 'ha.boot_load_100k' : `ha.boot_load_${total / 1000}k`,
        value: Math.round(ms),
        unit: 'ms',
        target: { value: LOAD_TARGET_MS, better: 'lower' },
        note: `read ${result.readMs} ms, kernel map write ${result.writeMs} ms (one update per session: restoreSessions has no batch update)`,
      });
    } finally {
      fw.close({ unpin: true });
    }
  } finally {
    await nc.close();
    await nats.stop();
    await cleanup.dispose();
  }
}
