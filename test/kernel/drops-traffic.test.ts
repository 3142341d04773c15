import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { DatapathError } from '../../src/datapath/errors.js';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, udpFrameBytes } from '../fixtures/traffic.js';
import { buildBpf } from './flow-packets.js';

/** Sends `count` TCP SYNs from `srcPort` to a closed port: each connect gets a RST, one SYN each. */
async function synsToClosedPort(
  topo: PairTopology,
  port: number,
  srcPort: number,
  count: number,
): Promise<number> {
  const script = [
    'import socket, sys',
    'refused = 0',
    `for _ in range(${count}):`,
    '    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)',
    '    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
    `    s.bind(("${topo.link.a.ipv4!}", ${srcPort}))`,
    '    try:',
    `        s.connect(("${topo.link.b.ipv4!}", ${port}))`,
    '    except ConnectionRefusedError:',
    '        refused += 1',
    '    s.close()',
    'print(refused)',
  ].join('\n');
  const { stdout } = await topo.client.exec('python3', ['-c', script], { timeoutMs: 30_000 });
  return Number(stdout.trim());
}

/** The packets of the nftables counter `name` of table inet `table` in the server namespace. */
async function nftCounter(topo: PairTopology, table: string, name: string): Promise<number> {
  const { stdout } = await topo.server.exec('nft', ['-j', 'list', 'counter', 'inet', table, name]);
  const doc = JSON.parse(stdout) as { nftables: { counter?: { packets: number } }[] };
  const c = doc.nftables.find((e) => e.counter !== undefined);
  return c!.counter!.packets;
}

const byPort = (records: FlowRecord[], port: number): FlowRecord[] =>
  records.filter((r) => r.destinationTransportPort === port);

