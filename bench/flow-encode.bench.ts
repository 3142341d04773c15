/**
 * ns per record to encode flow records for Kafka messages, each encoder next to what the sink did
 * before in the same run:
 * - JSON: writeFlowJson into a slab vs `JSON.stringify` + `Buffer.write` into a slab;
 * - protobuf: writeFlowProto into a slab vs protobufjs `FlowRecord.encode` of a request's records
 *   into one Writer and `finish()`;
 * - protobuf batch entries (FlowBatch field 1): writeFlowProtoField vs protobufjs
 *   `encode(r, w.uint32(10).fork()).ldelim()`.
 *
 * Records are kafka.bench.ts's `pool(50_000)` (decorated IPv4 map-tracer flows), 1000 per request
 * as the sink gets them, every pass over the whole pool. The slab is 1 MiB like the sink's; when a
 * record does not fit, writing starts again at 0, as from a fresh slab. Cases run interleaved and
 * each figure is the best of its rounds: the machine is shared, and load from other work hits all
 * cases alike. Each case's bytes are totalled and compared, so a broken encoder fails the run.
 */
import protobuf from 'protobufjs';
import type { FlowRecord } from '../src/records/flow.js';
import { loadFlowProto } from '../src/kafka/flow-messages.js';
import { writeFlowJson } from '../src/sinks/kafka/json.js';
import { writeFlowProto, writeFlowProtoField } from '../src/sinks/kafka/proto.js';
import { pool } from './kafka.bench.js';
import { synchronousBenchmark, type BenchContext } from './lib.js';

const POOL = 50_000;
const REQUEST = 1000;
const SLAB_BYTES = 1 << 20;
/** ns per record: what one core may spend on encoding for 500k records/s with Kafka framing. */
const TARGET_NS = 800;

interface Case {
  name: string;
  /** Encodes every record once and returns the bytes produced. */
  pass(records: readonly FlowRecord[]): number;
}

function jsonStringify(slab: Buffer): Case {
  return {
    name: 'flow_encode.json_stringify_write',
    pass(records) {
      let bytes = 0;
      let offset = 0;
      for (const r of records) {
        const text = JSON.stringify(r);
        // At most 3 UTF-8 bytes per UTF-16 unit: enough room means write() never truncates.
        if (offset + text.length * 3 > slab.length) offset = 0;
        const n = slab.write(text, offset, 'utf8');
        offset += n;
        bytes += n;
      }
      return bytes;
    },
  };
}

/** A writer into the slab that starts over at 0 when a record does not fit. */
function slabCase(
  name: string,
  slab: Buffer,
  write: (r: FlowRecord, out: Buffer, pos: number) => number,
): Case {
  return {
    name,
    pass(records) {
      let bytes = 0;
      let offset = 0;
      for (const r of records) {
        let end = write(r, slab, offset);
        if (end < 0) {
          offset = 0;
          end = write(r, slab, 0);
          if (end < 0) throw new Error('flow-encode bench: a record does not fit an empty slab');
        }
        bytes += end - offset;
        offset = end;
      }
      return bytes;
    },
  };
}

function protobufjsCase(name: string, encode: (r: FlowRecord, w: protobuf.Writer) => void): Case {
  return {
    name,
    pass(records) {
      let bytes = 0;
      for (let from = 0; from < records.length; from += REQUEST) {
        const writer = protobuf.Writer.create();
        const to = Math.min(records.length, from + REQUEST);
        for (let i = from; i < to; i++) encode(records[i]!, writer);
        bytes += writer.finish().length;
      }
      return bytes;
    },
  };
}

function measure(ctx: BenchContext): void {
  const records = pool(POOL);
  const passes = ctx.quick ? 1 : 4;
  const rounds = ctx.quick ? 2 : 7;
  const slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
  const { FlowRecord: FlowRecordType } = loadFlowProto();
  const pairs: [baseline: Case, candidate: Case][] = [
    [jsonStringify(slab), slabCase('flow_encode.write_flow_json', slab, writeFlowJson)],
    [
      protobufjsCase('flow_encode.protobufjs_encode', (r, w) => {
        FlowRecordType.encode(r, w);
      }),
      slabCase('flow_encode.write_flow_proto', slab, writeFlowProto),
    ],
    [
      protobufjsCase('flow_encode.protobufjs_encode_field', (r, w) => {
        FlowRecordType.encode(r, w.uint32(10).fork()).ldelim();
      }),
      slabCase('flow_encode.write_flow_proto_field', slab, (r, out, pos) =>
        writeFlowProtoField(r, 1, out, pos),
      ),
    ],
  ];
  const cases = pairs.flat();
  const best = new Map<Case, number>(cases.map((c) => [c, Infinity]));
  const bytes = new Map<Case, number>();
  for (const c of cases) bytes.set(c, c.pass(records)); // warm-up: compiled before timing
  for (let round = 0; round < rounds; round++) {
    for (const c of cases) {
      const start = process.hrtime.bigint();
      let total = 0;
      for (let p = 0; p < passes; p++) total += c.pass(records);
      const ns = Number(process.hrtime.bigint() - start);
      if (total !== passes * bytes.get(c)!)
        throw new Error(`flow-encode bench: ${c.name} changed its output`);
      best.set(c, Math.min(best.get(c)!, ns / (passes * records.length)));
    }
  }
  for (const [baseline, candidate] of pairs) {
    if (bytes.get(baseline) !== bytes.get(candidate)) {
      throw new Error(
        `flow-encode bench: ${candidate.name} wrote ${bytes.get(candidate)} bytes, ${baseline.name} ${bytes.get(baseline)}`,
      );
    }
    const note = `${records.length} records x ${passes} per round, best of ${rounds}; ${(bytes.get(candidate)! / records.length).toFixed(1)} bytes/record`;
    ctx.report({ name: baseline.name, value: best.get(baseline)!, unit: 'ns/record', note });
    ctx.report({
      name: candidate.name,
      value: best.get(candidate)!,
      unit: 'ns/record',
      baseline: { name: baseline.name, value: best.get(baseline)! },
      target: { value: TARGET_NS, better: 'lower' },
      note,
    });
  }
}

export default synchronousBenchmark(measure);
