/**
 * Records per second the ipfix sink's encoder packs into messages on one core: UDP-sized (1472
 * bytes) and TCP-sized (65535 bytes) messages, templates in every 50th, against the Kafka sink's
 * protobuf writer over the same records in the same run (the baseline the encoder is measured by:
 * IPFIX writes fixed-width fields with no tags or varints, so it should not cost more).
 *
 * Records are the map tracer's kind (decorated IPv4 flows) with their addresses attached as words,
 * as the flow decoder delivers them; a second UDP figure has text addresses only, as records from
 * file_replay or kafka_consumer arrive. Two more UDP figures with an enterprise number (rxflow's
 * own elements appended): the same records, which carry none of those fields, and records that
 * do (compared with the protobuf writer over the same records): every 3rd the three RTTs, every 4th DNS latency, id, code and query name, every 10th a drop
 * reason and TCP state, every 2nd a network namespace.
 */
import { attachIPv4Words, type FlowRecord } from '../src/records/flow.js';
import { writeFlowProto } from '../src/sinks/kafka/proto.js';
import { MAX_MESSAGE_BYTES, MessageBuilder } from '../src/sinks/ipfix/encode.js';
import { pool } from './kafka.bench.js';
import { synchronousBenchmark, type BenchContext } from './lib.js';

const POOL = 50_000;
const TARGET = 2_000_000;

/** The pool's records with their addresses attached as words, as the flow decoder does. */
function withWords(records: FlowRecord[]): FlowRecord[] {
  for (const r of records) {
    const [a, b, c, d] = r.sourceIPv4Address!.split('.').map(Number) as [number, number, number, number];
    attachIPv4Words(r, ((a << 24) | (b << 16) | (c << 8) | d) >>> 0, ((192 << 24) | (2 << 8) | 10) >>> 0);
  }
  return records;
}

const REASONS = ['NETFILTER_DROP', 'NO_SOCKET', 'TCP_INVALID_SEQUENCE', 'SKB_CSUM'];

/**
 * The records with rxflow's own fields on some (see the module comment), set in place as a source
 * sets them (a spread copy would give V8 objects much slower to read, whatever reads them).
 */
export function withOwnFields(records: FlowRecord[]): FlowRecord[] {
  return records.map((r, i) => {
    const out: FlowRecord = r;
    if (i % 3 === 0) {
      out.tcpHandshakeRttMicroseconds = 200 + (i % 5000);
      out.tcpSmoothedRttMicroseconds = 300 + (i % 7000);
      out.tcpSmoothedRttMinMicroseconds = 250 + (i % 3000);
    }
    if (i % 4 === 0) {
      out.dnsLatencyMicroseconds = 1000 + (i % 20_000);
      out.dnsTransactionId = i & 0xffff;
      out.dnsResponseCode = i % 8 === 0 ? 3 : 0;
      out.dnsQueryName = `host${i % 500}.example.org`;
    }
    if (i % 10 === 0) {
      out.dropReason = REASONS[i % REASONS.length]!;
      out.tcpState = 'ESTABLISHED';
    }
    if (i % 2 === 0) out.networkNamespace = `pod-${i % 40}`;
    return out;
  });
}

/** Encodes every record into messages of `maxBytes`; returns the bytes produced. */
function ipfixPass(records: readonly FlowRecord[], builder: MessageBuilder): number {
  let bytes = 0;
  let messages = 0;
  builder.begin(true);
  for (const r of records) {
    let added = builder.add(r);
    if (added === 0) {
      bytes += builder.finish(1_700_000_000, 0, 1).length;
      builder.begin(++messages % 50 === 0);
      added = builder.add(r);
    }
    if (added !== 1) throw new Error('ipfix bench: a record did not encode');
  }
  return bytes + builder.finish(1_700_000_000, 0, 1).length;
}

function protobufPass(records: readonly FlowRecord[], slab: Buffer): number {
  let bytes = 0;
  let pos = 0;
  for (const r of records) {
    if (pos + 512 > slab.length) pos = 0;
    const end = writeFlowProto(r, slab, pos);
    if (end < 0) throw new Error('ipfix bench: protobuf writer refused a record');
    bytes += end - pos;
    pos = end;
  }
  return bytes;
}

function bestRecordsPerSecond(pass: () => number, records: number, passes: number, rounds: number): number {
  pass();
  let best = Infinity;
  for (let round = 0; round < rounds; round++) {
    const start = process.hrtime.bigint();
    for (let p = 0; p < passes; p++) pass();
    best = Math.min(best, Number(process.hrtime.bigint() - start) / (passes * records));
  }
  return 1e9 / best;
}

function measure(ctx: BenchContext): void {
  const text = pool(POOL);
  const worded = withWords(pool(POOL));
  const passes = ctx.quick ? 2 : 10;
  const rounds = ctx.quick ? 2 : 5;
  const slab = Buffer.allocUnsafe(1 << 20);
  const udp = new MessageBuilder(1472);
  const tcp = new MessageBuilder(MAX_MESSAGE_BYTES);
  // RFC 5612's number for documentation.
  const enterprise = new MessageBuilder(1472, 32473);
  const own = withWords(withOwnFields(pool(POOL)));
  const protobuf = bestRecordsPerSecond(() => protobufPass(worded, slab), POOL, passes, rounds);
  const baseline = { name: 'ipfix_sink.protobuf_writer', value: protobuf };
  const note = `${POOL} IPv4 records x ${passes} per round, best of ${rounds}`;
  ctx.report({ ...baseline, unit: 'records/s', note });
  for (const [name, records, builder] of [
    ['ipfix_sink.encode_udp', worded, udp],
    ['ipfix_sink.encode_tcp', worded, tcp],
    ['ipfix_sink.encode_udp_text_addresses', text, udp],
    ['ipfix_sink.encode_udp_enterprise', worded, enterprise],
  ] as const) {
    ctx.report({
      name,
      value: bestRecordsPerSecond(() => ipfixPass(records, builder), POOL, passes, rounds),
      unit: 'records/s',
      baseline,
      target: { value: TARGET, better: 'higher' },
      note,
    });
  }
  // Records with rxflow's fields (of many shapes, which costs every writer) against the protobuf
  // writer, which writes those fields too, and the IANA-only encoder, which leaves them out.
  const ownNote = `${POOL} IPv4 records with rxflow's fields on some x ${passes} per round, best of ${rounds}`;
  const ownBaseline = {
    name: 'ipfix_sink.protobuf_writer_rxflow_fields',
    value: bestRecordsPerSecond(() => protobufPass(own, slab), POOL, passes, rounds),
  };
  ctx.report({ ...ownBaseline, unit: 'records/s', note: ownNote });
  ctx.report({
    name: 'ipfix_sink.encode_udp_rxflow_fields_iana_only',
    value: bestRecordsPerSecond(() => ipfixPass(own, udp), POOL, passes, rounds),
    unit: 'records/s',
    baseline: ownBaseline,
    note: ownNote,
  });
  ctx.report({
    name: 'ipfix_sink.encode_udp_enterprise_rxflow_fields',
    value: bestRecordsPerSecond(() => ipfixPass(own, enterprise), POOL, passes, rounds),
    unit: 'records/s',
    baseline: ownBaseline,
    note: ownNote,
  });
}

export default synchronousBenchmark(measure);
