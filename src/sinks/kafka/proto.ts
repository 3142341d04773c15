/**
 * Protobuf rxflow.v1.FlowRecord (src/sinks/flow.proto) written straight into a Buffer, for the
 * kafka sink's hot path.
 *
 * The bytes are exactly those of protobufjs's `FlowRecord.encode(r).finish()` from
 * loadFlowProto(): fields in field-number order, proto3 zero values of plain fields left out,
 * optional fields written whenever present, numbers converted as protobufjs converts them
 * (`>>> 0` for uint32, its LongBits split for uint64). What it saves is protobufjs's per-call
 * work (a Writer that grows, a `fork`/`ldelim` per nested message, a `hasOwnProperty` per field)
 * and a finished copy per batch: here each record is one straight pass over its fields into the
 * caller's buffer (bench/flow-encode.bench.ts). Fields are read as plain properties: protobufjs
 * also skips inherited ones, which records, plain objects, do not have. Nothing is written outside
 * [pos, returned end).
 */
import type { FlowRecord, ObservedInterface } from '../../records/flow.js';

/** (field number << 3) | wire type: 0 varint, 2 length-delimited. */
const T_IP_VERSION = (1 << 3) | 0;
const T_SRC4 = (2 << 3) | 2;
const T_DST4 = (3 << 3) | 2;
const T_SRC6 = (4 << 3) | 2;
const T_DST6 = (5 << 3) | 2;
const T_SPORT = (6 << 3) | 0;
const T_DPORT = (7 << 3) | 0;
const T_PROTO = (8 << 3) | 0;
const T_OCTETS = (9 << 3) | 0;
const T_PACKETS = (10 << 3) | 0;
const T_START = (11 << 3) | 0;
const T_END = (12 << 3) | 0;
const T_TCP = (13 << 3) | 0;
const T_DSCP = (14 << 3) | 0;
const T_INGRESS = (15 << 3) | 0;
const T_DIRECTION = (16 << 3) | 0;
const T_SRC_MAC = (17 << 3) | 2;
const T_DST_MAC = (18 << 3) | 2;
const T_ETHERTYPE = (19 << 3) | 0;
const T_IFNAME = (20 << 3) | 2;
const T_ICMP4_TYPE = (21 << 3) | 0;
const T_ICMP4_CODE = (22 << 3) | 0;
const T_ICMP6_TYPE = (23 << 3) | 0;
const T_ICMP6_CODE = (24 << 3) | 0;
const T_EXPORTER4 = (25 << 3) | 2;
const T_EXPORTER6 = (26 << 3) | 2;
const T_END_REASON = (27 << 3) | 0;
const T_ENCAP = (28 << 3) | 2;
const T_VNI = (29 << 3) | 0;
const T_TUN_SRC = (30 << 3) | 2;
const T_TUN_DST = (31 << 3) | 2;
const T_TUN_SPORT = (32 << 3) | 0;
const T_TUN_DPORT = (33 << 3) | 0;
const T_COOKIE = (34 << 3) | 2;
const T_DUPLICATE = (35 << 3) | 0;
const T_SAMPLING = (36 << 3) | 0;
const T_NETNS = (37 << 3) | 2;
const T_L2_OCTETS = (38 << 3) | 0;
const T_EGRESS = (39 << 3) | 0;
const T_VLAN = (40 << 3) | 0;
const T_CUSTOMER_VLAN = (41 << 3) | 0;
const T_PACKET_INTERVAL = (42 << 3) | 0;
const T_PACKET_SPACE = (43 << 3) | 0;
const T_DROPPED_PACKETS = (50 << 3) | 0;
const T_DROPPED_OCTETS = (51 << 3) | 0;
const T_DROP_REASON = (52 << 3) | 2;
const T_TCP_STATE = (53 << 3) | 2;
const T_HANDSHAKE_RTT = (54 << 3) | 0;
const T_SRTT = (55 << 3) | 0;
const T_SRTT_MIN = (56 << 3) | 0;
const T_DNS_LATENCY = (57 << 3) | 0;
const T_DNS_ID = (58 << 3) | 0;
const T_DNS_RCODE = (59 << 3) | 0;
const T_DNS_NAME = (60 << 3) | 2;
const T_OBSERVED = (100 << 3) | 2;
// rxflow.v1.ObservedInterface
const T_OBS_INGRESS = (1 << 3) | 0;
const T_OBS_EGRESS = (2 << 3) | 0;
const T_OBS_DIRECTION = (3 << 3) | 0;
const T_OBS_IFNAME = (4 << 3) | 2;

