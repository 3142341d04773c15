/**
 * IPFIX messages (RFC 7011) of flow records: a 16-byte message header, template sets that
 * describe the records, and data sets of records written field by field into one reused buffer.
 *
 * Every element is an IANA one (https://www.iana.org/assignments/ipfix), so any collector reads
 * the records without an enterprise definition. Which template a record takes:
 *
 *   256  IPv4            common + L3 + sourceIPv4Address(8) destinationIPv4Address(12) icmpTypeCodeIPv4(32)
 *   257  IPv6            common + L3 + sourceIPv6Address(27) destinationIPv6Address(28) icmpTypeCodeIPv6(139)
 *   258  layer 2         common (a frame that is not IP: MACs and ethernetType identify it)
 *   259  IPv4 in VXLAN   as 256 + layer2SegmentId(351)
 *   260  IPv6 in VXLAN   as 257 + layer2SegmentId(351)
 *
 *   common: flowStartMilliseconds(152) flowEndMilliseconds(153) octetDeltaCount(1)
 *           packetDeltaCount(2) ingressInterface(10) egressInterface(14) flowDirection(61)
 *           flowEndReason(136) sourceMacAddress(56) destinationMacAddress(80) ethernetType(256)
 *           layer2OctetDeltaCount(352) dot1qVlanId(243) dot1qCustomerVlanId(245)
 *           droppedPacketDeltaCount(133) droppedOctetDeltaCount(132)
 *   L3:     protocolIdentifier(4) sourceTransportPort(7) destinationTransportPort(11)
 *           tcpControlBits(6) ipDiffServCodePoint(195)
 *
 * The interface goes to ingressInterface on an ingress record and to egressInterface on an egress
 * one, the other being 0 (unknown), as elements 10 and 14 mean. layer2SegmentId carries the VXLAN
 * VNI with 0x01 (VXLAN) in its top byte, as element 351 defines; GENEVE has no type code there,
 * so a GENEVE record goes out on its inner template without tunnel fields. layer2OctetDeltaCount
 * is 0 for a record without it (one written by an older version, read back), and the VLAN ids are
 * 0 for an untagged frame (802.1Q's "no VLAN"), the drop counts 0 for a record without drops
 * (ebpf_flows with drops off, or no drop in the interval). Fields with no IANA
 * element (tunnel outer addresses, the GENEVE cookie) are left out, and so is interfaceName
 * (IANA 82), which none of these templates carries.
 *
 * rxflow's own fields (RTT, DNS, drop reason, TCP state, network namespace) have no IANA element
 * and rxflow has no Private Enterprise Number of its own: with an enterprise number configured
 * (MessageBuilder's `enterpriseNumber`, the sink's `enterprise_number`), every record goes out on
 * template id + 256 (512-516): the IANA template with rxflow's elements (RXFLOW_ELEMENTS,
 * src/records/rxflow-elements.ts) appended as enterprise-specific elements under that number (RFC
 * 7011 3.2: E bit, 4-byte PEN). Separate ids, so a collector still holding an IANA-only template
 * of a previous run never reads these records with it. Every record carries every element: an
 * absent number is 0 and an absent string empty, as absent IANA fields are, and presentElements
 * says which hold the record's value (a DNS transaction id or response code of 0 is a value).
 * Strings are variable-length (RFC 7011 7), so records differ in size; a record too long to share
 * a message with the templates goes in the next one, and one too long for any message is refused.
 * Without an enterprise number the messages are the IANA ones above, byte for byte.
 */
import type { FlowRecord } from '../../records/flow.js';
import { flowInterface, readIPv4Words, type IPv4WordsOut } from '../../records/flow.js';
import { RXFLOW_ELEMENTS } from '../../records/rxflow-elements.js';
import { ipv4ToUint32, writeIPv6, writeMac } from '../../net/address.js';

export const IPFIX_VERSION = 10;
export const MESSAGE_HEADER_BYTES = 16;
export const SET_HEADER_BYTES = 4;
export const TEMPLATE_SET_ID = 2;
/** The largest IPFIX message: its length field is 16 bits. */
export const MAX_MESSAGE_BYTES = 65_535;

