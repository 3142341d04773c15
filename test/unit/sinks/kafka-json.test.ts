import fs from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { attachIPv4Words, type FlowRecord } from '../../../src/records/flow.js';
import { writeFlowJson } from '../../../src/sinks/kafka/json.js';
import { expectBoundedWriter } from '../../fixtures/record-batches.js';
import { REQUIRED_FLOW_FIELDS, allFieldsRecord, flowRecord } from '../../fixtures/records.js';

/** FlowRecord's keys in declaration order, read from src/records/flow.ts so a new field shows up here. */
const KEYS: string[] = (() => {
  const text = fs.readFileSync(new URL('../../../src/records/flow.ts', import.meta.url), 'utf8');
  const body = /export interface FlowRecord \{([\s\S]*?)\n\}/.exec(text)![1]!;
  return [...body.matchAll(/^ {2}(\w+)\??:/gm)].map((m) => m[1]!);
})();

/** `r`'s own keys rebuilt in declaration order: what the writer's output must equal byte for byte. */
function declarationOrder(r: FlowRecord): FlowRecord {
  const src = r as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of KEYS) if (Object.hasOwn(src, k)) out[k] = src[k];
  return out as unknown as FlowRecord;
}

function encode(r: FlowRecord, pos = 0): string {
  const out = Buffer.alloc(pos + 4 * JSON.stringify(r).length + 64);
  const end = writeFlowJson(r, out, pos);
  expect(end).toBeGreaterThan(pos);
  return out.toString('utf8', pos, end);
}

const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
const special = fc.constantFrom(
  '"',
  '\\',
  '/',
  '\n',
  '\r',
  '\t',
  '\b',
  '\f',
  '\u0000',
  '\u0001',
  '\u001f',
  ' ',
  '~',
  '\u007f',
  '\u0080',
  'é',
  '\u07ff',
  '\u0800',
  '\u2028',
  '\u2029',
  '\ufeff',
  '\uffff',
  '\ud800',
  '\udbff',
  '\udc00',
  '\udfff',
  '\ud83d\ude00',
  '\udc00\udc00',
  '\ud800\ud800',
);
/** Text that takes every path: plain ASCII, escapes, 2/3/4-byte UTF-8, lone surrogates. */
const nastyString = fc.oneof(
  fc.string({ unit: 'grapheme-ascii', maxLength: 40 }),
  fc.string({ unit: fc.oneof(special, codeUnit, fc.constantFrom('a', '0', '.', ':')), maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.string({ unit: fc.oneof(special, codeUnit), minLength: 100, maxLength: 300 }),
);
const address4 = fc.oneof({ weight: 4, arbitrary: fc.ipV4() }, { weight: 1, arbitrary: nastyString });
const address6 = fc.oneof({ weight: 4, arbitrary: fc.ipV6() }, { weight: 1, arbitrary: nastyString });
const mac = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.uint8Array({ minLength: 6, maxLength: 6 }).map((b) =>
      Buffer.from(b)
        .toString('hex')
        .replace(/..(?!$)/g, '$&:'),
    ),
  },
  { weight: 1, arbitrary: nastyString },
);
/** Every kind of number JSON.stringify distinguishes. */
const anyNumber = fc.oneof(
  fc.nat({ max: 70000 }),
  fc.integer({ min: 0, max: 0xffffffff }),
  fc.maxSafeNat(),
  fc.maxSafeInteger(),
  fc.double(),
  fc.integer({ min: 1, max: 90_071_992 }).map((k) => k * 1e8 - 1),
  fc.constantFrom(
    0,
    -0,
    NaN,
    Infinity,
    -Infinity,
    9,
    10,
    9999,
    10000,
    99_999_999,
    100_000_000,
    0xffffffff,
    2 ** 32,
    -(2 ** 32),
    2 ** 53 - 1,
    -(2 ** 53 - 1),
    2 ** 53,
    2 ** 53 + 2,
    2 ** 64,
    1e21,
    1e-7,
    0.1,
    -1.5,
    Number.MIN_VALUE,
    Number.MAX_VALUE,
  ),
);