/** Bytes of `v` (an unsigned 32-bit integer) as a varint. */
function varintSize(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

/** Writes `v` (unsigned 32-bit) as a varint at p; the caller has checked the room. */
function putVarint(out: Buffer, p: number, v: number): number {
  while (v > 127) {
    out[p++] = (v & 127) | 128;
    v >>>= 7;
  }
  out[p] = v;
  return p + 1;
}

/** Tags here are below 2^14: one or two bytes. */
function putTag(out: Buffer, p: number, tag: number): number {
  if (tag < 128) {
    out[p] = tag;
    return p + 1;
  }
  out[p] = (tag & 127) | 128;
  out[p + 1] = tag >>> 7;
  return p + 2;
}

function uint32Field(out: Buffer, p: number, tag: number, value: number): number {
  const v = value >>> 0;
  // Most fields: a one-byte tag and a value below 128.
  if (v < 128 && tag < 128) {
    if (p + 2 > out.length) return -1;
    out[p] = tag;
    out[p + 1] = v;
    return p + 2;
  }
  const e = p + (tag < 128 ? 1 : 2) + varintSize(v);
  if (e > out.length) return -1;
  putVarint(out, putTag(out, p, tag), v);
  return e;
}

/** uint64 from a number as protobufjs's LongBits.fromNumber splits it (two's complement below 0). */
function uint64Field(out: Buffer, p: number, tag: number, value: number): number {
  const negative = value < 0;
  if (negative) value = -value;
  let lo = value >>> 0;
  let hi = ((value - lo) / 4294967296) >>> 0;
  if (negative) {
    hi = ~hi >>> 0;
    lo = ~lo >>> 0;
    if (++lo > 0xffffffff) {
      lo = 0;
      if (++hi > 0xffffffff) hi = 0;
    }
  }
  if (hi === 0) return uint32Field(out, p, tag, lo);
  const e = p + (tag < 128 ? 1 : 2) + (((64 - Math.clz32(hi) + 6) / 7) | 0);
  if (e > out.length) return -1;
  p = putTag(out, p, tag);
  if (hi < 0x10000000) {
    // Below 2^60 (millisecond times, counters): four bytes of low bits, then a 32-bit rest.
    out[p] = (lo & 127) | 128;
    out[p + 1] = ((lo >>> 7) & 127) | 128;
    out[p + 2] = ((lo >>> 14) & 127) | 128;
    out[p + 3] = ((lo >>> 21) & 127) | 128;
    putVarint(out, p + 4, ((lo >>> 28) | (hi << 4)) >>> 0);
    return e;
  }
  while (hi !== 0) {
    out[p++] = (lo & 127) | 128;
    lo = ((lo >>> 7) | (hi << 25)) >>> 0;
    hi >>>= 7;
  }
  putVarint(out, p, lo);
  return e;
}

function boolField(out: Buffer, p: number, tag: number, value: boolean): number {
  const e = p + (tag < 128 ? 1 : 2) + 1;
  if (e > out.length) return -1;
  out[putTag(out, p, tag)] = value ? 1 : 0;
  return e;
}

/**
 * A DataView over the last buffer written to, kept until another comes: the sink writes many
 * records into one slab.
 */
let viewOf: Buffer | undefined;
let view: DataView = new DataView(new ArrayBuffer(0));

/**
 * A string field. ASCII below 128 characters (addresses, MACs, names) is written in one pass, its
 * length known up front, four characters per store (per-byte stores were the largest cost);
 * anything else takes the exact path.
 */
function stringField(out: Buffer, p: number, tag: number, s: string): number {
  const n = s.length;
  const e = p + (tag < 128 ? 1 : 2) + 1 + n;
  if (n >= 128 || e > out.length) return stringFieldUtf8(out, p, tag, s);
  let q = putTag(out, p, tag);
  out[q++] = n;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const a = s.charCodeAt(i);
    const b = s.charCodeAt(i + 1);
    const c = s.charCodeAt(i + 2);
    const d = s.charCodeAt(i + 3);
    if ((a | b | c | d) >= 0x80) return stringFieldUtf8(out, p, tag, s);
    view.setUint32(q, a | (b << 8) | (c << 16) | (d << 24), true);
    q += 4;
  }
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) return stringFieldUtf8(out, p, tag, s);
    out[q++] = c;
  }
  return e;
}

