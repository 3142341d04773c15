/**
 * Every reference frame of test/fixtures/testdata (built by an independent packet library) through
 * flow_ingress with BPF_PROG_TEST_RUN, one at a time: the drained and decoded record must be
 * exactly what frames.json says, and frames that make no flow must bump exactly one counter.
 * Then hand-built frames for what the pcap lacks (QinQ, IPv6 extension headers and fragments,
 * GENEVE carrying IP directly, malformed headers, egress, layer-2 flows, frames deeper than the
 * parser walks).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ObjectSpec, type BpfMap, type Collection, type Program } from '../../src/datapath/index.js';
import {
  FLOW_CTR,
  FLOW_PASS,
  decodeFlowMapBatch,
  sumPerCpuCounter,
  type FlowCounterName,
} from '../../src/datapath/flow/types.js';
import { FlowMaps } from '../../src/datapath/flow/maps.js';
import type { FlowRecord } from '../../src/records/flow.js';
import {
  ETH_ARP,
  ETH_IPV4,
  ETH_IPV6,
  buildBpf,
  ethernet,
  flowObject,
  fragmentBody,
  geneve,
  icmp,
  ipv4,
  ipv6,
  kernelSkipReason,
  readPcap,
  repo,
  tcp,
  udp,
  vxlan,
} from './flow-packets.js';

const testdata = join(repo, 'test', 'fixtures', 'testdata');
const skipReason = kernelSkipReason();
/** The coarsest timer tick Linux has (HZ=100): how far the flow times (the coarse clock) may lag. */
const COARSE_CLOCK_TICK_MS = 10;

interface Expect {
  ethertype?: number;
  vlan?: number;
  ip_version?: 4 | 6;
  src?: string;
  dst?: string;
  protocol?: number;
  src_port?: number;
  dst_port?: number;
  dscp?: number;
  tcp_flags?: number;
  icmp_type?: number;
  icmp_code?: number;
  src_mac?: string;
  dst_mac?: string;
  tunnel?: 'vxlan' | 'geneve';
  vni?: number;
  cookie?: string | null;
  outer_src?: string;
  outer_dst?: string;
  outer_src_port?: number;
  outer_dst_port?: number;
  options_len?: number;
  gwlb_flow_cookie?: string;
  note?: string;
}

/** Keys of `expect` the record does not carry, and why that is right. */
const NOT_IN_RECORD = new Set([
  'options_len', // GENEVE: the cookie below is what the record keeps of the options
  'gwlb_flow_cookie', // the third option's value; covered by cookie, the first 8 option bytes
  'note',
]);
const IN_RECORD = new Set([
  'ethertype',
  'vlan',
  'ip_version',
  'src',
  'dst',
  'protocol',
  'src_port',
  'dst_port',
  'dscp',
  'tcp_flags',
  'icmp_type',
  'icmp_code',
  'src_mac',
  'dst_mac',
  'tunnel',
  'vni',
  'cookie',
  'outer_src',
  'outer_dst',
  'outer_src_port',
  'outer_dst_port',
]);

const hexMac = (b: Uint8Array, o: number): string =>
  Array.from(b.subarray(o, o + 6), (x) => x.toString(16).padStart(2, '0')).join(':');

/** Outer UDP ports of an Ethernet + IPv4 + UDP frame, for expectations that leave them out. */
function outerUdpPorts(frame: Uint8Array): [number, number] {
  const l4 = 14 + (frame[14]! & 0x0f) * 4;
  return [(frame[l4]! << 8) | frame[l4 + 1]!, (frame[l4 + 2]! << 8) | frame[l4 + 3]!];
}

const be16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!;

/** Offset of the IP header after an Ethernet header at `o` and its VLAN tags. */
function afterEthernet(frame: Uint8Array, o: number): number {
  let type = be16(frame, o + 12);
  let off = o + 14;
  while (type === 0x8100 || type === 0x88a8) {
    type = be16(frame, off + 2);
    off += 4;
  }
  return off;
}

