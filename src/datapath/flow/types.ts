/**
 * The TypeScript side of bpf/flow.h: struct layouts, counter indexes and the decoders that turn
 * the raw bytes of the flow maps (per-CPU, read by BpfMap.drain; see maps.ts) and of
 * flow_events (ring buffer) into FlowRecords. test/kernel/flow-btf.test.ts holds every size and
 * offset here against the BTF of the compiled bpf/flow.o, so a change to the header that is not
 * mirrored here fails a test.
 *
 * Decoding works on whole batches: one DataView per drain result, numbers read in place, no
 * intermediate object per CPU value. Only the records themselves allocate, and the text of
 * addresses and MACs that the caches below do not hold yet.
 */
import { endianness } from 'node:os';
import { attachIPv4Words, type FlowRecord } from '../../records/flow.js';
import { DatapathError } from '../errors.js';
import { addLatency, latencyWord } from './latency.js';
import { struct, sumPerCpu, u64, viewOf, type StructLayout } from '../layout.js';

export type { FieldLayout, StructLayout } from '../layout.js';

export const FLOW_KEY = struct('flow_key', 60, {
  src_ip: [0, 16],
  dst_ip: [16, 16],
  if_index: [32, 4],
  vni: [36, 4],
  netns: [40, 4],
  src_port: [44, 2],
  dst_port: [46, 2],
  eth_type: [48, 2],
  protocol: [50, 1],
  direction: [51, 1],
  icmp_type: [52, 1],
  icmp_code: [53, 1],
  tunnel_type: [54, 1],
  ip_version: [55, 1],
  vlan_id: [56, 2],
  inner_vlan_id: [58, 2],
});

export const FLOW_VALUE = struct('flow_value', 128, {
  packets: [0, 8],
  bytes: [8, 8],
  ip_bytes: [16, 8],
  first_seen_ns: [24, 8],
  last_seen_ns: [32, 8],
  cookie: [40, 8],
  outer_src_ip: [48, 16],
  outer_dst_ip: [64, 16],
  outer_src_port: [80, 2],
  outer_dst_port: [82, 2],
  tcp_flags: [84, 2],
  dscp: [86, 1],
  _pad0: [87, 1],
  src_mac: [88, 6],
  dst_mac: [94, 6],
  sampling: [100, 4],
  handshake_rtt_us: [104, 4],
  srtt_min_us: [108, 4],
  srtt_us: [112, 4],
  dns_latency_us: [116, 4],
  dns_id: [120, 2],
  dns_rcode: [122, 1],
  _pad1: [123, 1],
  dns_answered_us: [124, 4],
});

export const FLOW_EVENT = struct('flow_event', 192, {
  key: [0, 60],
  reason: [60, 4],
  value: [64, 128],
});

export const FLOW_CONFIG = struct('flow_config', 12, {
  sampling: [0, 4],
  features: [4, 4],
  dns_port: [8, 2],
  _pad0: [10, 2],
});

export const DNS_NAME = struct('dns_name', 260, {
  id: [0, 2],
  len: [2, 1],
  _pad0: [3, 1],
  name: [4, 256],
});

/** Every struct shared with the kernel, for layout checks against the object's BTF. */
export const FLOW_LAYOUTS: readonly StructLayout[] = [
  FLOW_KEY,
  FLOW_VALUE,
  FLOW_EVENT,
  FLOW_CONFIG,
  DNS_NAME,
];

/** Indexes of the flow_counters per-CPU array (enum flow_counter, without the FLOW_CTR_ prefix). */
export const FLOW_CTR = {
  PACKETS: 0,
  SAMPLED_OUT: 1,
  PARSE_FAILED: 2,
  MAP_FULL: 3,
  MAP_UPDATE_FAILED: 4,
  RB_RESERVE_FAILED: 5,
  /** Retired (non-IP frames are layer-2 flows now); read only from counters an older object pinned. */
  NON_IP: 6,
  /** Frames deeper than the parser walks (VLAN tags, IPv6 extension headers): counted, in no flow. */
  PARSE_LIMIT: 7,
  MAX: 8,
} as const;

