/** DNS query names: wire form to presentation form, and their pairing with the evicted flows. */
import { describe, expect, it } from 'vitest';
import { DNS_NAME_MAX, DnsNames, dnsNameText } from '../../src/datapath/flow/dns-names.js';
import { DNS_NAME, FLOW_KEY } from '../../src/datapath/flow/types.js';
import { MAX_DNS_NAME_CHARS, flowRecordProblem } from '../../src/records/flow.js';
import { flowRecord } from '../fixtures/records.js';

/** The wire form of a name from its labels (latin1 octets), with the root's zero octet. */
function wire(...labels: string[]): Uint8Array {
  const parts = labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')]));
  return new Uint8Array(Buffer.concat([...parts, Buffer.from([0])]));
}

const text = (bytes: Uint8Array, len = bytes.length): string | undefined => dnsNameText(bytes, 0, len);

describe('dnsNameText', () => {
  it('joins labels with dots, keeps case, writes the root as a dot', () => {
    expect(text(wire('www', 'Example', 'COM'))).toBe('www.Example.COM');
    expect(text(wire())).toBe('.');
    expect(text(wire('_dns', '_tcp', 'x-y'))).toBe('_dns._tcp.x-y');
  });

  it('escapes a dot or backslash inside a label and every octet outside printable ASCII', () => {
    expect(text(wire('a.b', 'c\\d'))).toBe('a\\.b.c\\\\d');
    expect(text(wire(' \x00\x1f\x7f\x80\xff', 'ok'))).toBe('\\032\\000\\031\\127\\128\\255.ok');
    expect(text(wire('"$;()'))).toBe('"$;()');
  });

  it('stops at the terminating zero octet: what follows the name is not read', () => {
    const bytes = new Uint8Array([...wire('a', 'b'), 0, 1, 0, 1, 0xc0, 0x0c]);
    expect(text(bytes)).toBe('a.b');
  });

  it('refuses what is not a whole name', () => {
    // A label past the octets read, no terminating zero, a compression pointer, a reserved type.
    expect(text(wire('abcdef', 'gh'), 5)).toBeUndefined();
    expect(text(wire('abc'), 4)).toBeUndefined();
    expect(text(new Uint8Array([1, 0x61, 0xc0, 0x0c]))).toBeUndefined();
    expect(text(new Uint8Array([0x41, 0x61, 0]))).toBeUndefined();
    expect(text(new Uint8Array([]))).toBeUndefined();
  });

  it('reads the longest name, 255 octets, and its text is a valid dnsQueryName at worst case', () => {
    // Four labels of 63 octets (3 of them all escaped, 4 characters each) and the zero: 257
    // octets; the longest legal one with the most escapes: 63, 63, 63, 61 octets.
    const labels = ['\x01'.repeat(63), '\x02'.repeat(63), '\x03'.repeat(63), '\x04'.repeat(61)];
    const bytes = wire(...labels);
    expect(bytes.length).toBe(DNS_NAME_MAX);
    const name = text(bytes)!;
    expect(name.length).toBe(250 * 4 + 3);
    expect(name.length).toBeLessThanOrEqual(MAX_DNS_NAME_CHARS);
    expect(flowRecordProblem({ ...flowRecord(), dnsQueryName: name })).toBeUndefined();
  });

  it('turns any octets into undefined or a text without control characters', () => {
    let seed = 7;
    const rnd = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let n = 0; n < 2000; n++) {
      const bytes = new Uint8Array(1 + Math.floor(rnd() * DNS_NAME_MAX));
      for (let i = 0; i < bytes.length; i++) {
        // Mostly short labels, so that whole names come out too.
        bytes[i] = rnd() < 0.3 ? Math.floor(rnd() * 8) : Math.floor(rnd() * 256);
      }
      const name = text(bytes);
      if (name === undefined) continue;
      expect(name).not.toMatch(/[\x00-\x1f\x7f-\uffff]/);
      expect(name.length).toBeLessThanOrEqual(MAX_DNS_NAME_CHARS);
    }
  });
});

