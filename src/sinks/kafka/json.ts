/**
 * JSON of a flow record written straight into a Buffer, for the kafka sink's hot path.
 *
 * `JSON.stringify` builds a string per record that `Buffer.write` then copies again as UTF-8;
 * here keys are pre-encoded, integers are written four digits at a time from a table and plain
 * ASCII strings four characters at a time, so a record of integers and ASCII strings costs no
 * allocation and no string (bench/flow-encode.bench.ts). The output is what `JSON.stringify` gives for the record's keys in
 * FlowRecord's declaration order.
 *
 * Most stores go through a DataView, 8 or 4 bytes at once: per-byte stores were the largest cost.
 * Those wide stores may run a few bytes past what is finally written, never past `out.length`;
 * such bytes are overwritten by what follows, or lie after the returned end.
 */
import type { FlowRecord } from '../../records/flow.js';

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * `,"name":` of a FlowRecord key: as bytes, and as 8-byte words for DataView stores. Every key is
 * written with its comma; the first one's comma is then replaced by the `{`. The words are padded
 * with spaces: padded ASCII never has a NaN's bit pattern, whose payload a float store might not
 * keep.
 */
class Key {
  readonly bytes: Buffer;
  readonly words: Float64Array;
  /** Bytes the word stores cover. */
  readonly span: number;

  constructor(name: string) {
    this.bytes = Buffer.from(`,"${name}":`, 'latin1');
    this.span = Math.ceil(this.bytes.length / 8) * 8;
    const padded = Buffer.alloc(this.span, 0x20);
    this.bytes.copy(padded);
    this.words = new Float64Array(this.span / 8);
    for (let i = 0; i < this.words.length; i++) this.words[i] = padded.readDoubleLE(i * 8);
  }
}

function key(name: string): Key {
  return new Key(name);
}

/**
 * A DataView over the last buffer written to, kept until another comes: the sink writes many
 * records into one slab.
 */
let viewOf: Buffer | undefined;
let view: DataView = new DataView(new ArrayBuffer(0));

const K_IP_VERSION = key('ipVersion');
const K_SRC4 = key('sourceIPv4Address');
const K_DST4 = key('destinationIPv4Address');
const K_SRC6 = key('sourceIPv6Address');
const K_DST6 = key('destinationIPv6Address');
const K_SPORT = key('sourceTransportPort');
const K_DPORT = key('destinationTransportPort');
const K_PROTO = key('protocolIdentifier');
const K_ICMP4_TYPE = key('icmpTypeIPv4');
const K_ICMP4_CODE = key('icmpCodeIPv4');
const K_ICMP6_TYPE = key('icmpTypeIPv6');
const K_ICMP6_CODE = key('icmpCodeIPv6');
const K_OCTETS = key('octetDeltaCount');
const K_L2_OCTETS = key('layer2OctetDeltaCount');
const K_PACKETS = key('packetDeltaCount');
const K_START = key('flowStartMilliseconds');
const K_END = key('flowEndMilliseconds');
const K_TCP = key('tcpControlBits');
const K_DSCP = key('ipDiffServCodePoint');
const K_INGRESS = key('ingressInterface');
const K_EGRESS = key('egressInterface');
const K_DIRECTION = key('flowDirection');
const K_SRC_MAC = key('sourceMacAddress');
const K_DST_MAC = key('destinationMacAddress');
const K_ETHERTYPE = key('ethernetType');
const K_VLAN = key('dot1qVlanId');
const K_CUSTOMER_VLAN = key('dot1qCustomerVlanId');
const K_IFNAME = key('interfaceName');
const K_EXPORTER4 = key('exporterIPv4Address');
const K_EXPORTER6 = key('exporterIPv6Address');
const K_END_REASON = key('flowEndReason');
const K_ENCAP = key('encapsulationType');
const K_VNI = key('virtualNetworkIdentifier');
const K_TUN_SRC = key('tunnelSourceIPAddress');
const K_TUN_DST = key('tunnelDestinationIPAddress');
const K_TUN_SPORT = key('tunnelSourceTransportPort');
const K_TUN_DPORT = key('tunnelDestinationTransportPort');
const K_COOKIE = key('flowCookie');
const K_DUPLICATE = key('duplicate');
const K_PACKET_INTERVAL = key('samplingPacketInterval');
const K_PACKET_SPACE = key('samplingPacketSpace');
const K_SAMPLING = key('samplingInterval');
const K_NETNS = key('networkNamespace');
const K_DROPPED_PACKETS = key('droppedPacketDeltaCount');
const K_DROPPED_OCTETS = key('droppedOctetDeltaCount');
const K_DROP_REASON = key('dropReason');
const K_TCP_STATE = key('tcpState');
const K_HANDSHAKE_RTT = key('tcpHandshakeRttMicroseconds');
const K_SRTT = key('tcpSmoothedRttMicroseconds');
const K_SRTT_MIN = key('tcpSmoothedRttMinMicroseconds');
const K_DNS_LATENCY = key('dnsLatencyMicroseconds');
const K_DNS_ID = key('dnsTransactionId');
const K_DNS_RCODE = key('dnsResponseCode');
const K_DNS_NAME = key('dnsQueryName');
const K_OBSERVED = key('observedInterfaces');

