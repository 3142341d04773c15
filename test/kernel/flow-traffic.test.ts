import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { decodeFlowEvent, flowEventReason, FLOW_EVENT_MAP_FULL } from '../../src/datapath/flow/types.js';
import { FlowDatapath, type FlowDatapathOptions } from '../../src/datapath/flow/datapath.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { icmpFrameBytes, ping, sendTcp, sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';

const TCP_FIN = 0x01;
const TCP_SYN = 0x02;
const TCP_ACK = 0x10;

/** Everything the kernel holds for this datapath: map flows plus ring-buffer single-packet flows. */
function collect(dp: FlowDatapath): { map: FlowRecord[]; ring: FlowRecord[]; mapFullEvents: number } {
  const ring: FlowRecord[] = [];
  let mapFullEvents = 0;
  dp.events.drain((view, offset, length) => {
    ring.push(decodeFlowEvent(view, offset, length, 0));
    if (flowEventReason(view, offset) === FLOW_EVENT_MAP_FULL) mapFullEvents++;
  });
  return { map: dp.evictFlows(0), ring, mapFullEvents };
}

const summary = (r: FlowRecord) => ({
  dir: r.flowDirection,
  proto: r.protocolIdentifier,
  src: r.sourceIPv4Address ?? r.sourceIPv6Address,
  dst: r.destinationIPv4Address ?? r.destinationIPv6Address,
  sport: r.sourceTransportPort,
  dport: r.destinationTransportPort,
  packets: r.packetDeltaCount,
  bytes: r.layer2OctetDeltaCount,
  ipBytes: r.octetDeltaCount,
});

