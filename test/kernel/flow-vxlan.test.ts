/**
 * Tunnels on real traffic: a Linux vxlan device in each namespace of a pair sends the inner
 * datagrams over the veth, where the flow program parses the outer UDP and records the inner flow
 * with the VNI and the outer addresses and ports. This kernel has no geneve driver, so GENEVE
 * payloads are written by hand and sent with a plain UDP socket to port 6081.
 */
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import type { FlowRecord } from '../../src/records/flow.js';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, waitQuiet, type Netns, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';
import { ETH_TEB, ethernet, geneve, ipv4, udp } from './flow-packets.js';

const VNI = 4242;
const VXLAN_PORT = 4789;
/** vxlan picks the outer source port in [min, max): a range of one makes it exact. */
const VXLAN_SRC_PORT = 4242;
const VXLAN_DEV = 'rxfpvx0';
const INNER = {
  client: { ip: '10.244.0.1', mac: '02:00:0a:f4:00:01' },
  server: { ip: '10.244.0.2', mac: '02:00:0a:f4:00:02' },
};
/** Outer Ethernet + IPv4 + UDP + VXLAN header, before the inner frame. */
const VXLAN_OVERHEAD = 14 + 20 + 8 + 8;

/** The fields this file asserts, of every flow a datapath holds. */
function summary(r: FlowRecord) {
  return {
    direction: r.flowDirection,
    src: r.sourceIPv4Address,
    dst: r.destinationIPv4Address,
    protocol: r.protocolIdentifier,
    sport: r.sourceTransportPort,
    dport: r.destinationTransportPort,
    packets: r.packetDeltaCount,
    bytes: r.layer2OctetDeltaCount!,
    srcMac: r.sourceMacAddress,
    dstMac: r.destinationMacAddress,
    encapsulationType: r.encapsulationType,
    virtualNetworkIdentifier: r.virtualNetworkIdentifier,
    tunnelSourceIPAddress: r.tunnelSourceIPAddress,
    tunnelDestinationIPAddress: r.tunnelDestinationIPAddress,
    tunnelSourceTransportPort: r.tunnelSourceTransportPort,
    tunnelDestinationTransportPort: r.tunnelDestinationTransportPort,
    flowCookie: r.flowCookie,
  };
}

/** Everything the kernel holds for a datapath; nothing may have spilled to the ring buffer. */
function flowsOf(dp: FlowDatapath): ReturnType<typeof summary>[] {
  let spilled = 0;
  dp.events.drain(() => spilled++);
  expect(spilled).toBe(0);
  return dp
    .evictFlows(0)
    .map(summary)
    .sort((a, b) => a.direction - b.direction);
}

/** A vxlan device over the namespace's veth end, with a fixed MAC and no IPv6 chatter. */
async function addVxlan(
  ns: Netns,
  underlay: { ifname: string; local: string; remote: string },
  inner: { ip: string; mac: string },
): Promise<void> {
  await ns.ip([
    'link',
    'add',
    VXLAN_DEV,
    'address',
    inner.mac,
    'type',
    'vxlan',
    'id',
    String(VNI),
    'dstport',
    String(VXLAN_PORT),
    'srcport',
    String(VXLAN_SRC_PORT),
    String(VXLAN_SRC_PORT + 1),
    'local',
    underlay.local,
    'remote',
    underlay.remote,
    'dev',
    underlay.ifname,
    'nolearning',
  ]);
  await ns.ip(['link', 'set', 'dev', VXLAN_DEV, 'addrgenmode', 'none']);
  await ns.sysctl({ [`net.ipv6.conf.${VXLAN_DEV}.disable_ipv6`]: 1 });
  await ns.ip(['addr', 'add', `${inner.ip}/24`, 'dev', VXLAN_DEV]);
  await ns.ip(['link', 'set', 'dev', VXLAN_DEV, 'up']);
}

/**
 * Sends `count` copies of `payload` from `ns` to addr:port from source port `srcPort`, one after
 * the other (each send waits for the previous one to be accepted), with a plain UDP socket.
 */
async function sendRaw(
  ns: Netns,
  to: { addr: string; port: number },
  srcPort: number,
  payload: Uint8Array,
  count: number,
): Promise<void> {
  const script = `
const dgram = require('node:dgram');
const [hex, addr, port, src, count] = process.argv.slice(1);
const buf = Buffer.from(hex, 'hex');
const s = dgram.createSocket('udp4');
let sent = 0;
const next = () => {
  if (sent === Number(count)) { s.close(); console.log(JSON.stringify({ sent })); return; }
  s.send(buf, Number(port), addr, (err) => { if (err) throw err; sent++; next(); });
};
s.bind(Number(src), next);`;
  const hex = Buffer.from(payload).toString('hex');
  const { stdout } = await ns.exec(process.execPath, [
    '-e',
    script,
    hex,
    to.addr,
    String(to.port),
    String(srcPort),
    String(count),
  ]);
  expect(JSON.parse(stdout)).toEqual({ sent: count });
}