/** Arbitrary records, v4 or v6, every optional field present or absent, keys in declaration order. */
const fullRecord: fc.Arbitrary<FlowRecord> = fc
  .tuple(fc.constantFrom<4 | 6>(4, 6), fc.boolean())
  .chain(([family, undefinedKeys]) =>
    fc
      .record(
        {
          ipVersion: fc.constant(family),
          sourceIPv4Address: family === 4 ? address4 : fc.constant(undefined),
          destinationIPv4Address: family === 4 ? address4 : fc.constant(undefined),
          sourceIPv6Address: family === 6 ? address6 : fc.constant(undefined),
          destinationIPv6Address: family === 6 ? address6 : fc.constant(undefined),
          sourceTransportPort: anyNumber,
          destinationTransportPort: anyNumber,
          protocolIdentifier: anyNumber,
          icmpTypeIPv4: anyNumber,
          icmpCodeIPv4: anyNumber,
          icmpTypeIPv6: anyNumber,
          icmpCodeIPv6: anyNumber,
          octetDeltaCount: anyNumber,
          packetDeltaCount: anyNumber,
          flowStartMilliseconds: anyNumber,
          flowEndMilliseconds: anyNumber,
          tcpControlBits: anyNumber,
          ipDiffServCodePoint: anyNumber,
          ingressInterface: anyNumber,
          flowDirection: fc.constantFrom<0 | 1>(0, 1),
          sourceMacAddress: mac,
          destinationMacAddress: mac,
          ethernetType: anyNumber,
          interfaceName: nastyString,
          exporterIPv4Address: address4,
          exporterIPv6Address: address6,
          flowEndReason: anyNumber,
          encapsulationType: fc.constantFrom<'vxlan' | 'geneve'>('vxlan', 'geneve'),
          virtualNetworkIdentifier: anyNumber,
          tunnelSourceIPAddress: fc.oneof(address4, address6),
          tunnelDestinationIPAddress: fc.oneof(address4, address6),
          tunnelSourceTransportPort: anyNumber,
          tunnelDestinationTransportPort: anyNumber,
          flowCookie: nastyString,
          duplicate: fc.boolean(),
          samplingInterval: anyNumber,
        },
        {
          requiredKeys: [...REQUIRED_FLOW_FIELDS],
        },
      )
      .map((r) => {
        // Optional keys either absent or (as a spread of a partial record leaves them) undefined.
        const out: Record<string, unknown> = {};
        for (const k of KEYS) {
          const v = (r as Record<string, unknown>)[k];
          if (v !== undefined || (undefinedKeys && Object.hasOwn(r, k))) out[k] = v;
        }
        return out as unknown as FlowRecord;
      }),
  );

/** Any subset of a record's fields up to a random key (declaration order kept), so any field can be last. */
const sparseRecord = fullRecord.chain((r) =>
  fc.tuple(fc.subarray(Object.keys(r)), fc.nat({ max: KEYS.length - 1 })).map(([keys, last]) => {
    const src = r as unknown as Record<string, unknown>;
    const kept = keys.filter((k) => KEYS.indexOf(k) <= last);
    return Object.fromEntries(kept.map((k) => [k, src[k]])) as unknown as FlowRecord;
  }),
);

const flowRecordArb = fc.oneof({ weight: 3, arbitrary: fullRecord }, { weight: 1, arbitrary: sparseRecord });