export const TEMPLATE_IPV4 = 256;
export const TEMPLATE_IPV6 = 257;
export const TEMPLATE_L2 = 258;
export const TEMPLATE_IPV4_VXLAN = 259;
export const TEMPLATE_IPV6_VXLAN = 260;

/** An information element in a template: IANA id and the length rxflow writes. */
export interface Element {
  id: number;
  name: string;
  length: number;
}

const el = (id: number, name: string, length: number): Element => ({ id, name, length });

const COMMON: readonly Element[] = [
  el(152, 'flowStartMilliseconds', 8),
  el(153, 'flowEndMilliseconds', 8),
  el(1, 'octetDeltaCount', 8),
  el(2, 'packetDeltaCount', 8),
  el(10, 'ingressInterface', 4),
  el(14, 'egressInterface', 4),
  el(61, 'flowDirection', 1),
  el(136, 'flowEndReason', 1),
  el(56, 'sourceMacAddress', 6),
  el(80, 'destinationMacAddress', 6),
  el(256, 'ethernetType', 2),
  el(352, 'layer2OctetDeltaCount', 8),
  el(243, 'dot1qVlanId', 2),
  el(245, 'dot1qCustomerVlanId', 2),
  el(133, 'droppedPacketDeltaCount', 8),
  el(132, 'droppedOctetDeltaCount', 8),
];
const L3: readonly Element[] = [
  el(4, 'protocolIdentifier', 1),
  el(7, 'sourceTransportPort', 2),
  el(11, 'destinationTransportPort', 2),
  el(6, 'tcpControlBits', 2),
  el(195, 'ipDiffServCodePoint', 1),
];
const V4: readonly Element[] = [
  el(8, 'sourceIPv4Address', 4),
  el(12, 'destinationIPv4Address', 4),
  el(32, 'icmpTypeCodeIPv4', 2),
];
const V6: readonly Element[] = [
  el(27, 'sourceIPv6Address', 16),
  el(28, 'destinationIPv6Address', 16),
  el(139, 'icmpTypeCodeIPv6', 2),
];
const SEGMENT: readonly Element[] = [el(351, 'layer2SegmentId', 8)];

/** An IANA template's id plus this is its id with rxflow's elements appended. */
export const RXFLOW_TEMPLATE_OFFSET = 256;

/** Bytes of rxflow's fixed-length elements (1-7), in front of its strings. */
const RXFLOW_FIXED_BYTES = 23;

/** Every template rxflow exports, by id. */
export const TEMPLATES: ReadonlyMap<number, readonly Element[]> = new Map([
  [TEMPLATE_IPV4, [...COMMON, ...L3, ...V4]],
  [TEMPLATE_IPV6, [...COMMON, ...L3, ...V6]],
  [TEMPLATE_L2, [...COMMON]],
  [TEMPLATE_IPV4_VXLAN, [...COMMON, ...L3, ...V4, ...SEGMENT]],
  [TEMPLATE_IPV6_VXLAN, [...COMMON, ...L3, ...V6, ...SEGMENT]],
]);

const recordBytes = (id: number): number => TEMPLATES.get(id)!.reduce((n, e) => n + e.length, 0);
/** Bytes of one data record, by template id - 256. */
const RECORD_BYTES: readonly number[] = [...TEMPLATES.keys()].map(recordBytes);
const COMMON_BYTES = COMMON.reduce((n, e) => n + e.length, 0);
const L3_BYTES = L3.reduce((n, e) => n + e.length, 0);

/** Bytes of a template set carrying every template. */
export const TEMPLATE_SET_BYTES =
  SET_HEADER_BYTES + [...TEMPLATES.values()].reduce((n, els) => n + 4 + els.length * 4, 0);

/** Bytes of the template set, with rxflow's elements under `enterpriseNumber` when given. */
export function templateSetBytes(enterpriseNumber?: number): number {
  if (enterpriseNumber === undefined) return TEMPLATE_SET_BYTES;
  // An enterprise-specific field specifier is 8 bytes: id, length and the enterprise number.
  return TEMPLATE_SET_BYTES + TEMPLATES.size * RXFLOW_ELEMENTS.length * 8;
}