export type FlowCounterName = Exclude<keyof typeof FLOW_CTR, 'MAX'>;

/** The flow programs' verdict: TC_ACT_UNSPEC (TCX_NEXT), so programs attached after them still run. */
export const FLOW_PASS = -1;
export const FLOW_DIRECTION_INGRESS = 0;
export const FLOW_DIRECTION_EGRESS = 1;
export const FLOW_TUNNEL_NONE = 0;
export const FLOW_TUNNEL_VXLAN = 1;
export const FLOW_TUNNEL_GENEVE = 2;
/** Reasons of a flow_event: why the packet went to the ring buffer instead of the map. */
export const FLOW_EVENT_MAP_FULL = 1;
export const FLOW_EVENT_MAP_ERROR = 2;

/** The kernel copies per-CPU values into slots of the value size rounded up to 8 bytes. */
export const FLOW_VALUE_STRIDE = Math.ceil(FLOW_VALUE.size / 8) * 8;

/** IPFIX flowEndReason (136) values. */
export const END_REASON_IDLE_TIMEOUT = 1;
export const END_REASON_ACTIVE_TIMEOUT = 2;
export const END_REASON_END_OF_FLOW = 3;
export const END_REASON_FORCED_END = 4;
/** Lack of resources: what a ring-buffer event is (the map refused it). */
export const END_REASON_LACK_OF_RESOURCES = 5;
/** TCP FIN and RST: a flow with either ended (flowEndReason end of flow). */
const TCP_FIN_RST = 0x01 | 0x04;

/**
 * What an eviction of the flow map tells the decoder for flowEndReason: a flow with FIN or RST
 * ended (3); otherwise, on the final eviction at shutdown, forced end (4); otherwise idle timeout
 * (1) if its last packet is at least `idleNs` older than `nowNs` (kernel monotonic time of the
 * eviction), else active timeout (2).
 */
export interface FlowEviction {
  nowNs: number;
  idleNs: number;
  forced: boolean;
}

/** Kernel monotonic time (bpf_ktime_get_ns's clock) in nanoseconds, as a number. */
export function monotonicNowNs(): number {
  return Number(process.hrtime.bigint());
}

const LE = endianness() === 'LE';

// Offsets as module constants: the decode loop reads them once per field, not through objects.
const K_SRC_IP = FLOW_KEY.fields.src_ip.offset;
const K_DST_IP = FLOW_KEY.fields.dst_ip.offset;
const K_IF_INDEX = FLOW_KEY.fields.if_index.offset;
const K_VNI = FLOW_KEY.fields.vni.offset;
const K_NETNS = FLOW_KEY.fields.netns.offset;
const K_SRC_PORT = FLOW_KEY.fields.src_port.offset;
const K_DST_PORT = FLOW_KEY.fields.dst_port.offset;
const K_ETH_TYPE = FLOW_KEY.fields.eth_type.offset;
const K_PROTOCOL = FLOW_KEY.fields.protocol.offset;
const K_DIRECTION = FLOW_KEY.fields.direction.offset;
const K_ICMP_TYPE = FLOW_KEY.fields.icmp_type.offset;
const K_ICMP_CODE = FLOW_KEY.fields.icmp_code.offset;
const K_TUNNEL_TYPE = FLOW_KEY.fields.tunnel_type.offset;
const K_IP_VERSION = FLOW_KEY.fields.ip_version.offset;
const K_VLAN_ID = FLOW_KEY.fields.vlan_id.offset;
const K_INNER_VLAN_ID = FLOW_KEY.fields.inner_vlan_id.offset;