kernelDescribe('flow program on real traffic between namespaces', () => {
  let topo: PairTopology;
  let pinRoot: string;
  const open: FlowDatapath[] = [];

  function attach(side: 'client' | 'server', extra: Partial<FlowDatapathOptions> = {}): FlowDatapath {
    const end = side === 'client' ? topo.link.a : topo.link.b;
    const dp = FlowDatapath.open({
      interfaces: [end.ifname],
      netns: (side === 'client' ? topo.client : topo.server).name,
      instance: `${side}-${process.pid}`,
      pinRoot,
      ...extra,
    });
    open.push(dp);
    return dp;
  }

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxft' });
    pinRoot = makeBpffsDir('rxft');
  });
  afterEach(() => {
    for (const dp of open.splice(0)) dp.close();
  });
  afterAll(() => cleanup.dispose());

  it('counts N UDP/IPv4 datagrams of size S as one flow per direction and hook, exactly', async () => {
    const client = attach('client');
    const server = attach('server');
    const sink = await startUdpSink({ ns: topo.server, port: 6001, family: 4, count: 1000 });
    const sent = await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 6001,
      count: 1000,
      payloadBytes: 100,
      srcPort: 41000,
    });
    await sink.result;
    const frame = udpFrameBytes(4, 100);
    const expected = (dir: number) => ({
      dir,
      proto: 17,
      src: '192.0.2.1',
      dst: '192.0.2.2',
      sport: 41000,
      dport: 6001,
      packets: sent.sent,
      bytes: sent.sent * frame,
      ipBytes: sent.sent * (frame - 14),
    });
    const c = collect(client);
    const s = collect(server);
    expect(c.map.map(summary)).toEqual([expected(1)]);
    expect(s.map.map(summary)).toEqual([expected(0)]);
    expect([c.ring, s.ring]).toEqual([[], []]);
    const rec = c.map[0]!;
    // The client's record is egress: the interface it was sent on.
    expect([rec.egressInterface, rec.ingressInterface]).toEqual([topo.link.a.ifindex, undefined]);
    expect(s.map[0]!.ingressInterface).toBe(topo.link.b.ifindex);
    expect(rec.sourceMacAddress).toBe(topo.link.a.mac);
    expect(rec.destinationMacAddress).toBe(topo.link.b.mac);
    expect(rec.ethernetType).toBe(0x0800);
    // Kernel times converted to wall-clock with offset 0 are monotonic ms: start <= end.
    expect(rec.flowStartMilliseconds).toBeLessThanOrEqual(rec.flowEndMilliseconds);
  });

  it('counts UDP/IPv6 exactly', async () => {
    const server = attach('server');
    const sink = await startUdpSink({ ns: topo.server, port: 6002, family: 6, count: 300 });
    await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv6!,
      port: 6002,
      count: 300,
      payloadBytes: 1200,
      srcPort: 41001,
    });
    await sink.result;
    expect(collect(server).map.map(summary)).toEqual([
      {
        dir: 0,
        proto: 17,
        src: '2001:db8:0:1::1',
        dst: '2001:db8:0:1::2',
        sport: 41001,
        dport: 6002,
        packets: 300,
        bytes: 300 * udpFrameBytes(6, 1200),
        ipBytes: 300 * (udpFrameBytes(6, 1200) - 14),
      },
    ]);
  });

  it('shows SYN, ACK and FIN in the flags of a TCP connection, with exact segment counts', async () => {
    const client = attach('client');
    const tcp = await sendTcp({
      from: topo.client,
      server: topo.server,
      to: topo.link.b.ipv4!,
      port: 6003,
      bytes: 100_000,
    });
    const flows = collect(client).map.filter((r) => r.protocolIdentifier === 6);
    const out = flows.find((r) => r.flowDirection === 1)!;
    const back = flows.find((r) => r.flowDirection === 0)!;
    expect(flows).toHaveLength(2);
    expect(summary(out)).toMatchObject({
      src: '192.0.2.1',
      dst: '192.0.2.2',
      sport: tcp.srcPort,
      dport: 6003,
    });
    expect(out.packetDeltaCount).toBe(tcp.clientSegsOut);
    expect(back.packetDeltaCount).toBe(tcp.serverSegsOut);
    for (const f of [out, back]) {
      expect(f.tcpControlBits & (TCP_SYN | TCP_ACK | TCP_FIN)).toBe(TCP_SYN | TCP_ACK | TCP_FIN);
    }
  });

  it('counts ICMP echo requests and replies with their type, IPv4 and IPv6', async () => {
    const client = attach('client');
    await ping({ from: topo.client, to: topo.link.b.ipv4!, count: 5, payloadBytes: 56 });
    await ping({ from: topo.client, to: topo.link.b.ipv6!, count: 4, payloadBytes: 200 });
    const icmp = collect(client)
      .map.filter((r) => r.protocolIdentifier === 1 || r.protocolIdentifier === 58)
      .map((r) => ({
        dir: r.flowDirection,
        type: r.icmpTypeIPv4 ?? r.icmpTypeIPv6,
        code: r.icmpCodeIPv4 ?? r.icmpCodeIPv6,
        packets: r.packetDeltaCount,
        bytes: r.layer2OctetDeltaCount,
      }))
      .sort((a, b) => a.type! - b.type! || a.dir - b.dir);
    expect(icmp).toEqual([
      { dir: 0, type: 0, code: 0, packets: 5, bytes: 5 * icmpFrameBytes(4, 56) },
      { dir: 1, type: 8, code: 0, packets: 5, bytes: 5 * icmpFrameBytes(4, 56) },
      { dir: 1, type: 128, code: 0, packets: 4, bytes: 4 * icmpFrameBytes(6, 200) },
      { dir: 0, type: 129, code: 0, packets: 4, bytes: 4 * icmpFrameBytes(6, 200) },
    ]);
  });

  it('with the map limited to 16 flows, 100 concurrent flows overflow to the ring buffer and nothing is lost', async () => {
    const server = attach('server', { maxFlows: 16, directions: ['ingress'] });
    const sink = await startUdpSink({ ns: topo.server, port: 6004, family: 4, count: 300 });
    await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 6004,
      count: 3,
      payloadBytes: 20,
      flows: 100,
      srcPort: 42000,
    });
    await sink.result;
    const { map, ring, mapFullEvents } = collect(server);
    const counters = server.counters();
    expect(map).toHaveLength(16);
    expect(ring.length).toBe(mapFullEvents);
    expect(counters.MAP_FULL).toBe(ring.length);
    expect(counters.RB_RESERVE_FAILED).toBe(0);
    // Map plus ring buffer hold every packet: per source port, 3 packets and 3 frames' bytes.
    const perPort = new Map<number, { packets: number; bytes: number }>();
    for (const r of [...map, ...ring]) {
      const t = perPort.get(r.sourceTransportPort) ?? { packets: 0, bytes: 0 };
      t.packets += r.packetDeltaCount;
      t.bytes += r.layer2OctetDeltaCount!;
      perPort.set(r.sourceTransportPort, t);
    }
    expect(perPort.size).toBe(100);
    for (let p = 42000; p < 42100; p++) {
      expect(perPort.get(p)).toEqual({ packets: 3, bytes: 3 * udpFrameBytes(4, 20) });
    }
    expect(counters.PACKETS).toBe(300);
  });
});
