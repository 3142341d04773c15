/**
 * softflowd (Debian's, an exporter rxflow shares no code with) watching a veth exports NetFlow v9
 * and IPFIX to rxflow's `ipfix` source, while rxflow's own `ebpf_flows` watches the same veth; one
 * `rxflow run` writes each to a file. The collected records must equal what softflowd reports of
 * its own flows (`softflowctl dump-flows`, `statistics`) and the generator's packet counts, and
 * match ebpf_flows under the documented semantics: softflowd counts IP octets (header and
 * payload) per packet; ebpf_flows counts packets the same, and octets as IANA's octetDeltaCount
 * (IP octets) once its records carry layer2OctetDeltaCount, Ethernet frames before that.
 *
 * softflowd reads the veth through libpcap's TPACKET_V3 ring, which hands packets over a block
 * (256 KiB) at a time: after the test's flows a burst of filler datagrams to another port fills
 * the block, and the filler flows are left out of the comparison.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { FlowRecord } from '../../src/records/flow.js';
import { run } from '../../src/devtools/system.js';
import { cleanup, killSync, makeTempDir } from '../fixtures/cleanup.js';
import { createPair, PAIR, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink } from '../fixtures/traffic.js';
import { MAIN, assertBuilt } from './cli-helpers.js';
import { testObject } from './datapath-helpers.js';

const addr = (cidr: string): string => cidr.split('/')[0]!;
const CLIENT = addr(PAIR.client.ipv4);
const SERVER = addr(PAIR.server.ipv4);
const CLIENT6 = addr(PAIR.client.ipv6);
const SERVER6 = addr(PAIR.server.ipv6);
/** Flows: the first K4 over IPv4, the rest over IPv6, source ports SRC_PORT + i. */
const K4 = 3;
const K = 5;
const N = 20;
const PAYLOAD = 200;
const SRC_PORT = 47000;
const DST_PORT = 7300;
const DST_PORT6 = 7301;
const FILLER_PORT = 7399;
const familyOf = (i: number): 4 | 6 => (i < K4 ? 4 : 6);
/** A UDP datagram of PAYLOAD bytes as an IP packet: IP header, UDP header, payload. */
const ipOctets = (i: number): number => (familyOf(i) === 4 ? 20 : 40) + 8 + PAYLOAD;
const ETHERNET_HEADER = 14;
const V9_PORT = 2055;
const IPFIX_PORT = 4739;

interface Proc {
  pid: number;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** A process in the server's namespace, killed by the cleanup registry if the test does not end it. */
function inNetns(ns: string, argv: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn('ip', ['netns', 'exec', ns, ...argv], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const pid = child.pid!;
  const registration = cleanup.register(`${argv[0]} ${pid}`, () => killSync(pid, 5000));
  const exited = new Promise<number | null>((resolve) =>
    child.once('close', (code) => {
      registration.release();
      resolve(code);
    }),
  );
  return { pid, stderr: () => stderr, exited };
}

async function waitFor(
  what: string,
  ready: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const readRecords = (file: string): FlowRecord[] =>
  existsSync(file)
    ? readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as FlowRecord)
    : [];

/** A flow as softflowd's dump-flows prints it: one line per bidirectional flow. */
interface DumpedFlow {
  a: string;
  aPort: number;
  b: string;
  bPort: number;
  protocol: number;
  /** a to b */
  forward: { octets: number; packets: number };
  /** b to a */
  reverse: { octets: number; packets: number };
}

function parseDump(text: string): DumpedFlow[] {
  const out: DumpedFlow[] = [];
  const re =
    /\[([^\]]+)\]:(\d+) <> \[([^\]]+)\]:(\d+) proto:(\d+) octets>:(\d+) packets>:(\d+) octets<:(\d+) packets<:(\d+)/g;
  for (const m of text.matchAll(re)) {
    out.push({
      a: m[1]!,
      aPort: Number(m[2]),
      b: m[3]!,
      bPort: Number(m[4]),
      protocol: Number(m[5]),
      forward: { octets: Number(m[6]), packets: Number(m[7]) },
      reverse: { octets: Number(m[8]), packets: Number(m[9]) },
    });
  }
  return out;
}

/** What softflowd says of the client's test flow from `port`, as a record would have it. */
function fromDump(flows: DumpedFlow[], port: number): { packets: number; octets: number } | undefined {
  for (const f of flows) {
    if (f.protocol !== 17) continue;
    const client = (a: string): boolean => a === CLIENT || a === CLIENT6;
    if (client(f.a) && f.aPort === port) return f.forward;
    if (client(f.b) && f.bPort === port) return f.reverse;
  }
  return undefined;
}

/**
 * IP octets of an ebpf_flows record: its octetDeltaCount where records carry layer2OctetDeltaCount
 * (octetDeltaCount is then IANA's, IP octets), else octetDeltaCount counts Ethernet frames.
 */
const ebpfIpOctets = (r: FlowRecord): number =>
  'layer2OctetDeltaCount' in r ? r.octetDeltaCount : r.octetDeltaCount - ETHERNET_HEADER * r.packetDeltaCount;

