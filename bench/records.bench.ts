/**
 * ns per record of decoding what the sources read from outside, checks included: the
 * kafka_consumer decoder on JSON array messages and on protobuf FlowBatch messages (1000 records
 * each, as the kafka sink writes them), and file_replay's work per line (JSON.parse and the record
 * check). Each is set beside a same-run floor that only parses (JSON.parse, protobuf decode and
 * toObject) without checking, so the ratio is what the checks cost. The records are the varied
 * stream of the tests (IPv4 and IPv6, tunnels, duplicates). Figures are the best of 5 rounds.
 */
import { loadFlowProto } from '../src/kafka/flow-messages.js';
import { flowRecordProblem, type FlowRecord } from '../src/records/flow.js';
import { messageDecoder } from '../src/sources/kafka_consumer.js';
import { variedFlowRecord } from '../test/fixtures/records.js';
import { bestNsPerOp, synchronousBenchmark } from './lib.js';

const PER_MESSAGE = 1000;

export default synchronousBenchmark((ctx) => {
  const messages = ctx.quick ? 5 : 50;
  const total = messages * PER_MESSAGE;
  const records = Array.from({ length: total }, (_, i) => variedFlowRecord(i));
  const proto = loadFlowProto();
  const json: Buffer[] = [];
  const pb: Buffer[] = [];
  for (let m = 0; m < messages; m++) {
    const batch = records.slice(m * PER_MESSAGE, (m + 1) * PER_MESSAGE);
    json.push(Buffer.from(JSON.stringify(batch)));
    pb.push(Buffer.from(proto.FlowBatch.encode(proto.FlowBatch.fromObject({ records: batch })).finish()));
  }
  const lines = records.map((r) => JSON.stringify(r));
  let failures = 0;
  const fail = (): void => void failures++;
  let sink = 0;

  const decodeAll = (encoding: 'json' | 'protobuf', values: Buffer[]) => {
    const decode = messageDecoder(encoding);
    return (): number => {
      const out: FlowRecord[] = [];
      const now = Date.now();
      for (const v of values) decode(v, out, fail, now);
      sink += out.length;
      return total;
    };
  };
  // The floors keep what they parse, as the decoder does: holding 50k records costs the GC alike.
  const jsonFloor = (): number => {
    const out: unknown[] = [];
    for (const v of json) for (const r of JSON.parse(v.toString('utf8')) as unknown[]) out.push(r);
    sink += out.length;
    return total;
  };
  const pbFloor = (): number => {
    const out: unknown[] = [];
    for (const v of pb) {
      const o = proto.FlowBatch.toObject(proto.FlowBatch.decode(v), { longs: Number, defaults: true }) as {
        records: unknown[];
      };
      for (const r of o.records) out.push(r);
    }
    sink += out.length;
    return total;
  };
  const linesChecked = (): number => {
    const out: unknown[] = [];
    const now = Date.now();
    for (const line of lines) {
      const r: unknown = JSON.parse(line);
      if (flowRecordProblem(r, now) === undefined) out.push(r);
    }
    sink += out.length;
    return total;
  };
  const linesFloor = (): number => {
    const out: unknown[] = [];
    for (const line of lines) out.push(JSON.parse(line));
    sink += out.length;
    return total;
  };

  const figures: [string, () => number, string, () => number][] = [
    ['records.kafka_json_decode_check', decodeAll('json', json), 'records.kafka_json_parse_only', jsonFloor],
    [
      'records.kafka_protobuf_decode_check',
      decodeAll('protobuf', pb),
      'records.kafka_protobuf_decode_only',
      pbFloor,
    ],
    ['records.replay_line_parse_check', linesChecked, 'records.replay_line_parse_only', linesFloor],
  ];
  for (const [name, fn, floorName, floor] of figures) {
    fn();
    floor();
    const base = bestNsPerOp(floor);
    const value = bestNsPerOp(fn);
    ctx.report({ name, value, unit: 'ns/record', baseline: { name: floorName, value: base } });
  }
  if (failures !== 0 || sink === 0) throw new Error(`records bench: ${failures} records failed their check`);
});
