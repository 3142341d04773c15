/**
 * Cost of the drop program (bpf/drops.c on tp_btf/kfree_skb). BPF_PROG_TEST_RUN does not run
 * tp_btf programs, so the kernel's own run-time statistics (BPF_ENABLE_STATS, bpf_prog_info
 * run_time_ns / run_cnt) measure it while an nftables rule drops UDP datagrams between two
 * namespaces: once for drops of a flow the flow map holds (the flow program on the receiving
 * veth's ingress) and once for drops of flows it does not (no flow program attached). Also the
 * cost of turning drops on (vmlinux BTF read, load, attach) and of reading the per-reason counters
 * at each eviction. The flow program itself is unchanged by drops (bench/flow-program.bench.ts).
 * Needs root and nft.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readStructLayout } from '../src/datapath/btf.js';
import { lastErrno, libbpf, libc } from '../src/datapath/libbpf.js';
import { FlowDatapath } from '../src/datapath/flow/datapath.js';
import { cleanup, makeBpffsDir } from '../test/fixtures/cleanup.js';
import { createPair, type PairTopology } from '../test/fixtures/netns.js';
import { sendUdp } from '../test/fixtures/traffic.js';
import { bestNsPerOp, type BenchContext } from './lib.js';

const BPF_STATS_RUN_TIME = 0;
const PORT = 7401;

/** run_time_ns and run_cnt of a program, from bpf_prog_info (offsets from the kernel's BTF). */
function progStats(fd: number, at: { time: number; count: number }): { ns: number; runs: number } {
  const info = new Uint8Array(512);
  const len = new Uint32Array([info.length]);
  const r = libbpf().bpf_obj_get_info_by_fd(fd, info, len);
  if (r < 0) throw new Error(`drops bench: bpf_obj_get_info_by_fd failed (${r})`);
  const v = new DataView(info.buffer);
  return { ns: Number(v.getBigUint64(at.time, true)), runs: Number(v.getBigUint64(at.count, true)) };
}

async function dropsOf(
  topo: PairTopology,
  dp: FlowDatapath,
  at: { time: number; count: number },
  count: number,
  srcPort: number,
): Promise<{ nsPerDrop: number; runs: number }> {
  const fd = dp.drops!.programFd;
  const before = progStats(fd, at);
  await sendUdp({ from: topo.client, to: topo.link.b.ipv4!, port: PORT, count, payloadBytes: 64, srcPort });
  const after = progStats(fd, at);
  const runs = after.runs - before.runs;
  return { nsPerDrop: (after.ns - before.ns) / runs, runs };
}

export default async function drops(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('drops bench: needs root for BPF and namespaces');
  const count = ctx.quick ? 20_000 : 200_000;
  const layout = readStructLayout('/sys/kernel/btf/vmlinux', 'bpf_prog_info');
  const field = (name: string) => layout.fields.find((f) => f.name === name)!.offset;
  const at = { time: field('run_time_ns'), count: field('run_cnt') };
  const topo = await createPair({ prefix: 'rxdb' });
  const pinRoot = makeBpffsDir('rxdb');
  const rules = join(tmpdir(), `rxflow-drops-bench-${process.pid}.nft`);
  writeFileSync(
    rules,
    `add table inet rxdb\nadd chain inet rxdb input { type filter hook input priority 0; policy accept; }\nadd rule inet rxdb input udp dport ${PORT} drop\n`,
  );
  const open: FlowDatapath[] = [];
  const stats = libbpf().bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (stats < 0) throw new Error(`drops bench: BPF_ENABLE_STATS failed (errno ${lastErrno()})`);
  try {
    await topo.server.exec('nft', ['-f', rules]);
    const unknown = FlowDatapath.open({ interfaces: [], instance: `rxdb-u-${process.pid}`, pinRoot });
    open.push(unknown);
    const t0 = process.hrtime.bigint();
    unknown.enableDrops();
    const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
    ctx.report({
      name: 'drops.enable',
      value: loadMs,
      unit: 'ms',
      note: 'vmlinux BTF reasons, load, attach',
    });
    const miss = await dropsOf(topo, unknown, at, count, 44001);
    ctx.report({
      name: 'drops.per_drop_unknown_flow',
      value: miss.nsPerDrop,
      unit: 'ns/drop',
      note: `${miss.runs} runs (every kfree_skb of the host while ${count} datagrams were dropped)`,
    });
    const reasonNs = bestNsPerOp(() => {
      unknown.drops!.reasonCounts();
      return 1;
    });
    ctx.report({ name: 'drops.reason_counts_read', value: reasonNs / 1e6, unit: 'ms', note: 'per eviction' });
    unknown.close();
    open.length = 0;

    const known = FlowDatapath.open({
      interfaces: [topo.link.b.ifname],
      netns: topo.server.name,
      directions: ['ingress'],
      instance: `rxdb-k-${process.pid}`,
      pinRoot,
    });
    open.push(known);
    known.enableDrops();
    const hit = await dropsOf(topo, known, at, count, 44002);
    ctx.report({
      name: 'drops.per_drop_known_flow',
      value: hit.nsPerDrop,
      unit: 'ns/drop',
      note: `${hit.runs} runs`,
    });
    const records = known.evictFlows(0).filter((r) => r.destinationTransportPort === PORT);
    const dropped = records.reduce((n, r) => n + (r.droppedPacketDeltaCount ?? 0), 0);
    if (dropped !== count) throw new Error(`drops bench: ${count} datagrams dropped, ${dropped} on the flow`);
  } finally {
    for (const dp of open) dp.close();
    libc().close(stats);
    rmSync(rules, { force: true });
    await cleanup.dispose();
  }
}