const isTestFlow = (r: FlowRecord): boolean =>
  r.protocolIdentifier === 17 &&
  (r.sourceIPv4Address === CLIENT || r.sourceIPv6Address === CLIENT6) &&
  (r.destinationTransportPort === DST_PORT || r.destinationTransportPort === DST_PORT6) &&
  r.sourceTransportPort >= SRC_PORT &&
  r.sourceTransportPort < SRC_PORT + K;

const byPort = (records: FlowRecord[]): FlowRecord[] =>
  records.filter(isTestFlow).sort((x, y) => x.sourceTransportPort - y.sourceTransportPort);

kernelDescribe('ipfix source: softflowd exports NetFlow v9 and IPFIX of a veth', () => {
  let pair: PairTopology;
  let dir: string;

  beforeAll(async () => {
    assertBuilt();
    pair = await createPair({ prefix: 'rxipfs' });
    dir = makeTempDir('rxipfs');
  });
  afterAll(() => cleanup.dispose());

  it('records equal softflowd counters and the generator, and match ebpf_flows on the same traffic', async () => {
    const ns = pair.server.name;
    const veth = pair.link.b.ifname;
    const files = {
      kernel: path.join(dir, 'kernel.jsonl'),
      v9: path.join(dir, 'v9.jsonl'),
      ipfix: path.join(dir, 'ipfix.jsonl'),
    };
    const pipeline = path.join(dir, 'pipeline.yaml');
    writeFileSync(
      pipeline,
      `
sources:
  kernel:
    type: ebpf_flows
    interfaces: ['\${VETH}']
    directions: [ingress]
    instance: rxipfs
    object_path: \${OBJECT}
    eviction_interval_ms: 1h
  v9:
    type: ipfix
    address: 127.0.0.1
    port: ${V9_PORT}
  ipfix:
    type: ipfix
    address: '::1'
    port: ${IPFIX_PORT}
sinks:
  kernel_file:
    type: file
    inputs: [kernel]
    path: ${files.kernel}
  v9_file:
    type: file
    inputs: [v9]
    path: ${files.v9}
  ipfix_file:
    type: file
    inputs: [ipfix]
    path: ${files.ipfix}
`,
    );
    // Its own bpffs in its own mount namespace (ip netns exec makes one): the pins go with it.
    const agent = inNetns(
      ns,
      ['sh', '-c', 'mount -t bpf bpf /sys/fs/bpf && exec "$0" "$@"', process.execPath, MAIN, 'run', pipeline],
      { VETH: veth, OBJECT: testObject('flow'), RXFLOW_RUN_DIR: dir },
    );
    await waitFor('rxflow listening on both collectors', () => {
      const s = agent.stderr();
      return (s.match(/ipfix source: listening/g) ?? []).length === 2 && s.includes('flow programs attached');
    });

    const ctl = { 9: path.join(dir, 'sf9.ctl'), 10: path.join(dir, 'sf10.ctl') };
    const exporters = [
      inNetns(ns, [
        'softflowd',
        '-d',
        '-i',
        `${pair.link.b.ifindex}:${veth}`,
        '-v',
        '9',
        '-n',
        `127.0.0.1:${V9_PORT}`,
        '-c',
        ctl[9],
        '-p',
        path.join(dir, 'sf9.pid'),
      ]),
      inNetns(ns, [
        'softflowd',
        '-d',
        '-i',
        `${pair.link.b.ifindex}:${veth}`,
        '-v',
        '10',
        '-n',
        `[::1]:${IPFIX_PORT}`,
        '-c',
        ctl[10],
        '-p',
        path.join(dir, 'sf10.pid'),
      ]),
    ];
    const softflowctl = async (version: 9 | 10, command: string): Promise<string> =>
      (await run('ip', ['netns', 'exec', ns, 'softflowctl', '-c', ctl[version], command])).stdout;
    for (const v of [9, 10] as const)
      await waitFor(`softflowd -v ${v} control socket`, () => existsSync(ctl[v]));

    const sink = await startUdpSink({ ns: pair.server, port: DST_PORT, family: 4, count: K4 * N });
    const sink6 = await startUdpSink({ ns: pair.server, port: DST_PORT6, family: 6, count: (K - K4) * N });
    const fillerSink = await startUdpSink({ ns: pair.server, port: FILLER_PORT, family: 4, count: 400 });
    const before = Date.now();
    const sent = await sendUdp({
      from: pair.client,
      to: SERVER,
      port: DST_PORT,
      count: N,
      flows: K4,
      srcPort: SRC_PORT,
      payloadBytes: PAYLOAD,
    });
    const sent6 = await sendUdp({
      from: pair.client,
      to: SERVER6,
      port: DST_PORT6,
      count: N,
      flows: K - K4,
      srcPort: SRC_PORT + K4,
      payloadBytes: PAYLOAD,
    });
    const after = Date.now();
    expect(sent.sent + sent6.sent).toBe(K * N);
    expect((await sink.result).received).toBe(K4 * N);
    expect((await sink6.result).received).toBe((K - K4) * N);
    await sendUdp({
      from: pair.client,
      to: SERVER,
      port: FILLER_PORT,
      count: 400,
      srcPort: SRC_PORT + 100,
      payloadBytes: 1400,
    });
    await fillerSink.result;

    // softflowd's own account of the test flows, once it has read all of their packets.
    const reported: Record<9 | 10, { packets: number; octets: number }[]> = { 9: [], 10: [] };
    for (const v of [9, 10] as const) {
      await waitFor(`softflowd -v ${v} to count every test packet`, async () => {
        const flows = parseDump(await softflowctl(v, 'dump-flows'));
        const counts = Array.from({ length: K }, (_, i) => fromDump(flows, SRC_PORT + i));
        if (counts.some((c) => c === undefined || c.packets < N)) return false;
        reported[v] = counts as { packets: number; octets: number }[];
        return true;
      });
      expect(reported[v]).toEqual(
        Array.from({ length: K }, (_, i) => ({ packets: N, octets: N * ipOctets(i) })),
      );
      expect(await softflowctl(v, 'expire-all')).toMatch(/Expired \d+ flows/);
    }
    const exported = { 9: 0, 10: 0 };
    for (const v of [9, 10] as const) {
      const stats = await softflowctl(v, 'statistics');
      const m = /Flows exported: \d+ \((\d+) records\) in \d+ packets \(0 failures\)/.exec(stats);
      expect(m, stats).not.toBeNull();
      exported[v] = Number(m![1]);
      await waitFor(
        `rxflow to write softflowd -v ${v}'s ${exported[v]} records`,
        () => readRecords(v === 9 ? files.v9 : files.ipfix).length >= exported[v],
      );
    }
    for (const e of exporters) killSync(e.pid, 5000);
    process.kill(agent.pid, 'SIGINT');
    expect(await agent.exited).toBe(0);

    const collected = { 9: readRecords(files.v9), 10: readRecords(files.ipfix) };
    const kernel = byPort(readRecords(files.kernel));
    // Every record softflowd exported arrived, and nothing else: no gap, nothing unreadable.
    expect(collected[9]).toHaveLength(exported[9]);
    expect(collected[10]).toHaveLength(exported[10]);
    const ledger = agent
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"msg":"ledger"'))
      .pop();
    expect(ledger).toBeDefined();
    expect((JSON.parse(ledger!) as { dropped: unknown }).dropped).toEqual({});

    expect(kernel.map((r) => r.sourceTransportPort)).toEqual(
      Array.from({ length: K }, (_, i) => SRC_PORT + i),
    );
    for (const v of [9, 10] as const) {
      const records = byPort(collected[v]);
      expect(records.map((r) => r.sourceTransportPort)).toEqual(
        Array.from({ length: K }, (_, i) => SRC_PORT + i),
      );
      for (const [i, r] of records.entries()) {
        const k = kernel[i]!;
        const family = familyOf(i);
        expect({
          ipVersion: r.ipVersion,
          source: family === 4 ? r.sourceIPv4Address : r.sourceIPv6Address,
          destination: family === 4 ? r.destinationIPv4Address : r.destinationIPv6Address,
          destinationTransportPort: r.destinationTransportPort,
          protocolIdentifier: r.protocolIdentifier,
          packetDeltaCount: r.packetDeltaCount,
          octetDeltaCount: r.octetDeltaCount,
          ethernetType: r.ethernetType,
          ingressInterface: r.ingressInterface,
          exporter: v === 9 ? r.exporterIPv4Address : r.exporterIPv6Address,
        }).toEqual({
          ipVersion: family,
          source: family === 4 ? CLIENT : CLIENT6,
          destination: family === 4 ? SERVER : SERVER6,
          destinationTransportPort: family === 4 ? DST_PORT : DST_PORT6,
          protocolIdentifier: 17,
          // The generator's count and softflowd's own.
          packetDeltaCount: N,
          octetDeltaCount: reported[v][i]!.octets,
          ethernetType: family === 4 ? 0x0800 : 0x86dd,
          // softflowd -i <ifindex>:<veth> exports the index it is given; ebpf_flows has the kernel's.
          ingressInterface: k.ingressInterface,
          exporter: v === 9 ? '127.0.0.1' : '::1',
        });
        // ebpf_flows on the same packets: the same packets, the same IP octets.
        expect({ packets: k.packetDeltaCount, octets: ebpfIpOctets(k) }).toEqual({
          packets: r.packetDeltaCount,
          octets: r.octetDeltaCount,
        });
        // Times from softflowd's clock: within the sending, to the millisecond resolution it exports.
        expect(r.flowStartMilliseconds).toBeGreaterThanOrEqual(before - 1000);
        expect(r.flowEndMilliseconds).toBeLessThanOrEqual(after + 1000);
        expect(r.flowEndMilliseconds).toBeGreaterThanOrEqual(r.flowStartMilliseconds);
        // softflowd's times rest on its export header's whole seconds (up to a second early);
        // ebpf_flows' on the kernel's coarse clock (up to a 4-10 ms timer tick early).
        expect(Math.abs(r.flowStartMilliseconds - k.flowStartMilliseconds)).toBeLessThanOrEqual(1010);
      }
    }
  }, 60_000);
});
