/**
 * The TypeScript side of bpf/flow.h: struct layouts, counter indexes and the decoders that turn
 * the raw bytes of the flow maps (per-CPU, read by BpfMap.drain; see flow-maps.ts) and of
 * flow_events (ring buffer) into FlowRecords. test/kernel/flow-btf.test.ts holds every size and
 * offset here against the BTF of the compiled bpf/flow.o, so a change to the header that is not
 * mirrored here fails a test.
 *
 * Decoding works on whole batches: one DataView per drain result, numbers read in place, no
 * intermediate object per CPU value. Only the records themselves allocate, and the text of
 * addresses and MACs that the caches below do not hold yet.
 */
import { endianness } from 'node:os';
import { attachIPv4Words, type FlowRecord } from '../records.js';
import { DatapathError } from './errors.js';
import { addLatency, latencyWord } from './flow-latency.js';
import { struct, sumPerCpu, u64, viewOf, type StructLayout } from './layout.js';

export type { FieldLayout, StructLayout } from './layout.js';

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

/** Every struct shared with the kernel, for layout checks against the object's BTF. */
export const FLOW_LAYOUTS: readonly StructLayout[] = [FLOW_KEY, FLOW_VALUE, FLOW_EVENT, FLOW_CONFIG];

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
  const sourceTransportPort = kv.getUint16(k + K_SRC_PORT, LE);
  const destinationTransportPort = kv.getUint16(k + K_DST_PORT, LE);
  const flowStartMilliseconds = Math.floor(firstNs / 1e6 + offsetMs);
  const flowEndMilliseconds = Math.floor(lastNs / 1e6 + offsetMs);
  const ipDiffServCodePoint = vb[v + V_DSCP]!;
  // The interface the program is attached to: received on for ingress, sent on for egress.
  const ifindex = kv.getUint32(k + K_IF_INDEX, LE);
  const egress = kb[k + K_DIRECTION] === FLOW_DIRECTION_EGRESS;
  const flowDirection = egress ? 1 : 0;
  const sourceMacAddress = formatMac(vb, v + V_SRC_MAC);
  const destinationMacAddress = formatMac(vb, v + V_DST_MAC);
  const ethernetType = kv.getUint16(k + K_ETH_TYPE, LE);
  // One literal per family and direction, with the addresses in it: V8 then allocates each record
  // with all these fields inside the object (addresses added afterwards went to a separate
  // property array), and the plain records of a family and direction share one hidden class.
  // The key order is the serialised order.
  let rec: FlowRecord;
  const ipVersion = kb[k + K_IP_VERSION];
  if (ipVersion === 4) {
    const src = kv.getUint32(k + K_SRC_IP + 12, false);
    const dst = kv.getUint32(k + K_DST_IP + 12, false);
    rec = egress
      ? {
          ipVersion: 4,
          sourceTransportPort,
          destinationTransportPort,
          protocolIdentifier: protocol,
          octetDeltaCount: ipBytes,
          layer2OctetDeltaCount: bytes,
          packetDeltaCount: packets,
          flowStartMilliseconds,
          flowEndMilliseconds,
          tcpControlBits: tcpFlags,
          ipDiffServCodePoint,
          egressInterface: ifindex,
          flowDirection,
          sourceMacAddress,
          destinationMacAddress,
          ethernetType,
          flowEndReason,
          sourceIPv4Address: ipv4Text(src),
          destinationIPv4Address: ipv4Text(dst),
        }
      : {
          ipVersion: 4,
          sourceTransportPort,
          destinationTransportPort,
          protocolIdentifier: protocol,
          octetDeltaCount: ipBytes,
          layer2OctetDeltaCount: bytes,
          packetDeltaCount: packets,
          flowStartMilliseconds,
          flowEndMilliseconds,
          tcpControlBits: tcpFlags,
          ipDiffServCodePoint,
          ingressInterface: ifindex,
          flowDirection,
          sourceMacAddress,
          destinationMacAddress,
          ethernetType,
          flowEndReason,
          sourceIPv4Address: ipv4Text(src),
          destinationIPv4Address: ipv4Text(dst),
        };
    // The same addresses as numbers, so account and dedupe key on them without parsing the text.
    attachIPv4Words(rec, src, dst);
    if (protocol === 1) {
      rec.icmpTypeIPv4 = kb[k + K_ICMP_TYPE]!;
      rec.icmpCodeIPv4 = kb[k + K_ICMP_CODE]!;
    }
  } else if (ipVersion === 0) {
    // A layer-2 flow (not IP): the key holds the MACs, which the value repeats; no addresses.
    rec = egress
      ? {
          ipVersion: 0,
          sourceTransportPort,
          destinationTransportPort,
          protocolIdentifier: protocol,
          octetDeltaCount: ipBytes,
          layer2OctetDeltaCount: bytes,
          packetDeltaCount: packets,
          flowStartMilliseconds,
          flowEndMilliseconds,
          tcpControlBits: tcpFlags,
          ipDiffServCodePoint,
          egressInterface: ifindex,
          flowDirection,
          sourceMacAddress,
          destinationMacAddress,
          ethernetType,
          flowEndReason,
        }
      : {
          ipVersion: 0,
          sourceTransportPort,
          destinationTransportPort,
          protocolIdentifier: protocol,
          octetDeltaCount: ipBytes,
          layer2OctetDeltaCount: bytes,
          packetDeltaCount: packets,
          flowStartMilliseconds,
          flowEndMilliseconds,
          tcpControlBits: tcpFlags,
          ipDiffServCodePoint,
          ingressInterface: ifindex,
          flowDirection,
          sourceMacAddress,
          destinationMacAddress,
          ethernetType,
          flowEndReason,
        };
  } else {
    rec = egress
      ? {
          ipVersion: 6,
          sourceTransportPort,
          destinationTransportPort,
          protocolIdentifier: protocol,
          octetDeltaCount: ipBytes,
          layer2OctetDeltaCount: bytes,
          packetDeltaCount: packets,
          flowStartMilliseconds,
          flowEndMilliseconds,
          tcpControlBits: tcpFlags,
          ipDiffServCodePoint,
          egressInterface: ifindex,
          flowDirection,
          sourceMacAddress,
          destinationMacAddress,
          ethernetType,
          flowEndReason,
          sourceIPv6Address: formatIPv6(kb, k + K_SRC_IP),
          destinationIPv6Address: formatIPv6(kb, k + K_DST_IP),
        }
      : {
          ipVersion: 6,
          sourceTransportPort,
          destinationTransportPort,
          protocolIdentifier: protocol,
          octetDeltaCount: ipBytes,
          layer2OctetDeltaCount: bytes,
          packetDeltaCount: packets,
          flowStartMilliseconds,
          flowEndMilliseconds,
          tcpControlBits: tcpFlags,
          ipDiffServCodePoint,
          ingressInterface: ifindex,
          flowDirection,
          sourceMacAddress,
          destinationMacAddress,
          ethernetType,
          flowEndReason,
          sourceIPv6Address: formatIPv6(kb, k + K_SRC_IP),
          destinationIPv6Address: formatIPv6(kb, k + K_DST_IP),
        };
    if (protocol === 58) {
      rec.icmpTypeIPv6 = kb[k + K_ICMP_TYPE]!;
      rec.icmpCodeIPv6 = kb[k + K_ICMP_CODE]!;
    }
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
 * bits (src/datapath/flow-latency.ts), 0 when left out.
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

/** The fields of struct flow_key, for tests and tools; addresses as text. */
export interface FlowKeyFields {
  /** 0: a layer-2 flow, whose srcIp and dstIp are the MACs (02:00:00:00:00:01). */
  ipVersion: 0 | 4 | 6;
  /** IPv4 dotted or IPv6 text; a MAC for a layer-2 flow. */
  srcIp: string;
  dstIp: string;
  ifIndex: number;
  vni: number;
  srcPort: number;
  dstPort: number;
  ethType: number;
  protocol: number;
  direction: number;
  icmpType: number;
  icmpCode: number;
  tunnelType: number;
  /** Inode of the device's network namespace; 0 when unknown (and by default in encodeKey). */
  netns?: number;
  /** Outer VLAN id, 0 (or absent) untagged. */
  vlanId?: number;
  /** Inner (QinQ customer) VLAN id, 0 (or absent) without a second tag. */
  innerVlanId?: number;
}

function parseIPv4(text: string, out: Uint8Array, offset: number): boolean {
  const parts = text.split('.');
  if (parts.length !== 4) return false;
  for (let i = 0; i < 4; i++) {
    const p = parts[i]!;
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return false;
    out[offset + i] = Number(p);
  }
  return true;
}

/** Writes the 16-byte form of an address (IPv4 as IPv4-mapped) at offset. */
function parseIp16(text: string, out: Uint8Array, offset: number): void {
  const bad = (): DatapathError =>
    new DatapathError('EARG', `encode flow key: '${text}' is not an IPv4 or IPv6 address`);
  out.fill(0, offset, offset + 16);
  if (!text.includes(':')) {
    if (!parseIPv4(text, out, offset + 12)) throw bad();
    out[offset + 10] = 0xff;
    out[offset + 11] = 0xff;
    return;
  }
  let body = text;
  const groups: number[] = [];
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  const v4 = new Uint8Array(4);
  const hasV4 = tail.includes('.');
  if (hasV4) {
    if (!parseIPv4(tail, v4, 0)) throw bad();
    body = text.slice(0, lastColon + 1);
    if (!body.endsWith('::')) body = body.slice(0, -1);
  }
  const halves = body.split('::');
  if (halves.length > 2) throw bad();
  const parse = (s: string): number[] =>
    s === ''
      ? []
      : s.split(':').map((g) => {
          if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw bad();
          return parseInt(g, 16);
        });
  const head = parse(halves[0]!);
  const rest = halves.length === 2 ? parse(halves[1]!) : [];
  const want = hasV4 ? 6 : 8;
  const explicit = head.length + rest.length;
  if (halves.length === 2 ? explicit > want - 1 : explicit !== want) throw bad();
  groups.push(...head, ...new Array<number>(want - explicit).fill(0), ...rest);
  for (let g = 0; g < want; g++) {
    out[offset + 2 * g] = groups[g]! >> 8;
    out[offset + 2 * g + 1] = groups[g]! & 0xff;
  }
  if (hasV4) out.set(v4, offset + 12);
}

/** struct flow_key bytes of the given fields, zero padding included. */
export function encodeKey(key: FlowKeyFields): Uint8Array {
  const out = new Uint8Array(FLOW_KEY.size);
  const view = viewOf(out);
  if (key.ipVersion === 0) {
    parseMac(key.srcIp, out, K_SRC_IP);
    parseMac(key.dstIp, out, K_DST_IP);
  } else {
    parseIp16(key.srcIp, out, K_SRC_IP);
    parseIp16(key.dstIp, out, K_DST_IP);
  }
  view.setUint32(K_IF_INDEX, key.ifIndex, LE);
  view.setUint32(K_VNI, key.vni, LE);
  view.setUint32(K_NETNS, key.netns ?? 0, LE);
  view.setUint16(K_SRC_PORT, key.srcPort, LE);
  view.setUint16(K_DST_PORT, key.dstPort, LE);
  view.setUint16(K_ETH_TYPE, key.ethType, LE);
  out[K_PROTOCOL] = key.protocol;
  out[K_DIRECTION] = key.direction;
  out[K_ICMP_TYPE] = key.icmpType;
  out[K_ICMP_CODE] = key.icmpCode;
  out[K_TUNNEL_TYPE] = key.tunnelType;
  out[K_IP_VERSION] = key.ipVersion;
  view.setUint16(K_VLAN_ID, key.vlanId ?? 0, LE);
  view.setUint16(K_INNER_VLAN_ID, key.innerVlanId ?? 0, LE);
  return out;
}

/** The fields of the struct flow_key at offset. */
export function decodeKey(bytes: Uint8Array, offset = 0): FlowKeyFields {
  const view = viewOf(bytes);
  const version = bytes[offset + K_IP_VERSION];
  const ipVersion = version === 4 ? 4 : version === 0 ? 0 : 6;
  const addr = (o: number): string =>
    ipVersion === 4
      ? formatIPv4(bytes, offset + o + 12)
      : ipVersion === 0
        ? formatMac(bytes, offset + o)
        : formatIPv6(bytes, offset + o);
  return {
    ipVersion,
    srcIp: addr(K_SRC_IP),
    dstIp: addr(K_DST_IP),
    ifIndex: view.getUint32(offset + K_IF_INDEX, LE),
    vni: view.getUint32(offset + K_VNI, LE),
    srcPort: view.getUint16(offset + K_SRC_PORT, LE),
    dstPort: view.getUint16(offset + K_DST_PORT, LE),
    ethType: view.getUint16(offset + K_ETH_TYPE, LE),
    protocol: bytes[offset + K_PROTOCOL]!,
    direction: bytes[offset + K_DIRECTION]!,
    icmpType: bytes[offset + K_ICMP_TYPE]!,
    icmpCode: bytes[offset + K_ICMP_CODE]!,
    tunnelType: bytes[offset + K_TUNNEL_TYPE]!,
    netns: view.getUint32(offset + K_NETNS, LE),
    vlanId: view.getUint16(offset + K_VLAN_ID, LE),
    innerVlanId: view.getUint16(offset + K_INNER_VLAN_ID, LE),
  };
}

/** The fields of struct flow_value, for tests and tools; numbers for u64 (exact below 2^53). */
export interface FlowValueFields {
  packets: number;
  /** Frame octets as on the wire (layer2OctetDeltaCount). */
  bytes: number;
  /** IP octets (octetDeltaCount); 0 when absent. */
  ipBytes?: number;
  firstSeenNs: number;
  lastSeenNs: number;
  /** 16 hex digits, the 8 cookie bytes in memory (wire) order. */
  cookie: string;
  outerSrcIp: string;
  outerDstIp: string;
  outerSrcPort: number;
  outerDstPort: number;
  tcpFlags: number;
  dscp: number;
  srcMac: string;
  dstMac: string;
  sampling: number;
}

function setU64(view: DataView, offset: number, n: number): void {
  view.setBigUint64(offset, BigInt(n), LE);
}

function parseMac(text: string, out: Uint8Array, offset: number): void {
  const parts = text.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p)))
    throw new DatapathError(
      'EARG',
      `encode flow value: '${text}' is not a MAC address like 02:00:00:00:00:01`,
    );
  for (let i = 0; i < 6; i++) out[offset + i] = parseInt(parts[i]!, 16);
}