/** "00".."99": two digits per division halves the divisions of a number. */
const DIGIT_PAIRS = Buffer.from(Array.from({ length: 100 }, (_, i) => String(i).padStart(2, '0')).join(''));
/** 0..9999 as four zero-padded ASCII digits, first digit in the low byte (a little-endian word). */
const DIGITS4 = new Uint32Array(10000);
for (let i = 0; i < 10000; i++) {
  const t = String(i).padStart(4, '0');
  DIGITS4[i] =
    (t.charCodeAt(0) | (t.charCodeAt(1) << 8) | (t.charCodeAt(2) << 16) | (t.charCodeAt(3) << 24)) >>> 0;
}
const HEX = Buffer.from('0123456789abcdef');
const TRUE = Buffer.from('true');
const FALSE = Buffer.from('false');

function writeKey(out: Buffer, p: number, k: Key): number {
  const n = k.bytes.length;
  if (p + k.span <= out.length) {
    const w = k.words;
    for (let i = 0; i < w.length; i++) view.setFloat64(p + 8 * i, w[i]!, true);
    return p + n;
  }
  return writeBytes(out, p, k.bytes);
}

function writeBytes(out: Buffer, p: number, b: Uint8Array): number {
  const n = b.length;
  if (p + n > out.length) return -1;
  for (let i = 0; i < n; i++) out[p + i] = b[i]!;
  return p + n;
}

function digits4(v: number): number {
  return v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : 4;
}

/** `v` (below 10000) without leading zeros, as a word whose low bytes are its digits. */
function leading4(v: number, digits: number): number {
  return DIGITS4[v]! >>> (32 - 8 * digits);
}

/** Digits of `v` (an integer in [0, 2^32)) as JSON writes it; words when 10 bytes are left. */
function writeUint32(out: Buffer, p: number, v: number): number {
  if (p + 10 > out.length) return writeUint32Exact(out, p, v);
  if (v < 10000) {
    const d = digits4(v);
    view.setUint32(p, leading4(v, d), true);
    return p + d;
  }
  if (v < 100000000) {
    const hi = (v / 10000) >>> 0;
    const d = digits4(hi);
    view.setUint32(p, leading4(hi, d), true);
    view.setUint32(p + d, DIGITS4[v - hi * 10000]!, true);
    return p + d + 4;
  }
  const hi = (v / 100000000) >>> 0;
  const lo = v - hi * 100000000;
  const mid = (lo / 10000) >>> 0;
  const d = hi < 10 ? 1 : 2;
  view.setUint32(p, leading4(hi, d), true);
  view.setUint32(p + d, DIGITS4[mid]!, true);
  view.setUint32(p + d + 4, DIGITS4[lo - mid * 10000]!, true);
  return p + d + 8;
}

function decimalDigits(v: number): number {
  if (v < 100000) return v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : v < 10000 ? 4 : 5;
  return v < 1000000 ? 6 : v < 10000000 ? 7 : v < 100000000 ? 8 : v < 1000000000 ? 9 : 10;
}