kernelDescribe('drops with the kernel reason, on the flows of the flow map', () => {
  let topo: PairTopology;
  let pinRoot: string;
  const open: FlowDatapath[] = [];
  const table = `drops${process.pid}`;

  function attach(directions: ('ingress' | 'egress')[], instance: string): FlowDatapath {
    const dp = FlowDatapath.open({
      interfaces: [topo.link.b.ifname],
      netns: topo.server.name,
      directions,
      instance: `drops-${instance}-${process.pid}`,
      pinRoot,
    });
    open.push(dp);
    return dp;
  }

  beforeAll(async () => {
    buildBpf();
    topo = await createPair({ prefix: 'rxdr' });
    pinRoot = makeBpffsDir('rxdr');
    // Datagrams to port 7002 and 7102 are dropped by a rule on input, with counters to read back.
    const rules = join(tmpdir(), `rxflow-drops-${process.pid}.nft`);
    writeFileSync(
      rules,
      [
        `add table inet ${table}`,
        `add counter inet ${table} c7002`,
        `add counter inet ${table} c7102`,
        `add counter inet ${table} c7501`,
        `add chain inet ${table} input { type filter hook input priority 0; policy accept; }`,
        `add rule inet ${table} input udp dport 7002 counter name c7002 drop`,
        `add rule inet ${table} input udp dport 7102 counter name c7102 drop`,
        `add rule inet ${table} input tcp dport 7501 tcp flags & psh == psh counter name c7501 drop`,
      ].join('\n') + '\n',
    );
    try {
      await topo.server.exec('nft', ['-f', rules]);
    } finally {
      rmSync(rules, { force: true });
    }
  });
  afterEach(() => {
    for (const dp of open.splice(0)) dp.close();
  });
  afterAll(() => cleanup.dispose());

  it('counts N UDP to a closed port, M dropped by nftables and K SYNs to a closed port on their flows', async () => {
    const dp = attach(['ingress'], 'flows');
    dp.enableDrops();
    const N = 40;
    const M = 30;
    const K = 5;
    const payload = 100;
    const closed = await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 7001,
      count: N,
      payloadBytes: payload,
      srcPort: 42001,
    });
    const filtered = await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 7002,
      count: M,
      payloadBytes: payload,
      srcPort: 42002,
    });
    const refused = await synsToClosedPort(topo, 7003, 42003, K);
    expect([closed.sent, filtered.sent, refused]).toEqual([N, M, K]);
    expect(await nftCounter(topo, table, 'c7002')).toBe(M);

    const records = dp.evictFlows(0);
    // droppedOctetDeltaCount counts IP octets, as octetDeltaCount: IPv4 header, UDP header, payload.
    const ipPacket = 20 + 8 + payload;
    const drops = (r: FlowRecord | undefined) =>
      r && {
        packets: r.packetDeltaCount,
        dropped: r.droppedPacketDeltaCount,
        droppedBytes: r.droppedOctetDeltaCount,
        reason: r.dropReason,
        tcpState: r.tcpState,
      };
    expect(byPort(records, 7001).map(drops)).toEqual([
      { packets: N, dropped: N, droppedBytes: N * ipPacket, reason: 'NO_SOCKET', tcpState: undefined },
    ]);
    expect(byPort(records, 7002).map(drops)).toEqual([
      { packets: M, dropped: M, droppedBytes: M * ipPacket, reason: 'NETFILTER_DROP', tcpState: undefined },
    ]);
    const syn = byPort(records, 7003);
    expect(syn.map(drops)).toEqual([
      {
        packets: K,
        dropped: K,
        droppedBytes: syn[0]!.octetDeltaCount,
        reason: 'NO_SOCKET',
        tcpState: undefined,
      },
    ]);
  });

  it('gives the TCP state of the socket a dropped segment was for: ESTABLISHED', async () => {
    const dp = attach(['ingress'], 'tcpstate');
    dp.enableDrops();
    // The server accepts and reads until the client resets the connection.
    const server = topo.server.exec(
      'python3',
      [
        '-c',
        [
          'import socket',
          'l = socket.socket()',
          'l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
          `l.bind(("${topo.link.b.ipv4!}", 7501))`,
          'l.listen(1)',
          'l.settimeout(10)',
          'c, _ = l.accept()',
          'c.settimeout(10)',
          'try:',
          '    c.recv(100)',
          'except OSError:',
          '    pass',
        ].join('\n'),
      ],
      { timeoutMs: 20_000 },
    );
    // The client's one data segment (PSH) is dropped by the rule, retransmissions too, until the
    // client resets the connection (SO_LINGER 0): no segment of it arrives after that.
    await topo.client.exec(
      'python3',
      [
        '-c',
        [
          'import socket, struct, time',
          'for _ in range(100):',
          '    s = socket.socket()',
          '    try:',
          `        s.connect(("${topo.link.b.ipv4!}", 7501))`,
          '        break',
          '    except ConnectionRefusedError:',
          '        s.close()',
          '        time.sleep(0.02)',
          's.sendall(b"x")',
          'time.sleep(0.05)',
          's.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))',
          's.close()',
        ].join('\n'),
      ],
      { timeoutMs: 20_000 },
    );
    await server;
    const dropped = await nftCounter(topo, table, 'c7501');
    expect(dropped).toBeGreaterThanOrEqual(1);
    const flows = byPort(dp.evictFlows(0), 7501).map((r) => ({
      dropped: r.droppedPacketDeltaCount,
      reason: r.dropReason,
      tcpState: r.tcpState,
    }));
    expect(flows.filter((f) => f.reason === 'NETFILTER_DROP')).toEqual([
      { dropped, reason: 'NETFILTER_DROP', tcpState: 'ESTABLISHED' },
    ]);
    // A segment of the teardown may race the reset and find no socket: only that other reason.
    expect(flows.filter((f) => f.reason !== 'NETFILTER_DROP').map((f) => [f.reason, f.tcpState])).toEqual(
      flows.filter((f) => f.reason !== 'NETFILTER_DROP').map(() => ['NO_SOCKET', undefined]),
    );
  });

  it('counts drops of flows the flow map does not hold by reason, as many as nftables dropped', async () => {
    // Only egress is watched: the datagrams arriving at the server are on no flow of the map.
    const dp = attach(['egress'], 'unmatched');
    const drops = dp.enableDrops();
    const before = drops.reasonCounts().find((c) => c.name === 'NETFILTER_DROP');
    const nftBefore = await nftCounter(topo, table, 'c7102');
    const M = 25;
    const sent = await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 7102,
      count: M,
      payloadBytes: 64,
      srcPort: 42102,
    });
    const nftDropped = (await nftCounter(topo, table, 'c7102')) - nftBefore;
    expect([sent.sent, nftDropped]).toEqual([M, M]);
    const after = drops.reasonCounts().find((c) => c.name === 'NETFILTER_DROP')!;
    expect(after.unmatchedPackets - (before?.unmatchedPackets ?? 0)).toBe(M);
    expect(after.unmatchedBytes - (before?.unmatchedBytes ?? 0)).toBe(M * udpFrameBytes(4, 64));
    expect(dp.evictFlows(0).filter((r) => r.droppedPacketDeltaCount !== undefined)).toEqual([]);
  });

  it('refuses a hook the kernel does not have with the name of what is missing, and flows keep counting', async () => {
    const dp = attach(['ingress'], 'nohook');
    let error: unknown;
    try {
      dp.enableDrops({ tracepoint: 'rxflow_no_such_tracepoint' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(DatapathError);
    expect((error as DatapathError).message).toMatch(/rxflow_no_such_tracepoint/);
    expect(dp.drops).toBeUndefined();
    const sent = await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 7001,
      count: 7,
      payloadBytes: 32,
      srcPort: 42201,
    });
    const flows = byPort(dp.evictFlows(0), 7001);
    expect(flows.map((r) => [r.packetDeltaCount, r.droppedPacketDeltaCount])).toEqual([
      [sent.sent, undefined],
    ]);
  });
});
