import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatapathError } from '../../src/datapath/errors.js';
import type { BpfMap } from '../../src/datapath/map.js';
import { ObjectSpec, type Collection } from '../../src/datapath/object.js';
import { RingBufferReader } from '../../src/datapath/ringbuf.js';
import { icmpEchoFrame, kernelGate, testObject } from './datapath-helpers.js';

const gate = kernelGate();

/* struct rb_config (bpf/test_datapath.c): records_per_run@0 discard_every@4 fixed_size@8
 * next_seq@16 reserve_failed@24 */
interface FillConfig {
  perRun: number;
  discardEvery?: number;
  fixedSize?: number;
}

const KEY0 = new Uint8Array(4);

function configure(m: BpfMap, c: FillConfig): { nextSeq: number; reserveFailed: number } {
  const v = m.lookup(KEY0)!;
  const dv = new DataView(v.buffer);
  dv.setUint32(0, c.perRun, true);
  dv.setUint32(4, c.discardEvery ?? 0, true);
  dv.setUint32(8, c.fixedSize ?? 0, true);
  m.update(KEY0, v);
  return { nextSeq: Number(dv.getBigUint64(16, true)), reserveFailed: Number(dv.getBigUint64(24, true)) };
}

function counters(m: BpfMap): { nextSeq: number; reserveFailed: number } {
  const dv = new DataView(m.lookup(KEY0)!.buffer);
  return { nextSeq: Number(dv.getBigUint64(16, true)), reserveFailed: Number(dv.getBigUint64(24, true)) };
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

describe.skipIf(gate.skip)(gate.title('datapath ring buffer reader'), () => {
  let coll: Collection;
  let reader: RingBufferReader;
  let page: number;
  const frame = icmpEchoFrame();

  /** Runs fill_ring `runs` times (records_per_run records each) and returns the first seq written. */
  function fill(c: FillConfig, runs: number): number {
    const { nextSeq } = configure(coll.map('rb_config'), c);
    const r = coll.program('fill_ring').testRun(frame, { repeat: runs });
    expect(r.retval).toBe(0);
    return nextSeq;
  }

  /**
   * Drains and decodes: returns the seqs in order, the records whose contents are wrong, and how
   * many records crossed the end of the ring (contiguous only thanks to the double mapping).
   */
  function drainAll(max?: number): { seqs: number[]; bad: string[]; straddled: number; n: number } {
    const seqs: number[] = [];
    const bad: string[] = [];
    let straddled = 0;
    const n = reader.drain((view, offset, length) => {
      const seq = view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 2 ** 32;
      seqs.push(seq);
      if (view.getUint32(offset + 8, true) !== length) bad.push(`${seq}: size ${length}`);
      if (view.getUint32(offset + 12, true) !== Math.imul(seq >>> 0, 2654435761) >>> 0)
        bad.push(`${seq}: check`);
      for (let i = 0; 16 + 8 * i < length; i++) {
        if (view.getUint32(offset + 16 + 8 * i, true) !== seq + i) bad.push(`${seq}: slot ${i}`);
      }
      const dataOffset = offset - 8 - page;
      if (dataOffset + 8 + length > reader.size) straddled++;
    }, max);
    return { seqs, bad, straddled, n };
  }

  beforeAll(() => {
    coll = ObjectSpec.open(testObject('test_datapath')).load();
    reader = new RingBufferReader(coll.map('events'));
    page = reader.view.byteLength - 2 * reader.size;
  });

  afterAll(() => {
    reader?.close();
    coll?.close();
  });

  it('maps the ring as the kernel lays it out', () => {
    expect(reader.size).toBe(64 * 1024);
    expect(page).toBeGreaterThanOrEqual(4096);
    expect(reader.pendingBytes()).toBe(0);
    expect(reader.drain(() => undefined)).toBe(0);
  });

  it('returns exactly the records written, in order, skipping discarded ones', () => {
    const first = fill({ perRun: 50, discardEvery: 7 }, 10);
    const { seqs, bad, n } = drainAll();
    expect(bad).toEqual([]);
    expect(seqs).toEqual(range(first, first + 500).filter((s) => s % 7 !== 6));
    expect(n).toBe(seqs.length);
    expect(reader.pendingBytes()).toBe(0);
    expect(counters(coll.map('rb_config')).reserveFailed).toBe(0);
  });

  it('reads records across the end of the ring, round after round', () => {
    let expected: number[] = [];
    let got: number[] = [];
    let straddled = 0;
    for (let round = 0; round < 12; round++) {
      const first = fill({ perRun: 40 }, 10);
      expected = expected.concat(range(first, first + 400));
      const r = drainAll();
      expect(r.bad).toEqual([]);
      got = got.concat(r.seqs);
      straddled += r.straddled;
    }
    expect(got).toEqual(expected);
    // 12 rounds of ~37 KB through a 64 KB ring wrap it about seven times.
    expect(straddled).toBeGreaterThan(0);
    expect(counters(coll.map('rb_config')).reserveFailed).toBe(0);
  });

  it('returns what fit when the ring fills up; the program counts the rest', () => {
    const before = counters(coll.map('rb_config')).reserveFailed;
    const first = fill({ perRun: 50, fixedSize: 152 }, 10);
    // Records take 152 + 8 bytes: 409 fit in 64 KiB, the other 91 fail to reserve.
    expect(counters(coll.map('rb_config')).reserveFailed - before).toBe(91);
    const { seqs, bad } = drainAll();
    expect(bad).toEqual([]);
    expect(seqs).toEqual(range(first, first + 409));
  });

  it('stops at max and resumes where it stopped', () => {
    const first = fill({ perRun: 100 }, 1);
    const a = drainAll(30);
    expect(a.n).toBe(30);
    expect(a.seqs).toEqual(range(first, first + 30));
    const b = drainAll();
    expect(b.seqs).toEqual(range(first + 30, first + 100));
  });

  it('counts the records up to a throwing handler as consumed', () => {
    const first = fill({ perRun: 10 }, 1);
    let calls = 0;
    expect(() =>
      reader.drain(() => {
        if (++calls === 5) throw new Error('handler failed');
      }),
    ).toThrow('handler failed');
    expect(drainAll().seqs).toEqual(range(first + 5, first + 10));
  });

  it('refuses a map that is not a ring buffer, and use after close', () => {
    let err: unknown;
    try {
      new RingBufferReader(coll.map('test_hash'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DatapathError);
    expect((err as DatapathError).code).toBe('EARG');
    expect((err as DatapathError).message).toBe(
      'read ring buffer test_hash: map type 1 is not a ring buffer (27)',
    );

    const other = new RingBufferReader(coll.map('events'));
    other.close();
    other.close();
    expect(() => other.drain(() => undefined)).toThrow('read ring buffer events: the reader was closed');
  });
});