const V_PACKETS = FLOW_VALUE.fields.packets.offset;
const V_BYTES = FLOW_VALUE.fields.bytes.offset;
const V_IP_BYTES = FLOW_VALUE.fields.ip_bytes.offset;
const V_FIRST_SEEN = FLOW_VALUE.fields.first_seen_ns.offset;
const V_LAST_SEEN = FLOW_VALUE.fields.last_seen_ns.offset;
const V_COOKIE = FLOW_VALUE.fields.cookie.offset;
const V_OUTER_SRC_IP = FLOW_VALUE.fields.outer_src_ip.offset;
const V_OUTER_DST_IP = FLOW_VALUE.fields.outer_dst_ip.offset;
const V_OUTER_SRC_PORT = FLOW_VALUE.fields.outer_src_port.offset;
const V_OUTER_DST_PORT = FLOW_VALUE.fields.outer_dst_port.offset;
const V_TCP_FLAGS = FLOW_VALUE.fields.tcp_flags.offset;
const V_DSCP = FLOW_VALUE.fields.dscp.offset;
const V_SRC_MAC = FLOW_VALUE.fields.src_mac.offset;
const V_DST_MAC = FLOW_VALUE.fields.dst_mac.offset;
const V_SAMPLING = FLOW_VALUE.fields.sampling.offset;

const E_REASON = FLOW_EVENT.fields.reason.offset;
const E_VALUE = FLOW_EVENT.fields.value.offset;

const DEC = Array.from({ length: 256 }, (_, i) => String(i));
/** An octet and its dot: three concatenations per dotted quad instead of seven. */
const DOT = DEC.map((d) => `${d}.`);
const HEX2 = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
/** Hex without leading zeros: the high byte of an IPv6 group. */
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16));

/*
 * Direct-mapped caches of address and MAC text. A drain of a host's flow map repeats a few values
 * in most records: the host's own addresses are one side of nearly every flow, servers and
 * gateways recur, and a host sees a handful of MACs. Building that text per record was most of the
 * decoder's cost, and more so the young-generation GC of 100k records' worth of fresh strings
 * (bench/flow-decode.bench.ts). A slot holds the last key that hashed to it (Fibonacci hashing), so
 * a lookup is a multiply, a shift and a compare, and a miss adds no more than filling the slot.
 * Every slot starts as the text of key 0, which is right for whichever slot key 0 hashes to. The
 * caches only ever hold the exact text of their key, so what a caller gets never depends on them.
 */
const GOLDEN = 0x9e3779b1;
const IPV4_SLOTS_BITS = 12;
const ipv4Words = new Int32Array(1 << IPV4_SLOTS_BITS);
const ipv4Texts = new Array<string>(1 << IPV4_SLOTS_BITS).fill('0.0.0.0');
// Keyed by the four 32-bit words of the address.
const IPV6_SLOTS_BITS = 10;
const ipv6Words = new Int32Array(4 << IPV6_SLOTS_BITS);
const ipv6Texts = new Array<string>(1 << IPV6_SLOTS_BITS).fill('::');
const MAC_SLOTS_BITS = 8;
const macHigh = new Int32Array(1 << MAC_SLOTS_BITS);
const macLow = new Int32Array(1 << MAC_SLOTS_BITS);
const macTexts = new Array<string>(1 << MAC_SLOTS_BITS).fill('00:00:00:00:00:00');

/** The big-endian 32-bit word of the 4 bytes at offset, signed (as the caches keep it). */
function word(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!;
}

/** Dotted quad of an IPv4 address given as its 32-bit word (10.0.0.1 is 0x0a000001). */
function ipv4Text(address: number): string {
  const w = address | 0;
  const slot = Math.imul(w, GOLDEN) >>> (32 - IPV4_SLOTS_BITS);
  if (ipv4Words[slot] === w) return ipv4Texts[slot]!;
  const text = DOT[w >>> 24]! + DOT[(w >>> 16) & 255]! + DOT[(w >>> 8) & 255]! + DEC[w & 255]!;
  ipv4Words[slot] = w;
  ipv4Texts[slot] = text;
  return text;
}

/** Dotted quad of the 4 bytes at offset. */
export function formatIPv4(bytes: Uint8Array, offset: number): string {
  return ipv4Text(word(bytes, offset));
}

function isIPv4Mapped(bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < 10; i++) if (bytes[offset + i] !== 0) return false;
  return bytes[offset + 10] === 0xff && bytes[offset + 11] === 0xff;
}

/** Hex of the IPv6 group (two bytes, network order) at offset, without leading zeros. */
function group(bytes: Uint8Array, offset: number): string {
  const high = bytes[offset]!;
  return high === 0 ? HEX[bytes[offset + 1]!]! : HEX[high]! + HEX2[bytes[offset + 1]!]!;
}

