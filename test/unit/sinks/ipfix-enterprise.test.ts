import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatProblem } from '../../../src/config/errors.js';
import { checkPipeline } from '../../../src/pipeline/load.js';
import type { FlowRecord } from '../../../src/records/flow.js';
import { RXFLOW_ELEMENTS } from '../../../src/records/rxflow-elements.js';
import { MESSAGE_HEADER_BYTES, MessageBuilder, TEMPLATES } from '../../../src/sinks/ipfix/encode.js';
import { flowRecord, rxflowFieldsOf } from '../../fixtures/records.js';

/** RFC 5612: the enterprise number reserved for documentation. */
const PEN = 32473;

interface Spec {
  id: number;
  length: number;
  pen?: number;
}

interface DataRecord {
  template: number;
  /** Value bytes by `id` for IANA elements and `pen/id` for enterprise ones. */
  values: Map<string, Buffer>;
  bytes: number;
}

/**
 * Reads a message as RFC 7011 lays it out, written here on its own: template sets (a field
 * specifier with the E bit has a 4-byte enterprise number) and data sets (a field of length 65535
 * is a 1-byte length, or 255 and a 2-byte one, then the value). Templates carry over between calls.
 */
function parse(m: Buffer, templates = new Map<number, Spec[]>()): DataRecord[] {
  expect(m.readUInt16BE(0)).toBe(10);
  expect(m.readUInt16BE(2)).toBe(m.length);
  const out: DataRecord[] = [];
  for (let pos = MESSAGE_HEADER_BYTES; pos < m.length;) {
    const setId = m.readUInt16BE(pos);
    const end = pos + m.readUInt16BE(pos + 2);
    expect(end).toBeLessThanOrEqual(m.length);
    let at = pos + 4;
    if (setId === 2) {
      while (at < end) {
        const id = m.readUInt16BE(at);
        const count = m.readUInt16BE(at + 2);
        at += 4;
        const specs: Spec[] = [];
        for (let i = 0; i < count; i++) {
          const raw = m.readUInt16BE(at);
          const spec: Spec = { id: raw & 0x7fff, length: m.readUInt16BE(at + 2) };
          at += 4;
          if (raw & 0x8000) {
            spec.pen = m.readUInt32BE(at);
            at += 4;
          }
          specs.push(spec);
        }
        templates.set(id, specs);
      }
    } else {
      const specs = templates.get(setId)!;
      expect(specs, `template ${setId}`).toBeDefined();
      while (at < end) {
        const start = at;
        const values = new Map<string, Buffer>();
        for (const s of specs) {
          let length = s.length;
          if (length === 65535) {
            length = m[at]!;
            at += 1;
            if (length === 255) {
              length = m.readUInt16BE(at);
              at += 2;
            }
          }
          values.set(s.pen === undefined ? `${s.id}` : `${s.pen}/${s.id}`, m.subarray(at, at + length));
          at += length;
        }
        expect(at).toBeLessThanOrEqual(end);
        out.push({ template: setId, values, bytes: at - start });
      }
    }
    pos = end;
  }
  return out;
}

/** rxflow's element values of a data record as the record's fields, the absent ones left out by presentElements. */
function rxflowFields(d: DataRecord, pen = PEN): { present: number; fields: Record<string, unknown> } {
  const present = d.values.get(`${pen}/1`)!.readUInt32BE(0);
  const fields: Record<string, unknown> = {};
  for (const e of RXFLOW_ELEMENTS.slice(1)) {
    const v = d.values.get(`${pen}/${e.id}`)!;
    const value = e.type === 'string' ? v.toString('utf8') : v.readUIntBE(0, v.length);
    if (present & (1 << e.id)) fields[e.name] = value;
    // Absent: 0 or an empty string, as an absent IANA field.
    else expect([e.name, value]).toEqual([e.name, e.type === 'string' ? '' : 0]);
  }
  return { present, fields };
}

