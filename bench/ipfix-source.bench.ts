/**
 * Records per second the ipfix source decodes on one core: prebuilt datagrams as exporters send
 * them, decoded by the source's decoder (src/sources/ipfix/decode.ts) into FlowRecords, as the
 * socket hands them over. Target: 1 million records/s (issue 14).
 *
 * The datagrams are what softflowd sends (its IPv4 template of 16 fields: addresses, sysUpTime
 * times, counters, interfaces, direction, end reason, ports, protocol, flags, IP version, ToS),
 * 30 records to a 1200-byte datagram, for 100k flows with distinct client addresses scattered over
 * 10.0.0.0/8 (so the address text cache hardly ever hits on that side) and a pool of 1000 servers.
 * One figure for IPFIX, one for NetFlow v9 (same template, its own header and time base), and a
 * same-run floor that walks the same bytes summing the counters, without building records.
 * Every round decodes all datagrams after a GC; each figure is the best of its rounds.
 *
 * Two more figures decode what rxflow's own ipfix sink sends (UDP-sized messages of its IPv4
 * template, 100k records), without and with an enterprise number: with it, the records carry and
 * the source reads back rxflow's fields (those of the sink bench: every 3rd record RTTs, every 4th
 * DNS, every 10th a drop reason, every 2nd a namespace).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { FlowRecord } from '../src/records/flow.js';
import { MessageBuilder } from '../src/sinks/ipfix/encode.js';
import { IpfixDecoder, newExporter, newReport } from '../src/sources/ipfix/decode.js';
import { be, ipfixMessage, set, v9Packet, type Field } from '../test/fixtures/ipfix-messages.js';
import { withOwnFields } from './ipfix-sink.bench.js';
import { pool } from './kafka.bench.js';
import { synchronousBenchmark } from './lib.js';

const TARGET_RECORDS_PER_S = 1_000_000;
const FLOWS = 100_000;
const PER_DATAGRAM = 30;
const EXPORT_S = 1_780_000_000;

/** softflowd's IPv4 template (1024), as it sends it for -v 9 and -v 10. */
const FIELDS: Field[] = [
  { ie: 8, length: 4 },
  { ie: 12, length: 4 },
  { ie: 22, length: 4 },
  { ie: 21, length: 4 },
  { ie: 1, length: 4 },
  { ie: 2, length: 4 },
  { ie: 10, length: 4 },
  { ie: 14, length: 4 },
  { ie: 61, length: 1 },
  { ie: 136, length: 1 },
  { ie: 7, length: 2 },
  { ie: 11, length: 2 },
  { ie: 4, length: 1 },
  { ie: 6, length: 1 },
  { ie: 60, length: 1 },
  { ie: 5, length: 1 },
];
const RECORD_BYTES = FIELDS.reduce((n, f) => n + f.length, 0);

function prng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function records(): Buffer[] {
  const rand = prng(11);
  const out: Buffer[] = [];
  for (let i = 0; i < FLOWS; i++) {
    const r = Buffer.alloc(RECORD_BYTES);
    const client = Math.imul(i, 0x9e3779b1) & 0xffffff;
    const server = Math.floor(rand() * 1000);
    const tcp = rand() < 0.7;
    const packets = 1 + Math.floor(rand() * 1000);
    const first = 1_000_000 + Math.floor(rand() * 50_000);
    let at = 0;
    r.set([10, client >>> 16, (client >>> 8) & 255, client & 255], at);
    r.set([198, 51, 100 + (server >>> 8), server & 255], (at += 4));
    r.writeUInt32BE(first, (at += 4));
    r.writeUInt32BE(first + Math.floor(rand() * 5000), (at += 4));
    r.writeUInt32BE(packets * (60 + Math.floor(rand() * 1400)), (at += 4));
    r.writeUInt32BE(packets, (at += 4));
    r.writeUInt32BE(2, (at += 4));
    r.writeUInt32BE(3, (at += 4));
    r[(at += 4)] = i & 1;
    r[(at += 1)] = 2;
    r.writeUInt16BE(1024 + Math.floor(rand() * 64000), (at += 1));
    r.writeUInt16BE(tcp ? 443 : 53, (at += 2));
    r[(at += 2)] = tcp ? 6 : 17;
    r[(at += 1)] = tcp ? 0x1b : 0;
    r[(at += 1)] = 4;
    r[(at += 1)] = 0;
    out.push(r);
  }
  return out;
}

const templateSet = (setId: number): Buffer =>
  set(
    setId,
    Buffer.concat([
      be(1024, 2),
      be(FIELDS.length, 2),
      ...FIELDS.map((f) => Buffer.concat([be(f.ie, 2), be(f.length, 2)])),
    ]),
  );