/** RFC 5952 text of a 16-byte address that is not IPv4-mapped. */
function ipv6Text(bytes: Uint8Array, offset: number): string {
  let bestStart = -1;
  let bestLen = 1;
  let runStart = -1;
  for (let g = 0; g < 8; g++) {
    if ((bytes[offset + 2 * g]! | bytes[offset + 2 * g + 1]!) === 0) {
      if (runStart < 0) runStart = g;
      const len = g - runStart + 1;
      if (len > bestLen) {
        bestStart = runStart;
        bestLen = len;
      }
    } else {
      runStart = -1;
    }
  }
  // Joined rather than concatenated: one flat string instead of a rope of partial ones, which is
  // faster here and again wherever a sink serialises it. The run becomes an empty part, so the
  // join puts '::' in its place; a run at either end needs a second empty part for the second ':'.
  const parts: string[] = [];
  for (let g = 0; g < 8; g++) {
    if (g === bestStart) {
      if (g === 0) parts.push('');
      parts.push('');
      g += bestLen - 1;
      if (g === 7) parts.push('');
    } else {
      parts.push(group(bytes, offset + 2 * g));
    }
  }
  return parts.join(':');
}

/**
 * RFC 5952 text of the 16 bytes at offset: lower-case hex without leading zeros, the longest
 * run (the first of equal runs) of two or more zero groups as '::', IPv4-mapped as ::ffff:a.b.c.d.
 */
export function formatIPv6(bytes: Uint8Array, offset: number): string {
  if (isIPv4Mapped(bytes, offset)) return `::ffff:${formatIPv4(bytes, offset + 12)}`;
  const w0 = word(bytes, offset);
  const w1 = word(bytes, offset + 4);
  const w2 = word(bytes, offset + 8);
  const w3 = word(bytes, offset + 12);
  const mixed = Math.imul(w0, 0x85ebca6b) ^ Math.imul(w1, 0xc2b2ae35) ^ Math.imul(w2, 0x27d4eb2f) ^ w3;
  const slot = Math.imul(mixed, GOLDEN) >>> (32 - IPV6_SLOTS_BITS);
  const at = slot * 4;
  if (
    ipv6Words[at] === w0 &&
    ipv6Words[at + 1] === w1 &&
    ipv6Words[at + 2] === w2 &&
    ipv6Words[at + 3] === w3
  )
    return ipv6Texts[slot]!;
  const text = ipv6Text(bytes, offset);
  ipv6Words[at] = w0;
  ipv6Words[at + 1] = w1;
  ipv6Words[at + 2] = w2;
  ipv6Words[at + 3] = w3;
  ipv6Texts[slot] = text;
  return text;
}

/** An address stored in 16 bytes (IPv4 as IPv4-mapped), in its natural text form. */
export function formatIp16(bytes: Uint8Array, offset: number): string {
  return isIPv4Mapped(bytes, offset) ? formatIPv4(bytes, offset + 12) : formatIPv6(bytes, offset);
}

/** Lower-case colon form of the 6 bytes at offset. */
export function formatMac(bytes: Uint8Array, offset: number): string {
  const high = word(bytes, offset);
  const low = (bytes[offset + 4]! << 8) | bytes[offset + 5]!;
  const slot = Math.imul(high ^ Math.imul(low, 0x85ebca6b), GOLDEN) >>> (32 - MAC_SLOTS_BITS);
  if (macHigh[slot] === high && macLow[slot] === low) return macTexts[slot]!;
  const text = `${HEX2[bytes[offset]!]!}:${HEX2[bytes[offset + 1]!]!}:${HEX2[bytes[offset + 2]!]!}:${HEX2[bytes[offset + 3]!]!}:${HEX2[bytes[offset + 4]!]!}:${HEX2[bytes[offset + 5]!]!}`;
  macHigh[slot] = high;
  macLow[slot] = low;
  macTexts[slot] = text;
  return text;
}

/** Lower-case hex of `length` bytes at offset, in memory order. */
export function hex(bytes: Uint8Array, offset: number, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += HEX2[bytes[offset + i]!]!;
  return s;
}

