/**
 * TCP throughput between two namespaces over a veth pair, with the flow program attached on both
 * hooks of both ends against no program at all, measured in the same run. Runs alternate (without,
 * with, without, with, ...) so drift on this shared machine hits both sides alike, and each side
 * reports its median. The veth keeps its default offloads (TSO/GSO on): production traffic arrives
 * in GSO batches, and the program counts a GSO skb as its gso_segs packets. Needs root and iperf3.
 */
import { cleanup, killSync, makeBpffsDir } from '../test/fixtures/cleanup.js';
import { createPair, type PairTopology } from '../test/fixtures/netns.js';
import { FlowDatapath } from '../src/datapath/flow/datapath.js';
import { FLOW_FEATURE_DNS, FLOW_FEATURE_RTT } from '../src/datapath/flow/index.js';
import type { BenchContext } from './lib.js';

const PORT = 5301;
const TARGET_RATIO = 0.9;
/** With every feature on, against no program (issue 15). */
const TARGET_ALL_ON_RATIO = 0.95;

interface IperfResult {
  end?: { sum_received?: { bits_per_second: number; bytes: number } };
  error?: string;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Starts `iperf3 -s` in the server namespace and resolves once it listens. */
async function startServer(topo: PairTopology): Promise<() => void> {
  const child = topo.server.spawn('iperf3', ['-s', '-p', String(PORT)], { stdio: 'ignore' });
  const pid = child.pid;
  if (pid === undefined) throw new Error('tc-throughput bench: iperf3 -s did not start; install iperf3');
  const registration = cleanup.register(`iperf3 server ${pid}`, () => killSync(pid, 0));
  const deadline = Date.now() + 5000;
  for (;;) {
    const { stdout } = await topo.server.exec('ss', ['-H', '-t', '-l', '-n', `sport = :${PORT}`]);
    if (stdout.trim() !== '') break;
    if (child.exitCode !== null || Date.now() > deadline) {
      registration.run();
      throw new Error(`tc-throughput bench: iperf3 -s is not listening on ${PORT} after 5 s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return () => registration.run();
}

/** One iperf3 run from the client namespace; the receiver's throughput in Gbit/s. */
async function runClient(topo: PairTopology, seconds: number): Promise<number> {
  const { stdout } = await topo.client.exec(
    'iperf3',
    ['-c', topo.link.b.ipv4!, '-p', String(PORT), '-t', String(seconds), '-J'],
    { timeoutMs: (seconds + 20) * 1000 },
  );
  const result = JSON.parse(stdout) as IperfResult;
  const bps = result.end?.sum_received?.bits_per_second;
  if (bps === undefined)
    throw new Error(`tc-throughput bench: iperf3 failed: ${result.error ?? stdout.slice(0, 200)}`);
  return bps / 1e9;
}

/**
 * The flow program on ingress and egress of both veth ends, one datapath per namespace; with
 * `everything`, every feature too: handshake RTT, DNS, the smoothed-RTT and the drop programs.
 */
function attachBoth(topo: PairTopology, pinRoot: string, everything = false): FlowDatapath[] {
  const opened: FlowDatapath[] = [];
  try {
    for (const [ns, end] of [
      [topo.client, topo.link.a],
      [topo.server, topo.link.b],
    ] as const) {
      opened.push(
        FlowDatapath.open({
          interfaces: [end.ifname],
          netns: ns.name,
          instance: `${ns.name}-bench`,
          pinRoot,
        }),
      );
      if (everything) {
        const dp = opened[opened.length - 1]!;
        dp.setFeatures(FLOW_FEATURE_RTT | FLOW_FEATURE_DNS);
        dp.enableRttProbe();
        dp.enableDrops();
      }
    }
    return opened;
  } catch (err) {
    for (const dp of opened) dp.close();
    throw err;
  }
}

/** TCP segments the programs counted (both ends, both hooks): proof they ran on the traffic. */
function countedSegments(datapaths: FlowDatapath[]): number {
  let segments = 0;
  for (const dp of datapaths) {
    for (const r of dp.evictFlows(0)) if (r.protocolIdentifier === 6) segments += r.packetDeltaCount;
  }
  return segments;
}

export default async function tcThroughputBench(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0)
    throw new Error('tc-throughput bench: needs root for namespaces and BPF; run it as root');
  const rounds = ctx.quick ? 1 : 7;
  const seconds = ctx.quick ? 1 : 3;
  let topo: PairTopology | undefined;
  let stopServer: (() => void) | undefined;
  const attached: FlowDatapath[] = [];
  try {
    topo = await createPair({ prefix: 'rxfp', offloads: true });
    const pinRoot = makeBpffsDir('rxfp');
    stopServer = await startServer(topo);
    const without: number[] = [];
    const withProgram: number[] = [];
    const withAll: number[] = [];
    let segments = 0;
    for (let r = 0; r < rounds; r++) {
      without.push(await runClient(topo, seconds));
      attached.push(...attachBoth(topo, pinRoot));
      withProgram.push(await runClient(topo, seconds));
      segments += countedSegments(attached);
      for (const dp of attached.splice(0)) dp.close();
      attached.push(...attachBoth(topo, pinRoot, true));
      withAll.push(await runClient(topo, seconds));
      segments += countedSegments(attached);
      for (const dp of attached.splice(0)) dp.close();
    }
    if (segments === 0) throw new Error('tc-throughput bench: the flow programs counted no TCP segment');
    const base = { name: 'tc.tcp_throughput_without_program', value: median(without) };
    const note = `iperf3 -t ${seconds}, median of ${rounds}, alternating; default veth offloads`;
    ctx.report({
      ...base,
      unit: 'Gbit/s',
      note: `${note}; runs ${without.map((v) => v.toFixed(2)).join(' ')}`,
    });
    ctx.report({
      name: 'tc.tcp_throughput_with_program',
      value: median(withProgram),
      unit: 'Gbit/s',
      baseline: base,
      note: `both hooks of both veth ends; runs ${withProgram.map((v) => v.toFixed(2)).join(' ')}`,
    });
    ctx.report({
      name: 'tc.tcp_throughput_ratio',
      value: median(withProgram) / median(without),
      unit: 'with/without',
      target: { value: TARGET_RATIO, better: 'higher' },
      note: 'ratio of the medians',
    });
    // Each 'with' run against the 'without' run just before it: drift between rounds (other work
    // on the machine) cancels out of each pair.
    ctx.report({
      name: 'tc.tcp_throughput_all_features_ratio',
      value: median(withAll) / median(without),
      unit: 'with/without',
      target: { value: TARGET_ALL_ON_RATIO, better: 'higher' },
      note: `flows, handshake RTT, DNS, tcp_probe and kfree_skb programs; runs ${withAll.map((v) => v.toFixed(2)).join(' ')}`,
    });
    const paired = withProgram.map((w, i) => w / without[i]!);
    ctx.report({
      name: 'tc.tcp_throughput_ratio_paired',
      value: median(paired),
      unit: 'with/without',
      target: { value: TARGET_RATIO, better: 'higher' },
      note: `median of per-round ratios ${paired.map((v) => v.toFixed(2)).join(' ')}`,
    });
  } finally {
    for (const dp of attached.splice(0)) dp.close();
    stopServer?.();
    await cleanup.dispose();
  }
}