function l2Record(): FlowRecord {
  const r = flowRecord({ ipVersion: 0, ethernetType: 0x0806, protocolIdentifier: 0 });
  delete r.sourceIPv4Address;
  delete r.destinationIPv4Address;
  return r;
}

const FULL: Partial<FlowRecord> = {
  tcpHandshakeRttMicroseconds: 1250,
  tcpSmoothedRttMicroseconds: 4_294_967_295,
  tcpSmoothedRttMinMicroseconds: 1100,
  dnsLatencyMicroseconds: 730,
  dnsTransactionId: 0xfedc,
  dnsResponseCode: 3,
  dropReason: 'NETFILTER_DROP',
  tcpState: 'SYN_SENT',
  dnsQueryName: 'www.example.org',
  networkNamespace: 'blue',
};

/** One record of each template, every rxflow field set. */
function everyTemplate(): FlowRecord[] {
  const v6 = flowRecord({ ipVersion: 6, ethernetType: 0x86dd, ...FULL });
  delete v6.sourceIPv4Address;
  delete v6.destinationIPv4Address;
  Object.assign(v6, { sourceIPv6Address: '2001:db8::1', destinationIPv6Address: '2001:db8::2' });
  return [
    flowRecord({ octetDeltaCount: 1500, packetDeltaCount: 3, dot1qVlanId: 7, ...FULL }),
    v6,
    { ...l2Record(), ...FULL },
    flowRecord({ encapsulationType: 'vxlan', virtualNetworkIdentifier: 0x123456, ...FULL }),
    { ...v6, encapsulationType: 'vxlan', virtualNetworkIdentifier: 99 },
  ];
}

describe('ipfix encoder without an enterprise number', () => {
  it("writes the IANA messages it always did, byte for byte, whatever rxflow's own fields the records carry", () => {
    const b = new MessageBuilder(1472);
    b.begin(true);
    for (const r of everyTemplate()) expect(b.add(r)).toBe(1);
    const m = b.finish(1_700_000_000, 42, 7);
    // The length and digest of this message as rxflow wrote it before it had enterprise elements.
    expect([m.length, createHash('sha256').update(m).digest('hex')]).toEqual([
      1072,
      'bd12c01e28a8bd8c59a5dac4161a79d1636ce96ba2c7814493640fe22054230e',
    ]);
    const w = new MessageBuilder(1472);
    w.withdrawal();
    expect(w.finish(0, 0, 0).subarray(MESSAGE_HEADER_BYTES).toString('hex')).toBe(
      '000200180100000001010000010200000103000001040000',
    );
  });
});