/**
 * Where the IP packet a record counts starts in a frame the test sent: after the Ethernet header
 * and tags, or for a tunnel after the outer IP (no options or extension headers here), UDP and
 * VXLAN/GENEVE headers and the inner Ethernet header, if any. The frame's length from there is the
 * IP octets (IP header and payload) the record must give.
 */
function ipStart(frame: Uint8Array, tunnel?: 'vxlan' | 'geneve'): number {
  const outer = afterEthernet(frame, 0);
  if (tunnel === undefined) return outer;
  const udpAt = outer + (frame[outer]! >> 4 === 4 ? (frame[outer]! & 0x0f) * 4 : 40);
  const enc = udpAt + 8;
  if (tunnel === 'vxlan') return afterEthernet(frame, enc + 8);
  const inner = enc + 8 + (frame[enc]! & 0x3f) * 4;
  return be16(frame, enc + 2) === 0x6558 ? afterEthernet(frame, inner) : inner;
}

/**
 * The record an expectation describes. Fields the expectation leaves out are the defaults of the
 * generator (dscp 0, no TCP flags, ports 0) or, for MACs and outer ports, read from the frame.
 */
function expectedRecord(e: Expect, frame: Uint8Array, frameLen: number): FlowRecord {
  const v = e.ip_version!;
  const rec: FlowRecord = {
    ipVersion: v,
    sourceTransportPort: e.src_port ?? 0,
    destinationTransportPort: e.dst_port ?? 0,
    protocolIdentifier: e.protocol!,
    // IP octets: the frame after its layer-2 headers (and the tunnel's outer headers).
    octetDeltaCount: frameLen - ipStart(frame, e.tunnel),
    packetDeltaCount: 1,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
    tcpControlBits: e.tcp_flags ?? 0,
    ipDiffServCodePoint: e.dscp ?? 0,
    // BPF_PROG_TEST_RUN runs the program on an skb of the loopback device.
    ingressInterface: 1,
    flowDirection: 0,
    // The outermost Ethernet header, as the interface saw the frame.
    sourceMacAddress: e.src_mac ?? hexMac(frame, 6),
    destinationMacAddress: e.dst_mac ?? hexMac(frame, 0),
    ethernetType: e.ethertype ?? (v === 4 ? ETH_IPV4 : ETH_IPV6),
  };
  if (e.vlan !== undefined) rec.dot1qVlanId = e.vlan;
  if (v === 4) {
    rec.sourceIPv4Address = e.src!;
    rec.destinationIPv4Address = e.dst!;
    if (e.protocol === 1) {
      rec.icmpTypeIPv4 = e.icmp_type!;
      rec.icmpCodeIPv4 = e.icmp_code!;
    }
  } else {
    rec.sourceIPv6Address = e.src!;
    rec.destinationIPv6Address = e.dst!;
    if (e.protocol === 58) {
      rec.icmpTypeIPv6 = e.icmp_type!;
      rec.icmpCodeIPv6 = e.icmp_code!;
    }
  }
  if (e.tunnel) {
    const [sport, dport] = outerUdpPorts(frame);
    rec.encapsulationType = e.tunnel;
    rec.virtualNetworkIdentifier = e.vni!;
    rec.tunnelSourceIPAddress = e.outer_src!;
    rec.tunnelDestinationIPAddress = e.outer_dst!;
    rec.tunnelSourceTransportPort = e.outer_src_port ?? sport;
    rec.tunnelDestinationTransportPort = e.outer_dst_port ?? dport;
    if (e.cookie) rec.flowCookie = e.cookie;
  }
  return rec;
}

