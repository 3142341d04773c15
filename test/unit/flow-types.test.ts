import fc from 'fast-check';
import { endianness } from 'node:os';
import { describe, expect, it } from 'vitest';
import {
  FLOW_EVENT,
  FLOW_EVENT_MAP_FULL,
  FLOW_KEY,
  FLOW_TUNNEL_GENEVE,
  FLOW_TUNNEL_NONE,
  FLOW_TUNNEL_VXLAN,
  FLOW_VALUE,
  FLOW_VALUE_STRIDE,
  type FlowEviction,
  decodeFlowEvent,
  decodeFlowMapBatch,
  encodeFlowConfig,
  flowEventReason,
  formatIPv4,
  formatIPv6,
  formatIp16,
  formatMac,
  sumPerCpuCounter,
} from '../../src/datapath/flow/types.js';
import {
  decodeKey,
  encodeKey,
  encodeValue,
  type FlowKeyFields,
  type FlowValueFields,
} from '../fixtures/flow-map.js';
import { ipv4ToUint32 } from '../../src/net/address.js';
import { readIPv4Words, type FlowRecord } from '../../src/records/flow.js';

const tcpKey: FlowKeyFields = {
  ipVersion: 4,
  srcIp: '192.0.2.1',
  dstIp: '198.51.100.2',
  ifIndex: 7,
  vni: 0,
  netns: 0,
  srcPort: 50000,
  dstPort: 443,
  ethType: 0x0800,
  protocol: 6,
  direction: 0,
  icmpType: 0,
  icmpCode: 0,
  tunnelType: FLOW_TUNNEL_NONE,
};

const emptyValue: FlowValueFields = {
  packets: 0,
  bytes: 0,
  firstSeenNs: 0,
  lastSeenNs: 0,
  cookie: '0000000000000000',
  outerSrcIp: '',
  outerDstIp: '',
  outerSrcPort: 0,
  outerDstPort: 0,
  tcpFlags: 0,
  dscp: 0,
  srcMac: '00:00:00:00:00:00',
  dstMac: '00:00:00:00:00:00',
  sampling: 0,
};

/** A drain result with one entry per element: a key and its per-CPU slots (missing CPUs zero). */
function batch(
  entries: { key: FlowKeyFields; cpus: (Partial<FlowValueFields> | undefined)[] }[],
  cpus: number,
) {
  const valueBufferSize = FLOW_VALUE_STRIDE * cpus;
  const keys = new Uint8Array(entries.length * FLOW_KEY.size);
  const values = new Uint8Array(entries.length * valueBufferSize);
  entries.forEach((e, i) => {
    keys.set(encodeKey(e.key), i * FLOW_KEY.size);
    e.cpus.forEach((v, c) => {
      if (v) values.set(encodeValue({ ...emptyValue, ...v }), i * valueBufferSize + c * FLOW_VALUE_STRIDE);
    });
  });
  return { result: { count: entries.length, keys, values }, valueBufferSize };
}

function bytes16(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!.map((b) => parseInt(b, 16)));
}

describe('formatIPv6', () => {
  // RFC 5952 section 4 and its examples.
  it.each([
    ['20010db8000000000000000000000001', '2001:db8::1'],
    ['00000000000000000000000000000000', '::'],
    ['00000000000000000000000000000001', '::1'],
    ['20010db8000000000001000000000001', '2001:db8::1:0:0:1'],
    ['20010db8000000010001000100010001', '2001:db8:0:1:1:1:1:1'],
    ['20010000000000010000000000000001', '2001:0:0:1::1'],
    ['20010db8000000000001000000000000', '2001:db8:0:0:1::'],
    ['20010db8aaaabbbbccccddddeeeeffff', '2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff'],
    ['fe800000000000000000000000000000', 'fe80::'],
    ['00000000000000000000ffffc0000201', '::ffff:192.0.2.1'],
  ])('formats %s as %s', (hex, text) => {
    expect(formatIPv6(bytes16(hex), 0)).toBe(text);
  });

  it('agrees with the WHATWG URL serializer (same compression rules) for non-mapped addresses', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.array(fc.nat(7), { maxLength: 6 }),
        (raw, zeroGroups) => {
          // Zero some groups so that runs of zeros, the interesting case, are common.
          for (const g of zeroGroups) raw.fill(0, 2 * g, 2 * g + 2);
          const mapped = raw.slice(0, 10).every((b) => b === 0) && raw[10] === 0xff && raw[11] === 0xff;
          fc.pre(!mapped);
          const hex = Array.from(raw, (b) => b.toString(16).padStart(2, '0')).join('');
          const groups = hex.match(/..../g)!.join(':');
          const url = new URL(`http://[${groups}]/`).hostname.slice(1, -1);
          expect(formatIPv6(raw, 0)).toBe(url);
        },
      ),
    );
  });
});

describe('formatMac', () => {
  it('is lower-case colon form', () => {
    expect(formatMac(Uint8Array.of(9, 0xff, 0x02, 0xab, 0x00, 0x0c, 0x9f), 1)).toBe('ff:02:ab:00:0c:9f');
  });
});