/** Digits of `v` (an integer in [0, 2^32)) ending just before `e`. */
function putDigits(out: Buffer, e: number, v: number): void {
  while (v >= 100) {
    const q = (v / 100) >>> 0;
    const d = (v - q * 100) << 1;
    out[--e] = DIGIT_PAIRS[d + 1]!;
    out[--e] = DIGIT_PAIRS[d]!;
    v = q;
  }
  if (v >= 10) {
    out[--e] = DIGIT_PAIRS[(v << 1) + 1]!;
    out[--e] = DIGIT_PAIRS[v << 1]!;
  } else out[--e] = 0x30 + v;
}

/** Near the end of `out`: byte stores, none past the last digit. */
function writeUint32Exact(out: Buffer, p: number, v: number): number {
  const e = p + decimalDigits(v);
  if (e > out.length) return -1;
  putDigits(out, e, v);
  return e;
}

/**
 * A number as JSON.stringify writes it. Integers below 2^53 (counters, millisecond times) are
 * written by hand; the rest (fractions, NaN, infinities, beyond 2^53) are rare and go through
 * String(), whose output is exactly JSON's for finite numbers.
 */
function writeNumber(out: Buffer, p: number, v: number): number {
  // -0 passes too and is written "0", as JSON.stringify does.
  if (v >>> 0 === v) return writeUint32(out, p, v);
  if (Number.isSafeInteger(v)) {
    if (v < 0) {
      if (p >= out.length) return -1;
      out[p++] = 0x2d;
      v = -v;
      if (v <= 0xffffffff) return writeUint32(out, p, v);
    }
    // The low eight digits, zero-padded, after the rest. The division is exact enough: hi is below
    // 2^27, where half a unit in the last place is 0.75e-8 while a remainder is at least 1e-8 from
    // the next integer, so the quotient never rounds up to it.
    const hi = Math.floor(v / 1e8);
    const lo = v - hi * 1e8;
    if (p + 16 <= out.length) {
      const q = writeUint32(out, p, hi);
      const mid = (lo / 10000) >>> 0;
      view.setUint32(q, DIGITS4[mid]!, true);
      view.setUint32(q + 4, DIGITS4[lo - mid * 10000]!, true);
      return q + 8;
    }
    const e = p + decimalDigits(hi) + 8;
    if (e > out.length) return -1;
    putDigits(out, e - 8, hi);
    for (let i = e - 8; i < e - 1; i++) out[i] = 0x30;
    putDigits(out, e, lo);
    return e;
  }
  return writeAscii(out, p, Number.isFinite(v) ? String(v) : 'null');
}

/** `s` holds only ASCII (a number's text, a fallback value's JSON). */
function writeAscii(out: Buffer, p: number, s: string): number {
  const n = s.length;
  if (p + n > out.length) return -1;
  for (let i = 0; i < n; i++) out[p + i] = s.charCodeAt(i);
  return p + n;
}

function plain(c: number): boolean {
  return c >= 0x20 && c <= 0x7e && c !== QUOTE && c !== BACKSLASH;
}

/**
 * A string as JSON.stringify quotes it, encoded as UTF-8. Plain printable ASCII is copied four
 * characters per store; the first character that needs more sends the rest to the exact
 * per-character path.
 */
function writeString(out: Buffer, p: number, s: string): number {
  const n = s.length;
  if (p + n + 2 > out.length) return writeStringFrom(out, p, s, 0, true);
  out[p++] = QUOTE;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const a = s.charCodeAt(i);
    const b = s.charCodeAt(i + 1);
    const c = s.charCodeAt(i + 2);
    const d = s.charCodeAt(i + 3);
    if (!(plain(a) && plain(b) && plain(c) && plain(d))) return writeStringFrom(out, p, s, i, false);
    view.setUint32(p, (a | (b << 8) | (c << 16) | (d << 24)) >>> 0, true);
    p += 4;
  }
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (!plain(c)) return writeStringFrom(out, p, s, i, false);
    out[p++] = c;
  }
  out[p++] = QUOTE;
  return p;
}