/** struct flow_value bytes (one CPU's slot) of the given fields. */
export function encodeValue(value: FlowValueFields): Uint8Array {
  const out = new Uint8Array(FLOW_VALUE.size);
  const view = viewOf(out);
  setU64(view, V_PACKETS, value.packets);
  setU64(view, V_BYTES, value.bytes);
  setU64(view, V_IP_BYTES, value.ipBytes ?? 0);
  setU64(view, V_FIRST_SEEN, value.firstSeenNs);
  setU64(view, V_LAST_SEEN, value.lastSeenNs);
  if (!/^[0-9a-fA-F]{16}$/.test(value.cookie))
    throw new DatapathError('EARG', `encode flow value: cookie '${value.cookie}' is not 16 hex digits`);
  for (let i = 0; i < 8; i++) out[V_COOKIE + i] = parseInt(value.cookie.slice(2 * i, 2 * i + 2), 16);
  if (value.outerSrcIp !== '') parseIp16(value.outerSrcIp, out, V_OUTER_SRC_IP);
  if (value.outerDstIp !== '') parseIp16(value.outerDstIp, out, V_OUTER_DST_IP);
  view.setUint16(V_OUTER_SRC_PORT, value.outerSrcPort, LE);
  view.setUint16(V_OUTER_DST_PORT, value.outerDstPort, LE);
  view.setUint16(V_TCP_FLAGS, value.tcpFlags, LE);
  out[V_DSCP] = value.dscp;
  parseMac(value.srcMac, out, V_SRC_MAC);
  parseMac(value.dstMac, out, V_DST_MAC);
  view.setUint32(V_SAMPLING, value.sampling, LE);
  return out;
}