describe('encodeKey / decodeKey', () => {
  const key = fc.record({
    ipVersion: fc.constantFrom(4 as const, 6 as const),
    v4: fc.tuple(fc.ipV4(), fc.ipV4()),
    v6: fc.tuple(
      fc.uint8Array({ minLength: 16, maxLength: 16 }),
      fc.uint8Array({ minLength: 16, maxLength: 16 }),
    ),
    ifIndex: fc.nat({ max: 0xffffffff }),
    vni: fc.nat({ max: 0xffffff }),
    netns: fc.integer({ min: 0, max: 0xffffffff }),
    srcPort: fc.nat({ max: 0xffff }),
    dstPort: fc.nat({ max: 0xffff }),
    protocol: fc.nat({ max: 255 }),
    direction: fc.constantFrom(0, 1),
    icmpType: fc.nat({ max: 255 }),
    icmpCode: fc.nat({ max: 255 }),
    tunnelType: fc.constantFrom(0, 1, 2),
    vlanId: fc.nat({ max: 4095 }),
    innerVlanId: fc.nat({ max: 4095 }),
  });

  it('round-trips every field and leaves no byte unset', () => {
    fc.assert(
      fc.property(key, (k) => {
        const fields: FlowKeyFields = {
          ipVersion: k.ipVersion,
          srcIp: k.ipVersion === 4 ? k.v4[0] : formatIPv6(k.v6[0], 0),
          dstIp: k.ipVersion === 4 ? k.v4[1] : formatIPv6(k.v6[1], 0),
          ifIndex: k.ifIndex,
          vni: k.vni,
          netns: k.netns,
          srcPort: k.srcPort,
          dstPort: k.dstPort,
          ethType: k.ipVersion === 4 ? 0x0800 : 0x86dd,
          protocol: k.protocol,
          direction: k.direction,
          icmpType: k.icmpType,
          icmpCode: k.icmpCode,
          tunnelType: k.tunnelType,
          vlanId: k.vlanId,
          innerVlanId: k.innerVlanId,
        };
        const encoded = encodeKey(fields);
        expect(encoded.byteLength).toBe(FLOW_KEY.size);
        expect(decodeKey(encoded)).toEqual(fields);
        if (k.ipVersion === 6) {
          expect(encoded.subarray(0, 16)).toEqual(k.v6[0]);
          expect(encoded.subarray(16, 32)).toEqual(k.v6[1]);
        }
      }),
    );
  });

  it('stores IPv4 as IPv4-mapped and numbers in host order', () => {
    const encoded = encodeKey(tcpKey);
    expect(Array.from(encoded.subarray(0, 16))).toEqual([
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1,
    ]);
    const view = new DataView(encoded.buffer);
    expect(view.getUint16(FLOW_KEY.fields.src_port.offset, true)).toBe(50000);
    expect(view.getUint32(FLOW_KEY.fields.if_index.offset, true)).toBe(7);
  });

  it('holds the MACs of a layer-2 flow in the first 6 bytes of the address fields', () => {
    const l2: FlowKeyFields = {
      ...tcpKey,
      ipVersion: 0,
      srcIp: '02:00:00:00:0a:01',
      dstIp: 'ff:ff:ff:ff:ff:ff',
      srcPort: 0,
      dstPort: 0,
      ethType: 0x0806,
      protocol: 0,
    };
    const encoded = encodeKey(l2);
    expect(Array.from(encoded.subarray(0, 32))).toEqual([
      ...[2, 0, 0, 0, 0x0a, 1, ...new Array<number>(10).fill(0)],
      ...[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, ...new Array<number>(10).fill(0)],
    ]);
    expect(decodeKey(encoded)).toEqual({ ...l2, vlanId: 0, innerVlanId: 0 });
  });

  it('parses IPv6 text with an embedded IPv4 tail', () => {
    const encoded = encodeKey({ ...tcpKey, ipVersion: 6, srcIp: '64:ff9b::192.0.2.1', dstIp: '::1.2.3.4' });
    expect(decodeKey(encoded).srcIp).toBe('64:ff9b::c000:201');
    expect(decodeKey(encoded).dstIp).toBe('::102:304');
  });

  it('rejects text that is not an address', () => {
    expect(() => encodeKey({ ...tcpKey, srcIp: '192.0.2.256' })).toThrow(
      "encode flow key: '192.0.2.256' is not an IPv4 or IPv6 address",
    );
    expect(() => encodeKey({ ...tcpKey, srcIp: '1::2::3' })).toThrow(
      "encode flow key: '1::2::3' is not an IPv4 or IPv6 address",
    );
  });
});