/** The template a record goes out on, or -1 when it cannot be encoded (see recordProblem). */
export function templateOf(r: FlowRecord): number {
  const vxlan = r.encapsulationType === 'vxlan' && r.virtualNetworkIdentifier !== undefined;
  switch (r.ipVersion) {
    case 4:
      return vxlan ? TEMPLATE_IPV4_VXLAN : TEMPLATE_IPV4;
    case 6:
      return vxlan ? TEMPLATE_IPV6_VXLAN : TEMPLATE_IPV6;
    case 0:
      return TEMPLATE_L2;
    default:
      return -1;
  }
}

/**
 * Writes the template set of every template at `pos`, with rxflow's elements under
 * `enterpriseNumber` when given; returns the position after it.
 */
export function writeTemplateSet(out: Buffer, pos: number, enterpriseNumber?: number): number {
  const start = pos;
  const own = enterpriseNumber !== undefined;
  out.writeUInt16BE(TEMPLATE_SET_ID, pos);
  pos += SET_HEADER_BYTES;
  for (const [id, elements] of TEMPLATES) {
    out.writeUInt16BE(own ? id + RXFLOW_TEMPLATE_OFFSET : id, pos);
    out.writeUInt16BE(elements.length + (own ? RXFLOW_ELEMENTS.length : 0), pos + 2);
    pos += 4;
    for (const e of elements) {
      out.writeUInt16BE(e.id, pos);
      out.writeUInt16BE(e.length, pos + 2);
      pos += 4;
    }
    if (!own) continue;
    for (const e of RXFLOW_ELEMENTS) {
      out.writeUInt16BE(0x8000 | e.id, pos);
      out.writeUInt16BE(e.length, pos + 2);
      out.writeUInt32BE(enterpriseNumber, pos + 4);
      pos += 8;
    }
  }
  out.writeUInt16BE(pos - start, start + 2);
  return pos;
}

/**
 * Writes a template withdrawal for every template (RFC 7011 8.1: a template record with field
 * count 0), which a TCP exporter sends before it ends a session; returns the position after it.
 * With `enterpriseNumber`, of the templates carrying rxflow's elements.
 */
export function writeTemplateWithdrawal(out: Buffer, pos: number, enterpriseNumber?: number): number {
  const start = pos;
  out.writeUInt16BE(TEMPLATE_SET_ID, pos);
  pos += SET_HEADER_BYTES;
  for (const id of TEMPLATES.keys()) {
    out.writeUInt16BE(enterpriseNumber !== undefined ? id + RXFLOW_TEMPLATE_OFFSET : id, pos);
    out.writeUInt16BE(0, pos + 2);
    pos += 4;
  }
  out.writeUInt16BE(pos - start, start + 2);
  return pos;
}

/** Writes a message header at offset 0 of `out`. */
export function writeMessageHeader(
  out: Buffer,
  length: number,
  exportTimeSeconds: number,
  sequence: number,
  observationDomain: number,
): void {
  out.writeUInt16BE(IPFIX_VERSION, 0);
  out.writeUInt16BE(length, 2);
  out.writeUInt32BE(exportTimeSeconds >>> 0, 4);
  out.writeUInt32BE(sequence >>> 0, 8);
  out.writeUInt32BE(observationDomain >>> 0, 12);
}

const TWO_32 = 2 ** 32;

function u64(out: Buffer, pos: number, n: number): void {
  const hi = Math.floor(n / TWO_32);
  u32(out, pos, hi);
  u32(out, pos + 4, n - hi * TWO_32);
}

function u32(out: Buffer, pos: number, n: number): void {
  out[pos] = n >>> 24;
  out[pos + 1] = n >>> 16;
  out[pos + 2] = n >>> 8;
  out[pos + 3] = n;
}

function u16(out: Buffer, pos: number, n: number): void {
  out[pos] = n >>> 8;
  out[pos + 1] = n;
}

const words: IPv4WordsOut = { src: 0, dst: 0 };

/**
 * The bytes of the MAC text seen last at one place in the record: records of a batch mostly
 * share their MACs, and comparing the text costs less than parsing it again.
 */
class MacCache {
  private text = '';
  private readonly bytes = new Uint8Array(6);