function writeEscape(out: Buffer, p: number, c: number): number {
  let letter = 0;
  switch (c) {
    case 0x08:
      letter = 0x62; // b
      break;
    case 0x09:
      letter = 0x74; // t
      break;
    case 0x0a:
      letter = 0x6e; // n
      break;
    case 0x0c:
      letter = 0x66; // f
      break;
    case 0x0d:
      letter = 0x72; // r
      break;
    case QUOTE:
    case BACKSLASH:
      letter = c;
      break;
  }
  if (letter !== 0) {
    if (p + 2 > out.length) return -1;
    out[p] = BACKSLASH;
    out[p + 1] = letter;
    return p + 2;
  }
  if (p + 6 > out.length) return -1;
  out[p] = BACKSLASH;
  out[p + 1] = 0x75; // u
  out[p + 2] = HEX[c >>> 12]!;
  out[p + 3] = HEX[(c >>> 8) & 15]!;
  out[p + 4] = HEX[(c >>> 4) & 15]!;
  out[p + 5] = HEX[c & 15]!;
  return p + 6;
}

/**
 * The rest of `s` from character `i` on, each character checked against the room left. Control
 * characters, quote and backslash are escaped; so are lone surrogates (as `\udxxx`, like
 * JSON.stringify since ES2019), which keeps the output valid UTF-8.
 */
function writeStringFrom(out: Buffer, p: number, s: string, i: number, open: boolean): number {
  const len = out.length;
  if (open) {
    if (p >= len) return -1;
    out[p++] = QUOTE;
  }
  const n = s.length;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) {
      if (c < 0x20 || c === QUOTE || c === BACKSLASH) {
        p = writeEscape(out, p, c);
        if (p < 0) return -1;
      } else {
        if (p >= len) return -1;
        out[p++] = c;
      }
    } else if (c < 0x800) {
      if (p + 2 > len) return -1;
      out[p++] = 0xc0 | (c >>> 6);
      out[p++] = 0x80 | (c & 63);
    } else if ((c & 0xf800) !== 0xd800) {
      if (p + 3 > len) return -1;
      out[p++] = 0xe0 | (c >>> 12);
      out[p++] = 0x80 | ((c >>> 6) & 63);
      out[p++] = 0x80 | (c & 63);
    } else {
      const d = i + 1 < n ? s.charCodeAt(i + 1) : 0;
      if (c < 0xdc00 && (d & 0xfc00) === 0xdc00) {
        const cp = 0x10000 + ((c & 0x3ff) << 10) + (d & 0x3ff);
        if (p + 4 > len) return -1;
        out[p++] = 0xf0 | (cp >>> 18);
        out[p++] = 0x80 | ((cp >>> 12) & 63);
        out[p++] = 0x80 | ((cp >>> 6) & 63);
        out[p++] = 0x80 | (cp & 63);
        i++;
      } else {
        p = writeEscape(out, p, c);
        if (p < 0) return -1;
      }
    }
  }
  if (p >= len) return -1;
  out[p++] = QUOTE;
  return p;
}

/**
 * A value of a type FlowRecord does not declare for the key (null, an object): what
 * JSON.stringify makes of it, or nothing (key dropped) for what it leaves out.
 */
function writeOther(out: Buffer, p: number, k: Key, v: unknown): number {
  const text = JSON.stringify(v) as string | undefined;
  if (text === undefined) return p;
  p = writeKey(out, p, k);
  return p < 0 ? -1 : writeStringBody(out, p, text);
}

/** JSON text (already escaped) as UTF-8; JSON.stringify's output has no lone surrogates. */
function writeStringBody(out: Buffer, p: number, text: string): number {
  const n = Buffer.byteLength(text, 'utf8');
  if (p + n > out.length) return -1;
  out.write(text, p, n, 'utf8');
  return p + n;
}

function numberField(out: Buffer, p: number, k: Key, v: number | undefined): number {
  if (typeof v !== 'number') return v === undefined ? p : writeOther(out, p, k, v);
  p = writeKey(out, p, k);
  return p < 0 ? -1 : writeNumber(out, p, v);
}