kernelDescribe('flow program on tunnelled traffic between namespaces', () => {
  let topo: PairTopology;
  let pinRoot: string;
  const open: FlowDatapath[] = [];

  function attach(side: 'client' | 'server'): FlowDatapath {
    const dp = FlowDatapath.open({
      interfaces: [side === 'client' ? topo.link.a.ifname : topo.link.b.ifname],
      netns: (side === 'client' ? topo.client : topo.server).name,
      instance: `rxfp-vx-${side}-${process.pid}`,
      pinRoot,
    });
    open.push(dp);
    return dp;
  }

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxfp' });
    pinRoot = makeBpffsDir('rxfp');
    const { a, b } = topo.link;
    await addVxlan(topo.client, { ifname: a.ifname, local: a.ipv4!, remote: b.ipv4! }, INNER.client);
    await addVxlan(topo.server, { ifname: b.ifname, local: b.ipv4!, remote: a.ipv4! }, INNER.server);
    // The overlay resolves nothing: ARP over the tunnel would add outer frames to the counts.
    for (const [ns, peer] of [
      [topo.client, INNER.server],
      [topo.server, INNER.client],
    ] as const) {
      await ns.ip(['neigh', 'replace', peer.ip, 'lladdr', peer.mac, 'dev', VXLAN_DEV, 'nud', 'permanent']);
    }
    await waitQuiet([topo.link.a, topo.link.b]);
  });
  afterEach(() => {
    for (const dp of open.splice(0)) dp.close();
  });
  afterAll(() => cleanup.dispose());

  it('VXLAN: N datagrams through a vxlan device give the inner flow with VNI, outer addresses and ports, exactly', async () => {
    const client = attach('client');
    const server = attach('server');
    const count = 200;
    const payloadBytes = 300;
    const sink = await startUdpSink({ ns: topo.server, port: 7001, family: 4, count });
    const sent = await sendUdp({
      from: topo.client,
      to: INNER.server.ip,
      port: 7001,
      count,
      payloadBytes,
      srcPort: 43001,
    });
    expect(await sink.result).toEqual({ received: count, payloadBytes: count * payloadBytes });
    // The veth carries the outer frame: outer headers around the whole inner Ethernet frame.
    const outerFrame = VXLAN_OVERHEAD + udpFrameBytes(4, payloadBytes);
    expect(outerFrame).toBe(50 + 14 + 20 + 8 + 300);
    const inner = (direction: number) => ({
      direction,
      src: INNER.client.ip,
      dst: INNER.server.ip,
      protocol: 17,
      sport: 43001,
      dport: 7001,
      packets: sent.sent,
      bytes: sent.sent * outerFrame,
      // bpf/flow.h: the MACs are the outermost Ethernet header, as the interface saw the frame.
      srcMac: topo.link.a.mac,
      dstMac: topo.link.b.mac,
      encapsulationType: 'vxlan',
      virtualNetworkIdentifier: VNI,
      tunnelSourceIPAddress: topo.link.a.ipv4,
      tunnelDestinationIPAddress: topo.link.b.ipv4,
      tunnelSourceTransportPort: VXLAN_SRC_PORT,
      tunnelDestinationTransportPort: VXLAN_PORT,
      flowCookie: undefined,
    });
    // One flow per hook it crossed: client egress, server ingress; nothing else crossed.
    expect(flowsOf(client)).toEqual([inner(1)]);
    expect(flowsOf(server)).toEqual([inner(0)]);
  });

  it('GENEVE: crafted payloads sent to UDP 6081 give the inner flow with VNI and cookie, exactly', async () => {
    const server = attach('server');
    const count = 50;
    const innerFrame = ethernet(
      { src: '0a:00:00:00:00:01', dst: '0a:00:00:00:00:02', type: 0x0800 },
      ipv4({ src: '10.99.0.1', dst: '10.99.0.2', proto: 17 }, udp(5353, 9999, new Uint8Array(64))),
    );
    const options = [0x01, 0x02, 0x03, 0x04, 0xa5, 0xb6, 0xc7, 0xd8];
    const payload = geneve(0x123456, ETH_TEB, options, innerFrame);
    const sink = await startUdpSink({ ns: topo.server, port: 6081, family: 4, count });
    await sendRaw(topo.client, { addr: topo.link.b.ipv4!, port: 6081 }, 43002, payload, count);
    expect(await sink.result).toEqual({ received: count, payloadBytes: count * payload.length });
    const frame = udpFrameBytes(4, payload.length);
    expect(frame).toBe(14 + 20 + 8 + 8 + 8 + innerFrame.length);
    expect(flowsOf(server)).toEqual([
      {
        direction: 0,
        src: '10.99.0.1',
        dst: '10.99.0.2',
        protocol: 17,
        sport: 5353,
        dport: 9999,
        packets: count,
        bytes: count * frame,
        srcMac: topo.link.a.mac,
        dstMac: topo.link.b.mac,
        encapsulationType: 'geneve',
        virtualNetworkIdentifier: 0x123456,
        tunnelSourceIPAddress: topo.link.a.ipv4,
        tunnelDestinationIPAddress: topo.link.b.ipv4,
        tunnelSourceTransportPort: 43002,
        tunnelDestinationTransportPort: 6081,
        flowCookie: '01020304a5b6c7d8',
      },
    ]);
  });
});