describe('decodeFlowMapBatch', () => {
  it('merges per-CPU values: sums, min first seen, max last seen, OR of flags, the rest from the latest CPU', () => {
    const { result, valueBufferSize } = batch(
      [
        {
          key: tcpKey,
          cpus: [
            {
              packets: 3,
              bytes: 300,
              ipBytes: 258,
              firstSeenNs: 5_000_000,
              lastSeenNs: 9_000_000,
              tcpFlags: 0x02,
              dscp: 10,
              srcMac: '02:00:00:00:00:01',
              dstMac: '02:00:00:00:00:02',
            },
            undefined,
            {
              packets: 2,
              bytes: 2 ** 40,
              ipBytes: 2 ** 40 - 28,
              firstSeenNs: 7_000_000,
              lastSeenNs: 12_500_000,
              tcpFlags: 0x10,
              dscp: 46,
              srcMac: '02:00:00:00:00:0a',
              dstMac: '02:00:00:00:00:0b',
            },
            {
              packets: 1,
              bytes: 60,
              ipBytes: 40,
              firstSeenNs: 4_200_000,
              lastSeenNs: 4_200_000,
              tcpFlags: 0x01,
              dscp: 1,
            },
          ],
        },
      ],
      4,
    );
    const expected: FlowRecord = {
      ipVersion: 4,
      sourceIPv4Address: '192.0.2.1',
      destinationIPv4Address: '198.51.100.2',
      sourceTransportPort: 50000,
      destinationTransportPort: 443,
      protocolIdentifier: 6,
      octetDeltaCount: 258 + 2 ** 40 - 28 + 40,
      layer2OctetDeltaCount: 300 + 2 ** 40 + 60,
      packetDeltaCount: 6,
      flowStartMilliseconds: 1_700_000_000_004,
      flowEndMilliseconds: 1_700_000_000_012,
      tcpControlBits: 0x13,
      ipDiffServCodePoint: 46,
      ingressInterface: 7,
      flowDirection: 0,
      sourceMacAddress: '02:00:00:00:00:0a',
      destinationMacAddress: '02:00:00:00:00:0b',
      ethernetType: 0x0800,
      // A FIN (0x01) was seen.
      flowEndReason: 3,
    };
    const records = decodeFlowMapBatch(result, valueBufferSize, 1_700_000_000_000);
    expect(records).toStrictEqual([expected]);
    // The addresses also ride as numbers, so account and dedupe need not parse the text.
    const words = { src: 0, dst: 0 };
    expect(readIPv4Words(records[0]!, words)).toBe(true);
    expect({ src: words.src >>> 0, dst: words.dst >>> 0 }).toEqual({
      src: ipv4ToUint32('192.0.2.1'),
      dst: ipv4ToUint32('198.51.100.2'),
    });
  });

  it('decodes IPv6, ICMP, egress, tunnels and sampling', () => {
    const icmp6: FlowKeyFields = {
      ...tcpKey,
      ipVersion: 6,
      srcIp: '2001:db8::1',
      dstIp: '2001:db8::2',
      srcPort: 0,
      dstPort: 0,
      ethType: 0x86dd,
      protocol: 58,
      direction: 1,
      icmpType: 128,
      icmpCode: 0,
      vlanId: 5,
      innerVlanId: 6,
    };
    const icmp4: FlowKeyFields = {
      ...tcpKey,
      srcPort: 0,
      dstPort: 0,
      protocol: 1,
      icmpType: 3,
      icmpCode: 4,
      vlanId: 100,
    };
    const vxlan: FlowKeyFields = { ...tcpKey, tunnelType: FLOW_TUNNEL_VXLAN, vni: 4242 };
    const geneve: FlowKeyFields = { ...tcpKey, tunnelType: FLOW_TUNNEL_GENEVE, vni: 0xabcdef };
    const common = { packets: 1, bytes: 100, ipBytes: 86, firstSeenNs: 1_000_000, lastSeenNs: 1_000_000 };
    const tunnel = {
      outerSrcIp: '203.0.113.10',
      outerDstIp: '2001:db8::20',
      outerSrcPort: 54321,
    };
    const { result, valueBufferSize } = batch(
      [
        { key: icmp6, cpus: [{ ...common, sampling: 8 }] },
        { key: icmp4, cpus: [undefined, { ...common, sampling: 1 }] },
        { key: vxlan, cpus: [{ ...common, ...tunnel, outerDstPort: 4789, cookie: '0102030405060708' }] },
        { key: geneve, cpus: [{ ...common, ...tunnel, outerDstPort: 6081, cookie: '0108010201020304' }] },
        { key: { ...geneve, vni: 1 }, cpus: [{ ...common, ...tunnel, outerDstPort: 6081 }] },
      ],
      2,
    );
    const base = {
      sourceTransportPort: 0,
      destinationTransportPort: 0,
      octetDeltaCount: 86,
      layer2OctetDeltaCount: 100,
      packetDeltaCount: 1,
      flowStartMilliseconds: 1,
      flowEndMilliseconds: 1,
      tcpControlBits: 0,
      ipDiffServCodePoint: 0,
      sourceMacAddress: '00:00:00:00:00:00',
      destinationMacAddress: '00:00:00:00:00:00',
      flowEndReason: 1,
    };
    const outer = {
      ...base,
      ipVersion: 4 as const,
      sourceIPv4Address: '192.0.2.1',
      destinationIPv4Address: '198.51.100.2',
      sourceTransportPort: 50000,
      destinationTransportPort: 443,
      protocolIdentifier: 6,
      ingressInterface: 7,
      flowDirection: 0 as const,
      ethernetType: 0x0800,
      tunnelSourceIPAddress: '203.0.113.10',
      tunnelDestinationIPAddress: '2001:db8::20',
      tunnelSourceTransportPort: 54321,
    };
    expect(decodeFlowMapBatch(result, valueBufferSize, 0)).toStrictEqual([
      {
        ...base,
        ipVersion: 6,
        sourceIPv6Address: '2001:db8::1',
        destinationIPv6Address: '2001:db8::2',
        protocolIdentifier: 58,
        icmpTypeIPv6: 128,
        icmpCodeIPv6: 0,
        // Egress: the interface it was sent on.
        egressInterface: 7,
        flowDirection: 1,
        ethernetType: 0x86dd,
        dot1qVlanId: 5,
        dot1qCustomerVlanId: 6,
        samplingPacketInterval: 1,
        samplingPacketSpace: 7,
      },
      {
        ...base,
        ipVersion: 4,
        sourceIPv4Address: '192.0.2.1',
        destinationIPv4Address: '198.51.100.2',
        protocolIdentifier: 1,
        icmpTypeIPv4: 3,
        icmpCodeIPv4: 4,
        ingressInterface: 7,
        flowDirection: 0,
        ethernetType: 0x0800,
        dot1qVlanId: 100,
      },
      // A cookie only means something for GENEVE.
      {
        ...outer,
        encapsulationType: 'vxlan',
        virtualNetworkIdentifier: 4242,
        tunnelDestinationTransportPort: 4789,
      },
      {
        ...outer,
        encapsulationType: 'geneve',
        virtualNetworkIdentifier: 0xabcdef,
        tunnelDestinationTransportPort: 6081,
        flowCookie: '0108010201020304',
      },
      {
        ...outer,
        encapsulationType: 'geneve',
        virtualNetworkIdentifier: 1,
        tunnelDestinationTransportPort: 6081,
      },
    ] satisfies FlowRecord[]);
  });

  it('decodes a layer-2 flow: no addresses, its MACs and ethertype', () => {
    const arp: FlowKeyFields = {
      ...tcpKey,
      ipVersion: 0,
      srcIp: '02:00:00:00:0a:01',
      dstIp: 'ff:ff:ff:ff:ff:ff',
      srcPort: 0,
      dstPort: 0,
      ethType: 0x0806,
      protocol: 0,
    };
    const macs = { srcMac: '02:00:00:00:0a:01', dstMac: 'ff:ff:ff:ff:ff:ff' };
    const { result, valueBufferSize } = batch(
      [
        {
          key: arp,
          cpus: [
            { packets: 2, bytes: 120, firstSeenNs: 1_000_000, lastSeenNs: 2_000_000, ...macs },
            { packets: 1, bytes: 60, firstSeenNs: 3_000_000, lastSeenNs: 3_000_000, ...macs },
          ],
        },
      ],
      2,
    );
    expect(decodeFlowMapBatch(result, valueBufferSize, 0)).toStrictEqual([
      {
        ipVersion: 0,
        sourceTransportPort: 0,
        destinationTransportPort: 0,
        protocolIdentifier: 0,
        // A layer-2 flow has no IP octets.
        octetDeltaCount: 0,
        layer2OctetDeltaCount: 180,
        packetDeltaCount: 3,
        flowStartMilliseconds: 1,
        flowEndMilliseconds: 3,
        tcpControlBits: 0,
        ipDiffServCodePoint: 0,
        ingressInterface: 7,
        flowDirection: 0,
        sourceMacAddress: '02:00:00:00:0a:01',
        destinationMacAddress: 'ff:ff:ff:ff:ff:ff',
        ethernetType: 0x0806,
        flowEndReason: 1,
      },
    ]);
  });

  it('skips entries that no CPU counted', () => {
    const { result, valueBufferSize } = batch(
      [
        { key: tcpKey, cpus: [undefined, undefined] },
        { key: { ...tcpKey, srcPort: 1 }, cpus: [undefined, { packets: 1, bytes: 1 }] },
      ],
      2,
    );
    expect(decodeFlowMapBatch(result, valueBufferSize, 0).map((r) => r.sourceTransportPort)).toEqual([1]);
  });

  it('reads a drain result that sits inside a larger buffer', () => {
    const { result, valueBufferSize } = batch(
      [{ key: tcpKey, cpus: [{ packets: 4, bytes: 96, ipBytes: 40 }] }],
      1,
    );
    const keys = new Uint8Array(result.keys.byteLength + 3);
    keys.set(result.keys, 3);
    const values = new Uint8Array(result.values.byteLength + 8);
    values.set(result.values, 8);
    const records = decodeFlowMapBatch(
      { count: 1, keys: keys.subarray(3), values: values.subarray(8) },
      valueBufferSize,
      0,
    );
    expect(records.map((r) => [r.packetDeltaCount, r.octetDeltaCount])).toEqual([[4, 40]]);
  });

  it('sets flowEndReason: end of flow on FIN or RST, forced at shutdown, else idle or active by the last packet', () => {
    const at = (srcPort: number, lastSeenNs: number, tcpFlags = 0) => ({
      key: { ...tcpKey, srcPort },
      cpus: [{ packets: 1, bytes: 60, ipBytes: 46, firstSeenNs: 1_000_000, lastSeenNs, tcpFlags }],
    });
    const { result, valueBufferSize } = batch(
      [
        at(1, 2_000_000), // 8 ms before the eviction: idle
        at(2, 6_000_000), // exactly the idle time before it: idle
        at(3, 6_000_001), // younger: active
        at(4, 9_000_000, 0x01), // FIN
        at(5, 9_000_000, 0x04), // RST
        at(6, 9_000_000, 0x12), // SYN ACK only: active
      ],
      1,
    );
    const reasons = (eviction: FlowEviction) =>
      decodeFlowMapBatch(result, valueBufferSize, 0, eviction).map((r) => [
        r.sourceTransportPort,
        r.flowEndReason,
      ]);
    expect(reasons({ nowNs: 10_000_000, idleNs: 4_000_000, forced: false })).toEqual([
      [1, 1],
      [2, 1],
      [3, 2],
      [4, 3],
      [5, 3],
      [6, 2],
    ]);
    expect(reasons({ nowNs: 10_000_000, idleNs: 4_000_000, forced: true })).toEqual([
      [1, 4],
      [2, 4],
      [3, 4],
      [4, 3],
      [5, 3],
      [6, 4],
    ]);
  });

  it('rejects a value buffer size that does not fit struct flow_value', () => {
    const { result } = batch([{ key: tcpKey, cpus: [{ packets: 1 }] }], 1);
    expect(() => decodeFlowMapBatch(result, 100, 0)).toThrow(
      expect.objectContaining({
        code: 'EOBJLAYOUT',
        message:
          "decode flow_map: value buffer of 100 bytes is not a multiple of struct flow_value (128); rebuild bpf/flow.o with 'bash bpf/build.sh'",
      }),
    );
  });
});

