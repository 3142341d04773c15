/**
 * ns per flow of decodeFlowMapBatch: a drain of 100k IPv4 flows of the per-CPU flow map with 2
 * possible CPUs turned into FlowRecords, next to a same-run floor that reads the same raw fields
 * (per-CPU merge included) into a Float64Array without building a string or an object. The ratio
 * is what records and their text cost over reading the bytes at all. A third figure decodes the
 * same flows as IPv6, against the IPv4 figure.
 *
 * The buffers are built here as BpfMap.drain returns them, so no kernel is needed. The flows are
 * what a busy server's map holds: 100k distinct client addresses scattered over the address space
 * (so the decoder's text caches hardly ever hit on that side), a pool of 1000 servers, TCP and UDP, a few
 * MAC pairs (the host and its gateways), and per flow packets on CPU 0 only, CPU 1 only or both.
 * Every round decodes the whole drain after a full GC; the figure is the best round.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  FLOW_KEY,
  FLOW_VALUE,
  FLOW_VALUE_STRIDE,
  decodeFlowMapBatch,
  type RawMapBatch,
} from '../src/datapath/flow/types.js';
import { u64 } from '../src/datapath/layout.js';
import { synchronousBenchmark } from './lib.js';

const CPUS = 2;
const TARGET_NS = 500;
/** Float64 words per flow the floor writes. */
const FLOOR_WORDS = 16;

/** mulberry32: a small deterministic PRNG, so every run decodes the same flows. */
function prng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const K = FLOW_KEY.fields;
const V = FLOW_VALUE.fields;
const MACS = [
  [0x02, 0x42, 0xac, 0x11, 0x00, 0x02],
  [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
  [0x00, 0x1b, 0x21, 0x3a, 0x4f, 0x90],
  [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff],
];

/**
 * A drain result of `flows` flows of one family with CPUS slots each. Client addresses are all
 * distinct and scattered over 10.0.0.0/8 (or 2001:db8::/32), the worst case for the decoder's
 * text caches; servers come from a pool of 1000.
 */
function drainResult(flows: number, family: 4 | 6): { batch: RawMapBatch; valueBufferSize: number } {
  const rand = prng(7);
  const valueBufferSize = FLOW_VALUE_STRIDE * CPUS;
  const keys = new Uint8Array(flows * FLOW_KEY.size);
  const values = new Uint8Array(flows * valueBufferSize);
  const kv = new DataView(keys.buffer);
  const vv = new DataView(values.buffer);
  const setU64 = (o: number, n: number): void => vv.setBigUint64(o, BigInt(n), true);
  for (let i = 0; i < flows; i++) {
    const k = i * FLOW_KEY.size;
    const tcp = rand() < 0.7;
    const server = Math.floor(rand() * 1000);
    // A bijection of i, so every client differs and neighbours share no prefix.
    const client = Math.imul(i, 0x9e3779b1) & 0xffffff;
    const src = k + K.src_ip.offset;
    const dst = k + K.dst_ip.offset;
    if (family === 4) {
      keys.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff], src);
      keys.set([10, client >>> 16, (client >>> 8) & 255, client & 255], src + 12);
      keys.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff], dst);
      keys.set([198, 51, 100 + (server >>> 8), server & 255], dst + 12);
    } else {
      keys.set([0x20, 0x01, 0x0d, 0xb8, 0, 1, client >>> 16, (client >>> 8) & 255], src);
      keys.set([0, 0, 0, 0, 0, 0, 0, 1 + (client & 255)], src + 8);
      keys.set([0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, server >>> 8, server & 255], dst);
    }
    kv.setUint32(k + K.if_index.offset, 2 + (i & 1), true);
    kv.setUint16(k + K.src_port.offset, 1024 + Math.floor(rand() * 64000), true);
    kv.setUint16(k + K.dst_port.offset, tcp ? 443 : 53, true);
    kv.setUint16(k + K.eth_type.offset, family === 4 ? 0x0800 : 0x86dd, true);
    keys[k + K.protocol.offset] = tcp ? 6 : 17;
    keys[k + K.direction.offset] = i & 1;
    keys[k + K.ip_version.offset] = family;
    // 0: CPU 0 only, 1: CPU 1 only, 2: both.
    const which = Math.floor(rand() * 3);
    const mac = MACS[Math.floor(rand() * MACS.length)]!;
    const peer = MACS[(MACS.indexOf(mac) + 1) % MACS.length]!;
    for (let c = 0; c < CPUS; c++) {
      if (which !== 2 && which !== c) continue;
      const v = i * valueBufferSize + c * FLOW_VALUE_STRIDE;
      const packets = 1 + Math.floor(rand() * 1000);
      const first = 3_600_000_000_000 + Math.floor(rand() * 5e9);
      setU64(v + V.packets.offset, packets);
      setU64(v + V.bytes.offset, packets * (60 + Math.floor(rand() * 1400)));
      setU64(v + V.first_seen_ns.offset, first);
      setU64(v + V.last_seen_ns.offset, first + Math.floor(rand() * 5e9));
      vv.setUint16(v + V.tcp_flags.offset, tcp ? 0x18 | (c === 0 ? 0x02 : 0x10) : 0, true);
      values[v + V.dscp.offset] = 0;
      values.set(mac, v + V.src_mac.offset);
      values.set(peer, v + V.dst_mac.offset);
      vv.setUint32(v + V.sampling.offset, 0, true);
    }
  }
  return { batch: { count: flows, keys, values }, valueBufferSize };
}