describe('dnsQueryName in a record read back', () => {
  it('is refused when not text, too long or holding a control character', () => {
    const problem = (v: unknown): string | undefined =>
      flowRecordProblem({ ...flowRecord(), dnsQueryName: v });
    expect(problem(5)).toBe('dnsQueryName is not a string');
    expect(problem('a'.repeat(MAX_DNS_NAME_CHARS + 1))).toBe(
      `dnsQueryName is longer than ${MAX_DNS_NAME_CHARS} characters`,
    );
    expect(problem('a\nb')).toMatch(/^dnsQueryName holds a control character/);
    expect(problem('example.com')).toBeUndefined();
  });
});

describe('DnsNames', () => {
  /** A flow key whose first octet tells it apart. */
  function key(k: number): Uint8Array {
    const out = new Uint8Array(FLOW_KEY.size);
    out[0] = k;
    return out;
  }

  /** A drain of flow_dns_names: [key, id, wire name] entries. */
  function names(entries: [number, number, Uint8Array][]) {
    const keys = new Uint8Array(entries.length * FLOW_KEY.size);
    const values = new Uint8Array(entries.length * DNS_NAME.size);
    const vv = new DataView(values.buffer);
    entries.forEach(([k, id, name], i) => {
      keys.set(key(k), i * FLOW_KEY.size);
      const v = i * DNS_NAME.size;
      vv.setUint16(v + DNS_NAME.fields.id.offset, id, true);
      values[v + DNS_NAME.fields.len.offset] = name.length;
      values.set(name, v + DNS_NAME.fields.name.offset);
    });
    return { count: entries.length, keys, values };
  }

  /** Evicted flows: [key, dnsTransactionId or undefined], as records with their key batch. */
  function evicted(flows: [number, number | undefined][]) {
    const keys = new Uint8Array(flows.length * FLOW_KEY.size);
    const records = flows.map(([k, id], i) => {
      keys.set(key(k), i * FLOW_KEY.size);
      const r = flowRecord();
      if (id !== undefined) r.dnsTransactionId = id;
      return r;
    });
    return { records, indexes: flows.map((_, i) => i), keys };
  }

  function attach(d: DnsNames, flows: ReturnType<typeof evicted>, batch: ReturnType<typeof names>) {
    d.attach(flows.records, flows.indexes, flows.keys, batch, DNS_NAME.size);
    return flows.records.map((r) => r.dnsQueryName);
  }

  it('puts each name on the flow and answer it belongs to; other answers are misses', () => {
    const d = new DnsNames();
    const flows = evicted([
      [1, 10],
      [2, 20],
      [3, undefined],
      [4, 40],
      [5, 50],
    ]);
    const got = attach(
      d,
      flows,
      names([
        [1, 10, wire('a', 'test')],
        [2, 21, wire('b', 'test')], // a later answer of flow 2 than the one its record carries
        [3, 30, wire('c', 'test')], // a flow whose record has no answer (it counts in the next eviction)
        [5, 50, new Uint8Array([0xc0, 0x0c])], // not a name
      ]),
    );
    expect(got).toEqual(['a.test', undefined, undefined, undefined, undefined]);
    // Flow 2 (id mismatch) and 4 (no name) missed, 5 (no valid name) unreadable.
    expect(d.missDelta()).toEqual({ missed: 2, unreadable: 1 });
    expect(d.missDelta()).toEqual({ missed: 0, unreadable: 0 });
  });

  it('keeps a name whose answer is not evicted yet for one more eviction, no longer', () => {
    const d = new DnsNames();
    attach(
      d,
      evicted([]),
      names([
        [2, 21, wire('b', 'test')],
        [3, 30, wire('c', 'test')],
      ]),
    );
    expect(attach(d, evicted([[2, 21]]), names([]))).toEqual(['b.test']);
    // Flow 3's name waited one eviction for its answer, and is gone now.
    expect(attach(d, evicted([]), names([]))).toEqual([]);
    expect(attach(d, evicted([[3, 30]]), names([]))).toEqual([undefined]);
    expect(d.missDelta()).toEqual({ missed: 1, unreadable: 0 });
  });

  it('a newer name of a flow replaces the one waiting', () => {
    const d = new DnsNames();
    attach(d, evicted([]), names([[7, 1, wire('old')]]));
    expect(attach(d, evicted([[7, 2]]), names([[7, 2, wire('new')]]))).toEqual(['new']);
    expect(d.missDelta()).toEqual({ missed: 0, unreadable: 0 });
  });
});