  write(text: string, out: Buffer, pos: number): boolean {
    if (text !== this.text) {
      if (!writeMac(text, this.bytes, 0)) return false;
      this.text = text;
    }
    out.set(this.bytes, pos);
    return true;
  }
}

const sourceMacs = new MacCache();
const destinationMacs = new MacCache();

/**
 * Writes record `r` as a data record of `template` (from templateOf) at `pos`; returns the
 * position after it, or -1 when a field does not fit its element (an address or MAC that does
 * not parse, a count beyond 2^53): the caller counts such a record, nothing of it is meant to go out.
 */
export function writeRecord(r: FlowRecord, template: number, out: Buffer, pos: number): number {
  const egress = r.flowDirection === 1;
  const packets = r.packetDeltaCount;
  const octets = r.octetDeltaCount;
  const frameOctets = r.layer2OctetDeltaCount ?? 0;
  if (!Number.isSafeInteger(packets) || packets < 0 || !Number.isSafeInteger(octets) || octets < 0) return -1;
  if (!Number.isSafeInteger(frameOctets) || frameOctets < 0) return -1;
  const droppedPackets = r.droppedPacketDeltaCount ?? 0;
  const droppedOctets = r.droppedOctetDeltaCount ?? 0;
  if (!Number.isSafeInteger(droppedPackets) || droppedPackets < 0) return -1;
  if (!Number.isSafeInteger(droppedOctets) || droppedOctets < 0) return -1;
  u64(out, pos, r.flowStartMilliseconds);
  u64(out, pos + 8, r.flowEndMilliseconds);
  u64(out, pos + 16, octets);
  u64(out, pos + 24, packets);
  u32(out, pos + 32, egress ? 0 : (r.ingressInterface ?? 0));
  u32(out, pos + 36, egress ? flowInterface(r) : 0);
  out[pos + 40] = r.flowDirection;
  out[pos + 41] = r.flowEndReason ?? 0;
  if (!sourceMacs.write(r.sourceMacAddress, out, pos + 42)) return -1;
  if (!destinationMacs.write(r.destinationMacAddress, out, pos + 48)) return -1;
  u16(out, pos + 54, r.ethernetType);
  u64(out, pos + 56, frameOctets);
  u16(out, pos + 64, r.dot1qVlanId ?? 0);
  u16(out, pos + 66, r.dot1qCustomerVlanId ?? 0);
  u64(out, pos + 68, droppedPackets);
  u64(out, pos + 76, droppedOctets);
  pos += COMMON_BYTES;
  if (template === TEMPLATE_L2) return pos;

  out[pos] = r.protocolIdentifier;
  u16(out, pos + 1, r.sourceTransportPort);
  u16(out, pos + 3, r.destinationTransportPort);
  u16(out, pos + 5, r.tcpControlBits);
  out[pos + 7] = r.ipDiffServCodePoint;
  pos += L3_BYTES;

  let icmp: number;
  if (template === TEMPLATE_IPV4 || template === TEMPLATE_IPV4_VXLAN) {
    let src: number;
    let dst: number;
    if (readIPv4Words(r, words)) {
      src = words.src;
      dst = words.dst;
    } else {
      src = ipv4ToUint32(r.sourceIPv4Address ?? '');
      dst = ipv4ToUint32(r.destinationIPv4Address ?? '');
      if (src < 0 || dst < 0) return -1;
    }
    u32(out, pos, src);
    u32(out, pos + 4, dst);
    icmp = ((r.icmpTypeIPv4 ?? 0) << 8) | (r.icmpCodeIPv4 ?? 0);
    pos += 8;
  } else {
    if (!writeIPv6(r.sourceIPv6Address ?? '', out, pos)) return -1;
    if (!writeIPv6(r.destinationIPv6Address ?? '', out, pos + 16)) return -1;
    icmp = ((r.icmpTypeIPv6 ?? 0) << 8) | (r.icmpCodeIPv6 ?? 0);
    pos += 32;
  }
  u16(out, pos, icmp);
  pos += 2;
  if (template === TEMPLATE_IPV4_VXLAN || template === TEMPLATE_IPV6_VXLAN) {
    // 0x01 in the top byte: the segment is a VXLAN one; the VNI in the low 24 bits.
    u32(out, pos, 0x01000000);
    u32(out, pos + 4, r.virtualNetworkIdentifier! & 0xffffff);
    pos += 8;
  }
  return pos;
}

