import fc from 'fast-check';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../../src/records/flow.js';
import { loadFlowProto } from '../../../src/kafka/flow-messages.js';
import { expectBoundedWriter } from '../../fixtures/record-batches.js';
import { writeFlowProto, writeFlowProtoField } from '../../../src/sinks/kafka/proto.js';
import { REQUIRED_FLOW_FIELDS, allFieldsRecord, flowRecord } from '../../fixtures/records.js';

const { FlowRecord: FlowRecordType, FlowBatch } = loadFlowProto();

function reference(r: FlowRecord): Buffer {
  return Buffer.from(FlowRecordType.encode(r).finish());
}

function referenceField(r: FlowRecord, field: number): Buffer {
  const writer = protobuf.Writer.create();
  FlowRecordType.encode(r, writer.uint32((field << 3) | 2).fork()).ldelim();
  return Buffer.from(writer.finish());
}

function encode(r: FlowRecord, pos = 0): Buffer {
  const out = Buffer.alloc(pos + 4096);
  const end = writeFlowProto(r, out, pos);
  expect(end).toBeGreaterThanOrEqual(pos);
  return out.subarray(pos, end);
}

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
const special = fc.constantFrom(
  '\u0000',
  '\u007f',
  '\u0080',
  'é',
  '\u07ff',
  '\u0800',
  '\uffff',
  '\ud800',
  '\udbff',
  '\udc00',
  '\udfff',
  '\ud83d\ude00',
);
/**
 * Strings on every path: ASCII, 2/3/4-byte UTF-8, lone surrogates (which protobufjs writes
 * differently below and from 40 characters), lengths around 40 and 128 (two-byte length).
 */
const nastyString = fc.oneof(
  fc.string({ unit: 'grapheme-ascii', maxLength: 40 }),
  fc.string({ unit: fc.oneof(special, codeUnit, fc.constantFrom('a', '0', '.', ':')), maxLength: 50 }),
  fc.string({ unit: 'binary', maxLength: 80 }),
  fc.string({ unit: fc.oneof(special, codeUnit, fc.constant('x')), minLength: 35, maxLength: 45 }),
  fc.string({ unit: 'grapheme-ascii', minLength: 120, maxLength: 200 }),
  fc.string({ unit: fc.oneof(special, codeUnit), minLength: 100, maxLength: 300 }),
);
/** uint32: every varint length, and (rarely) any number, converted as protobufjs does (`>>> 0`). */
const u32 = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
  { weight: 4, arbitrary: fc.nat({ max: 300 }) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      0,
      1,
      127,
      128,
      16383,
      16384,
      2 ** 21 - 1,
      2 ** 21,
      2 ** 28 - 1,
      2 ** 28,
      0xffffffff,
    ),
  },
  { weight: 1, arbitrary: fc.oneof(fc.double(), fc.constantFrom(-0, -1, 2 ** 32, 2 ** 40 + 5, 1.5)) },
);
/** uint64: up to 2^53 as the sink sends, and (rarely) beyond, negative or fractional, as protobufjs splits them. */
const u64 = fc.oneof(
  { weight: 6, arbitrary: fc.maxSafeNat() },
  { weight: 3, arbitrary: fc.integer({ min: 1_600_000_000_000, max: 1_900_000_000_000 }) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      0,
      127,
      128,
      0xffffffff,
      2 ** 32,
      2 ** 35 - 1,
      2 ** 35,
      2 ** 53 - 1,
      2 ** 53,
      2 ** 60,
      2 ** 63,
      2 ** 64 - 2048,
    ),
  },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.double(),
      fc.integer({ min: -(2 ** 53), max: -1 }),
      fc.constantFrom(-0, 2 ** 64, 2 ** 70),
    ),
  },
);

interface Domain {
  string: fc.Arbitrary<string>;
  u32: fc.Arbitrary<number>;
  u64: fc.Arbitrary<number>;
}