describe('writeFlowJson', () => {
  it('writes a map-tracer record exactly as JSON.stringify', () => {
    expect(encode(flowRecord())).toBe(
      '{"ipVersion":4,"sourceIPv4Address":"10.0.0.1","destinationIPv4Address":"10.0.0.2",' +
        '"sourceTransportPort":40000,"destinationTransportPort":443,"protocolIdentifier":6,' +
        '"octetDeltaCount":0,"packetDeltaCount":0,"flowStartMilliseconds":1700000000000,' +
        '"flowEndMilliseconds":1700000001000,"tcpControlBits":0,"ipDiffServCodePoint":0,' +
        '"ingressInterface":2,"flowDirection":0,"sourceMacAddress":"02:00:00:00:00:01",' +
        '"destinationMacAddress":"02:00:00:00:00:02","ethernetType":2048}',
    );
  });

  it('writes a tunnelled IPv6 record with escapes, UTF-8, a lone surrogate and odd numbers', () => {
    const r: FlowRecord = {
      ipVersion: 6,
      sourceIPv6Address: '2001:db8::1',
      destinationIPv6Address: 'fe80::1',
      sourceTransportPort: 0,
      destinationTransportPort: 65535,
      protocolIdentifier: 58,
      icmpTypeIPv6: 128,
      icmpCodeIPv6: 0,
      octetDeltaCount: 2 ** 53 + 2,
      packetDeltaCount: 4294967296,
      flowStartMilliseconds: -0,
      flowEndMilliseconds: NaN,
      tcpControlBits: 0.5,
      ipDiffServCodePoint: -7,
      ingressInterface: Infinity,
      flowDirection: 1,
      sourceMacAddress: 'a"b\\c/d',
      destinationMacAddress: '\n\r\t\b\f\u0000\u001f\u007f',
      ethernetType: 0x86dd,
      interfaceName: 'é€😀\ud800x\udc00\udc00\ud800\ud800\udc00',
      encapsulationType: 'geneve',
      virtualNetworkIdentifier: 0xffffff,
      flowCookie: '0011223344556677',
      duplicate: true,
      samplingInterval: 1e21,
    };
    const expected =
      '{"ipVersion":6,"sourceIPv6Address":"2001:db8::1","destinationIPv6Address":"fe80::1",' +
      '"sourceTransportPort":0,"destinationTransportPort":65535,"protocolIdentifier":58,' +
      '"icmpTypeIPv6":128,"icmpCodeIPv6":0,"octetDeltaCount":9007199254740994,' +
      '"packetDeltaCount":4294967296,"flowStartMilliseconds":0,"flowEndMilliseconds":null,' +
      '"tcpControlBits":0.5,"ipDiffServCodePoint":-7,"ingressInterface":null,"flowDirection":1,' +
      '"sourceMacAddress":"a\\"b\\\\c/d","destinationMacAddress":"\\n\\r\\t\\b\\f\\u0000\\u001f\u007f",' +
      '"ethernetType":34525,"interfaceName":"é€😀\\ud800x\\udc00\\udc00\\ud800𐀀","encapsulationType":"geneve",' +
      '"virtualNetworkIdentifier":16777215,"flowCookie":"0011223344556677","duplicate":true,' +
      '"samplingInterval":1e+21}';
    expect(encode(r, 7)).toBe(expected);
    expect(expected).toBe(JSON.stringify(r));
  });

  it('writes every FlowRecord field, in the declaration order of src/records/flow.ts', () => {
    const all = allFieldsRecord();
    expect(KEYS).toHaveLength(55);
    expect(Object.keys(JSON.parse(encode(all)) as object)).toEqual(KEYS);
    expect(encode(all)).toBe(JSON.stringify(declarationOrder(all)));
  });

  it('matches JSON.stringify byte for byte for arbitrary records in declaration order', () => {
    fc.assert(
      fc.property(flowRecordArb, fc.nat({ max: 9 }), (r, pos) => {
        expect(encode(r, pos)).toBe(JSON.stringify(r));
      }),
      { numRuns: 2000 },
    );
  });

  it('parses to what JSON.stringify gives whatever order the record keys are in', () => {
    const shuffledRecord = flowRecordArb.chain((r) => {
      const keys = Object.keys(r);
      return fc.shuffledSubarray(keys, { minLength: keys.length }).map((order) => {
        const src = r as unknown as Record<string, unknown>;
        const out: Record<string, unknown> = {};
        for (const k of order) out[k] = src[k];
        return out as unknown as FlowRecord;
      });
    });
    fc.assert(
      fc.property(shuffledRecord, (r) => {
        const text = encode(r);
        expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(r)));
        expect(text).toBe(JSON.stringify(declarationOrder(r)));
      }),
      { numRuns: 500 },
    );
  });

  it('writes only FlowRecord fields: no foreign keys, no attached IPv4 words', () => {
    const r = flowRecord({ interfaceName: 'eth0' });
    attachIPv4Words(r, 0x0a000001, 0x0a000002);
    const withExtra = { ...flowRecord(), extra: 'x', ipVersion: 4 } as FlowRecord;
    expect(encode(r)).toBe(JSON.stringify(r));
    expect(encode(withExtra)).toBe(JSON.stringify(flowRecord()));
  });

  it('writes values of other types as JSON.stringify does: null kept, functions dropped', () => {
    const r = {
      ...flowRecord(),
      interfaceName: null,
      flowCookie: () => 'x',
      duplicate: 1,
      flowEndReason: '3',
    } as unknown as FlowRecord;
    expect(encode(r)).toBe(JSON.stringify(declarationOrder(r)));
    expect(encode(r)).toContain(
      '"ethernetType":2048,"interfaceName":null,"flowEndReason":"3","duplicate":1}',
    );
  });

  it('writes numbers of every digit count the same with room to spare and with exactly enough', () => {
    const values = [0, 7, 42, 999, 1000, 12345, 99999999, 100000000, 4294967295, 4294967296, 12_300_000_012];
    values.push(1_700_000_000_000, 1_700_000_005_000, 2 ** 53 - 1, 2 ** 53, 1.25, NaN);
    for (const v of [...values, ...values.map((x) => -x)]) {
      const r = { samplingInterval: v } as FlowRecord;
      const expected = JSON.stringify(r);
      expect(encode(r)).toBe(expected);
      const exact = Buffer.alloc(expected.length);
      expect(writeFlowJson(r, exact, 0)).toBe(expected.length);
      expect(exact.toString()).toBe(expected);
    }
  });

  it('writes "{}" for a record with none of the fields', () => {
    const out = Buffer.alloc(2);
    expect(writeFlowJson({} as FlowRecord, out, 0)).toBe(2);
    expect(out.toString()).toBe('{}');
    expect(writeFlowJson({} as FlowRecord, out, 1)).toBe(-1);
  });

  it('writes records back to back into one buffer and alternating between buffers', () => {
    fc.assert(
      fc.property(fc.array(flowRecordArb, { minLength: 1, maxLength: 8 }), (records) => {
        const a = Buffer.alloc(1 << 16);
        const b = Buffer.alloc(1 << 16);
        const ends = [0, 0];
        for (let i = 0; i < records.length; i++) {
          const buf = i % 2 === 0 ? a : b;
          const at = ends[i % 2]!;
          const end = writeFlowJson(records[i]!, buf, at);
          expect(buf.toString('utf8', at, end)).toBe(JSON.stringify(records[i]));
          ends[i % 2] = end;
        }
        // Earlier records are intact after later ones were written behind them.
        const parse = (buf: Buffer, n: number): string => buf.toString('utf8', 0, n);
        expect(parse(a, ends[0]!)).toBe(
          records
            .filter((_, i) => i % 2 === 0)
            .map((r) => JSON.stringify(r))
            .join(''),
        );
        expect(parse(b, ends[1]!)).toBe(
          records
            .filter((_, i) => i % 2 === 1)
            .map((r) => JSON.stringify(r))
            .join(''),
        );
      }),
      { numRuns: 300 },
    );
  });

  it('returns -1 for every room short of the record, writing nothing outside [pos, out.length)', () => {
    fc.assert(
      fc.property(flowRecordArb, fc.nat({ max: 5 }), (r, pos) => {
        // With room to spare, wide stores may leave scratch after the end, at most 8 bytes of it.
        expectBoundedWriter(writeFlowJson, r, pos, Buffer.from(JSON.stringify(r)), 8);
      }),
      { numRuns: 150 },
    );
  });
});
