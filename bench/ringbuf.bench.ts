/**
 * Ring-buffer drain rate: the mmap reader (src/datapath/ringbuf.ts, no FFI call per record) against
 * libbpf's ring_buffer__consume with a koffi callback per record, on the same ring in the same run.
 * Records are flow_event-sized (152 bytes), written by bpf/test_datapath.c's fill_ring through
 * BPF_PROG_TEST_RUN between timed drains; each reader decodes the same four fields of every record.
 */
import koffi from 'koffi';
import type { BpfMap } from '../src/datapath/map.js';
import { libbpf, ringBufferSampleFnPointer, type Ptr } from '../src/datapath/libbpf.js';
import { ObjectSpec, type Collection } from '../src/datapath/object.js';
import { RingBufferReader } from '../src/datapath/ringbuf.js';
import { synchronousBenchmark, type BenchContext } from './lib.js';

const RING_BYTES = 16 << 20;
const RECORD_BYTES = 152;
const PER_RUN = 100;

/** The libbpf callback path, as a same-run baseline: one native-to-JS call per record. */
export class LibbpfRingBuffer {
  readonly #rb: Ptr;
  readonly #cb: Ptr;

  constructor(map: BpfMap, onRecord: (data: Ptr, size: number) => void) {
    this.#cb = koffi.register((_ctx: Ptr | null, data: Ptr, size: number | bigint): number => {
      onRecord(data, Number(size));
      return 0;
    }, ringBufferSampleFnPointer());
    const rb = libbpf().ring_buffer__new(map.fd, this.#cb, null, null);
    if (rb === null) {
      koffi.unregister(this.#cb);
      throw new Error(`ring_buffer__new on ${map.name} failed: errno ${koffi.errno()}`);
    }
    this.#rb = rb;
  }

  /** Consumes every available record; returns how many. */
  consume(): number {
    const n = libbpf().ring_buffer__consume(this.#rb);
    if (n < 0) throw new Error(`ring_buffer__consume failed: ${n}`);
    return n;
  }

  close(): void {
    libbpf().ring_buffer__free(this.#rb);
    koffi.unregister(this.#cb);
  }
}

function fill(coll: Collection): number {
  const cfg = coll.map('rb_config');
  const key = new Uint8Array(4);
  const v = cfg.lookup(key)!;
  const dv = new DataView(v.buffer);
  dv.setUint32(0, PER_RUN, true);
  dv.setUint32(4, 0, true);
  dv.setUint32(8, RECORD_BYTES, true);
  cfg.update(key, v);
  const fits = Math.floor((RING_BYTES - 1) / (RECORD_BYTES + 8));
  coll.program('fill_ring').testRun(new Uint8Array(64), { repeat: Math.floor(fits / PER_RUN) });
  return Math.floor(fits / PER_RUN) * PER_RUN;
}

function run(ctx: BenchContext): void {
  const object = new URL('../../bpf/test_datapath.o', import.meta.url).pathname;
  const coll = ObjectSpec.open(object).setMaxEntries('events', RING_BYTES).load();
  const rounds = ctx.quick ? 4 : 12;
  try {
    const events = coll.map('events');

    // Same decode in both paths: seq (two u32), size, check, first slot.
    let sum = 0;
    const reader = new RingBufferReader(events);
    const onView = (view: DataView, offset: number, length: number): void => {
      sum +=
        view.getUint32(offset, true) +
        view.getUint32(offset + 4, true) +
        view.getUint32(offset + 8, true) +
        view.getUint32(offset + 12, true) +
        view.getUint32(offset + 16, true) +
        length;
    };
    let jsBest = 0;
    for (let r = 0; r < rounds; r++) {
      const written = fill(coll);
      const t0 = process.hrtime.bigint();
      const n = reader.drain(onView);
      const ns = Number(process.hrtime.bigint() - t0);
      if (n !== written) throw new Error(`js reader drained ${n} records, ${written} were written`);
      jsBest = Math.max(jsBest, (n / ns) * 1e9);
    }
    reader.close();

    const base = new LibbpfRingBuffer(events, (data, size) => {
      // koffi.decode with an offset reads native memory without creating a view per record.
      sum +=
        (koffi.decode(data, 0, 'uint32_t') as number) +
        (koffi.decode(data, 4, 'uint32_t') as number) +
        (koffi.decode(data, 8, 'uint32_t') as number) +
        (koffi.decode(data, 12, 'uint32_t') as number) +
        (koffi.decode(data, 16, 'uint32_t') as number) +
        size;
    });
    let cbBest = 0;
    for (let r = 0; r < Math.min(rounds, 4); r++) {
      const written = fill(coll);
      const t0 = process.hrtime.bigint();
      const n = base.consume();
      const ns = Number(process.hrtime.bigint() - t0);
      if (n !== written) throw new Error(`libbpf reader consumed ${n} records, ${written} were written`);
      cbBest = Math.max(cbBest, (n / ns) * 1e9);
    }
    base.close();
    if (sum === 0) throw new Error('nothing decoded');

    ctx.report({
      name: 'ringbuf.js_reader',
      value: jsBest,
      unit: 'records/s',
      baseline: { name: 'ringbuf.libbpf_callback', value: cbBest },
      target: { value: 10e6, better: 'higher' },
      note: `${RECORD_BYTES}-byte records, 5 fields decoded, best of ${rounds} drains of a full 16 MiB ring`,
    });
    ctx.report({
      name: 'ringbuf.js_reader_vs_libbpf_callback',
      value: jsBest / cbBest,
      unit: 'x',
      target: { value: 10, better: 'higher' },
    });
  } finally {
    coll.close();
  }
}

export default synchronousBenchmark(run);