function flowRecordArb(d: Domain): fc.Arbitrary<FlowRecord> {
  const address4 = fc.oneof({ weight: 4, arbitrary: fc.ipV4() }, { weight: 1, arbitrary: d.string });
  const address6 = fc.oneof({ weight: 4, arbitrary: fc.ipV6() }, { weight: 1, arbitrary: d.string });
  const mac = fc.oneof(
    fc.uint8Array({ minLength: 6, maxLength: 6 }).map((b) =>
      Buffer.from(b)
        .toString('hex')
        .replace(/..(?!$)/g, '$&:'),
    ),
    d.string,
  );
  return fc.constantFrom<4 | 6>(4, 6).chain((family) =>
    fc.record(
      {
        ipVersion: fc.constant(family),
        sourceIPv4Address: family === 4 ? address4 : d.string,
        destinationIPv4Address: family === 4 ? address4 : d.string,
        sourceIPv6Address: family === 6 ? address6 : d.string,
        destinationIPv6Address: family === 6 ? address6 : d.string,
        sourceTransportPort: d.u32,
        destinationTransportPort: d.u32,
        protocolIdentifier: d.u32,
        icmpTypeIPv4: d.u32,
        icmpCodeIPv4: d.u32,
        icmpTypeIPv6: d.u32,
        icmpCodeIPv6: d.u32,
        octetDeltaCount: d.u64,
        packetDeltaCount: d.u64,
        flowStartMilliseconds: d.u64,
        flowEndMilliseconds: d.u64,
        tcpControlBits: d.u32,
        ipDiffServCodePoint: d.u32,
        ingressInterface: d.u32,
        flowDirection: fc.constantFrom<0 | 1>(0, 1),
        sourceMacAddress: mac,
        destinationMacAddress: mac,
        ethernetType: d.u32,
        interfaceName: d.string,
        exporterIPv4Address: address4,
        exporterIPv6Address: address6,
        flowEndReason: d.u32,
        encapsulationType: fc.constantFrom<'vxlan' | 'geneve'>('vxlan', 'geneve'),
        virtualNetworkIdentifier: d.u32,
        tunnelSourceIPAddress: fc.oneof(address4, address6),
        tunnelDestinationIPAddress: fc.oneof(address4, address6),
        tunnelSourceTransportPort: d.u32,
        tunnelDestinationTransportPort: d.u32,
        flowCookie: d.string,
        duplicate: fc.boolean(),
        samplingInterval: d.u32,
        observedInterfaces: fc.array(
          fc.oneof(
            fc.record(
              { ingressInterface: d.u32, flowDirection: fc.constant<0>(0), interfaceName: d.string },
              { requiredKeys: ['ingressInterface', 'flowDirection'] },
            ),
            fc.record(
              { egressInterface: d.u32, flowDirection: fc.constant<1>(1), interfaceName: d.string },
              { requiredKeys: ['egressInterface', 'flowDirection'] },
            ),
          ),
          { minLength: 1, maxLength: 4 },
        ),
      },
      {
        requiredKeys: [...REQUIRED_FLOW_FIELDS],
      },
    ),
  );
}

/** Anything protobufjs accepts for these types, nasty strings and numbers included. */
const fullRecord = flowRecordArb({ string: nastyString, u32, u64 });

/**
 * Any subset of a record's fields up to a random field number, so that any field (a small number,
 * an empty string) comes last.
 */
function sparse(records: fc.Arbitrary<FlowRecord>): fc.Arbitrary<FlowRecord> {
  return records.chain((r) =>
    fc.tuple(fc.subarray(Object.keys(r)), fc.integer({ min: 1, max: 36 })).map(([keys, last]) => {
      const src = r as unknown as Record<string, unknown>;
      const kept = keys.filter((k) => FlowRecordType.fields[k]!.id <= last);
      return Object.fromEntries(kept.map((k) => [k, src[k]])) as unknown as FlowRecord;
    }),
  );
}

const anyRecord = fc.oneof(
  { weight: 3, arbitrary: fullRecord },
  { weight: 1, arbitrary: sparse(fullRecord) },
);

/** Records that decode back to themselves: valid UTF-16, uint32 range, uint64 up to 2^53. */
const validRecord = flowRecordArb({
  string: fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 60 }),
    fc.string({ unit: 'grapheme-ascii', maxLength: 150 }),
  ),
  u32: fc.oneof(fc.nat({ max: 300 }), fc.integer({ min: 0, max: 0xffffffff })),
  u64: fc.oneof(fc.nat({ max: 300 }), fc.maxSafeNat()),
});

