import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BpfMap, possibleCpus, type DrainResult } from '../../src/datapath/map.js';
import { ObjectSpec, type Collection } from '../../src/datapath/object.js';
import { bpffsDir, kernelGate, testObject, thrown, u32, u64 } from './datapath-helpers.js';

const gate = kernelGate();

const FLOWS = 3000;

function flowKey(i: number): Uint8Array {
  const k = new Uint8Array(48);
  new DataView(k.buffer).setUint32(0, i, true);
  k[47] = (i * 7) & 0xff;
  return k;
}

/** Every CPU's copy differs, so a test sees whether values come back CPU-major and complete. */
function flowValue(i: number, cpus: number): Uint8Array {
  const v = new Uint8Array(96 * cpus);
  const dv = new DataView(v.buffer);
  for (let c = 0; c < cpus; c++) {
    dv.setBigUint64(c * 96, BigInt(i * 10 + c), true);
    v[c * 96 + 95] = (i + c) & 0xff;
  }
  return v;
}

function fillFlows(m: BpfMap): void {
  for (let i = 0; i < FLOWS; i++) m.update(flowKey(i), flowValue(i, possibleCpus()), 'noexist');
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/**
 * Drain output as key index -> value (hex), checking every key is well-formed and appears once.
 * Compared as strings: thousands of deep Uint8Array comparisons would make the test slow.
 */
function entries(r: DrainResult, m: BpfMap): Map<number, string> {
  const out = new Map<number, string>();
  const badKeys: string[] = [];
  for (let e = 0; e < r.count; e++) {
    const key = r.keys.subarray(e * m.keySize, (e + 1) * m.keySize);
    const i = new DataView(key.buffer, key.byteOffset).getUint32(0, true);
    if (hex(key) !== hex(flowKey(i)) || out.has(i)) badKeys.push(hex(key));
    out.set(i, hex(r.values.subarray(e * m.valueBufferSize, (e + 1) * m.valueBufferSize)));
  }
  expect(badKeys).toEqual([]);
  return out;
}

describe.skipIf(gate.skip)(gate.title('datapath maps'), () => {
  let coll: Collection;
  const dirs: string[] = [];

  beforeAll(() => {
    coll = ObjectSpec.open(testObject('test_datapath')).setMaxEntries('test_flows', 4096).load();
  });

  afterAll(() => {
    coll?.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('updates, looks up and deletes, with exact errors for each flag', () => {
    const m = coll.map('test_hash');
    m.update(u32(1), u64(100));
    expect(m.lookup(u32(1))).toEqual(u64(100));
    expect(m.lookup(u32(2))).toBeUndefined();
    m.update(u32(1), u64(101), 'exist');
    expect(m.lookup(u32(1))).toEqual(u64(101));

    const exists = thrown(() => m.update(u32(1), u64(5), 'noexist'));
    expect(exists.code).toBe('EEXIST');
    expect(exists.message).toBe(
      "update map test_hash: file already exists (EEXIST); the key is present and flags is 'noexist'",
    );
    const absent = thrown(() => m.update(u32(2), u64(5), 'exist'));
    expect(absent.code).toBe('ENOENT');
    expect(absent.message).toBe(
      "update map test_hash: no such file or directory (ENOENT); the key is absent and flags is 'exist'",
    );

    expect(m.delete(u32(1))).toBe(true);
    expect(m.delete(u32(1))).toBe(false);
    expect(m.lookup(u32(1))).toBeUndefined();
  });

  it('reports a full map as EMAPFULL', () => {
    const m = coll.map('test_hash');
    for (let i = 0; i < 16; i++) m.update(u32(1000 + i), u64(i));
    const e = thrown(() => m.update(u32(2000), u64(1)));
    expect(e.code).toBe('EMAPFULL');
    expect(e.errno).toBe(7);
    expect(e.message).toBe(
      'update map test_hash: argument list too long (E2BIG); the map holds its max_entries (16); ' +
        'raise max_entries or drain it more often',
    );
    expect([...m.keys()].map((k) => new DataView(k.buffer).getUint32(0, true)).sort()).toEqual(
      Array.from({ length: 16 }, (_, i) => 1000 + i),
    );
    for (let i = 0; i < 16; i++) m.delete(u32(1000 + i));
    expect([...m.keys()]).toEqual([]);
  });

  it('rejects keys and values of the wrong size', () => {
    const m = coll.map('test_hash');
    expect(thrown(() => m.lookup(new Uint8Array(8))).message).toBe(
      "lookup in map test_hash: key is 8 bytes, the map's are 4",
    );
    const f = coll.map('test_flows');
    const e = thrown(() => f.update(flowKey(1), new Uint8Array(96)));
    expect(e.code).toBe('EARG');
    expect(e.message).toBe(
      `update map test_flows: value buffer is 96 bytes, the map needs ${96 * possibleCpus()} (96 bytes x ${possibleCpus()} possible cpus)`,
    );
  });

  it('reads per-cpu values CPU-major and sums them', () => {
    const m = coll.map('echo_counts');
    const cpus = possibleCpus();
    expect(m.perCpu).toBe(true);
    expect(m.valueBufferSize).toBe(16 * cpus);
    const v = new Uint8Array(m.valueBufferSize);
    const dv = new DataView(v.buffer);
    for (let c = 0; c < cpus; c++) {
      dv.setBigUint64(c * 16, BigInt(5 + c), true);
      dv.setBigUint64(c * 16 + 8, BigInt(1000 * (c + 1)), true);
    }
    m.update(u32(0), v);
    const got = m.lookup(u32(0))!;
    expect(got).toEqual(v);
    expect(m.sumPerCpuU64(got, 0)).toBe(
      Array.from({ length: cpus }, (_, c) => 5 + c).reduce((a, b) => a + b),
    );
    expect(m.sumPerCpuU64(got, 8)).toBe(
      Array.from({ length: cpus }, (_, c) => 1000 * (c + 1)).reduce((a, b) => a + b),
    );
    m.update(u32(0), new Uint8Array(m.valueBufferSize));
  });

  it('drains in batch and iterate modes to identical, exact contents', () => {
    const m = coll.map('test_flows');
    const cpus = possibleCpus();
    fillFlows(m);
    const batch = entries(m.drain({ mode: 'batch' }), m);
    expect([...m.keys()]).toEqual([]);
    fillFlows(m);
    const iterate = entries(m.drain({ mode: 'iterate' }), m);
    expect([...m.keys()]).toEqual([]);
    fillFlows(m);
    // A batch of one entry hits buckets holding two: the kernel answers ENOSPC until it grows.
    const small = entries(m.drain({ mode: 'batch', batchSize: 1 }), m);
    expect([...m.keys()]).toEqual([]);

    const expected = Array.from({ length: FLOWS }, (_, i): [number, string] => [i, hex(flowValue(i, cpus))]);
    const sorted = (x: Map<number, string>): [number, string][] => [...x].sort((a, b) => a[0] - b[0]);
    expect(sorted(batch)).toEqual(expected);
    expect(sorted(iterate)).toEqual(expected);
    expect(sorted(small)).toEqual(expected);
    expect(m.drain().count).toBe(0);
  });

  it('stops at max and leaves the rest for the next drain', () => {
    const m = coll.map('test_flows');
    fillFlows(m);
    const first = m.drain({ mode: 'iterate', max: 1000 });
    expect(first.count).toBe(1000);
    const firstKeys = [...entries(first, m).keys()];
    const second = m.drain({ mode: 'batch', max: 1000, batchSize: 256 });
    // A batch never splits a hash bucket, so the cap can leave up to a bucket behind.
    expect(second.count).toBeGreaterThan(990);
    expect(second.count).toBeLessThanOrEqual(1000);
    const secondKeys = [...entries(second, m).keys()];
    const rest = [...entries(m.drain(), m).keys()];
    expect([...firstKeys, ...secondKeys, ...rest].sort((a, b) => a - b)).toEqual(
      Array.from({ length: FLOWS }, (_, i) => i),
    );
  });

  it('refuses to drain an array map', () => {
    const e = thrown(() => coll.map('echo_counts').drain());
    expect(e.code).toBe('EARG');
    expect(e.message).toBe(
      'drain map echo_counts: array maps cannot delete entries; read them with lookup() instead',
    );
  });

  it('opens a pinned map from another process view', () => {
    const dir = bpffsDir('map-pinned');
    dirs.push(dir);
    const pinned = ObjectSpec.open(testObject('test_datapath')).load({ pinDir: dir });
    try {
      pinned.map('test_hash').update(u32(42), u64(4242));
      const m = BpfMap.openPinned(`${dir}/maps/test_hash`);
      expect([m.name, m.type, m.keySize, m.valueSize, m.maxEntries]).toEqual(['test_hash', 1, 4, 8, 16]);
      expect(m.lookup(u32(42))).toEqual(u64(4242));
      m.close();
      expect(thrown(() => m.lookup(u32(42))).code).toBe('ECLOSED');
    } finally {
      pinned.close();
    }
    const e = thrown(() => BpfMap.openPinned(`${dir}/maps/nope`));
    expect(e.message).toBe(
      `open pinned map ${dir}/maps/nope: no such file or directory (ENOENT); check the instance name and that the agent loaded it`,
    );
  });
});