describe.skipIf(skipReason !== '')(`flow program on reference frames ${skipReason}`, () => {
  let coll: Collection;
  let ingress: Program;
  let egress: Program;
  let flowMap: BpfMap;
  let counters: BpfMap;

  beforeAll(() => {
    buildBpf();
    coll = ObjectSpec.open(flowObject).load();
    ingress = coll.program('flow_ingress');
    egress = coll.program('flow_egress');
    // Test runs are synchronous: no program runs while a test drains, so the active map is drained
    // directly instead of swapping the maps for every frame.
    flowMap = new FlowMaps(coll).active;
    counters = coll.map('flow_counters');
  });

  afterAll(() => {
    coll?.close();
  });

  function counterValues(): Record<FlowCounterName, number> {
    const out = {} as Record<FlowCounterName, number>;
    for (const [name, index] of Object.entries(FLOW_CTR)) {
      if (name === 'MAX') continue;
      const key = new Uint8Array(4);
      new DataView(key.buffer).setUint32(0, index, true);
      out[name as FlowCounterName] = sumPerCpuCounter(counters.lookup(key)!);
    }
    return out;
  }

  /** Runs one frame and returns the drained records, what the counters moved by, and a time window. */
  function run(frame: Uint8Array, program: Program = ingress) {
    flowMap.drain();
    const before = counterValues();
    const t0 = Number(process.hrtime.bigint()) / 1e6;
    const result = program.testRun(frame);
    const t1 = Number(process.hrtime.bigint()) / 1e6;
    const after = counterValues();
    const delta = Object.fromEntries(
      Object.entries(after)
        .map(([k, n]) => [k, n - before[k as FlowCounterName]])
        .filter(([, n]) => n !== 0),
    ) as Partial<Record<FlowCounterName, number>>;
    const records = decodeFlowMapBatch(flowMap.drain(), flowMap.valueBufferSize, 0);
    return { retval: result.retval, records, delta, t0, t1 };
  }

  /**
   * The single record of a frame, its times checked against the window and then zeroed. Its
   * layer2OctetDeltaCount must be the frame's length (a test run keeps every tag in the frame) and
   * its flowEndReason end of flow (3) with FIN or RST, else idle (1, decoded without an eviction
   * time); both are checked here and left out of what it returns.
   */
  function single(frame: Uint8Array, program: Program = ingress): FlowRecord {
    const { retval, records, delta, t0, t1 } = run(frame, program);
    expect(retval).toBe(FLOW_PASS);
    expect(delta).toStrictEqual({ PACKETS: 1 });
    expect(records).toHaveLength(1);
    const { layer2OctetDeltaCount, flowEndReason, ...rec } = records[0]!;
    expect(layer2OctetDeltaCount).toBe(frame.length);
    expect(flowEndReason).toBe((rec.tcpControlBits & 0x05) !== 0 ? 3 : 1);
    // Offset 0: the times are the kernel's monotonic clock in ms, the clock hrtime reads, as of
    // the last timer tick (the coarse clock): at most 10 ms (HZ=100) before the packet.
    expect(rec.flowStartMilliseconds).toBeGreaterThanOrEqual(Math.floor(t0) - COARSE_CLOCK_TICK_MS);
    expect(rec.flowEndMilliseconds).toBe(rec.flowStartMilliseconds);
    expect(rec.flowEndMilliseconds).toBeLessThanOrEqual(t1);
    return { ...rec, flowStartMilliseconds: 0, flowEndMilliseconds: 0 };
  }

  describe('frames.pcap', () => {
    const pcapPath = join(testdata, 'frames.pcap');
    const spec = JSON.parse(readFileSync(join(testdata, 'frames.json'), 'utf8')) as {
      frames: { name: string; frame_len: number; expect: Expect }[];
    };
    const frames = existsSync(pcapPath) ? readPcap(pcapPath) : [];

    it('has one expectation per frame, each key known to this test', () => {
      expect(frames.length).toBe(spec.frames.length);
      for (const f of spec.frames)
        for (const k of Object.keys(f.expect))
          expect(IN_RECORD.has(k) || NOT_IN_RECORD.has(k), `${f.name}: ${k}`).toBe(true);
    });

    it.each(spec.frames.map((f, i) => [f.name, i] as const))('%s', (name, i) => {
      const { frame_len: frameLen, expect: e } = spec.frames[i]!;
      const frame = frames[i]!.data;
      expect(frame.length).toBe(frameLen);

      if (e.ip_version !== undefined) {
        expect(single(frame)).toStrictEqual(expectedRecord(e, frame, frameLen));
        return;
      }
      if (e.ethertype !== undefined) {
        // Not IP: a layer-2 flow of the frame's MACs (as the pcap holds them) and ethertype.
        const macAt = (o: number): string =>
          Array.from(frame.subarray(o, o + 6), (b) => b.toString(16).padStart(2, '0')).join(':');
        expect(single(frame)).toStrictEqual({
          ipVersion: 0,
          sourceTransportPort: 0,
          destinationTransportPort: 0,
          protocolIdentifier: 0,
          // Not IP: no IP octets (the frame counts in layer2OctetDeltaCount).
          octetDeltaCount: 0,
          packetDeltaCount: 1,
          flowStartMilliseconds: 0,
          flowEndMilliseconds: 0,
          tcpControlBits: 0,
          ipDiffServCodePoint: 0,
          ingressInterface: 1,
          flowDirection: 0,
          sourceMacAddress: macAt(6),
          destinationMacAddress: macAt(0),
          ethernetType: e.ethertype,
        });
        return;
      }
      if (frameLen < 14 + 20) {
        // The kernel refuses to build an IPv4 skb shorter than an IP header for a test run
        // (EINVAL) before any program sees it; the same cut header behind a VLAN tag, which the
        // kernel does not look into, reaches the program and must count as a parse failure.
        const before = counterValues();
        expect(() => ingress.testRun(frame)).toThrow(
          expect.objectContaining({ code: 'ETESTRUN', errno: 22 }),
        );
        expect(counterValues()).toStrictEqual(before);
        const tagged = new Uint8Array([
          ...frame.subarray(0, 12),
          0x81,
          0x00,
          0x00,
          0x64,
          ...frame.subarray(12),
        ]);
        const { retval, records, delta } = run(tagged);
        expect([retval, records, delta]).toStrictEqual([FLOW_PASS, [], { PACKETS: 1, PARSE_FAILED: 1 }]);
        return;
      }
      // Truncated: never read past the end, count it, no flow.
      const { retval, records, delta } = run(frame);
      expect([name, retval, records, delta]).toStrictEqual([
        name,
        FLOW_PASS,
        [],
        { PACKETS: 1, PARSE_FAILED: 1 },
      ]);
    });
  });

  describe('hand-built frames', () => {
    const A4 = { src: '10.1.2.3', dst: '10.4.5.6' };
    const A6 = { src: 'fd00::1:2', dst: 'fd00:0:0:1::9' };
    const base = {
      sourceTransportPort: 0,
      destinationTransportPort: 0,
      packetDeltaCount: 1,
      flowStartMilliseconds: 0,
      flowEndMilliseconds: 0,
      tcpControlBits: 0,
      ipDiffServCodePoint: 0,
      ingressInterface: 1,
      flowDirection: 0 as const,
      sourceMacAddress: '02:00:00:00:00:01',
      destinationMacAddress: '02:00:00:00:00:02',
    };
    const v4 = {
      ...base,
      ipVersion: 4 as const,
      sourceIPv4Address: A4.src,
      destinationIPv4Address: A4.dst,
      ethernetType: ETH_IPV4,
    };
    const v6 = {
      ...base,
      ipVersion: 6 as const,
      sourceIPv6Address: A6.src,
      destinationIPv6Address: A6.dst,
      ethernetType: ETH_IPV6,
    };

    it('802.1ad + 802.1Q (QinQ)', () => {
      const f = ethernet(
        {
          type: ETH_IPV4,
          vlans: [
            { tpid: 0x88a8, vid: 10 },
            { tpid: 0x8100, vid: 20 },
          ],
        },
        ipv4({ ...A4, proto: 17, tos: 0x20 }, udp(1234, 5678)),
      );
      expect(single(f)).toStrictEqual({
        ...v4,
        protocolIdentifier: 17,
        sourceTransportPort: 1234,
        destinationTransportPort: 5678,
        ipDiffServCodePoint: 8,
        octetDeltaCount: f.length - 14 - 8,
        dot1qVlanId: 10,
        dot1qCustomerVlanId: 20,
      });
    });

    it('a third VLAN tag is beyond what the program follows: counted as PARSE_LIMIT, no flow', () => {
      const f = ethernet(
        {
          type: ETH_IPV4,
          vlans: [
            { tpid: 0x88a8, vid: 1 },
            { tpid: 0x8100, vid: 2 },
            { tpid: 0x8100, vid: 3 },
          ],
        },
        ipv4({ ...A4, proto: 17 }, udp(1, 2)),
      );
      const { records, delta } = run(f);
      expect([records, delta]).toStrictEqual([[], { PACKETS: 1, PARSE_LIMIT: 1 }]);
    });

    it('frames that are not IP are layer-2 flows: MACs and ethertype, after the VLAN tags', () => {
      const l2 = {
        ...base,
        ipVersion: 0 as const,
        protocolIdentifier: 0,
      };
      const arp = ethernet({ type: ETH_ARP }, new Uint8Array(46));
      expect(single(arp)).toStrictEqual({ ...l2, ethernetType: ETH_ARP, octetDeltaCount: 0 });
      const local = ethernet(
        { type: 0x88b5, src: '02:00:00:00:0a:01', dst: 'ff:ff:ff:ff:ff:ff' },
        new Uint8Array(200),
      );
      expect(single(local)).toStrictEqual({
        ...l2,
        sourceMacAddress: '02:00:00:00:0a:01',
        destinationMacAddress: 'ff:ff:ff:ff:ff:ff',
        ethernetType: 0x88b5,
        octetDeltaCount: 0,
      });
      const tagged = ethernet({ type: ETH_ARP, vlans: [{ tpid: 0x8100, vid: 7 }] }, new Uint8Array(46));
      expect(single(tagged)).toStrictEqual({
        ...l2,
        ethernetType: ETH_ARP,
        octetDeltaCount: 0,
        dot1qVlanId: 7,
      });
      // Two frames of one kind and pair of MACs are one flow; another ethertype is another.
      flowMap.drain();
      ingress.testRun(arp, { repeat: 3 });
      ingress.testRun(local, { repeat: 2 });
      const records = decodeFlowMapBatch(flowMap.drain(), flowMap.valueBufferSize, 0);
      expect(
        records
          .map((r) => [
            r.ethernetType,
            r.sourceMacAddress,
            r.packetDeltaCount,
            r.octetDeltaCount,
            r.layer2OctetDeltaCount,
          ])
          .sort((a, b) => Number(a[0]) - Number(b[0])),
      ).toStrictEqual([
        [ETH_ARP, '02:00:00:00:00:01', 3, 0, 3 * arp.length],
        [0x88b5, '02:00:00:00:0a:01', 2, 0, 2 * local.length],
      ]);
    });

    it('IPv4 with 40 bytes of options and TCP flags', () => {
      const f = ethernet(
        { type: ETH_IPV4 },
        ipv4({ ...A4, proto: 6, options: new Array<number>(40).fill(1) }, tcp(80, 40000, 0x29)),
      );
      expect(single(f)).toStrictEqual({
        ...v4,
        protocolIdentifier: 6,
        sourceTransportPort: 80,
        destinationTransportPort: 40000,
        tcpControlBits: 0x29,
        octetDeltaCount: f.length - 14,
      });
    });

    it('first IPv4 fragment keeps its ports; IHL below 5 is malformed', () => {
      const first = ethernet({ type: ETH_IPV4 }, ipv4({ ...A4, proto: 17, moreFragments: true }, udp(7, 8)));
      expect(single(first)).toStrictEqual({
        ...v4,
        protocolIdentifier: 17,
        sourceTransportPort: 7,
        destinationTransportPort: 8,
        octetDeltaCount: first.length - 14,
      });
      const bad = ethernet({ type: ETH_IPV4 }, ipv4({ ...A4, proto: 17, ihl: 4 }, udp(7, 8)));
      const { records, delta } = run(bad);
      expect([records, delta]).toStrictEqual([[], { PACKETS: 1, PARSE_FAILED: 1 }]);
    });

    it('IPv6 hop-by-hop, routing and destination options before TCP, traffic class', () => {
      const f = ethernet(
        { type: ETH_IPV6 },
        ipv6(
          {
            ...A6,
            next: 6,
            trafficClass: 0xb8,
            ext: [
              { type: 0, body: [1, 4, 0, 0, 0, 0] },
              { type: 43, body: new Array<number>(14).fill(0) },
              { type: 60, body: [1, 4, 0, 0, 0, 0] },
            ],
          },
          tcp(22, 50022, 0x18),
        ),
      );
      expect(single(f)).toStrictEqual({
        ...v6,
        protocolIdentifier: 6,
        sourceTransportPort: 22,
        destinationTransportPort: 50022,
        tcpControlBits: 0x18,
        ipDiffServCodePoint: 46,
        octetDeltaCount: f.length - 14,
      });
    });

    it('IPv6: six extension headers are walked; a seventh is PARSE_LIMIT, not protocol 60', () => {
      const dstopts = { type: 60, body: [1, 4, 0, 0, 0, 0] };
      const six = ethernet(
        { type: ETH_IPV6 },
        ipv6({ ...A6, next: 17, ext: new Array(6).fill(dstopts) as (typeof dstopts)[] }, udp(546, 547)),
      );
      expect(single(six)).toStrictEqual({
        ...v6,
        protocolIdentifier: 17,
        sourceTransportPort: 546,
        destinationTransportPort: 547,
        octetDeltaCount: six.length - 14,
      });
      const seven = ethernet(
        { type: ETH_IPV6 },
        ipv6({ ...A6, next: 17, ext: new Array(7).fill(dstopts) as (typeof dstopts)[] }, udp(546, 547)),
      );
      const { records, delta } = run(seven);
      expect([records, delta]).toStrictEqual([[], { PACKETS: 1, PARSE_LIMIT: 1 }]);
      // A later fragment ends the walk on purpose: what follows its header is not looked for.
      const later = ethernet(
        { type: ETH_IPV6 },
        ipv6({ ...A6, next: 60, ext: [{ type: 44, body: fragmentBody(185, false) }] }, new Uint8Array(16)),
      );
      expect(single(later)).toStrictEqual({
        ...v6,
        protocolIdentifier: 60,
        octetDeltaCount: later.length - 14,
      });
    });

    it('IPv6 fragments: the first has ports, a later one has none', () => {
      const first = ethernet(
        { type: ETH_IPV6 },
        ipv6({ ...A6, next: 17, ext: [{ type: 44, body: fragmentBody(0, true) }] }, udp(53, 5353)),
      );
      expect(single(first)).toStrictEqual({
        ...v6,
        protocolIdentifier: 17,
        sourceTransportPort: 53,
        destinationTransportPort: 5353,
        octetDeltaCount: first.length - 14,
      });
      const later = ethernet(
        { type: ETH_IPV6 },
        ipv6({ ...A6, next: 17, ext: [{ type: 44, body: fragmentBody(185, false) }] }, udp(53, 5353)),
      );
      expect(single(later)).toStrictEqual({
        ...v6,
        protocolIdentifier: 17,
        octetDeltaCount: later.length - 14,
      });
    });

    it('ICMPv6 and an IPv6 extension header cut short', () => {
      const f = ethernet({ type: ETH_IPV6 }, ipv6({ ...A6, next: 58 }, icmp(135, 0)));
      expect(single(f)).toStrictEqual({
        ...v6,
        protocolIdentifier: 58,
        icmpTypeIPv6: 135,
        icmpCodeIPv6: 0,
        octetDeltaCount: f.length - 14,
      });
      const cut = ethernet({ type: ETH_IPV6 }, ipv6({ ...A6, next: 0 }, Uint8Array.of(17, 0, 0, 0)));
      const { records, delta } = run(cut);
      expect([records, delta]).toStrictEqual([[], { PACKETS: 1, PARSE_FAILED: 1 }]);
    });

    const outer4 = { src: '203.0.113.1', dst: '203.0.113.2' };
    const tunnelFields = {
      tunnelSourceIPAddress: outer4.src,
      tunnelDestinationIPAddress: outer4.dst,
      tunnelSourceTransportPort: 40001,
    };

    it('GENEVE carrying IPv4 and IPv6 directly (no inner Ethernet), one 4-byte option', () => {
      const inner4 = ipv4({ ...A4, proto: 1, tos: 0x04 }, icmp(0, 0));
      const f4 = ethernet(
        { type: ETH_IPV4 },
        ipv4(
          { ...outer4, proto: 17, tos: 0xfc },
          udp(40001, 6081, geneve(77, ETH_IPV4, [0xab, 0xcd, 0x01, 0x00], inner4)),
        ),
      );
      expect(single(f4)).toStrictEqual({
        ...v4,
        protocolIdentifier: 1,
        icmpTypeIPv4: 0,
        icmpCodeIPv4: 0,
        ipDiffServCodePoint: 1,
        octetDeltaCount: inner4.length,
        encapsulationType: 'geneve',
        virtualNetworkIdentifier: 77,
        ...tunnelFields,
        tunnelDestinationTransportPort: 6081,
        flowCookie: 'abcd010000000000',
      });
      const inner6 = ipv6({ ...A6, next: 17 }, udp(9, 10));
      const f6 = ethernet(
        { type: ETH_IPV4 },
        ipv4({ ...outer4, proto: 17 }, udp(40001, 6081, geneve(0xffffff, ETH_IPV6, [], inner6))),
      );
      expect(single(f6)).toStrictEqual({
        ...v6,
        protocolIdentifier: 17,
        sourceTransportPort: 9,
        destinationTransportPort: 10,
        octetDeltaCount: inner6.length,
        encapsulationType: 'geneve',
        virtualNetworkIdentifier: 0xffffff,
        ...tunnelFields,
        tunnelDestinationTransportPort: 6081,
      });
    });

    it('VXLAN over IPv6 with an inner VLAN tag', () => {
      const inner = ethernet(
        {
          type: ETH_IPV4,
          src: '0a:00:00:00:00:01',
          dst: '0a:00:00:00:00:02',
          vlans: [{ tpid: 0x8100, vid: 5 }],
        },
        ipv4({ ...A4, proto: 17 }, udp(1000, 2000)),
      );
      const f = ethernet(
        { type: ETH_IPV6 },
        ipv6({ src: '2001:db8::a', dst: '2001:db8::b', next: 17 }, udp(40001, 4789, vxlan(1, inner))),
      );
      expect(single(f)).toStrictEqual({
        ...v4,
        protocolIdentifier: 17,
        sourceTransportPort: 1000,
        destinationTransportPort: 2000,
        octetDeltaCount: inner.length - 14 - 4,
        encapsulationType: 'vxlan',
        virtualNetworkIdentifier: 1,
        tunnelSourceIPAddress: '2001:db8::a',
        tunnelDestinationIPAddress: '2001:db8::b',
        tunnelSourceTransportPort: 40001,
        tunnelDestinationTransportPort: 4789,
      });
    });

    it('UDP to 4789 without the VXLAN I flag, and to 6081 with another GENEVE protocol, are plain UDP', () => {
      const noFlag = ethernet(
        { type: ETH_IPV4 },
        ipv4({ ...A4, proto: 17 }, udp(5, 4789, vxlan(9, new Uint8Array(40), 0))),
      );
      expect(single(noFlag)).toStrictEqual({
        ...v4,
        protocolIdentifier: 17,
        sourceTransportPort: 5,
        destinationTransportPort: 4789,
        octetDeltaCount: noFlag.length - 14,
      });
      const mpls = ethernet(
        { type: ETH_IPV4 },
        ipv4({ ...A4, proto: 17 }, udp(5, 6081, geneve(9, 0x8847, [], new Uint8Array(40)))),
      );
      expect(single(mpls)).toStrictEqual({
        ...v4,
        protocolIdentifier: 17,
        sourceTransportPort: 5,
        destinationTransportPort: 6081,
        octetDeltaCount: mpls.length - 14,
      });
    });

    it('ARP inside VXLAN or GENEVE counts on the outer UDP flow; a cut inner header is a parse failure', () => {
      const arp = ethernet(
        { type: ETH_IPV4 },
        ipv4(
          { ...outer4, proto: 17, tos: 0x10 },
          udp(1, 4789, vxlan(3, ethernet({ type: ETH_ARP }, new Uint8Array(28)))),
        ),
      );
      const outerFlow = {
        ...v4,
        sourceIPv4Address: outer4.src,
        destinationIPv4Address: outer4.dst,
        protocolIdentifier: 17,
        sourceTransportPort: 1,
      };
      expect(single(arp)).toStrictEqual({
        ...outerFlow,
        destinationTransportPort: 4789,
        ipDiffServCodePoint: 4,
        octetDeltaCount: arp.length - 14,
      });
      const geneveArp = ethernet(
        { type: ETH_IPV4 },
        ipv4(
          { ...outer4, proto: 17 },
          udp(
            1,
            6081,
            geneve(4, 0x6558, [1, 2, 3, 4, 5, 6, 7, 8], ethernet({ type: 0x88b5 }, new Uint8Array(50))),
          ),
        ),
      );
      expect(single(geneveArp)).toStrictEqual({
        ...outerFlow,
        destinationTransportPort: 6081,
        octetDeltaCount: geneveArp.length - 14,
      });
      const inner = ethernet({ type: ETH_IPV4 }, ipv4({ ...A4, proto: 6 }, tcp(1, 2, 2)));
      const cut = ethernet(
        { type: ETH_IPV4 },
        ipv4({ ...outer4, proto: 17 }, udp(1, 4789, vxlan(3, inner.subarray(0, inner.length - 10)))),
      );
      const { records, delta } = run(cut);
      expect([records, delta]).toStrictEqual([[], { PACKETS: 1, PARSE_FAILED: 1 }]);
      const geneveCut = ethernet(
        { type: ETH_IPV4 },
        ipv4({ ...outer4, proto: 17 }, udp(1, 6081, Uint8Array.of(2, 0, 0x65, 0x58, 0, 0, 1, 0, 1, 2))),
      );
      expect(run(geneveCut).delta).toStrictEqual({ PACKETS: 1, PARSE_FAILED: 1 });
    });

    it('flow_egress records direction egress', () => {
      const f = ethernet({ type: ETH_IPV4 }, ipv4({ ...A4, proto: 17 }, udp(3, 4)));
      // Egress: the interface the frame was sent on is egressInterface; no ingressInterface.
      const { ingressInterface: _received, ...sent } = v4;
      expect(single(f, egress)).toStrictEqual({
        ...sent,
        protocolIdentifier: 17,
        sourceTransportPort: 3,
        destinationTransportPort: 4,
        egressInterface: 1,
        flowDirection: 1,
        octetDeltaCount: f.length - 14,
      });
    });

    it('counts a repeated frame in one flow: packets, bytes and OR of TCP flags', () => {
      flowMap.drain();
      const syn = ethernet({ type: ETH_IPV4 }, ipv4({ ...A4, proto: 6 }, tcp(1, 2, 0x02)));
      const fin = ethernet({ type: ETH_IPV4 }, ipv4({ ...A4, proto: 6 }, tcp(1, 2, 0x11)));
      ingress.testRun(syn, { repeat: 1000 });
      ingress.testRun(fin, { repeat: 5 });
      const records = decodeFlowMapBatch(flowMap.drain(), flowMap.valueBufferSize, 0);
      expect(
        records.map((r) => [
          r.packetDeltaCount,
          r.octetDeltaCount,
          r.layer2OctetDeltaCount,
          r.tcpControlBits,
        ]),
      ).toStrictEqual([[1005, 1005 * (syn.length - 14), 1005 * syn.length, 0x13]]);
      expect(records[0]!.flowEndMilliseconds).toBeGreaterThanOrEqual(records[0]!.flowStartMilliseconds);
    });
  });
});