/**
 * Milliseconds to add to (kernel monotonic ns / 1e6) to get wall-clock ms. bpf_ktime_get_ns and
 * process.hrtime both read CLOCK_MONOTONIC. Compute it once per source: recomputing per batch
 * would make timestamps jitter with NTP slews.
 */
export function monotonicToWallClockOffsetMs(): number {
  return Date.now() - Number(process.hrtime.bigint()) / 1e6;
}

/**
 * The fields every map and ring-buffer record has, in the serialised order; called with `new`
 * only (see DecodedFlow). An egress record has egressInterface where an ingress one has
 * ingressInterface; a layer-2 flow (ipVersion 0) has no addresses.
 */
function decodedFlow(
  this: FlowRecord,
  ipVersion: 0 | 4 | 6,
  sourceTransportPort: number,
  destinationTransportPort: number,
  protocolIdentifier: number,
  octetDeltaCount: number,
  layer2OctetDeltaCount: number,
  packetDeltaCount: number,
  flowStartMilliseconds: number,
  flowEndMilliseconds: number,
  tcpControlBits: number,
  ipDiffServCodePoint: number,
  egress: boolean,
  ifindex: number,
  sourceMacAddress: string,
  destinationMacAddress: string,
  ethernetType: number,
  flowEndReason: number,
  source: string,
  destination: string,
): void {
  this.ipVersion = ipVersion;
  this.sourceTransportPort = sourceTransportPort;
  this.destinationTransportPort = destinationTransportPort;
  this.protocolIdentifier = protocolIdentifier;
  this.octetDeltaCount = octetDeltaCount;
  this.layer2OctetDeltaCount = layer2OctetDeltaCount;
  this.packetDeltaCount = packetDeltaCount;
  this.flowStartMilliseconds = flowStartMilliseconds;
  this.flowEndMilliseconds = flowEndMilliseconds;
  this.tcpControlBits = tcpControlBits;
  this.ipDiffServCodePoint = ipDiffServCodePoint;
  if (egress) this.egressInterface = ifindex;
  else this.ingressInterface = ifindex;
  this.flowDirection = egress ? 1 : 0;
  this.sourceMacAddress = sourceMacAddress;
  this.destinationMacAddress = destinationMacAddress;
  this.ethernetType = ethernetType;
  this.flowEndReason = flowEndReason;
  if (ipVersion === 4) {
    this.sourceIPv4Address = source;
    this.destinationIPv4Address = destination;
  } else if (ipVersion === 6) {
    this.sourceIPv6Address = source;
    this.destinationIPv6Address = destination;
  }
}

/**
 * Records are built by one small constructor rather than as object literals: V8 sizes the objects
 * of a constructor for every field its body assigns, so a record holds all its fields inside the
 * object (fields added to an object afterwards go to a separate property array), whatever its
 * family and direction, and the plain records of a family and direction share one hidden class.
 * It stays small enough for the optimising compiler to inline it, allocation included. Its
 * prototype is Object.prototype: a record is a plain object to every reader.
 */
interface DecodedFlowConstructor {
  new (...args: Parameters<OmitThisParameter<typeof decodedFlow>>): FlowRecord;
  prototype: object;
  /**
   * One record of each family and direction, kept as long as the constructor, as a literal's
   * boilerplate keeps its hidden class: V8 holds the hidden classes of a constructor's objects only
   * while some object has them, and drops code optimised for a class that died. The records of a
   * drain all die once the sinks are done with them; without these, each full collection after it
   * would send record() back to the interpreter.
   */
  shapes?: readonly FlowRecord[];
}

const DecodedFlow = decodedFlow as unknown as DecodedFlowConstructor;
DecodedFlow.prototype = Object.prototype;
// The values have the representations of real ones (times as doubles).
DecodedFlow.shapes = ([0, 4, 6] as const).flatMap((ipVersion) =>
  [false, true].map((egress) => {
    const rec = new DecodedFlow(ipVersion, 0, 0, 0, 0, 0, 0, 0.5, 0.5, 0, 0, egress, 0, '', '', 0, 0, '', '');
    // With the words record() attaches to every IPv4 record, and so their classes.
    if (ipVersion === 4) attachIPv4Words(rec, 0, 0);
    return rec;
  }),
);