describe('decodeFlowEvent', () => {
  function event(key: FlowKeyFields, value: FlowValueFields, reason: number, at: number): DataView {
    const buf = new Uint8Array(at + FLOW_EVENT.size + 8);
    buf.set(encodeKey(key), at + FLOW_EVENT.fields.key.offset);
    new DataView(buf.buffer).setUint32(at + FLOW_EVENT.fields.reason.offset, reason, true);
    buf.set(encodeValue(value), at + FLOW_EVENT.fields.value.offset);
    return new DataView(buf.buffer);
  }

  it('decodes a single-packet flow at any offset, with flowEndReason lack of resources', () => {
    const view = event(
      tcpKey,
      {
        ...emptyValue,
        packets: 1,
        bytes: 58,
        ipBytes: 40,
        firstSeenNs: 2_000_000,
        lastSeenNs: 2_000_000,
        tcpFlags: 2,
      },
      FLOW_EVENT_MAP_FULL,
      16,
    );
    expect(flowEventReason(view, 16)).toBe(FLOW_EVENT_MAP_FULL);
    expect(decodeFlowEvent(view, 16, FLOW_EVENT.size, 10)).toStrictEqual({
      ipVersion: 4,
      sourceIPv4Address: '192.0.2.1',
      destinationIPv4Address: '198.51.100.2',
      sourceTransportPort: 50000,
      destinationTransportPort: 443,
      protocolIdentifier: 6,
      octetDeltaCount: 40,
      layer2OctetDeltaCount: 58,
      packetDeltaCount: 1,
      flowStartMilliseconds: 12,
      flowEndMilliseconds: 12,
      tcpControlBits: 2,
      ipDiffServCodePoint: 0,
      ingressInterface: 7,
      flowDirection: 0,
      sourceMacAddress: '00:00:00:00:00:00',
      destinationMacAddress: '00:00:00:00:00:00',
      ethernetType: 0x0800,
      flowEndReason: 5,
    } satisfies FlowRecord);
  });

  it('rejects a record shorter than struct flow_event', () => {
    const view = event(tcpKey, emptyValue, 1, 0);
    expect(() => decodeFlowEvent(view, 0, 160, 0)).toThrow(
      "decode flow_events: record of 160 bytes is shorter than struct flow_event (192); rebuild bpf/flow.o with 'bash bpf/build.sh'",
    );
  });
});