function stringField(out: Buffer, p: number, k: Key, v: string | undefined): number {
  if (typeof v !== 'string') return v === undefined ? p : writeOther(out, p, k, v);
  p = writeKey(out, p, k);
  return p < 0 ? -1 : writeString(out, p, v);
}

function booleanField(out: Buffer, p: number, k: Key, v: boolean | undefined): number {
  if (typeof v !== 'boolean') return v === undefined ? p : writeOther(out, p, k, v);
  p = writeKey(out, p, k);
  return p < 0 ? -1 : writeBytes(out, p, v ? TRUE : FALSE);
}

/**
 * Writes JSON of r into out at pos; returns the end position, or -1 if it does not fit before
 * out.length (bytes from pos on are then unspecified).
 *
 * Nothing is written before pos or at or after out.length; with room to spare, up to 8 bytes after
 * the returned end may be overwritten too (scratch of the wide stores), so a caller writes what
 * follows the record after the call, not before it.
 *
 * Keys come in FlowRecord's declaration order whatever order the record's own keys are in, and
 * only FlowRecord's keys are written; keys whose value is undefined are left out, as
 * JSON.stringify leaves them out.
 */
export function writeFlowJson(r: FlowRecord, out: Buffer, pos: number): number {
  if (out !== viewOf) {
    view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    viewOf = out;
  }
  let p = pos;
  if ((p = numberField(out, p, K_IP_VERSION, r.ipVersion)) < 0) return -1;
  if ((p = stringField(out, p, K_SRC4, r.sourceIPv4Address)) < 0) return -1;
  if ((p = stringField(out, p, K_DST4, r.destinationIPv4Address)) < 0) return -1;
  if ((p = stringField(out, p, K_SRC6, r.sourceIPv6Address)) < 0) return -1;
  if ((p = stringField(out, p, K_DST6, r.destinationIPv6Address)) < 0) return -1;
  if ((p = numberField(out, p, K_SPORT, r.sourceTransportPort)) < 0) return -1;
  if ((p = numberField(out, p, K_DPORT, r.destinationTransportPort)) < 0) return -1;
  if ((p = numberField(out, p, K_PROTO, r.protocolIdentifier)) < 0) return -1;
  if ((p = numberField(out, p, K_ICMP4_TYPE, r.icmpTypeIPv4)) < 0) return -1;
  if ((p = numberField(out, p, K_ICMP4_CODE, r.icmpCodeIPv4)) < 0) return -1;
  if ((p = numberField(out, p, K_ICMP6_TYPE, r.icmpTypeIPv6)) < 0) return -1;
  if ((p = numberField(out, p, K_ICMP6_CODE, r.icmpCodeIPv6)) < 0) return -1;
  if ((p = numberField(out, p, K_OCTETS, r.octetDeltaCount)) < 0) return -1;
  if ((p = numberField(out, p, K_L2_OCTETS, r.layer2OctetDeltaCount)) < 0) return -1;
  if ((p = numberField(out, p, K_PACKETS, r.packetDeltaCount)) < 0) return -1;
  if ((p = numberField(out, p, K_START, r.flowStartMilliseconds)) < 0) return -1;
  if ((p = numberField(out, p, K_END, r.flowEndMilliseconds)) < 0) return -1;
  if ((p = numberField(out, p, K_TCP, r.tcpControlBits)) < 0) return -1;
  if ((p = numberField(out, p, K_DSCP, r.ipDiffServCodePoint)) < 0) return -1;
  if ((p = numberField(out, p, K_INGRESS, r.ingressInterface)) < 0) return -1;
  if ((p = numberField(out, p, K_EGRESS, r.egressInterface)) < 0) return -1;
  if ((p = numberField(out, p, K_DIRECTION, r.flowDirection)) < 0) return -1;
  if ((p = stringField(out, p, K_SRC_MAC, r.sourceMacAddress)) < 0) return -1;
  if ((p = stringField(out, p, K_DST_MAC, r.destinationMacAddress)) < 0) return -1;
  if ((p = numberField(out, p, K_ETHERTYPE, r.ethernetType)) < 0) return -1;
  if ((p = numberField(out, p, K_VLAN, r.dot1qVlanId)) < 0) return -1;
  if ((p = numberField(out, p, K_CUSTOMER_VLAN, r.dot1qCustomerVlanId)) < 0) return -1;
  if ((p = stringField(out, p, K_IFNAME, r.interfaceName)) < 0) return -1;
  if ((p = stringField(out, p, K_EXPORTER4, r.exporterIPv4Address)) < 0) return -1;
  if ((p = stringField(out, p, K_EXPORTER6, r.exporterIPv6Address)) < 0) return -1;
  if ((p = numberField(out, p, K_END_REASON, r.flowEndReason)) < 0) return -1;
  if ((p = stringField(out, p, K_ENCAP, r.encapsulationType)) < 0) return -1;
  if ((p = numberField(out, p, K_VNI, r.virtualNetworkIdentifier)) < 0) return -1;
  if ((p = stringField(out, p, K_TUN_SRC, r.tunnelSourceIPAddress)) < 0) return -1;
  if ((p = stringField(out, p, K_TUN_DST, r.tunnelDestinationIPAddress)) < 0) return -1;
  if ((p = numberField(out, p, K_TUN_SPORT, r.tunnelSourceTransportPort)) < 0) return -1;
  if ((p = numberField(out, p, K_TUN_DPORT, r.tunnelDestinationTransportPort)) < 0) return -1;
  if ((p = stringField(out, p, K_COOKIE, r.flowCookie)) < 0) return -1;
  if ((p = booleanField(out, p, K_DUPLICATE, r.duplicate)) < 0) return -1;
  if ((p = numberField(out, p, K_PACKET_INTERVAL, r.samplingPacketInterval)) < 0) return -1;
  if ((p = numberField(out, p, K_PACKET_SPACE, r.samplingPacketSpace)) < 0) return -1;
  if ((p = numberField(out, p, K_SAMPLING, r.samplingInterval)) < 0) return -1;
  if ((p = stringField(out, p, K_NETNS, r.networkNamespace)) < 0) return -1;
  if ((p = numberField(out, p, K_DROPPED_PACKETS, r.droppedPacketDeltaCount)) < 0) return -1;
  if ((p = numberField(out, p, K_DROPPED_OCTETS, r.droppedOctetDeltaCount)) < 0) return -1;
  if ((p = stringField(out, p, K_DROP_REASON, r.dropReason)) < 0) return -1;
  if ((p = stringField(out, p, K_TCP_STATE, r.tcpState)) < 0) return -1;
  if ((p = numberField(out, p, K_HANDSHAKE_RTT, r.tcpHandshakeRttMicroseconds)) < 0) return -1;
  if ((p = numberField(out, p, K_SRTT, r.tcpSmoothedRttMicroseconds)) < 0) return -1;
  if ((p = numberField(out, p, K_SRTT_MIN, r.tcpSmoothedRttMinMicroseconds)) < 0) return -1;
  if ((p = numberField(out, p, K_DNS_LATENCY, r.dnsLatencyMicroseconds)) < 0) return -1;
  if ((p = numberField(out, p, K_DNS_ID, r.dnsTransactionId)) < 0) return -1;
  if ((p = numberField(out, p, K_DNS_RCODE, r.dnsResponseCode)) < 0) return -1;
  if ((p = stringField(out, p, K_DNS_NAME, r.dnsQueryName)) < 0) return -1;
  // Only flows dedupe saw on several interfaces have it: JSON.stringify's text is good enough.
  if (r.observedInterfaces !== undefined && (p = writeOther(out, p, K_OBSERVED, r.observedInterfaces)) < 0)
    return -1;
  if (p === pos) {
    if (p + 2 > out.length) return -1;
    out[p] = 0x7b; // {
    out[p + 1] = 0x7d; // }
    return p + 2;
  }
  if (p >= out.length) return -1;
  out[pos] = 0x7b; // { in place of the first key's comma
  out[p] = 0x7d; // }
  return p + 1;
}
