import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ipv4ToUint32 } from '../../../src/net/address.js';
import { FlowKey, FlowTable, flowKeyString, recordProblem } from '../../../src/records/flow-key.js';
import { attachIPv4Words, readIPv4Words, type FlowRecord } from '../../../src/records/flow.js';
import { flowRecord } from '../../fixtures/records.js';

function rec(p: Partial<FlowRecord> = {}): FlowRecord {
  return flowRecord({
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
    ...p,
  });
}

describe('ipv4ToUint32', () => {
  it('reads canonical dotted quads and refuses every other spelling', () => {
    expect(ipv4ToUint32('0.0.0.0')).toBe(0);
    expect(ipv4ToUint32('1.2.3.4')).toBe(0x01020304);
    expect(ipv4ToUint32('255.255.255.255')).toBe(0xffffffff);
    expect(ipv4ToUint32('192.168.10.200')).toBe(0xc0a80ac8);
    for (const bad of [
      '01.2.3.4',
      '1.2.3.04',
      '1.2.3',
      '1.2.3.4.5',
      '256.1.1.1',
      '1.2.3.400',
      '1..2.3',
      '1.2.3.',
      '.1.2.3',
      'a.b.c.d',
      '1.2.3.4 ',
      '::ffff:1.2.3.4',
      '',
      '1234.1.1.1',
    ]) {
      expect([bad, ipv4ToUint32(bad)]).toEqual([bad, -1]);
    }
  });

  it('agrees with a reference reader for any string of digits and dots', () => {
    // The reference: split, then insist on canonical decimal octets.
    const reference = (text: string): number => {
      const parts = text.split('.');
      if (parts.length !== 4) return -1;
      let value = 0;
      for (const p of parts) {
        if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return -1;
        value = value * 256 + Number(p);
      }
      return value;
    };
    const char = fc.constantFrom('0', '1', '2', '5', '9', '.', '.', 'x');
    fc.assert(
      fc.property(fc.array(char, { maxLength: 17 }), (chars) => {
        const text = chars.join('');
        expect(ipv4ToUint32(text)).toBe(reference(text));
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.ipV4(), (addr) => {
        expect(ipv4ToUint32(addr)).toBe(reference(addr));
      }),
    );
  });

  it('agrees with the octets for any address', () => {
    fc.assert(
      fc.property(fc.ipV4(), (addr) => {
        const expected = addr.split('.').reduce((v, o) => v * 256 + Number(o), 0);
        expect(ipv4ToUint32(addr)).toBe(expected);
      }),
    );
  });
});

describe('IPv4 words', () => {
  it('attaches words a record reads back while its address text is unchanged', () => {
    const r = rec({ sourceIPv4Address: '192.168.10.200', destinationIPv4Address: '255.255.255.255' });
    const out = { src: 7, dst: 7 };
    expect(readIPv4Words(r, out)).toBe(false);
    expect(out).toEqual({ src: 7, dst: 7 });
    attachIPv4Words(r, 0xc0a80ac8, 0xffffffff);
    expect(readIPv4Words(r, out)).toBe(true);
    // Signed 32-bit, as flow keys hold them.
    expect(out).toEqual({ src: 0xc0a80ac8 | 0, dst: -1 });
    // An address rewritten after attaching voids the words, until they are attached again.
    r.destinationIPv4Address = '10.0.0.9';
    expect(readIPv4Words(r, out)).toBe(false);
    attachIPv4Words(r, 0xc0a80ac8, 0x0a000009);
    expect(readIPv4Words(r, out)).toBe(true);
    expect(out).toEqual({ src: 0xc0a80ac8 | 0, dst: 0x0a000009 });
    r.sourceIPv4Address = '10.0.0.1';
    expect(readIPv4Words(r, out)).toBe(false);
    // The same text in a new string is the same address: the words still hold.
    r.sourceIPv4Address = ['192', '168', '10', '200'].join('.');
    attachIPv4Words(r, 0xc0a80ac8, 0x0a000009);
    r.sourceIPv4Address = ['192', '168', '10', '200'].join('.');
    expect(readIPv4Words(r, out)).toBe(true);
  });

  it('leaves the record as it serialises, lists its keys and compares', () => {
    const plain = rec();
    const withWords = rec();
    attachIPv4Words(withWords, 0x0a000001, 0x0a000002);
    expect(JSON.stringify(withWords)).toBe(JSON.stringify(plain));
    expect(Object.keys(withWords)).toEqual(Object.keys(plain));
    expect(withWords).toStrictEqual(plain);
    // A copy is a record without words (they are not own enumerable properties).
    expect(readIPv4Words({ ...withWords }, { src: 0, dst: 0 })).toBe(false);
  });

  it('gives FlowKey the same key as parsing the text, without parsing it', () => {
    fc.assert(
      fc.property(
        fc.ipV4(),
        fc.ipV4(),
        fc.integer({ min: 0, max: 65535 }),
        fc.integer({ min: 0, max: 65535 }),
        fc.constantFrom(6, 17),
        fc.integer({ min: 1, max: 100 }),
        fc.constantFrom<0 | 1>(0, 1),
        (src, dst, sport, dport, protocol, ifindex, direction) => {
          const fields = {
            sourceIPv4Address: src,
            destinationIPv4Address: dst,
            sourceTransportPort: sport,
            destinationTransportPort: dport,
            protocolIdentifier: protocol,
            ingressInterface: ifindex,
            flowDirection: direction,
          };
          const text = new FlowKey(true).read(rec(fields));
          const r = rec(fields);
          attachIPv4Words(r, ipv4ToUint32(src), ipv4ToUint32(dst));
          const words = new FlowKey(true).read(r);
          expect([words.hash, words.src, words.dst, words.ports, words.meta, words.vni, words.iface]).toEqual(
            [text.hash, text.src, text.dst, text.ports, text.meta, text.vni, text.iface],
          );
          expect([text.parsed, words.parsed]).toEqual([true, false]);
        },
      ),
    );
  });

  it('keys on the attached words while the text is unchanged, on the text once it changed', () => {
    const key = new FlowKey(false);
    const r = rec({ sourceIPv4Address: '10.0.0.1' });
    // Words that disagree with the text (a contract breach) show which one the key was read from.
    attachIPv4Words(r, 0x0b000001, 0x0b000002);
    expect([key.read(r).src, key.dst, key.parsed]).toEqual([0x0b000001, 0x0b000002, false]);
    r.sourceIPv4Address = '10.0.0.3';
    expect([key.read(r).src, key.dst, key.parsed]).toEqual([0x0a000003, 0x0a000002, true]);
  });
});

describe('FlowTable', () => {
  it('finds a flow by its key fields, as text for IPv6 and non-canonical IPv4', () => {
    const table = new FlowTable(16);
    const key = new FlowKey(true);
    const records = [
      rec(),
      rec({ sourceIPv4Address: '010.0.0.1' }),
      rec({
        ipVersion: 6,
        sourceIPv4Address: undefined,
        destinationIPv4Address: undefined,
        sourceIPv6Address: 'fd00::1',
        destinationIPv6Address: 'fd00::2',
      }),
      rec({
        ipVersion: 6,
        sourceIPv4Address: undefined,
        destinationIPv4Address: undefined,
        sourceIPv6Address: 'fd00::1',
        destinationIPv6Address: 'fd00::3',
      }),
      rec({ flowDirection: 1 }),
      rec({ virtualNetworkIdentifier: 5, encapsulationType: 'geneve' }),
    ];
    expect(records.map((r) => table.find(key.read(r)))).toEqual([-1, -1, -1, -1, -1, -1]);
    records.forEach((r) => table.insert(key.read(r)));
    // Fresh objects with equal fields (new strings too) find the same entries.
    const again = records.map((r) => ({ ...r, sourceIPv6Address: r.sourceIPv6Address && `fd00::${'1'}` }));
    expect(again.map((r) => table.find(key.read(r)))).toEqual([0, 1, 2, 3, 4, 5]);
    expect(table.size).toBe(6);
  });

  it('keeps interface and direction out of the key when asked to', () => {
    const table = new FlowTable();
    const key = new FlowKey(false);
    table.insert(key.read(rec()));
    expect(table.find(key.read(rec({ ingressInterface: 9, flowDirection: 1 })))).toBe(0);
  });

  it('grows past its initial size, shrinks back on clear, and stays exact', () => {
    const table = new FlowTable(16);
    const key = new FlowKey(true);
    const flows = Array.from({ length: 3000 }, (_, i) =>
      rec({ sourceIPv4Address: `10.9.${i >> 8}.${i & 255}`, sourceTransportPort: i }),
    );
    flows.forEach((r, i) => expect(table.insert(key.read(r))).toBe(i));
    expect(table.capacity).toBeGreaterThanOrEqual(3000);
    flows.forEach((r, i) => expect(table.find(key.read(r))).toBe(i));
    expect(table.find(key.read(rec({ sourceIPv4Address: '10.9.200.1' })))).toBe(-1);
    table.clear();
    expect(table.size).toBe(0);
    expect(table.capacity).toBe(4096);
    expect(table.find(key.read(flows[5]!))).toBe(-1);
    // A light fill of a grown table gives the memory back at the next clear.
    flows.slice(0, 10).forEach((r) => table.insert(key.read(r)));
    table.clear();
    expect(table.capacity).toBe(32);
    expect(table.find(key.read(flows[5]!))).toBe(-1);
  });

  it('compares VLAN ids and namespace exactly when two keys share a hash', () => {
    const table = new FlowTable(16);
    const key = new FlowKey(true);
    const v6 = {
      ipVersion: 6,
      sourceIPv4Address: undefined,
      destinationIPv4Address: undefined,
      sourceIPv6Address: 'fd00::1',
      destinationIPv6Address: 'fd00::2',
    } as const;
    const flows = [
      rec(),
      rec({ dot1qVlanId: 10 }),
      rec({ dot1qVlanId: 20 }),
      rec({ dot1qVlanId: 10, dot1qCustomerVlanId: 30 }),
      rec({ networkNamespace: 'a' }),
      rec({ networkNamespace: 'b' }),
      rec({ networkNamespace: 'b', dot1qVlanId: 10 }),
      rec({ ...v6, networkNamespace: 'a' }),
      rec({ ...v6, networkNamespace: 'b', dot1qVlanId: 20 }),
    ];
    // Every key forced onto one hash: only the exact comparison keeps them apart.
    const read = (r: FlowRecord): FlowKey => {
      key.read(r);
      key.hash = 7;
      return key;
    };
    flows.forEach((r, i) => {
      expect(table.find(read(r))).toBe(-1);
      expect(table.insert(key)).toBe(i);
    });
    flows.forEach((r, i) => expect(table.find(read({ ...r }))).toBe(i));
    // A tag of 0 is no tag, as the kernel writes it.
    expect(table.find(read(rec({ dot1qVlanId: 0 })))).toBe(0);
    expect(new Set(flows.map((r) => flowKeyString(r))).size).toBe(flows.length);
    expect(flowKeyString(flows[6]!)).toMatch(/ if=2 dir=0 vlan=10\.0 netns="b"$/);
    expect(flowKeyString(flows[6]!, false)).not.toMatch(/vlan|netns/);
  });

  it('keeps apart namespaces whose names share a hash', () => {
    const table = new FlowTable(16);
    const key = new FlowKey(true);
    // The hash samples a name's length and a few characters: these two differ elsewhere.
    const a = rec({ networkNamespace: 'ns-a-0000' });
    const b = rec({ networkNamespace: 'ns-b-0000' });
    const hashA = key.read(a).hash;
    expect(key.read(b).hash).toBe(hashA);
    expect(table.insert(key.read(a))).toBe(0);
    expect(table.find(key.read(b))).toBe(-1);
    expect(table.insert(key)).toBe(1);
    expect([table.find(key.read(a)), table.find(key.read(b))]).toEqual([0, 1]);
  });

  it('leaves VLAN ids and namespace out of the key without interface', () => {
    const table = new FlowTable();
    const key = new FlowKey(false);
    table.insert(key.read(rec()));
    expect(
      table.find(key.read(rec({ dot1qVlanId: 10, dot1qCustomerVlanId: 20, networkNamespace: 'a' }))),
    ).toBe(0);
  });

  it('never merges two flows whose hashes collide', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 65535 })), { maxLength: 200 }),
        (pairs) => {
          const table = new FlowTable(16);
          const key = new FlowKey(true);
          const seen = new Map<string, number>();
          for (const [addr, port] of pairs) {
            const r = rec({ sourceIPv4Address: addr, sourceTransportPort: port });
            const k = flowKeyString(r);
            const e = table.find(key.read(r));
            if (seen.has(k)) expect(e).toBe(seen.get(k));
            else {
              expect(e).toBe(-1);
              seen.set(k, table.insert(key));
            }
          }
        },
      ),
    );
  });
});

describe('recordProblem', () => {
  it('names the first field that makes a record unusable', () => {
    expect(recordProblem(rec())).toBeUndefined();
    expect(recordProblem(undefined)).toBe('the record is undefined');
    expect(recordProblem(rec({ ipVersion: 6 }))).toBe('sourceIPv6Address is missing for an IPv6 flow');
    expect(recordProblem({ ...rec(), flowDirection: '0' })).toBe('flowDirection is string, not a number');
  });
});