/**
 * protobufjs's Node writer encodes strings shorter than 40 characters with its own UTF-8 writer,
 * which writes a lone surrogate as its three raw bytes (ED A0 80 for U+D800), and longer ones with
 * Buffer's, which writes U+FFFD (EF BF BD) instead; both count three bytes, and both are
 * reproduced here so the bytes stay identical.
 */
function stringFieldUtf8(out: Buffer, p: number, tag: number, s: string): number {
  const n = s.length;
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c < 0xdc00 && c >= 0xd800 && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  const e = p + (tag < 128 ? 1 : 2) + varintSize(bytes) + bytes;
  if (e > out.length) return -1;
  p = putVarint(out, putTag(out, p, tag), bytes);
  const raw = n < 40;
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) out[p++] = c;
    else if (c < 0x800) {
      out[p++] = 0xc0 | (c >>> 6);
      out[p++] = 0x80 | (c & 63);
    } else {
      if ((c & 0xf800) === 0xd800) {
        const d = s.charCodeAt(i + 1);
        if (c < 0xdc00 && (d & 0xfc00) === 0xdc00) {
          const cp = 0x10000 + ((c & 0x3ff) << 10) + (d & 0x3ff);
          out[p++] = 0xf0 | (cp >>> 18);
          out[p++] = 0x80 | ((cp >>> 12) & 63);
          out[p++] = 0x80 | ((cp >>> 6) & 63);
          out[p++] = 0x80 | (cp & 63);
          i++;
          continue;
        }
        if (!raw) c = 0xfffd;
      }
      out[p++] = 0xe0 | (c >>> 12);
      out[p++] = 0x80 | ((c >>> 6) & 63);
      out[p++] = 0x80 | (c & 63);
    }
  }
  return e;
}

/**
 * Writes r as a protobuf rxflow.v1.FlowRecord (bytes identical to protobufjs
 * FlowRecord.encode(r).finish()); returns end position or -1 if it does not fit.
 */