/** The datagrams of all flows: the first carries the template too. */
function datagrams(version: 9 | 10): Buffer[] {
  const all = records();
  const out: Buffer[] = [];
  let sequence = 0;
  for (let i = 0; i < all.length; i += PER_DATAGRAM) {
    const sets = [set(1024, Buffer.concat(all.slice(i, i + PER_DATAGRAM)))];
    if (i === 0) sets.unshift(templateSet(version === 10 ? 2 : 0));
    if (version === 10) {
      out.push(ipfixMessage({ exportTimeS: EXPORT_S, sequence, domain: 0 }, ...sets));
      sequence += PER_DATAGRAM;
    } else {
      out.push(
        v9Packet(
          {
            count: PER_DATAGRAM,
            sysUptimeMs: 1_100_000,
            unixSecs: EXPORT_S,
            sequence: ++sequence,
            sourceId: 0,
          },
          ...sets,
        ),
      );
    }
  }
  return out;
}

/** RFC 5612's enterprise number for documentation. */
const PEN = 32473;

/** rxflow's sink's messages of FLOWS records, with rxflow's fields under PEN when `own`. */
function rxflowDatagrams(own: boolean): Buffer[] {
  const records = own ? withOwnFields(pool(FLOWS)) : pool(FLOWS);
  const builder = new MessageBuilder(1472, own ? PEN : undefined);
  const out: Buffer[] = [];
  let sequence = 0;
  builder.begin(true);
  for (const r of records) {
    if (builder.add(r) === 1) continue;
    sequence += builder.records;
    out.push(Buffer.from(builder.finish(EXPORT_S, sequence - builder.records, 0)));
    builder.begin(false);
    if (builder.add(r) !== 1) throw new Error('ipfix source bench: a record did not encode');
  }
  out.push(Buffer.from(builder.finish(EXPORT_S, sequence, 0)));
  return out;
}

const gc = (): void => {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
};

/** Best records/s of `rounds` rounds of decoding every datagram (under `pen`, when given). */
function decodeRate(input: Buffer[], rounds: number, pen?: number): number {
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    const report = newReport();
    const decoder = new IpfixDecoder(1_800_000, report, pen);
    const exporter = newExporter('192.0.2.1');
    const now = Date.now();
    let n = 0;
    gc();
    const start = process.hrtime.bigint();
    for (const d of input) {
      // Per datagram, as the socket hands them over; the source emits a batch per event-loop turn.
      const out: FlowRecord[] = [];
      decoder.decode(d, exporter, now, out);
      n += out.length;
    }
    const s = Number(process.hrtime.bigint() - start) / 1e9;
    if (n !== FLOWS || report.failed !== 0 || report.lost !== 0)
      throw new Error(`decoded ${n} of ${FLOWS} records`);
    best = Math.max(best, n / s);
  }
  return best;
}

/** The floor: the same bytes walked field by field, counters summed, nothing built. */
function floorRate(rounds: number): number {
  const input = datagrams(10);
  let best = 0;
  let sink = 0;
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    let n = 0;
    for (const d of input) {
      let at = 16;
      while (at < d.length) {
        const id = d.readUInt16BE(at);
        const end = at + d.readUInt16BE(at + 2);
        if (id === 1024) {
          for (let p = at + 4; p + RECORD_BYTES <= end; p += RECORD_BYTES) {
            sink +=
              d.readUInt32BE(p + 16) + d.readUInt32BE(p + 20) + d.readUInt32BE(p) + d.readUInt16BE(p + 34);
            n++;
          }
        }
        at = end;
      }
    }
    const s = Number(process.hrtime.bigint() - start) / 1e9;
    if (n !== FLOWS) throw new Error(`floor walked ${n} records`);
    best = Math.max(best, n / s);
  }
  if (sink === 0) throw new Error('floor read nothing');
  return best;
}

export default synchronousBenchmark((ctx) => {
  const rounds = ctx.quick ? 2 : 7;
  const floor = floorRate(rounds);
  ctx.report({ name: 'ipfix_source.floor', value: floor, unit: 'records/s' });
  for (const version of [10, 9] as const) {
    ctx.report({
      name: version === 10 ? 'ipfix_source.decode_ipfix' : 'ipfix_source.decode_v9',
      value: decodeRate(datagrams(version), rounds),
      unit: 'records/s',
      target: { value: TARGET_RECORDS_PER_S, better: 'higher' },
      baseline: { name: 'ipfix_source.floor', value: floor },
    });
  }
  const iana = { name: 'ipfix_source.decode_rxflow_sink', value: decodeRate(rxflowDatagrams(false), rounds) };
  ctx.report({ ...iana, unit: 'records/s', target: { value: TARGET_RECORDS_PER_S, better: 'higher' } });
  ctx.report({
    name: 'ipfix_source.decode_rxflow_sink_enterprise',
    value: decodeRate(rxflowDatagrams(true), rounds, PEN),
    unit: 'records/s',
    target: { value: TARGET_RECORDS_PER_S, better: 'higher' },
    baseline: iana,
  });
});