describe('writeFlowProto', () => {
  it('writes a record field by field as flow.proto numbers them', () => {
    const r = flowRecord({
      octetDeltaCount: 300,
      packetDeltaCount: 1,
      flowDirection: 1,
      interfaceName: 'eth0',
      duplicate: false,
      samplingInterval: 0,
    });
    const expected = hex(`
      08 04
      12 08 31302e302e302e31
      1a 08 31302e302e302e32
      30 c0b802
      38 bb03
      40 06
      48 ac02
      50 01
      58 80d095ffbc31
      60 e8d795ffbc31
      78 02
      8001 01
      8a01 11 30323a30303a30303a30303a30303a3031
      9201 11 30323a30303a30303a30303a30303a3032
      9801 8010
      a201 04 65746830
      9802 00
      a002 00`);
    expect(encode(r, 3).equals(expected)).toBe(true);
    expect(reference(r).equals(expected)).toBe(true);
  });

  it('leaves zero plain fields off and writes zero optional fields', () => {
    const r: FlowRecord = {
      ...flowRecord(),
      ipVersion: 0,
      sourceIPv4Address: '',
      sourceTransportPort: 0,
      flowStartMilliseconds: 0,
      flowEndMilliseconds: 2 ** 53,
      sourceMacAddress: '',
      destinationMacAddress: '',
      ethernetType: 0,
      icmpTypeIPv4: 0,
      flowCookie: '',
    };
    // ipVersion, ports, counters, times, MACs, ethernetType at 0 or "" are absent; the optional
    // source address, ICMP type and cookie are there although empty or 0.
    const expected = hex(`
      12 00
      1a 08 31302e302e302e32
      38 bb03
      40 06
      60 80808080808080 10
      78 02
      a801 00
      9202 00`);
    expect(encode(r).equals(expected)).toBe(true);
    expect(reference(r).equals(expected)).toBe(true);
  });

  it('writes lone surrogates as protobufjs does: raw below 40 characters, U+FFFD from 40', () => {
    const short = flowRecord({ ipVersion: 0 as 4, interfaceName: '\ud800' });
    const long = flowRecord({ ipVersion: 0 as 4, interfaceName: 'x'.repeat(39) + '\ud800' });
    expect(encode(short).subarray(-6).equals(hex('a201 03 eda080'))).toBe(true);
    expect(
      encode(long)
        .subarray(-45)
        .equals(hex(`a201 2a ${'78'.repeat(39)} efbfbd`)),
    ).toBe(true);
    expect(encode(short).equals(reference(short))).toBe(true);
    expect(encode(long).equals(reference(long))).toBe(true);
  });

  it('matches protobufjs FlowRecord.encode byte for byte for arbitrary records', () => {
    fc.assert(
      fc.property(anyRecord, fc.nat({ max: 9 }), (r, pos) => {
        expect(encode(r, pos).toString('hex')).toBe(reference(r).toString('hex'));
      }),
      { numRuns: 3000 },
    );
  });

  it('writes every field of a record with all of them, and it decodes back', () => {
    const all = allFieldsRecord();
    const bytes = encode(all);
    expect(bytes.equals(reference(all))).toBe(true);
    const decoded = FlowRecordType.toObject(FlowRecordType.decode(bytes), { longs: Number, defaults: true });
    expect(decoded).toEqual(all);
  });
});

describe('writeFlowProtoField', () => {
  it('matches protobufjs fork/ldelim for any field number, one- to three-byte lengths', () => {
    const field = fc.oneof(
      fc.constantFrom(1, 15, 16, 2047, 2048, 2 ** 29 - 1),
      fc.integer({ min: 1, max: 2 ** 29 - 1 }),
    );
    fc.assert(
      fc.property(anyRecord, field, fc.nat({ max: 9 }), (r, f, pos) => {
        const out = Buffer.alloc(pos + 4096);
        const end = writeFlowProtoField(r, f, out, pos);
        expect(out.subarray(pos, end).toString('hex')).toBe(referenceField(r, f).toString('hex'));
      }),
      { numRuns: 2000 },
    );
    // 91 bytes of flowRecord() and 2 + 3 + 18000 of the name: 18096, a three-byte length.
    const big = flowRecord({ interfaceName: 'é'.repeat(9000) });
    const out = Buffer.alloc(20000);
    const end = writeFlowProtoField(big, 1, out, 0);
    expect(out.subarray(0, 4).equals(hex('0a b08d01'))).toBe(true);
    expect(out.subarray(0, end).equals(referenceField(big, 1))).toBe(true);
  });

  it('makes a FlowBatch that decodes to the records', () => {
    fc.assert(
      fc.property(fc.array(validRecord, { maxLength: 20 }), (records) => {
        const out = Buffer.alloc(1 << 16);
        let end = 0;
        for (const r of records) end = writeFlowProtoField(r, 1, out, end);
        const batch = FlowBatch.toObject(FlowBatch.decode(out.subarray(0, end)), {
          longs: Number,
          defaults: true,
        }) as { records: { observedInterfaces?: unknown[] }[] };
        // proto3 has no absent repeated field: a record without the list decodes with an empty one.
        for (const r of batch.records) if (r.observedInterfaces?.length === 0) delete r.observedInterfaces;
        expect(batch.records).toEqual(records);
        const reference = FlowBatch.encode({ records }).finish();
        expect(out.subarray(0, end).equals(reference)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });
});

describe('bounds', () => {
  for (const [name, write, ref] of [
    ['writeFlowProto', (r: FlowRecord, out: Buffer, pos: number) => writeFlowProto(r, out, pos), reference],
    [
      'writeFlowProtoField',
      (r: FlowRecord, out: Buffer, pos: number) => writeFlowProtoField(r, 1, out, pos),
      (r: FlowRecord) => referenceField(r, 1),
    ],
  ] as const) {
    it(`${name} returns -1 for every room short of the record, writing nothing outside [pos, out.length)`, () => {
      fc.assert(
        fc.property(anyRecord, fc.nat({ max: 5 }), (r, pos) => {
          // With room to spare, nothing after the end is written either.
          expectBoundedWriter(write, r, pos, ref(r));
        }),
        { numRuns: 150 },
      );
    });
  }
});