/**
 * The floor: every field a record carries, read from the same bytes with the same per-CPU merge,
 * written as numbers (addresses as 32-bit words, MACs as two words each).
 */
function readRaw(batch: RawMapBatch, valueBufferSize: number, out: Float64Array): number {
  const { count, keys, values } = batch;
  const kv = new DataView(keys.buffer, keys.byteOffset, keys.byteLength);
  const vv = new DataView(values.buffer, values.byteOffset, values.byteLength);
  const cpus = valueBufferSize / FLOW_VALUE_STRIDE;
  let n = 0;
  for (let i = 0; i < count; i++) {
    let packets = 0;
    let bytes = 0;
    let first = Infinity;
    let last = -1;
    let flags = 0;
    let latest = -1;
    for (let c = 0; c < cpus; c++) {
      const v = i * valueBufferSize + c * FLOW_VALUE_STRIDE;
      const p = u64(vv, v + V.packets.offset);
      if (p === 0) continue;
      packets += p;
      bytes += u64(vv, v + V.bytes.offset);
      const f = u64(vv, v + V.first_seen_ns.offset);
      const l = u64(vv, v + V.last_seen_ns.offset);
      if (f < first) first = f;
      if (l > last) {
        last = l;
        latest = v;
      }
      flags |= vv.getUint16(v + V.tcp_flags.offset, true);
    }
    if (latest < 0) continue;
    const k = i * FLOW_KEY.size;
    const o = n++ * FLOOR_WORDS;
    out[o] = packets;
    out[o + 1] = bytes;
    out[o + 2] = first;
    out[o + 3] = last;
    out[o + 4] = flags;
    out[o + 5] = kv.getUint32(k + K.src_ip.offset + 12, false);
    out[o + 6] = kv.getUint32(k + K.dst_ip.offset + 12, false);
    out[o + 7] = kv.getUint16(k + K.src_port.offset, true);
    out[o + 8] = kv.getUint16(k + K.dst_port.offset, true);
    out[o + 9] = kv.getUint32(k + K.if_index.offset, true);
    out[o + 10] = kv.getUint16(k + K.eth_type.offset, true);
    out[o + 11] =
      keys[k + K.protocol.offset]! |
      (keys[k + K.direction.offset]! << 8) |
      (keys[k + K.ip_version.offset]! << 16);
    out[o + 12] = values[latest + V.dscp.offset]!;
    // MACs as 48-bit numbers.
    out[o + 13] =
      vv.getUint32(latest + V.src_mac.offset, false) * 65536 +
      vv.getUint16(latest + V.src_mac.offset + 4, false);
    out[o + 14] =
      vv.getUint32(latest + V.dst_mac.offset, false) * 65536 +
      vv.getUint16(latest + V.dst_mac.offset + 4, false);
    out[o + 15] = vv.getUint32(latest + V.sampling.offset, true) + keys[k + K.tunnel_type.offset]!;
  }
  return n;
}

/** A full collection before each timed round, so one round's garbage is not collected in the next. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

/** Best ns per flow over `rounds` timed runs of fn over the whole batch. */
function bestNsPerFlow(rounds: number, flows: number, fn: () => number): number {
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    collectGarbage();
    const start = process.hrtime.bigint();
    const decoded = fn();
    const ns = Number(process.hrtime.bigint() - start);
    if (decoded !== flows) throw new Error(`flow-decode bench: decoded ${decoded} of ${flows} flows`);
    best = Math.min(best, ns / flows);
  }
  return best;
}

export default synchronousBenchmark((ctx) => {
  const flows = 100_000;
  const rounds = ctx.quick ? 3 : 15;
  const v4 = drainResult(flows, 4);
  const v6 = drainResult(flows, 6);
  const out = new Float64Array(flows * FLOOR_WORDS);
  const offsetMs = 1_700_000_000_000;
  const floorRun = (): number => readRaw(v4.batch, v4.valueBufferSize, out);
  const decodeRun = (d: typeof v4) => (): number =>
    decodeFlowMapBatch(d.batch, d.valueBufferSize, offsetMs).length;
  // All warm up before any is timed, so none runs while another is still being compiled.
  for (let w = 0; w < 3; w++) {
    floorRun();
    decodeRun(v4)();
    decodeRun(v6)();
  }
  const floor = bestNsPerFlow(rounds, flows, floorRun);
  const ipv4 = bestNsPerFlow(rounds, flows, decodeRun(v4));
  const ipv6 = bestNsPerFlow(rounds, flows, decodeRun(v6));
  const note = `${flows} flows, ${CPUS} CPUs, best of ${rounds}`;
  const baseline = { name: 'flow_decode.raw_fields_floor', value: floor };
  ctx.report({ ...baseline, unit: 'ns/flow', note: `${note}; numbers only, no strings or objects` });
  const v4Figure = { name: 'flow_decode.decode_flow_map_batch_ipv4', value: ipv4 };
  ctx.report({
    ...v4Figure,
    unit: 'ns/flow',
    baseline,
    target: { value: TARGET_NS, better: 'lower' },
    note,
  });
  // No target for IPv6; its text costs more to build, and the IPv4 figure is its comparison.
  ctx.report({
    name: 'flow_decode.decode_flow_map_batch_ipv6',
    value: ipv6,
    unit: 'ns/flow',
    baseline: v4Figure,
    note,
  });
});