/**
 * Builds a record from a key and the chosen value slot. Counters, times and the end reason are
 * passed in, already merged over CPUs; every other value field comes from the slot at vOff.
 */
function record(
  kb: Uint8Array,
  kv: DataView,
  k: number,
  vb: Uint8Array,
  vv: DataView,
  v: number,
  packets: number,
  bytes: number,
  ipBytes: number,
  firstNs: number,
  lastNs: number,
  tcpFlags: number,
  offsetMs: number,
  flowEndReason: number,
): FlowRecord {
  const protocol = kb[k + K_PROTOCOL]!;
  const ipVersion = kb[k + K_IP_VERSION] === 4 ? 4 : kb[k + K_IP_VERSION] === 0 ? 0 : 6;
  let source = '';
  let destination = '';
  if (ipVersion === 4) {
    source = ipv4Text(kv.getUint32(k + K_SRC_IP + 12, false));
    destination = ipv4Text(kv.getUint32(k + K_DST_IP + 12, false));
  } else if (ipVersion === 6) {
    source = formatIPv6(kb, k + K_SRC_IP);
    destination = formatIPv6(kb, k + K_DST_IP);
  }
  const rec = new DecodedFlow(
    ipVersion,
    kv.getUint16(k + K_SRC_PORT, LE),
    kv.getUint16(k + K_DST_PORT, LE),
    protocol,
    ipBytes,
    bytes,
    packets,
    Math.floor(firstNs / 1e6 + offsetMs),
    Math.floor(lastNs / 1e6 + offsetMs),
    tcpFlags,
    vb[v + V_DSCP]!,
    // The interface the program is attached to: received on for ingress, sent on for egress.
    kb[k + K_DIRECTION] === FLOW_DIRECTION_EGRESS,
    kv.getUint32(k + K_IF_INDEX, LE),
    formatMac(vb, v + V_SRC_MAC),
    formatMac(vb, v + V_DST_MAC),
    kv.getUint16(k + K_ETH_TYPE, LE),
    flowEndReason,
    source,
    destination,
  );
  if (ipVersion === 4) {
    // The same addresses as numbers, so account and dedupe key on them without parsing the text.
    attachIPv4Words(rec, kv.getUint32(k + K_SRC_IP + 12, false), kv.getUint32(k + K_DST_IP + 12, false));
    if (protocol === 1) {
      rec.icmpTypeIPv4 = kb[k + K_ICMP_TYPE]!;
      rec.icmpCodeIPv4 = kb[k + K_ICMP_CODE]!;
    }
  } else if (ipVersion === 6 && protocol === 58) {
    rec.icmpTypeIPv6 = kb[k + K_ICMP_TYPE]!;
    rec.icmpCodeIPv6 = kb[k + K_ICMP_CODE]!;
  }
  const vlan = kv.getUint16(k + K_VLAN_ID, LE);
  if (vlan !== 0) {
    rec.dot1qVlanId = vlan;
    const inner = kv.getUint16(k + K_INNER_VLAN_ID, LE);
    if (inner !== 0) rec.dot1qCustomerVlanId = inner;
  }
  const tunnel = kb[k + K_TUNNEL_TYPE];
  if (tunnel === FLOW_TUNNEL_VXLAN || tunnel === FLOW_TUNNEL_GENEVE) {
    rec.encapsulationType = tunnel === FLOW_TUNNEL_VXLAN ? 'vxlan' : 'geneve';
    rec.virtualNetworkIdentifier = kv.getUint32(k + K_VNI, LE);
    rec.tunnelSourceIPAddress = formatIp16(vb, v + V_OUTER_SRC_IP);
    rec.tunnelDestinationIPAddress = formatIp16(vb, v + V_OUTER_DST_IP);
    rec.tunnelSourceTransportPort = vv.getUint16(v + V_OUTER_SRC_PORT, LE);
    rec.tunnelDestinationTransportPort = vv.getUint16(v + V_OUTER_DST_PORT, LE);
    // Zero means no options: the kernel only fills the cookie from a GENEVE options field.
    if (tunnel === FLOW_TUNNEL_GENEVE && vv.getUint32(v + V_COOKIE, LE) | vv.getUint32(v + V_COOKIE + 4, LE))
      rec.flowCookie = hex(vb, v + V_COOKIE, 8);
  }
  const sampling = vv.getUint32(v + V_SAMPLING, LE);
  if (sampling > 1) {
    rec.samplingPacketInterval = 1;
    rec.samplingPacketSpace = sampling - 1;
  }
  return rec;
}