export function writeFlowProto(r: FlowRecord, out: Buffer, pos: number): number {
  if (out !== viewOf) {
    view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    viewOf = out;
  }
  let p = pos;
  let v: number | string | boolean | undefined;
  // Plain (non-optional) fields: proto3 leaves 0 and "" off the wire.
  if ((v = r.ipVersion) != null && v !== 0 && (p = uint32Field(out, p, T_IP_VERSION, v)) < 0) return -1;
  if ((v = r.sourceIPv4Address) != null && (p = stringField(out, p, T_SRC4, v)) < 0) return -1;
  if ((v = r.destinationIPv4Address) != null && (p = stringField(out, p, T_DST4, v)) < 0) return -1;
  if ((v = r.sourceIPv6Address) != null && (p = stringField(out, p, T_SRC6, v)) < 0) return -1;
  if ((v = r.destinationIPv6Address) != null && (p = stringField(out, p, T_DST6, v)) < 0) return -1;
  if ((v = r.sourceTransportPort) != null && v !== 0 && (p = uint32Field(out, p, T_SPORT, v)) < 0) return -1;
  if ((v = r.destinationTransportPort) != null && v !== 0 && (p = uint32Field(out, p, T_DPORT, v)) < 0)
    return -1;
  if ((v = r.protocolIdentifier) != null && v !== 0 && (p = uint32Field(out, p, T_PROTO, v)) < 0) return -1;
  if ((v = r.octetDeltaCount) != null && v !== 0 && (p = uint64Field(out, p, T_OCTETS, v)) < 0) return -1;
  if ((v = r.packetDeltaCount) != null && v !== 0 && (p = uint64Field(out, p, T_PACKETS, v)) < 0) return -1;
  if ((v = r.flowStartMilliseconds) != null && v !== 0 && (p = uint64Field(out, p, T_START, v)) < 0)
    return -1;
  if ((v = r.flowEndMilliseconds) != null && v !== 0 && (p = uint64Field(out, p, T_END, v)) < 0) return -1;
  if ((v = r.tcpControlBits) != null && v !== 0 && (p = uint32Field(out, p, T_TCP, v)) < 0) return -1;
  if ((v = r.ipDiffServCodePoint) != null && v !== 0 && (p = uint32Field(out, p, T_DSCP, v)) < 0) return -1;
  // Optional (absent on egress records), in field-number order as protobufjs writes it.
  if ((v = r.ingressInterface) != null && (p = uint32Field(out, p, T_INGRESS, v)) < 0) return -1;
  if ((v = r.flowDirection) != null && v !== 0 && (p = uint32Field(out, p, T_DIRECTION, v)) < 0) return -1;
  if ((v = r.sourceMacAddress) != null && v !== '' && (p = stringField(out, p, T_SRC_MAC, v)) < 0) return -1;
  if ((v = r.destinationMacAddress) != null && v !== '' && (p = stringField(out, p, T_DST_MAC, v)) < 0)
    return -1;
  if ((v = r.ethernetType) != null && v !== 0 && (p = uint32Field(out, p, T_ETHERTYPE, v)) < 0) return -1;
  // Optional fields: written whenever present, 0 and "" included.
  if ((v = r.interfaceName) != null && (p = stringField(out, p, T_IFNAME, v)) < 0) return -1;
  if ((v = r.icmpTypeIPv4) != null && (p = uint32Field(out, p, T_ICMP4_TYPE, v)) < 0) return -1;
  if ((v = r.icmpCodeIPv4) != null && (p = uint32Field(out, p, T_ICMP4_CODE, v)) < 0) return -1;
  if ((v = r.icmpTypeIPv6) != null && (p = uint32Field(out, p, T_ICMP6_TYPE, v)) < 0) return -1;
  if ((v = r.icmpCodeIPv6) != null && (p = uint32Field(out, p, T_ICMP6_CODE, v)) < 0) return -1;
  if ((v = r.exporterIPv4Address) != null && (p = stringField(out, p, T_EXPORTER4, v)) < 0) return -1;
  if ((v = r.exporterIPv6Address) != null && (p = stringField(out, p, T_EXPORTER6, v)) < 0) return -1;
  if ((v = r.flowEndReason) != null && (p = uint32Field(out, p, T_END_REASON, v)) < 0) return -1;
  if ((v = r.encapsulationType) != null && (p = stringField(out, p, T_ENCAP, v)) < 0) return -1;
  if ((v = r.virtualNetworkIdentifier) != null && (p = uint32Field(out, p, T_VNI, v)) < 0) return -1;
  if ((v = r.tunnelSourceIPAddress) != null && (p = stringField(out, p, T_TUN_SRC, v)) < 0) return -1;
  if ((v = r.tunnelDestinationIPAddress) != null && (p = stringField(out, p, T_TUN_DST, v)) < 0) return -1;
  if ((v = r.tunnelSourceTransportPort) != null && (p = uint32Field(out, p, T_TUN_SPORT, v)) < 0) return -1;
  if ((v = r.tunnelDestinationTransportPort) != null && (p = uint32Field(out, p, T_TUN_DPORT, v)) < 0)
    return -1;
  if ((v = r.flowCookie) != null && (p = stringField(out, p, T_COOKIE, v)) < 0) return -1;
  if ((v = r.duplicate) != null && (p = boolField(out, p, T_DUPLICATE, v)) < 0) return -1;
  if ((v = r.samplingInterval) != null && (p = uint32Field(out, p, T_SAMPLING, v)) < 0) return -1;
  if ((v = r.networkNamespace) != null && (p = stringField(out, p, T_NETNS, v)) < 0) return -1;
  if ((v = r.layer2OctetDeltaCount) != null && (p = uint64Field(out, p, T_L2_OCTETS, v)) < 0) return -1;
  if ((v = r.egressInterface) != null && (p = uint32Field(out, p, T_EGRESS, v)) < 0) return -1;
  if ((v = r.dot1qVlanId) != null && (p = uint32Field(out, p, T_VLAN, v)) < 0) return -1;
  if ((v = r.dot1qCustomerVlanId) != null && (p = uint32Field(out, p, T_CUSTOMER_VLAN, v)) < 0) return -1;
  if ((v = r.samplingPacketInterval) != null && (p = uint32Field(out, p, T_PACKET_INTERVAL, v)) < 0)
    return -1;
  if ((v = r.samplingPacketSpace) != null && (p = uint32Field(out, p, T_PACKET_SPACE, v)) < 0) return -1;
  if ((v = r.droppedPacketDeltaCount) != null && (p = uint64Field(out, p, T_DROPPED_PACKETS, v)) < 0)
    return -1;
  if ((v = r.droppedOctetDeltaCount) != null && (p = uint64Field(out, p, T_DROPPED_OCTETS, v)) < 0) return -1;
  if ((v = r.dropReason) != null && (p = stringField(out, p, T_DROP_REASON, v)) < 0) return -1;
  if ((v = r.tcpState) != null && (p = stringField(out, p, T_TCP_STATE, v)) < 0) return -1;
  if ((v = r.tcpHandshakeRttMicroseconds) != null && (p = uint32Field(out, p, T_HANDSHAKE_RTT, v)) < 0)
    return -1;
  if ((v = r.tcpSmoothedRttMicroseconds) != null && (p = uint32Field(out, p, T_SRTT, v)) < 0) return -1;
  if ((v = r.tcpSmoothedRttMinMicroseconds) != null && (p = uint32Field(out, p, T_SRTT_MIN, v)) < 0)
    return -1;
  if ((v = r.dnsLatencyMicroseconds) != null && (p = uint32Field(out, p, T_DNS_LATENCY, v)) < 0) return -1;
  if ((v = r.dnsTransactionId) != null && (p = uint32Field(out, p, T_DNS_ID, v)) < 0) return -1;
  if ((v = r.dnsResponseCode) != null && (p = uint32Field(out, p, T_DNS_RCODE, v)) < 0) return -1;
  if ((v = r.dnsQueryName) != null && (p = stringField(out, p, T_DNS_NAME, v)) < 0) return -1;
  const observed = r.observedInterfaces;
  if (observed != null) {
    for (const o of observed) if ((p = writeObservedInterface(o, out, p)) < 0) return -1;
  }
  return p;
}