/**
 * Writes rxflow's elements of one record after its IANA fields: measure() reads and checks the
 * record's values (each property once: records of many shapes make every read a slow one) and
 * finds the UTF-8 length of its strings, write() puts them in the message. An ASCII string (drop
 * reasons, TCP states, most names) is copied char by char, others through Buffer.write.
 */
class RxflowWriter {
  private present = 0;
  /** The RTTs and the DNS latency, then the DNS transaction id and response code. */
  private readonly numbers = new Uint32Array(6);
  /** dropReason, tcpState, dnsQueryName and networkNamespace, '' when absent, and their UTF-8 bytes. */
  private readonly strings: string[] = ['', '', '', ''];
  private readonly bytes = new Int32Array(4);

  /** Bytes rxflow's elements of `r` take, or -1 when a value does not fit its element. */
  measure(r: FlowRecord): number {
    this.present = 1 << 1;
    if (
      !this.number(0, r.tcpHandshakeRttMicroseconds, 0xffffffff) ||
      !this.number(1, r.tcpSmoothedRttMicroseconds, 0xffffffff) ||
      !this.number(2, r.tcpSmoothedRttMinMicroseconds, 0xffffffff) ||
      !this.number(3, r.dnsLatencyMicroseconds, 0xffffffff) ||
      !this.number(4, r.dnsTransactionId, 0xffff) ||
      !this.number(5, r.dnsResponseCode, 0xff)
    )
      return -1;
    const a = this.text(0, r.dropReason);
    const b = this.text(1, r.tcpState);
    const c = this.text(2, r.dnsQueryName);
    const d = this.text(3, r.networkNamespace);
    if (a < 0 || b < 0 || c < 0 || d < 0) return -1;
    return RXFLOW_FIXED_BYTES + a + b + c + d;
  }

  /** Keeps number `i` (element i + 2), 0 when absent; false when it is not an integer from 0 to `max`. */
  private number(i: number, v: number | undefined, max: number): boolean {
    if (v === undefined) {
      this.numbers[i] = 0;
      return true;
    }
    // Not a number at all (a string from outside) fails too.
    if (!Number.isInteger(v) || v < 0 || v > max) return false;
    this.numbers[i] = v;
    this.present |= 1 << (i + 2);
    return true;
  }

  /**
   * Keeps string `i` (element i + 8), '' when absent, and its UTF-8 length; returns the bytes it
   * takes with its length prefix, or -1.
   */
  private text(i: number, s: string | undefined): number {
    if (s === undefined) {
      s = '';
    } else {
      if (typeof s !== 'string') return -1;
      this.present |= 1 << (i + 8);
    }
    const length = s.length;
    let n = length;
    for (let j = 0; j < length; j++) {
      if (s.charCodeAt(j) >= 0x80) {
        n = Buffer.byteLength(s, 'utf8');
        break;
      }
    }
    this.strings[i] = s;
    this.bytes[i] = n;
    // A length prefix of one byte, or 255 and two: nothing longer fits a message anyway.
    return n < 255 ? n + 1 : n <= MAX_MESSAGE_BYTES ? n + 3 : -1;
  }

  /** Writes the elements of the record measure() saw last at `pos`; returns the position after them. */
  write(out: Buffer, pos: number): number {
    const numbers = this.numbers;
    u32(out, pos, this.present);
    u32(out, pos + 4, numbers[0]!);
    u32(out, pos + 8, numbers[1]!);
    u32(out, pos + 12, numbers[2]!);
    u32(out, pos + 16, numbers[3]!);
    u16(out, pos + 20, numbers[4]!);
    out[pos + 22] = numbers[5]!;
    pos += RXFLOW_FIXED_BYTES;
    for (let i = 0; i < 4; i++) {
      const s = this.strings[i]!;
      const n = this.bytes[i]!;
      if (n < 255) {
        out[pos++] = n;
      } else {
        out[pos] = 255;
        u16(out, pos + 1, n);
        pos += 3;
      }
      // As many bytes as chars: ASCII.
      if (n === s.length) for (let j = 0; j < n; j++) out[pos + j] = s.charCodeAt(j);
      else out.write(s, pos, n, 'utf8');
      pos += n;
    }
    return pos;
  }
}