describe('ipfix encoder with an enterprise number', () => {
  it("sends templates 512-516: each IANA template with rxflow's elements appended under the number, and withdraws those", () => {
    const b = new MessageBuilder(1472, PEN);
    b.begin(true);
    const m = b.finish(0, 0, 1);
    const templates = new Map<number, Spec[]>();
    expect(parse(m, templates)).toEqual([]);
    expect(m.length).toBe(MESSAGE_HEADER_BYTES + b.templateSetBytes);
    const own = RXFLOW_ELEMENTS.map((e) => ({ id: e.id, length: e.length, pen: PEN }));
    expect([...templates.keys()]).toEqual([512, 513, 514, 515, 516]);
    for (const [id, iana] of TEMPLATES) {
      expect(templates.get(id + 256)).toEqual([...iana.map((e) => ({ id: e.id, length: e.length })), ...own]);
    }
    expect(own.map((e) => `${e.id}:${e.length}`).join(' ')).toBe(
      '1:4 2:4 3:4 4:4 5:4 6:2 7:1 8:65535 9:65535 10:65535 11:65535',
    );
    b.withdrawal();
    const w = b.finish(0, 0, 1);
    expect(w.subarray(MESSAGE_HEADER_BYTES).toString('hex')).toBe(
      '000200180200000002010000020200000203000002040000',
    );
  });

  it('writes every field of every record, 0 or empty where absent, and presentElements names the ones it has', () => {
    // The DNS id and code of 0 and the empty state are values.
    const partial: FlowRecord = {
      ...flowRecord(),
      dnsLatencyMicroseconds: 5,
      dnsTransactionId: 0,
      dnsResponseCode: 0,
      tcpState: '',
    };
    const long: FlowRecord = flowRecord({
      networkNamespace: `ns-${'é'.repeat(150)}`,
      dropReason: 'x'.repeat(254),
    });
    const records: FlowRecord[] = [...everyTemplate(), flowRecord(), partial, long];
    const b = new MessageBuilder(65535, PEN);
    b.begin(true);
    for (const r of records) expect(b.add(r)).toBe(1);
    const data = parse(b.finish(0, 0, 1));
    expect(data.map((d) => d.template)).toEqual([512, 513, 514, 515, 516, 512, 512, 512]);
    const read = data.map((d) => rxflowFields(d));
    expect(read.map((r) => r.fields)).toEqual(records.map(rxflowFieldsOf));
    // Bit n for element n: all of 2-11, none, and the DNS id and code of 0 and the empty state.
    expect(read.map((r) => r.present)).toEqual([0xffe, 0xffe, 0xffe, 0xffe, 0xffe, 0x002, 0x2e2, 0x902]);
    // A value of 255 bytes or more has 255 and a two-byte length in front; 254 a single byte.
    expect(Buffer.byteLength(long.networkNamespace!)).toBe(303);
    const last = data.at(-1)!;
    expect(last.bytes).toBe(data[5]!.bytes + 303 + 2 + 254);
    // The IANA elements are the ones the record has without rxflow's.
    const iana = new MessageBuilder(65535);
    iana.begin(true);
    for (const r of records) iana.add(r);
    const plain = parse(iana.finish(0, 0, 1));
    data.forEach((d, i) => {
      for (const [k, v] of plain[i]!.values) expect(d.values.get(k), k).toEqual(v);
    });
  });

  it('splits records of any string length into messages of at most max_message_bytes, each as full as the next record allows', () => {
    const text = fc.oneof(
      fc.constant(undefined),
      fc.string({ maxLength: 256 }),
      // Well-formed: a lone surrogate has no UTF-8 (it goes out as U+FFFD).
      fc.string({ unit: 'grapheme', maxLength: 100 }),
    );
    fc.assert(
      fc.property(
        fc.array(fc.tuple(text, text, text, text, fc.option(fc.nat(0xffffffff))), {
          minLength: 1,
          maxLength: 400,
        }),
        fc.constantFrom(1200, 1472, 65535),
        (specs, maxBytes) => {
          const records: FlowRecord[] = specs.map(([drop, state, query, ns, rtt], i) => {
            const r: FlowRecord = flowRecord({ sourceTransportPort: i });
            if (drop !== undefined) r.dropReason = drop;
            if (state !== undefined) r.tcpState = state;
            if (query !== undefined) r.dnsQueryName = query;
            if (ns !== undefined) r.networkNamespace = ns;
            if (rtt !== null) r.tcpHandshakeRttMicroseconds = rtt;
            return r;
          });
          const b = new MessageBuilder(maxBytes, PEN);
          const templates = new Map<number, Spec[]>();
          const back: DataRecord[] = [];
          const finish = (next: FlowRecord | undefined): void => {
            // A copy: the builder's buffer is reused by the next message.
            const m = Buffer.from(b.finish(0, 0, 1));
            expect(m.length).toBeLessThanOrEqual(maxBytes);
            const got = parse(m, templates);
            // Full: the record that went to the next message would not have fitted this one.
            if (next !== undefined) {
              const probe = new MessageBuilder(65535, PEN);
              probe.begin(false);
              probe.add(next);
              // The records are all IPv4: the next one would have gone into the same data set.
              const recordBytes = probe.length - MESSAGE_HEADER_BYTES - 4;
              expect(m.length + recordBytes).toBeGreaterThan(maxBytes);
            }
            back.push(...got);
          };
          b.begin(true);
          for (const r of records) {
            let added = b.add(r);
            if (added === 0) {
              finish(r);
              b.begin(false);
              added = b.add(r);
            }
            expect(added).toBe(1);
          }
          finish(undefined);
          expect(back.length).toBe(records.length);
          back.forEach((d, i) => {
            expect(d.values.get('7')!.readUInt16BE(0)).toBe(i);
            expect(rxflowFields(d).fields).toEqual(rxflowFieldsOf(records[i]!));
          });
        },
      ),
      { numRuns: 25 },
    );
  });

  it('refuses a value that does not fit its element and a record no message can hold, and takes the next', () => {
    const b = new MessageBuilder(1472, PEN);
    b.begin(true);
    for (const bad of [
      { dnsResponseCode: 256 },
      { dnsTransactionId: 65536 },
      { tcpHandshakeRttMicroseconds: 2 ** 32 },
      { tcpSmoothedRttMicroseconds: -1 },
      { dnsLatencyMicroseconds: 1.5 },
      { networkNamespace: 'n'.repeat(1400) },
    ] as Partial<FlowRecord>[]) {
      expect(b.add(flowRecord({ dnsLatencyMicroseconds: 9, ...bad })), JSON.stringify(bad).slice(0, 40)).toBe(
        -1,
      );
    }
    expect(b.add(flowRecord({ networkNamespace: 'n'.repeat(300) }))).toBe(1);
    const data = parse(b.finish(0, 0, 1));
    expect(data.map((d) => rxflowFields(d).fields)).toEqual([{ networkNamespace: 'n'.repeat(300) }]);
  });

  it('puts a record too long to share a message with the templates in the next message, without them', () => {
    const b = new MessageBuilder(1472, PEN);
    const long = flowRecord({ dnsQueryName: `${'a'.repeat(62)}.`.repeat(10) });
    b.begin(true);
    expect(b.add(long)).toBe(0);
    const templates = new Map<number, Spec[]>();
    expect(parse(Buffer.from(b.finish(0, 0, 1)), templates)).toEqual([]);
    b.begin(false);
    expect(b.add(long)).toBe(1);
    const m = b.finish(0, 0, 1);
    expect(m.length).toBeLessThanOrEqual(1472);
    expect(parse(m, templates).map((d) => rxflowFields(d).fields)).toEqual([
      { dnsQueryName: long.dnsQueryName },
    ]);
  });
});

