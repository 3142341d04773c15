/**
 * What the counts and fields of a record mean, on real veths: octetDeltaCount is IP octets
 * (IANA element 1), layer2OctetDeltaCount the frame as on the wire with every 802.1Q tag, also the
 * one the receiving veth moved out of the frame into the skb's metadata before TC ran; records
 * carry the VLAN ids, the interface by direction (ingressInterface / egressInterface) and a
 * flowEndReason. Every count is checked against what the generator sent: the frames and their
 * lengths, or ping's echo size.
 */
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { icmpFrameBytes, ping, sendFrames, sendTcp, sendUdp, startUdpSink } from '../fixtures/traffic.js';
import { ETH_IPV4, ethernet, ipv4, udp } from './flow-packets.js';

/** A unicast MAC no interface has: the receiving kernel drops the frames after TC saw them. */
const NOWHERE = '02:00:00:00:ff:02';
const A4 = { src: '198.51.100.1', dst: '198.51.100.2' };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

kernelDescribe('record semantics on real veths', () => {
  let topo: PairTopology;
  let pinRoot: string;
  const open: FlowDatapath[] = [];

  function attach(side: 'client' | 'server', directions: ('ingress' | 'egress')[]): FlowDatapath {
    const end = side === 'client' ? topo.link.a : topo.link.b;
    const dp = FlowDatapath.open({
      interfaces: [end.ifname],
      netns: (side === 'client' ? topo.client : topo.server).name,
      instance: `semantics-${side}-${process.pid}`,
      pinRoot,
      directions,
    });
    open.push(dp);
    return dp;
  }

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxsem' });
    pinRoot = makeBpffsDir('rxsem');
  });
  afterEach(() => {
    for (const dp of open.splice(0)) dp.close();
  });
  afterAll(() => cleanup.dispose());

  it('a tagged frame counts its full wire length, tag included, and its VLAN id; IP octets without layer 2', async () => {
    const client = attach('client', ['egress']);
    const server = attach('server', ['ingress']);
    const ip = ipv4({ ...A4, proto: 17 }, udp(40100, 5353, new Uint8Array(100)));
    const tagged = ethernet(
      { type: ETH_IPV4, src: '02:00:00:00:10:01', dst: NOWHERE, vlans: [{ tpid: 0x8100, vid: 100 }] },
      ip,
    );
    const qinq = ethernet(
      {
        type: ETH_IPV4,
        src: '02:00:00:00:10:02',
        dst: NOWHERE,
        vlans: [
          { tpid: 0x88a8, vid: 10 },
          { tpid: 0x8100, vid: 20 },
        ],
      },
      ip,
    );
    const one = await sendFrames({ from: topo.client, ifname: topo.link.a.ifname, frame: tagged, count: 5 });
    const two = await sendFrames({ from: topo.client, ifname: topo.link.a.ifname, frame: qinq, count: 3 });
    const view = (r: FlowRecord) => ({
      mac: r.sourceMacAddress,
      packets: r.packetDeltaCount,
      octetDeltaCount: r.octetDeltaCount,
      layer2OctetDeltaCount: r.layer2OctetDeltaCount,
      dot1qVlanId: r.dot1qVlanId,
      dot1qCustomerVlanId: r.dot1qCustomerVlanId,
      ingressInterface: r.ingressInterface,
      egressInterface: r.egressInterface,
    });
    const byMac = (a: { mac: string }, b: { mac: string }) => a.mac.localeCompare(b.mac);
    // What the generator sent: frames, their lengths, the IP packet inside.
    const want = (ingress: boolean) =>
      [
        {
          mac: '02:00:00:00:10:01',
          packets: one.sent,
          octetDeltaCount: one.sent * ip.length,
          layer2OctetDeltaCount: one.bytes,
          dot1qVlanId: 100,
          dot1qCustomerVlanId: undefined,
        },
        {
          mac: '02:00:00:00:10:02',
          packets: two.sent,
          octetDeltaCount: two.sent * ip.length,
          layer2OctetDeltaCount: two.bytes,
          dot1qVlanId: 10,
          dot1qCustomerVlanId: 20,
        },
      ].map((w) => ({
        ...w,
        ingressInterface: ingress ? topo.link.b.ifindex : undefined,
        egressInterface: ingress ? undefined : topo.link.a.ifindex,
      }));
    // The server's veth took the outer tag out of each frame before TC ingress ran: the count adds
    // it back. The client's egress saw the frames with their tags in the data.
    expect(server.evictFlows(0).map(view).sort(byMac)).toEqual(want(true));
    expect(client.evictFlows(0).map(view).sort(byMac)).toEqual(want(false));
  });

  it('an ICMP echo of a 98-byte frame counts 84 IP octets and 98 on the wire; egress records carry egressInterface', async () => {
    const client = attach('client', ['ingress', 'egress']);
    const sent = await ping({ from: topo.client, to: topo.link.b.ipv4!, count: 3, payloadBytes: 56 });
    expect(sent.frameBytes).toBe(98);
    expect(icmpFrameBytes(4, 56) - 14).toBe(84);
    const icmp = client
      .evictFlows(0)
      .filter((r) => r.protocolIdentifier === 1)
      .map((r) => ({
        dir: r.flowDirection,
        type: r.icmpTypeIPv4,
        packets: r.packetDeltaCount,
        octetDeltaCount: r.octetDeltaCount,
        layer2OctetDeltaCount: r.layer2OctetDeltaCount,
        ingressInterface: r.ingressInterface,
        egressInterface: r.egressInterface,
        dot1qVlanId: r.dot1qVlanId,
      }))
      .sort((a, b) => a.dir - b.dir);
    const common = {
      packets: 3,
      octetDeltaCount: 3 * 84,
      layer2OctetDeltaCount: 3 * 98,
      dot1qVlanId: undefined,
    };
    expect(icmp).toEqual([
      // The replies, received on the client's veth.
      { dir: 0, type: 0, ...common, ingressInterface: topo.link.a.ifindex, egressInterface: undefined },
      // The requests, sent on it.
      { dir: 1, type: 8, ...common, ingressInterface: undefined, egressInterface: topo.link.a.ifindex },
    ]);
  });

  it('flowEndReason: end of flow after FIN, idle, active, forced', async () => {
    const client = attach('client', ['egress']);
    // A whole TCP connection: SYN to FIN.
    const tcp = await sendTcp({
      from: topo.client,
      server: topo.server,
      to: topo.link.b.ipv4!,
      port: 6103,
      bytes: 10_000,
    });
    const send = async (srcPort: number) => {
      const sink = await startUdpSink({ ns: topo.server, port: 6104, family: 4, count: 2 });
      await sendUdp({
        from: topo.client,
        to: topo.link.b.ipv4!,
        port: 6104,
        count: 2,
        payloadBytes: 10,
        srcPort,
      });
      await sink.result;
    };
    await send(41001);
    // Nothing more on either flow for at least 300 ms: older than the 200 ms idle time.
    await sleep(300);
    const first = client.evictFlows(0, { idleMs: 200 }).map((r) => [r.sourceTransportPort, r.flowEndReason]);
    const byPort = (a: (number | undefined)[], b: (number | undefined)[]) => a[0]! - b[0]!;
    expect(first.sort(byPort)).toEqual(
      [
        [tcp.srcPort, 3],
        [41001, 1],
      ].sort(byPort),
    );
    // Its last packet came well within the idle time: still active when evicted.
    await send(41002);
    expect(
      client.evictFlows(0, { idleMs: 600_000 }).map((r) => [r.sourceTransportPort, r.flowEndReason]),
    ).toEqual([[41002, 2]]);
    // The final eviction at shutdown: forced, however recent.
    await send(41003);
    expect(
      client
        .evictFlows(0, { idleMs: 600_000, forced: true })
        .map((r) => [r.sourceTransportPort, r.flowEndReason]),
    ).toEqual([[41003, 4]]);
  });
});