/**
 * Packs records into IPFIX messages of at most `maxBytes`, one reused buffer: begin() a message,
 * add() records until one does not fit, finish() to get the bytes (valid until the next begin()).
 * Consecutive records of one template share a data set.
 */
export class MessageBuilder {
  private readonly buf: Buffer;
  private pos = 0;
  private setStart = -1;
  private setTemplate = -1;
  /** Data records in the message being built. */
  records = 0;
  /** Whether the message being built starts with the templates. */
  hasTemplates = false;

  private readonly rxflow: RxflowWriter | undefined;
  /** Bytes of the template set begin(true) writes. */
  readonly templateSetBytes: number;

  /** With `enterpriseNumber`, records carry rxflow's elements under it (see the module comment). */
  constructor(
    readonly maxBytes: number,
    readonly enterpriseNumber?: number,
  ) {
    this.buf = Buffer.allocUnsafe(maxBytes);
    this.rxflow = enterpriseNumber === undefined ? undefined : new RxflowWriter();
    this.templateSetBytes = templateSetBytes(enterpriseNumber);
  }

  /** Starts a message, with every template first when `withTemplates`. */
  begin(withTemplates: boolean): void {
    this.pos = MESSAGE_HEADER_BYTES;
    this.setStart = -1;
    this.setTemplate = -1;
    this.records = 0;
    this.hasTemplates = withTemplates;
    if (withTemplates) this.pos = writeTemplateSet(this.buf, this.pos, this.enterpriseNumber);
  }

  /** A message holding only the withdrawal of every template. */
  withdrawal(): void {
    this.begin(false);
    this.pos = writeTemplateWithdrawal(this.buf, this.pos, this.enterpriseNumber);
  }

  /**
   * Adds `r`: 1 when it went in, 0 when the message has no room left for it (finish and start
   * another: a record with long strings may not fit beside the templates, then they go alone and
   * it in a message without them), -1 when it cannot be encoded at all (one that does not fit a
   * message holding nothing else either).
   */
  add(r: FlowRecord): -1 | 0 | 1 {
    const iana = templateOf(r);
    if (iana < 0) return -1;
    let template = iana;
    let bytes = RECORD_BYTES[iana - TEMPLATE_IPV4]!;
    const rxflow = this.rxflow;
    if (rxflow !== undefined) {
      const more = rxflow.measure(r);
      if (more < 0) return -1;
      bytes += more;
      template += RXFLOW_TEMPLATE_OFFSET;
    }
    const newSet = template !== this.setTemplate;
    const need = bytes + (newSet ? SET_HEADER_BYTES : 0);
    if (this.pos + need > this.maxBytes) {
      if (this.records > 0) return 0;
      return this.hasTemplates && MESSAGE_HEADER_BYTES + SET_HEADER_BYTES + bytes <= this.maxBytes ? 0 : -1;
    }
    let pos = this.pos;
    if (newSet) {
      this.closeSet();
      this.setStart = pos;
      this.setTemplate = template;
      u16(this.buf, pos, template);
      pos += SET_HEADER_BYTES;
    }
    let end = writeRecord(r, iana, this.buf, pos);
    if (end >= 0 && rxflow !== undefined) end = rxflow.write(this.buf, end);
    if (end < 0) {
      if (newSet) {
        // Undo the empty set header.
        this.setStart = -1;
        this.setTemplate = -1;
      }
      return -1;
    }
    this.pos = end;
    this.records++;
    return 1;
  }

  /** Bytes the message would have now. */
  get length(): number {
    return this.pos;
  }

  /** Completes the header; the returned bytes are valid until the next begin(). */
  finish(exportTimeSeconds: number, sequence: number, observationDomain: number): Buffer {
    this.closeSet();
    writeMessageHeader(this.buf, this.pos, exportTimeSeconds, sequence, observationDomain);
    return this.buf.subarray(0, this.pos);
  }

  private closeSet(): void {
    if (this.setStart >= 0) u16(this.buf, this.setStart + 2, this.pos - this.setStart);
    this.setStart = -1;
    this.setTemplate = -1;
  }
}