describe('counters and config', () => {
  it('sums a per-CPU counter', () => {
    const value = new Uint8Array(8 * 3);
    const view = new DataView(value.buffer);
    view.setBigUint64(0, 5n, true);
    view.setBigUint64(16, 2n ** 33n, true);
    expect(sumPerCpuCounter(value)).toBe(5 + 2 ** 33);
  });

  it('encodes flow_config', () => {
    expect(Array.from(encodeFlowConfig({ sampling: 258 }))).toEqual([2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(encodeFlowConfig({ sampling: 0, features: 3, dnsPort: 5353 }))).toEqual([
      0, 0, 0, 0, 3, 0, 0, 0, 0xe9, 0x14, 0, 0,
    ]);
  });
});

/*
 * Property tests of the decoders against a plain reading of bpf/flow.h written here: random flows
 * (a model), written into key and value bytes at the header's offsets, decoded, and compared with
 * what the model says each record must be, field by field and in serialised key order. Address
 * text is checked against the WHATWG URL serializer (RFC 5952 compression) with IPv4-mapped
 * addresses in the mixed notation of RFC 5952 section 5.
 */
describe('decoders against a plain reading of the flow structs', () => {
  const host = endianness() === 'LE';
  const KF = FLOW_KEY.fields;
  const VF = FLOW_VALUE.fields;

  /** A flow key with its addresses as bytes. */
  interface KeyModel extends Omit<FlowKeyFields, 'ipVersion' | 'srcIp' | 'dstIp' | 'direction' | 'netns'> {
    ipVersion: 4 | 6;
    src: Uint8Array;
    dst: Uint8Array;
    direction: 0 | 1;
    vlanId: number;
    innerVlanId: number;
  }

  interface SlotModel {
    packets: number;
    bytes: number;
    ipBytes: number;
    firstSeenNs: number;
    lastSeenNs: number;
    cookie: Uint8Array;
    outerSrc: Uint8Array;
    outerDst: Uint8Array;
    outerSrcPort: number;
    outerDstPort: number;
    tcpFlags: number;
    dscp: number;
    srcMac: Uint8Array;
    dstMac: Uint8Array;
    sampling: number;
  }

  const bytesOf = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });
  const u16 = fc.integer({ min: 0, max: 0xffff });
  const u32 = fc.integer({ min: 0, max: 0xffffffff });
  // u64 counters and times below 2^53, the range a number holds exactly; both words in play.
  const u53 = fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.maxSafeNat());
  // Small pools beside random values, so a batch repeats addresses and MACs as real drains do.
  const v4Pool = [Uint8Array.of(10, 0, 0, 1), Uint8Array.of(192, 168, 1, 254), Uint8Array.of(0, 0, 0, 0)];
  const v4 = fc.oneof(fc.constantFrom(...v4Pool), bytesOf(4));
  const v6 = fc.oneof(
    fc.constantFrom(
      Uint8Array.of(0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1),
      Uint8Array.of(0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
      new Uint8Array(16),
    ),
    // Zeroed groups make runs of zeros, where the compression rules differ, common.
    fc.tuple(bytesOf(16), fc.array(fc.nat(7), { maxLength: 7 })).map(([raw, zero]) => {
      for (const g of zero) raw.fill(0, 2 * g, 2 * g + 2);
      return raw;
    }),
  );
  const mapped = (a: Uint8Array): Uint8Array => Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, ...a);
  const ip16 = fc.oneof(v4.map(mapped), v6);
  const macPool = [Uint8Array.of(2, 0, 0, 0, 0, 1), Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff)];
  const mac = fc.oneof(fc.constantFrom(...macPool), bytesOf(6));

  const keyModel: fc.Arbitrary<KeyModel> = fc
    .record({
      ipVersion: fc.constantFrom(4 as const, 6 as const),
      src: v4,
      dst: v4,
      ifIndex: u32,
      vni: u32,
      srcPort: u16,
      dstPort: u16,
      ethType: u16,
      protocol: fc.oneof(fc.constantFrom(1, 6, 17, 58), fc.integer({ min: 0, max: 255 })),
      direction: fc.constantFrom(0 as const, 1 as const),
      icmpType: fc.integer({ min: 0, max: 255 }),
      icmpCode: fc.integer({ min: 0, max: 255 }),
      tunnelType: fc.constantFrom(FLOW_TUNNEL_NONE, FLOW_TUNNEL_VXLAN, FLOW_TUNNEL_GENEVE),
      vlanId: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 4095 })),
      innerVlanId: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 4095 })),
    })
    .chain((k) =>
      k.ipVersion === 4 ? fc.constant(k) : fc.tuple(v6, v6).map(([src, dst]) => ({ ...k, src, dst })),
    );

  const slotModel: fc.Arbitrary<SlotModel> = fc.record({
    // A CPU that never counted the flow has an all-zero slot, whatever else the model says.
    packets: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 0xffffffff }), u53),
    bytes: u53,
    ipBytes: u53,
    firstSeenNs: u53,
    // Often equal on two CPUs, where the merge must take the rest from the lowest of them.
    lastSeenNs: fc.oneof(u53, fc.constantFrom(5_000_000, 9_000_000)),
    cookie: fc.oneof(fc.constant(new Uint8Array(8)), bytesOf(8)),
    outerSrc: ip16,
    outerDst: ip16,
    outerSrcPort: u16,
    outerDstPort: u16,
    tcpFlags: u16,
    dscp: fc.integer({ min: 0, max: 63 }),
    srcMac: mac,
    dstMac: mac,
    sampling: fc.oneof(fc.constantFrom(0, 1, 2), u32),
  });

  /** A batch: the number of possible CPUs and entries of a key and one slot per CPU. */
  const batchModel = fc.integer({ min: 1, max: 4 }).chain((cpus) =>
    fc.record({
      cpus: fc.constant(cpus),
      entries: fc.array(
        fc.record({ key: keyModel, slots: fc.array(slotModel, { minLength: cpus, maxLength: cpus }) }),
        { maxLength: 24 },
      ),
      offsetMs: fc.oneof(fc.constant(0), fc.double({ min: 0, max: 2e12, noNaN: true })),
    }),
  );

  function writeU64(view: DataView, offset: number, n: number): void {
    view.setBigUint64(offset, BigInt(n), host);
  }

  function writeKey(k: KeyModel, out: Uint8Array, at: number): void {
    const view = new DataView(out.buffer, out.byteOffset);
    out.set(k.ipVersion === 4 ? mapped(k.src) : k.src, at + KF.src_ip.offset);
    out.set(k.ipVersion === 4 ? mapped(k.dst) : k.dst, at + KF.dst_ip.offset);
    view.setUint32(at + KF.if_index.offset, k.ifIndex, host);
    view.setUint32(at + KF.vni.offset, k.vni, host);
    view.setUint16(at + KF.src_port.offset, k.srcPort, host);
    view.setUint16(at + KF.dst_port.offset, k.dstPort, host);
    view.setUint16(at + KF.eth_type.offset, k.ethType, host);
    out[at + KF.protocol.offset] = k.protocol;
    out[at + KF.direction.offset] = k.direction;
    out[at + KF.icmp_type.offset] = k.icmpType;
    out[at + KF.icmp_code.offset] = k.icmpCode;
    out[at + KF.tunnel_type.offset] = k.tunnelType;
    out[at + KF.ip_version.offset] = k.ipVersion;
    view.setUint16(at + KF.vlan_id.offset, k.vlanId, host);
    view.setUint16(at + KF.inner_vlan_id.offset, k.innerVlanId, host);
  }

  function writeSlot(v: SlotModel, out: Uint8Array, at: number): void {
    if (v.packets === 0) return;
    const view = new DataView(out.buffer, out.byteOffset);
    writeU64(view, at + VF.packets.offset, v.packets);
    writeU64(view, at + VF.bytes.offset, v.bytes);
    writeU64(view, at + VF.ip_bytes.offset, v.ipBytes);
    writeU64(view, at + VF.first_seen_ns.offset, v.firstSeenNs);
    writeU64(view, at + VF.last_seen_ns.offset, v.lastSeenNs);
    out.set(v.cookie, at + VF.cookie.offset);
    out.set(v.outerSrc, at + VF.outer_src_ip.offset);
    out.set(v.outerDst, at + VF.outer_dst_ip.offset);
    view.setUint16(at + VF.outer_src_port.offset, v.outerSrcPort, host);
    view.setUint16(at + VF.outer_dst_port.offset, v.outerDstPort, host);
    view.setUint16(at + VF.tcp_flags.offset, v.tcpFlags, host);
    out[at + VF.dscp.offset] = v.dscp;
    out.set(v.srcMac, at + VF.src_mac.offset);
    out.set(v.dstMac, at + VF.dst_mac.offset);
    view.setUint32(at + VF.sampling.offset, v.sampling, host);
  }

  const dotted = (a: Uint8Array): string => Array.from(a).join('.');
  const hexOf = (a: Uint8Array): string => Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
  const macText = (a: Uint8Array): string => hexOf(a).match(/../g)!.join(':');
  const isMapped = (a: Uint8Array): boolean =>
    a.subarray(0, 10).every((b) => b === 0) && a[10] === 255 && a[11] === 255;
  /** RFC 5952: the URL serializer's compression, IPv4-mapped addresses in mixed notation. */
  function ipv6Text(a: Uint8Array): string {
    if (isMapped(a)) return `::ffff:${dotted(a.subarray(12))}`;
    return new URL(`http://[${hexOf(a).match(/..../g)!.join(':')}]/`).hostname.slice(1, -1);
  }
  const ip16Text = (a: Uint8Array): string => (isMapped(a) ? dotted(a.subarray(12)) : ipv6Text(a));

  /** The record the model's flow must decode to, keys in the order records serialise. */
  function expected(
    key: KeyModel,
    slots: SlotModel[],
    offsetMs: number,
    eviction?: FlowEviction,
  ): FlowRecord | undefined {
    const counted = slots.filter((s) => s.packets > 0);
    if (counted.length === 0) return undefined;
    const lastSeen = Math.max(...counted.map((s) => s.lastSeenNs));
    // Ties go to the lowest CPU.
    const latest = counted.find((s) => s.lastSeenNs === lastSeen)!;
    const sum = (f: (s: SlotModel) => number): number => counted.reduce((t, s) => t + f(s), 0);
    const tcpControlBits = counted.reduce((t, s) => t | s.tcpFlags, 0);
    // FIN or RST: end of flow; else forced at shutdown; else idle or active by the last packet.
    const flowEndReason =
      (tcpControlBits & 0x05) !== 0
        ? 3
        : eviction?.forced
          ? 4
          : eviction === undefined || eviction.nowNs - lastSeen >= eviction.idleNs
            ? 1
            : 2;
    const rec: Record<string, unknown> = {
      ipVersion: key.ipVersion,
      sourceTransportPort: key.srcPort,
      destinationTransportPort: key.dstPort,
      protocolIdentifier: key.protocol,
      octetDeltaCount: sum((s) => s.ipBytes),
      layer2OctetDeltaCount: sum((s) => s.bytes),
      packetDeltaCount: sum((s) => s.packets),
      flowStartMilliseconds: Math.floor(Math.min(...counted.map((s) => s.firstSeenNs)) / 1e6 + offsetMs),
      flowEndMilliseconds: Math.floor(lastSeen / 1e6 + offsetMs),
      tcpControlBits,
      ipDiffServCodePoint: latest.dscp,
      [key.direction === 1 ? 'egressInterface' : 'ingressInterface']: key.ifIndex,
      flowDirection: key.direction,
      sourceMacAddress: macText(latest.srcMac),
      destinationMacAddress: macText(latest.dstMac),
      ethernetType: key.ethType,
      flowEndReason,
    };
    if (key.ipVersion === 4) {
      rec.sourceIPv4Address = dotted(key.src);
      rec.destinationIPv4Address = dotted(key.dst);
      if (key.protocol === 1) {
        rec.icmpTypeIPv4 = key.icmpType;
        rec.icmpCodeIPv4 = key.icmpCode;
      }
    } else {
      rec.sourceIPv6Address = ipv6Text(key.src);
      rec.destinationIPv6Address = ipv6Text(key.dst);
      if (key.protocol === 58) {
        rec.icmpTypeIPv6 = key.icmpType;
        rec.icmpCodeIPv6 = key.icmpCode;
      }
    }
    if (key.vlanId !== 0) {
      rec.dot1qVlanId = key.vlanId;
      if (key.innerVlanId !== 0) rec.dot1qCustomerVlanId = key.innerVlanId;
    }
    if (key.tunnelType !== FLOW_TUNNEL_NONE) {
      rec.encapsulationType = key.tunnelType === FLOW_TUNNEL_VXLAN ? 'vxlan' : 'geneve';
      rec.virtualNetworkIdentifier = key.vni;
      rec.tunnelSourceIPAddress = ip16Text(latest.outerSrc);
      rec.tunnelDestinationIPAddress = ip16Text(latest.outerDst);
      rec.tunnelSourceTransportPort = latest.outerSrcPort;
      rec.tunnelDestinationTransportPort = latest.outerDstPort;
      if (key.tunnelType === FLOW_TUNNEL_GENEVE && latest.cookie.some((b) => b !== 0))
        rec.flowCookie = hexOf(latest.cookie);
    }
    if (latest.sampling > 1) {
      rec.samplingPacketInterval = 1;
      rec.samplingPacketSpace = latest.sampling - 1;
    }
    return rec as unknown as FlowRecord;
  }

  /** An eviction (or none) whose idle limit falls among the model's last-seen times. */
  const evictionModel: fc.Arbitrary<FlowEviction | undefined> = fc.option(
    fc.record({
      nowNs: fc.oneof(fc.constantFrom(9_000_000, 10_000_000), u53),
      idleNs: fc.oneof(fc.constantFrom(0, 1_000_000, 4_000_000, 5_000_000), u53),
      forced: fc.boolean(),
    }),
    { nil: undefined },
  );

  /** The words readIPv4Words must give for the model's addresses (signed, as flow keys hold them). */
  const wordOf = (a: Uint8Array): number => new DataView(a.buffer, a.byteOffset).getInt32(0, false);

  function checkRecord(actual: FlowRecord, want: FlowRecord, key: KeyModel): void {
    expect(actual).toStrictEqual(want);
    expect(Object.keys(actual)).toEqual(Object.keys(want));
    expect(JSON.stringify(actual)).toBe(JSON.stringify(want));
    const words = { src: 0, dst: 0 };
    expect(readIPv4Words(actual, words)).toBe(key.ipVersion === 4);
    if (key.ipVersion === 4) expect(words).toEqual({ src: wordOf(key.src), dst: wordOf(key.dst) });
  }

  it('decodeFlowMapBatch gives the model flows, merged over CPUs, for IPv4, IPv6, ICMP and tunnels', () => {
    fc.assert(
      fc.property(
        batchModel,
        fc.nat(7),
        fc.nat(7),
        evictionModel,
        ({ cpus, entries, offsetMs }, keyShift, valueShift, eviction) => {
          const valueBufferSize = FLOW_VALUE_STRIDE * cpus;
          // The drain's buffers at any byte offset inside larger ones.
          const keys = new Uint8Array(keyShift + entries.length * FLOW_KEY.size).subarray(keyShift);
          const values = new Uint8Array(valueShift + entries.length * valueBufferSize).subarray(valueShift);
          entries.forEach((e, i) => {
            writeKey(e.key, keys, i * FLOW_KEY.size);
            e.slots.forEach((s, c) => writeSlot(s, values, i * valueBufferSize + c * FLOW_VALUE_STRIDE));
          });
          const records = decodeFlowMapBatch(
            { count: entries.length, keys, values },
            valueBufferSize,
            offsetMs,
            eviction,
          );
          const wanted = entries.flatMap((e) => {
            const want = expected(e.key, e.slots, offsetMs, eviction);
            return want ? [{ want, key: e.key }] : [];
          });
          expect(records).toHaveLength(wanted.length);
          records.forEach((r, i) => checkRecord(r, wanted[i]!.want, wanted[i]!.key));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('decodeFlowEvent gives the model flow with flowEndReason 5', () => {
    fc.assert(
      fc.property(keyModel, slotModel, fc.nat(64), (key, slot, at) => {
        const counted = { ...slot, packets: Math.max(slot.packets, 1) };
        const buf = new Uint8Array(at + FLOW_EVENT.size);
        writeKey(key, buf, at + FLOW_EVENT.fields.key.offset);
        writeSlot(counted, buf, at + FLOW_EVENT.fields.value.offset);
        const record = decodeFlowEvent(new DataView(buf.buffer), at, FLOW_EVENT.size, 1_700_000_000_000);
        const want = { ...expected(key, [counted], 1_700_000_000_000)!, flowEndReason: 5 };
        checkRecord(record, want, key);
      }),
      { numRuns: 300 },
    );
  });

  // Text is cached by value, in slots that outlive a call: the runs below (one after another, so
  // tens of thousands of values) overwrite every slot many times, and near-duplicates (one byte
  // apart) must never be taken for each other.
  it('formats long runs of addresses and MACs, repeats and near-duplicates included, like a plain reading', () => {
    const nearDuplicates = (a: fc.Arbitrary<Uint8Array>) =>
      fc.tuple(a, fc.nat(15), fc.integer({ min: 1, max: 255 })).chain(([bytes, i, delta]) => {
        const other = bytes.slice();
        other[i % other.length] = (other[i % other.length]! + delta) & 255;
        return fc.constantFrom(bytes, other);
      });
    const run = (a: fc.Arbitrary<Uint8Array>, n: number) =>
      fc.array(fc.oneof(a, nearDuplicates(a)), { minLength: n, maxLength: n });
    fc.assert(
      fc.property(run(v4, 300), run(mac, 60), (addrs, macs) => {
        for (const a of addrs) {
          expect(formatIPv4(a, 0)).toBe(dotted(a));
          expect(formatIp16(mapped(a), 0)).toBe(dotted(a));
          expect(formatIPv6(mapped(a), 0)).toBe(`::ffff:${dotted(a)}`);
        }
        for (const m of macs) expect(formatMac(m, 0)).toBe(macText(m));
      }),
      { numRuns: 60 },
    );
    fc.assert(
      fc.property(run(v6, 150), (addrs) => {
        for (const a of addrs) {
          expect(formatIPv6(a, 0)).toBe(ipv6Text(a));
          expect(formatIp16(a, 0)).toBe(ip16Text(a));
        }
      }),
      { numRuns: 60 },
    );
  });
});