/**
 * The `networkNamespace` of a flow from its key: `inode` is the inode of the namespace of the
 * device the program read (0 where the kernel would not say), `ifindex` the key's interface.
 * undefined leaves the field unset (the agent's own namespace, or unknown).
 */
export type NetnsLabeler = (inode: number, ifindex: number) => string | undefined;

/** What BpfMap.drain returns: count entries, key i at i*keySize, value i at i*valueBufferSize. */
export interface RawMapBatch {
  count: number;
  keys: Uint8Array;
  values: Uint8Array;
}

/**
 * Decodes a drain of a flow map into one record per flow, merging the per-CPU values: packets and
 * bytes summed, first seen the earliest, last seen the latest, TCP flags OR'ed, everything else
 * from the CPU that saw the flow last. CPUs that never counted the flow (zero packets) are skipped,
 * and so is an entry no CPU counted. `valueBufferSize` is the map's (FLOW_VALUE_STRIDE times the
 * number of possible CPUs); `offsetMs` comes from monotonicToWallClockOffsetMs(). `eviction` sets
 * flowEndReason (see FlowEviction); without it, now and an idle time of 0: every flow without
 * FIN/RST is idle.
 */
export function decodeFlowMapBatch(
  batch: RawMapBatch,
  valueBufferSize: number,
  offsetMs: number,
  eviction?: FlowEviction,
  labeler?: NetnsLabeler,
  /** Receives, for each record returned, the index of its entry in the batch. */
  indexes?: number[],
): FlowRecord[] {
  const { count, keys, values } = batch;
  if (valueBufferSize <= 0 || valueBufferSize % FLOW_VALUE_STRIDE !== 0) {
    throw new DatapathError(
      'EOBJLAYOUT',
      `decode flow_map: value buffer of ${valueBufferSize} bytes is not a multiple of struct flow_value (${FLOW_VALUE_STRIDE}); rebuild bpf/flow.o with 'bash bpf/build.sh'`,
    );
  }
  if (keys.byteLength < count * FLOW_KEY.size || values.byteLength < count * valueBufferSize) {
    throw new DatapathError(
      'EARG',
      `decode flow_map: ${count} entries need ${count * FLOW_KEY.size} key and ${count * valueBufferSize} value bytes, got ${keys.byteLength} and ${values.byteLength}`,
    );
  }
  const cpus = valueBufferSize / FLOW_VALUE_STRIDE;
  const forced = eviction?.forced === true;
  const idleBefore = eviction ? eviction.nowNs - eviction.idleNs : Infinity;
  const kv = viewOf(keys);
  const vv = viewOf(values);
  const out: FlowRecord[] = [];
  let lastInode = -1;
  let lastIndex = -1;
  let label: string | undefined;
  for (let i = 0; i < count; i++) {
    const base = i * valueBufferSize;
    let packets = 0;
    let bytes = 0;
    let ipBytes = 0;
    let first = Infinity;
    let last = -1;
    let flags = 0;
    let latest = -1;
    let latency = 0;
    for (let c = 0; c < cpus; c++) {
      const v = base + c * FLOW_VALUE_STRIDE;
      latency |= latencyWord(vv, v);
      const p = u64(vv, v + V_PACKETS);
      if (p === 0) continue;
      packets += p;
      bytes += u64(vv, v + V_BYTES);
      ipBytes += u64(vv, v + V_IP_BYTES);
      const f = u64(vv, v + V_FIRST_SEEN);
      const l = u64(vv, v + V_LAST_SEEN);
      if (f < first) first = f;
      if (l > last) {
        last = l;
        latest = v;
      }
      flags |= vv.getUint16(v + V_TCP_FLAGS, LE);
    }
    if (latest < 0) continue;
    const reason =
      (flags & TCP_FIN_RST) !== 0
        ? END_REASON_END_OF_FLOW
        : forced
          ? END_REASON_FORCED_END
          : last <= idleBefore
            ? END_REASON_IDLE_TIMEOUT
            : END_REASON_ACTIVE_TIMEOUT;
    const k = i * FLOW_KEY.size;
    const rec = record(
      keys,
      kv,
      k,
      values,
      vv,
      latest,
      packets,
      bytes,
      ipBytes,
      first,
      last,
      flags,
      offsetMs,
      reason,
    );
    if (latency !== 0) addLatency(rec, vv, base, cpus, latest);
    if (labeler) {
      // Flows mostly come in runs of one namespace and interface: the labeler is asked once a run.
      // The key's ifindex, not the record's: an egress record carries egressInterface instead.
      const inode = kv.getUint32(k + K_NETNS, LE);
      const ifindex = kv.getUint32(k + K_IF_INDEX, LE);
      if (inode !== lastInode || ifindex !== lastIndex) {
        lastInode = inode;
        lastIndex = ifindex;
        label = labeler(inode, ifindex);
      }
      if (label !== undefined) rec.networkNamespace = label;
    }
    indexes?.push(i);
    out.push(rec);
  }
  return out;
}

