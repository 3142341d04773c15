import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { writeIPv6, writeMac } from '../../../src/net/address.js';
import {
  MESSAGE_HEADER_BYTES,
  MessageBuilder,
  TEMPLATE_IPV4,
  TEMPLATE_IPV4_VXLAN,
  TEMPLATE_L2,
  TEMPLATES,
} from '../../../src/sinks/ipfix/encode.js';
import { flowRecord } from '../../fixtures/records.js';

/** The 16 bytes as eight full groups, the longest IPv6 spelling. */
function fullText(bytes: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return groups.join(':');
}

/** WHATWG URL parsing writes an IPv6 host in its compressed canonical form (RFC 5952). */
function canonicalText(bytes: Uint8Array): string {
  return new URL(`http://[${fullText(bytes)}]/`).hostname.slice(1, -1);
}

describe('IPv6 and MAC text to bytes', () => {
  it('reads the full and the compressed spelling of any address back to its bytes', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.integer({ min: 0, max: 7 }),
        fc.integer({ min: 0, max: 8 }),
        (raw, start, length) => {
          // Runs of zero groups, so `::` lands anywhere.
          const bytes = Uint8Array.from(raw);
          bytes.fill(0, start * 2, Math.min(16, (start + length) * 2));
          for (const text of [fullText(bytes), canonicalText(bytes), fullText(bytes).toUpperCase()]) {
            const out = new Uint8Array(18).fill(0xee);
            expect(writeIPv6(text, out, 1), text).toBe(true);
            expect(out.subarray(1, 17), text).toEqual(bytes);
            expect([out[0], out[17]]).toEqual([0xee, 0xee]);
          }
        },
      ),
    );
  });

  it('reads an IPv4 tail and refuses what is not an address', () => {
    const out = new Uint8Array(16);
    expect(writeIPv6('::ffff:192.0.2.1', out, 0)).toBe(true);
    expect([...out]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]);
    for (const bad of [
      '',
      ':',
      ':::',
      '1::2::3',
      '1:2:3:4:5:6:7:8:9',
      '12345::',
      'g::1',
      '1:',
      '::1.2.3',
      '::256.0.0.1',
      '1:2:3:4:5:6:7::8',
    ]) {
      expect(writeIPv6(bad, out, 0), bad).toBe(false);
    }
    const mac = new Uint8Array(6);
    expect(writeMac('02:aB:00:ff:10:9c', mac, 0)).toBe(true);
    expect([...mac]).toEqual([0x02, 0xab, 0x00, 0xff, 0x10, 0x9c]);
    for (const bad of ['02:ab:00:ff:10', '02-ab-00-ff-10-9c', '02:ab:00:ff:10:9g', '02:ab:00:ff:10:9c:']) {
      expect(writeMac(bad, mac, 0), bad).toBe(false);
    }
  });
});