describe('enterprise_number at validate', () => {
  /** The problems of a pipeline whose ipfix source and ipfix sink both have enterprise_number `value`. */
  function problems(value: string): string[] {
    const text = `sources:\n  in:\n    type: ipfix\n    enterprise_number: ${value}\nsinks:\n  out:\n    type: ipfix\n    inputs: [in]\n    collector: 127.0.0.1:4739\n    enterprise_number: ${value}\n`;
    return checkPipeline(text, 'p.yaml', { env: {} }).problems.map(formatProblem);
  }

  it('takes a Private Enterprise Number from 1 to 2^32-1 on the ipfix sink and source', () => {
    expect(problems('32473')).toEqual([]);
    expect(problems('1')).toEqual([]);
    expect(problems('4294967295')).toEqual([]);
  });

  it('refuses 0, more than 2^32-1 and what is not an integer, saying where and what it got', () => {
    const both = (what: string): string[] => [
      `p.yaml:4:24: sources.in.enterprise_number: ${what}`,
      `p.yaml:10:24: sinks.out.enterprise_number: ${what}`,
    ];
    expect(problems('0')).toEqual(both('must be >= 1, got 0'));
    expect(problems('4294967296')).toEqual(both('must be <= 4294967295, got 4294967296'));
    expect(problems('example')).toEqual(both("must be an integer, got 'example'"));
    expect(problems('1.5')).toEqual(both('must be an integer, got 1.5'));
  });
});