/**
 * Decodes one flow_events record (as RingBufferReader.drain hands it over) into a single-packet
 * flow with flowEndReason 5 (lack of resources). Use flowEventReason for the kernel's reason.
 */
export function decodeFlowEvent(
  view: DataView,
  offset: number,
  length: number,
  offsetMs: number,
  labeler?: NetnsLabeler,
): FlowRecord {
  if (length < FLOW_EVENT.size) {
    throw new DatapathError(
      'EOBJLAYOUT',
      `decode flow_events: record of ${length} bytes is shorter than struct flow_event (${FLOW_EVENT.size}); rebuild bpf/flow.o with 'bash bpf/build.sh'`,
    );
  }
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  const v = offset + E_VALUE;
  const rec = record(
    bytes,
    view,
    offset,
    bytes,
    view,
    v,
    u64(view, v + V_PACKETS),
    u64(view, v + V_BYTES),
    u64(view, v + V_IP_BYTES),
    u64(view, v + V_FIRST_SEEN),
    u64(view, v + V_LAST_SEEN),
    view.getUint16(v + V_TCP_FLAGS, LE),
    offsetMs,
    END_REASON_LACK_OF_RESOURCES,
  );
  if (latencyWord(view, v) !== 0) addLatency(rec, view, v, 1, v);
  if (labeler) {
    const label = labeler(view.getUint32(offset + K_NETNS, LE), view.getUint32(offset + K_IF_INDEX, LE));
    if (label !== undefined) rec.networkNamespace = label;
  }
  return rec;
}

/** FLOW_EVENT_MAP_FULL or FLOW_EVENT_MAP_ERROR of the flow_events record at offset. */
export function flowEventReason(view: DataView, offset: number): number {
  return view.getUint32(offset + E_REASON, LE);
}

/** Sum over CPUs of one flow_counters value (a per-CPU buffer of u64 slots). */
export const sumPerCpuCounter = sumPerCpu;

/**
 * The flow_config value for index 0. `sampling` 0 or 1 counts every packet; `features` FLOW_FEATURE_*
 * bits (src/datapath/flow/latency.ts), 0 when left out.
 */
export function encodeFlowConfig(config: {
  sampling: number;
  features?: number;
  dnsPort?: number;
}): Uint8Array {
  const out = new Uint8Array(FLOW_CONFIG.size);
  viewOf(out).setUint32(FLOW_CONFIG.fields.sampling.offset, config.sampling, LE);
  viewOf(out).setUint32(FLOW_CONFIG.fields.features.offset, config.features ?? 0, LE);
  viewOf(out).setUint16(FLOW_CONFIG.fields.dns_port.offset, config.dnsPort ?? 0, LE);
  return out;
}