/** One entry of observedInterfaces (field 100): a length-delimited ObservedInterface. */
function writeObservedInterface(o: ObservedInterface, out: Buffer, pos: number): number {
  const lengthAt = pos + 2;
  if (lengthAt + 1 > out.length) return -1;
  putTag(out, pos, T_OBSERVED);
  const start = lengthAt + 1;
  let p = start;
  let v: number | string | undefined;
  if ((v = o.ingressInterface) != null && (p = uint32Field(out, p, T_OBS_INGRESS, v)) < 0) return -1;
  if ((v = o.egressInterface) != null && (p = uint32Field(out, p, T_OBS_EGRESS, v)) < 0) return -1;
  if ((v = o.flowDirection) != null && v !== 0 && (p = uint32Field(out, p, T_OBS_DIRECTION, v)) < 0)
    return -1;
  if ((v = o.interfaceName) != null && (p = stringField(out, p, T_OBS_IFNAME, v)) < 0) return -1;
  return placeLength(out, lengthAt, start, p);
}

/**
 * Writes the length of the message written at [start, end) into the one byte kept for it at
 * `lengthAt`, moving the message up when the length needs more bytes; returns the new end or -1.
 */
function placeLength(out: Buffer, lengthAt: number, start: number, end: number): number {
  const n = end - start;
  if (n < 128) {
    out[lengthAt] = n;
    return end;
  }
  const extra = varintSize(n) - 1;
  if (end + extra > out.length) return -1;
  out.copyWithin(start + extra, start, end);
  putVarint(out, lengthAt, n);
  return end + extra;
}

/**
 * Writes r as a length-delimited field `field` (tag, varint length, message) - e.g. field 1 of
 * FlowBatch; returns end position or -1.
 *
 * The length is not known before the message is written, so one byte is kept for it; a message of
 * 128 bytes or more is moved up by the extra length bytes afterwards, as protobufjs's `ldelim`
 * does.
 */
export function writeFlowProtoField(r: FlowRecord, field: number, out: Buffer, pos: number): number {
  const tag = ((field << 3) | 2) >>> 0;
  const lengthAt = pos + varintSize(tag);
  if (lengthAt + 1 > out.length) return -1;
  putVarint(out, pos, tag);
  const start = lengthAt + 1;
  const end = writeFlowProto(r, out, start);
  if (end < 0) return -1;
  const n = end - start;
  if (n < 128) {
    out[lengthAt] = n;
    return end;
  }
  const extra = varintSize(n) - 1;
  if (end + extra > out.length) return -1;
  out.copyWithin(start + extra, start, end);
  putVarint(out, lengthAt, n);
  return end + extra;
}