describe('IPFIX messages', () => {
  it('a message of templates and records has a header, a template set and one data set per run of a template', () => {
    const b = new MessageBuilder(1472);
    b.begin(true);
    const l2 = flowRecord({ ipVersion: 0, ethernetType: 0x0806 });
    delete l2.sourceIPv4Address;
    delete l2.destinationIPv4Address;
    const records = [
      flowRecord(),
      flowRecord({ sourceTransportPort: 1 }),
      l2,
      flowRecord({ encapsulationType: 'vxlan', virtualNetworkIdentifier: 0x123456 }),
    ];
    for (const r of records) expect(b.add(r)).toBe(1);
    const m = b.finish(1_700_000_000, 7, 9);
    expect([
      m.readUInt16BE(0),
      m.readUInt16BE(2),
      m.readUInt32BE(4),
      m.readUInt32BE(8),
      m.readUInt32BE(12),
    ]).toEqual([10, m.length, 1_700_000_000, 7, 9]);
    // Walk the sets: their lengths add up to the message, in this order.
    const sets: [number, number][] = [];
    for (let pos = MESSAGE_HEADER_BYTES; pos < m.length;) {
      const id = m.readUInt16BE(pos);
      const length = m.readUInt16BE(pos + 2);
      sets.push([id, length]);
      pos += length;
      expect(pos).toBeLessThanOrEqual(m.length);
    }
    const bytes = (id: number) => TEMPLATES.get(id)!.reduce((n, e) => n + e.length, 0);
    const templateSet = 4 + [...TEMPLATES.values()].reduce((n, els) => n + 4 + 4 * els.length, 0);
    expect(sets).toEqual([
      [2, templateSet],
      [TEMPLATE_IPV4, 4 + 2 * bytes(TEMPLATE_IPV4)],
      [TEMPLATE_L2, 4 + bytes(TEMPLATE_L2)],
      [TEMPLATE_IPV4_VXLAN, 4 + bytes(TEMPLATE_IPV4_VXLAN)],
    ]);
    // The VXLAN record ends in layer2SegmentId: 0x01 (VXLAN) in the top byte, the VNI below.
    expect(m.readBigUInt64BE(m.length - 8)).toBe(0x0100000000123456n);
  });

  it('refuses a record it cannot encode and a message that is full, and keeps what it had', () => {
    const b = new MessageBuilder(MESSAGE_HEADER_BYTES + 4 + 2 * 102);
    b.begin(false);
    expect(b.add(flowRecord({ sourceIPv4Address: 'not-an-ip' }))).toBe(-1);
    expect(b.add(flowRecord({ packetDeltaCount: -1 }))).toBe(-1);
    expect(b.add(flowRecord({ sourceMacAddress: 'zz' }))).toBe(-1);
    expect(b.add(flowRecord())).toBe(1);
    expect(b.add(flowRecord())).toBe(1);
    expect(b.add(flowRecord())).toBe(0);
    expect(b.records).toBe(2);
    const m = b.finish(0, 0, 0);
    expect(m.length).toBe(MESSAGE_HEADER_BYTES + 4 + 2 * 102);
    expect(m.readUInt16BE(MESSAGE_HEADER_BYTES)).toBe(TEMPLATE_IPV4);
  });

  it('writes the wire octets and both VLAN ids of every template, 0 where a record has none', () => {
    /** The data record of a one-record message, element by element of its template: id -> value. */
    function fields(r: ReturnType<typeof flowRecord>): Map<number, bigint> {
      const b = new MessageBuilder(1472);
      b.begin(false);
      expect(b.add(r)).toBe(1);
      const m = b.finish(0, 0, 0);
      const template = m.readUInt16BE(MESSAGE_HEADER_BYTES);
      const out = new Map<number, bigint>();
      let pos = MESSAGE_HEADER_BYTES + 4;
      for (const e of TEMPLATES.get(template)!) {
        let v = 0n;
        for (let i = 0; i < e.length; i++) v = (v << 8n) | BigInt(m[pos + i]!);
        out.set(e.id, v);
        pos += e.length;
      }
      expect(pos).toBe(m.length);
      return out;
    }
    for (const els of TEMPLATES.values()) {
      expect(els.filter((e) => [352, 243, 245].includes(e.id)).map((e) => [e.name, e.length])).toEqual([
        ['layer2OctetDeltaCount', 8],
        ['dot1qVlanId', 2],
        ['dot1qCustomerVlanId', 2],
      ]);
    }
    const qinq = fields(
      flowRecord({
        octetDeltaCount: 1500,
        layer2OctetDeltaCount: 1522,
        dot1qVlanId: 100,
        dot1qCustomerVlanId: 4094,
      }),
    );
    expect([qinq.get(1), qinq.get(352), qinq.get(243), qinq.get(245)]).toEqual([1500n, 1522n, 100n, 4094n]);
    const l2 = flowRecord({
      ipVersion: 0,
      ethernetType: 0x88b5,
      octetDeltaCount: 0,
      layer2OctetDeltaCount: 2 ** 40 + 64,
      dot1qVlanId: 7,
    });
    delete l2.sourceIPv4Address;
    delete l2.destinationIPv4Address;
    const frame = fields(l2);
    expect([frame.get(1), frame.get(352), frame.get(243), frame.get(245)]).toEqual([
      0n,
      2n ** 40n + 64n,
      7n,
      0n,
    ]);
    const older = flowRecord({ octetDeltaCount: 98 });
    delete older.layer2OctetDeltaCount;
    delete older.dot1qVlanId;
    delete older.dot1qCustomerVlanId;
    const untagged = fields(older);
    expect([untagged.get(1), untagged.get(352), untagged.get(243), untagged.get(245)]).toEqual([
      98n,
      0n,
      0n,
      0n,
    ]);
    const b = new MessageBuilder(1472);
    b.begin(false);
    expect(b.add(flowRecord({ layer2OctetDeltaCount: -1 }))).toBe(-1);
    expect(b.add(flowRecord({ layer2OctetDeltaCount: 2 ** 53 }))).toBe(-1);
  });

  it('writes the drops as droppedPacketDeltaCount (133) and droppedOctetDeltaCount (132), 0 without', () => {
    function dropFields(r: ReturnType<typeof flowRecord>): bigint[] {
      const b = new MessageBuilder(1472);
      b.begin(false);
      expect(b.add(r)).toBe(1);
      const m = b.finish(0, 0, 0);
      const values = new Map<number, bigint>();
      let pos = MESSAGE_HEADER_BYTES + 4;
      for (const e of TEMPLATES.get(m.readUInt16BE(MESSAGE_HEADER_BYTES))!) {
        let v = 0n;
        for (let i = 0; i < e.length; i++) v = (v << 8n) | BigInt(m[pos + i]!);
        values.set(e.id, v);
        pos += e.length;
      }
      return [values.get(133)!, values.get(132)!];
    }
    for (const els of TEMPLATES.values()) {
      expect(els.filter((e) => [132, 133].includes(e.id)).map((e) => [e.name, e.length])).toEqual([
        ['droppedPacketDeltaCount', 8],
        ['droppedOctetDeltaCount', 8],
      ]);
    }
    const dropped = flowRecord({ droppedPacketDeltaCount: 3, droppedOctetDeltaCount: 2 ** 40 + 180 });
    expect(dropFields(dropped)).toEqual([3n, 2n ** 40n + 180n]);
    const none = flowRecord();
    delete none.droppedPacketDeltaCount;
    delete none.droppedOctetDeltaCount;
    expect(dropFields(none)).toEqual([0n, 0n]);
    const b = new MessageBuilder(1472);
    b.begin(false);
    expect(b.add(flowRecord({ droppedPacketDeltaCount: -1 }))).toBe(-1);
    expect(b.add(flowRecord({ droppedOctetDeltaCount: 2 ** 53 }))).toBe(-1);
  });
});
