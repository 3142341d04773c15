/**
 * Decoding of IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) messages into FlowRecords, with the
 * template cache of every exporter.
 *
 * Templates are kept per exporter (its address and UDP port), per version, observation domain
 * (v9: source id) and template id, and expire `templateTimeoutMs` after they were last sent. An
 * IPFIX template record with field count 0 withdraws its template; template id 2 (or 3) with field
 * count 0 withdraws every template (or options template) of the domain.
 *
 * A template is compiled once into two typed arrays (a small dense code per field, and its length),
 * so a data record is read straight off the datagram buffer with one switch per field and no object
 * but the record it becomes. Enterprise-specific elements and elements without a FlowRecord field
 * are skipped by length; variable-length elements (IPFIX) by their length prefix. With an
 * enterprise number given, rxflow's own elements under it (src/records/rxflow-elements.ts, as
 * rxflow's ipfix sink writes them with the same number) are read into their fields: those
 * presentElements marks, or, without it, every one the template has but empty strings. Other
 * enterprises' elements are skipped still.
 *
 * Elements to FlowRecord fields (IANA ids; NetFlow v9 field types 1-127 are the same numbers):
 * 8/12 and 27/28 the addresses (ipVersion 4 or 6 by which pair is there; neither: a layer-2 flow,
 * ipVersion 0; ipVersion 60 saying IP without both addresses: no record, counted), 7/11 ports, 4
 * protocol, 1/2 octet and packet deltas (85/86 totals when no delta), 6 tcpControlBits, 195 DSCP
 * (else 5 ipClassOfService >> 2), 10 ingressInterface, 14 egressInterface, 61 flowDirection, 56/80
 * MACs (else zeros), 256 ethernetType (else by address family), 136 flowEndReason, ICMP type and
 * code from 176-179 or 32/139 (or, as v9 exporters do, the destination port), 34 or PSAMP 305/306
 * samplingInterval, 352 layer2OctetDeltaCount, 243 dot1qVlanId (else 58 vlanId), 245
 * dot1qCustomerVlanId, 133/132 droppedPacketDeltaCount and droppedOctetDeltaCount (0 is none). Times, first found wins: 150-157 absolute (seconds, ms, NTP micro/nano), 158/159
 * relative to the export time, 21/22 sysUpTime (v9: against the header's sysUptime and unix
 * seconds, so to the second of the export; IPFIX: from systemInitTimeMilliseconds, 160, in the
 * record or the domain's options data), 161 duration; without any, the export time.
 * exporterIPv4Address/exporterIPv6Address is the address the datagram came from.
 *
 * What cannot be read is reported to a `DecodeReport` (see there), never thrown: a datagram that is
 * not a v9 or IPFIX message, a set running past its message, a data set whose template is unknown,
 * expired or withdrawn, a data record running past its set. Each counts once, since how many records
 * it held cannot be known. Records already read from the same message are kept: they are whole.
 */
import { formatIPv4, formatIPv6, formatMac } from '../../datapath/flow/types.js';
import {
  EARLIEST_FLOW_MS,
  FUTURE_SLACK_MS,
  MAX_DNS_NAME_CHARS,
  MAX_TEXT_CHARS,
  attachIPv4Words,
  flowRecordProblem,
  hasControlCharacter,
  type FlowRecord,
} from '../../records/flow.js';
import { RXFLOW_ELEMENTS, RXFLOW_PRESENT_ELEMENTS } from '../../records/rxflow-elements.js';

// --------------------------------------------------------------------------------------------
// Information elements (IANA IPFIX registry; NetFlow v9 field types 1-127 are the same numbers)

const IE_OCTET_DELTA = 1;
const IE_PACKET_DELTA = 2;
const IE_PROTOCOL = 4;
const IE_CLASS_OF_SERVICE = 5;
const IE_TCP_FLAGS = 6;
const IE_SRC_PORT = 7;
const IE_SRC_IPV4 = 8;
const IE_INGRESS_IF = 10;
const IE_DST_PORT = 11;
const IE_DST_IPV4 = 12;
const IE_EGRESS_IF = 14;
const IE_END_SYSUPTIME = 21;
const IE_START_SYSUPTIME = 22;
const IE_SRC_IPV6 = 27;
const IE_DST_IPV6 = 28;
const IE_ICMP_TYPE_CODE_V4 = 32;
const IE_SAMPLING_INTERVAL = 34;
const IE_SRC_MAC = 56;
const IE_IP_VERSION = 60;
const IE_DIRECTION = 61;
const IE_DST_MAC = 80;
const IE_OCTET_TOTAL = 85;
const IE_PACKET_TOTAL = 86;
const IE_END_REASON = 136;
const IE_ICMP_TYPE_CODE_V6 = 139;
const IE_START_SECONDS = 150;
const IE_END_SECONDS = 151;
const IE_START_MS = 152;
const IE_END_MS = 153;
const IE_START_US = 154;
const IE_END_US = 155;
const IE_START_NS = 156;
const IE_END_NS = 157;
const IE_START_DELTA_US = 158;
const IE_END_DELTA_US = 159;
const IE_SYSTEM_INIT_MS = 160;
const IE_DURATION_MS = 161;
const IE_ICMP_TYPE_V4 = 176;
const IE_ICMP_CODE_V4 = 177;
const IE_ICMP_TYPE_V6 = 178;
const IE_ICMP_CODE_V6 = 179;
const IE_DSCP = 195;
const IE_ETHERNET_TYPE = 256;
const IE_SAMPLING_PACKET_INTERVAL = 305;
const IE_SAMPLING_PACKET_SPACE = 306;
const IE_VLAN_ID = 58;
const IE_DOT1Q_VLAN_ID = 243;
const IE_DOT1Q_CUSTOMER_VLAN_ID = 245;
const IE_LAYER2_OCTET_DELTA = 352;
const IE_DROPPED_OCTET_DELTA = 132;
const IE_DROPPED_PACKET_DELTA = 133;

// Field codes: what a template field is read into.
const F_SKIP = 0;
const F_OCTETS = 1;
const F_PACKETS = 2;
const F_PROTOCOL = 3;
const F_TOS = 4;
const F_TCP_FLAGS = 5;
const F_SRC_PORT = 6;
const F_DST_PORT = 7;
const F_SRC_V4 = 8;
const F_DST_V4 = 9;
const F_SRC_V6 = 10;
const F_DST_V6 = 11;
const F_INGRESS_IF = 12;
const F_EGRESS_IF = 13;
const F_START_UP = 14;
const F_END_UP = 15;
const F_ICMP_V4 = 16;
const F_ICMP_V6 = 17;
const F_SAMPLING = 18;
const F_SRC_MAC = 19;
const F_DST_MAC = 20;
const F_IP_VERSION = 21;
const F_DIRECTION = 22;
const F_END_REASON = 23;
const F_START_S = 24;
const F_END_S = 25;
const F_START_MS = 26;
const F_END_MS = 27;
const F_START_NTP = 28;
const F_END_NTP = 29;
const F_START_DELTA_US = 30;
const F_END_DELTA_US = 31;
const F_SYSTEM_INIT = 32;
const F_DURATION_MS = 33;
const F_ICMP_TYPE_V4 = 34;
const F_ICMP_CODE_V4 = 35;
const F_ICMP_TYPE_V6 = 36;
const F_ICMP_CODE_V6 = 37;
const F_DSCP = 38;
const F_ETHERTYPE = 39;
const F_SAMPLING_INTERVAL = 40;
const F_SAMPLING_SPACE = 41;
const F_OCTETS_TOTAL = 42;
const F_PACKETS_TOTAL = 43;
const F_VLAN = 44;
const F_DOT1Q_VLAN = 45;
const F_CUSTOMER_VLAN = 46;
const F_L2_OCTETS = 47;
const F_DROPPED_OCTETS = 48;
const F_DROPPED_PACKETS = 49;

/** Field code of each element, and the lengths it may have (0: any of 1-8 bytes, an unsigned number). */
const ELEMENTS: [ie: number, code: number, length: number][] = [
  [IE_OCTET_DELTA, F_OCTETS, 0],
  [IE_PACKET_DELTA, F_PACKETS, 0],
  [IE_OCTET_TOTAL, F_OCTETS_TOTAL, 0],
  [IE_PACKET_TOTAL, F_PACKETS_TOTAL, 0],
  [IE_PROTOCOL, F_PROTOCOL, 0],
  [IE_CLASS_OF_SERVICE, F_TOS, 0],
  [IE_TCP_FLAGS, F_TCP_FLAGS, 0],
  [IE_SRC_PORT, F_SRC_PORT, 0],
  [IE_DST_PORT, F_DST_PORT, 0],
  [IE_SRC_IPV4, F_SRC_V4, 4],
  [IE_DST_IPV4, F_DST_V4, 4],
  [IE_SRC_IPV6, F_SRC_V6, 16],
  [IE_DST_IPV6, F_DST_V6, 16],
  [IE_INGRESS_IF, F_INGRESS_IF, 0],
  [IE_EGRESS_IF, F_EGRESS_IF, 0],
  [IE_START_SYSUPTIME, F_START_UP, 0],
  [IE_END_SYSUPTIME, F_END_UP, 0],
  [IE_ICMP_TYPE_CODE_V4, F_ICMP_V4, 0],
  [IE_ICMP_TYPE_CODE_V6, F_ICMP_V6, 0],
  [IE_SAMPLING_INTERVAL, F_SAMPLING, 0],
  [IE_SRC_MAC, F_SRC_MAC, 6],
  [IE_DST_MAC, F_DST_MAC, 6],
  [IE_IP_VERSION, F_IP_VERSION, 0],
  [IE_DIRECTION, F_DIRECTION, 0],
  [IE_END_REASON, F_END_REASON, 0],
  [IE_START_SECONDS, F_START_S, 0],
  [IE_END_SECONDS, F_END_S, 0],
  [IE_START_MS, F_START_MS, 0],
  [IE_END_MS, F_END_MS, 0],
  [IE_START_US, F_START_NTP, 8],
  [IE_END_US, F_END_NTP, 8],
  [IE_START_NS, F_START_NTP, 8],
  [IE_END_NS, F_END_NTP, 8],
  [IE_START_DELTA_US, F_START_DELTA_US, 0],
  [IE_END_DELTA_US, F_END_DELTA_US, 0],
  [IE_SYSTEM_INIT_MS, F_SYSTEM_INIT, 0],
  [IE_DURATION_MS, F_DURATION_MS, 0],
  [IE_ICMP_TYPE_V4, F_ICMP_TYPE_V4, 0],
  [IE_ICMP_CODE_V4, F_ICMP_CODE_V4, 0],
  [IE_ICMP_TYPE_V6, F_ICMP_TYPE_V6, 0],
  [IE_ICMP_CODE_V6, F_ICMP_CODE_V6, 0],
  [IE_DSCP, F_DSCP, 0],
  [IE_ETHERNET_TYPE, F_ETHERTYPE, 0],
  [IE_SAMPLING_PACKET_INTERVAL, F_SAMPLING_INTERVAL, 0],
  [IE_SAMPLING_PACKET_SPACE, F_SAMPLING_SPACE, 0],
  [IE_VLAN_ID, F_VLAN, 0],
  [IE_DOT1Q_VLAN_ID, F_DOT1Q_VLAN, 0],
  [IE_DOT1Q_CUSTOMER_VLAN_ID, F_CUSTOMER_VLAN, 0],
  [IE_LAYER2_OCTET_DELTA, F_L2_OCTETS, 0],
  [IE_DROPPED_OCTET_DELTA, F_DROPPED_OCTETS, 0],
  [IE_DROPPED_PACKET_DELTA, F_DROPPED_PACKETS, 0],
];

const CODE_OF = new Map<number, number>(ELEMENTS.map(([ie, code]) => [ie, code]));

/** rxflow's element n (under the configured enterprise number) has field code F_RXFLOW + n. */
const F_RXFLOW = 50;
/** Bit n set: rxflow's element n is a string. */
const RXFLOW_STRINGS = RXFLOW_ELEMENTS.reduce(
  (bits, e) => (e.type === 'string' ? bits | (1 << e.id) : bits),
  0,
);
/** The FlowRecord field of rxflow's element n. */
const RXFLOW_FIELD: string[] = [];
for (const e of RXFLOW_ELEMENTS) RXFLOW_FIELD[e.id] = e.name;
const LENGTH_OF = new Map<number, number>(ELEMENTS.map(([ie, , length]) => [ie, length]));

/** IPFIX: a field length that says the length is in front of each value. */
const VARIABLE = 0xffff;
/** Seconds from the NTP epoch (1900) to the Unix epoch (1970). */
const NTP_UNIX_OFFSET_S = 2_208_988_800;
const TWO_32 = 4_294_967_296;
const ZERO_MAC = '00:00:00:00:00:00';

/**
 * A FlowRecord with the exporter's egressInterface (IANA 14), where it left the exporter, when the
 * exporter says (ingressInterface, 10, is where it arrived).
 */
export type IpfixFlowRecord = FlowRecord & { egressInterface?: number };

// --------------------------------------------------------------------------------------------
// Templates and exporters

interface Template {
  /** Field codes, one per field. */
  codes: Uint8Array;
  /** Field lengths; VARIABLE for an IPFIX variable-length field. */
  lengths: Uint16Array;
  /** Bytes of a record when no field is variable, else -1. */
  fixedLength: number;
  /** Bytes of the shortest record (a variable field counted as its 1-byte prefix). */
  minLength: number;
  options: boolean;
  /** When it was last received, for expiry. */
  receivedMs: number;
}

/** What the collector keeps of one observation domain (v9: source id) of one exporter. */
interface Domain {
  templates: Map<number, Template>;
  /** Ids the exporter withdrew and has not sent again, so their data is logged as such. */
  withdrawn: Set<number>;
  /** From options data: systemInitTimeMilliseconds, the base of flowStart/EndSysUpTime (IPFIX). */
  systemInitMs: number;
  /** From options data: the 1-in-N sampling in force, 0 if unknown or none. */
  samplingInterval: number;
  /** Sequence number and record counts of the last message, when it was read whole. */
  hasLast: boolean;
  lastSequence: number;
  lastDataRecords: number;
  /**
   * How this exporter's IPFIX sequence numbers count: 1 as RFC 7011 (data records sent before
   * the message), 2 as softflowd does (flow records sent including the message), 0 not known yet.
   */
  sequenceStyle: 0 | 1 | 2;
  /** When the exporter last sent a message for this domain, for the sweep. */
  seenMs: number;
}

/** One exporter: an address and UDP port that sends to the collector. */
export interface Exporter {
  /** The exporter's address, IPv4 as a dotted quad (also when it came over an IPv6 socket). */
  address: string;
  ipVersion: 4 | 6;
  domains: Map<number, Domain>;
}

export function newExporter(address: string): Exporter {
  const mapped = address.startsWith('::ffff:') && address.includes('.');
  const text = mapped ? address.slice(7) : address;
  return { address: text, ipVersion: text.includes(':') ? 6 : 4, domains: new Map() };
}

/**
 * What decoding a message found, beyond its records: read after each call and reset by the caller.
 * The source turns these into ledger counts (`parse_failed`, `upstream_lost`) and rate-limited logs.
 */
export interface DecodeReport {
  /** Sets or datagrams that could not be read (each may have held any number of records). */
  failed: number;
  /** Why the last failure happened, for the log. */
  failure: string | undefined;
  /**
   * Records the exporter sent that never arrived, by the sequence numbers: exact for IPFIX (which
   * numbers data records); one per lost export packet for NetFlow v9 (which numbers packets).
   */
  lost: number;
  /** Why the last loss was counted, for the log. */
  loss: string | undefined;
  /** Templates learned, withdrawn or expired; for debug logs and tests. */
  templatesLearned: number;
  templatesWithdrawn: number;
}

export function newReport(): DecodeReport {
  return {
    failed: 0,
    failure: undefined,
    lost: 0,
    loss: undefined,
    templatesLearned: 0,
    templatesWithdrawn: 0,
  };
}

// --------------------------------------------------------------------------------------------
// Reading values

function u16(b: Buffer, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

function u32(b: Buffer, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

/** An unsigned big-endian number of 1 to 8 bytes (reduced-size encoding, RFC 7011 6.2). */
function unsigned(b: Buffer, at: number, length: number): number {
  switch (length) {
    case 1:
      return b[at]!;
    case 2:
      return u16(b, at);
    case 4:
      return u32(b, at);
    case 8:
      return u32(b, at) * TWO_32 + u32(b, at + 4);
    default: {
      let v = 0;
      for (let i = 0; i < length; i++) v = v * 256 + b[at + i]!;
      return v;
    }
  }
}

/** Milliseconds since the Unix epoch of an NTP timestamp (dateTimeMicro/Nanoseconds). */
function ntpMs(b: Buffer, at: number): number {
  return (u32(b, at) - NTP_UNIX_OFFSET_S) * 1000 + Math.floor((u32(b, at + 4) * 1000) / TWO_32);
}

// --------------------------------------------------------------------------------------------
// The decoder

const V9_HEADER = 20;
const IPFIX_HEADER = 16;
const SET_HEADER = 4;

/**
 * Decodes messages of every exporter. One per source: its caches are the source's state. Not
 * reentrant; every call is synchronous.
 */
export class IpfixDecoder {
  /** Export time of the message being read, ms; and (v9) the exporter's uptime then. */
  private exportMs = 0;
  private sysUptimeMs = 0;
  private version = 0;
  private domain!: Domain;
  private exporter!: Exporter;
  /** Data records in the message being read (options data included), and flow records alone. */
  private dataRecords = 0;
  private flowRecords = 0;
  private whole = true;
  /** Id of the template whose data set is being read. */
  private templateId = 0;
  private nowMs = 0;

  /** Where each of rxflow's elements of the record being read starts, and its length. */
  private readonly ownAt = new Int32Array(32);
  private readonly ownLength = new Int32Array(32);
  /** Whether the values ownFields() set are within their fields' ranges. */
  private ownInRange = true;
  /** The enterprise number rxflow's elements come under; -1: none, they are skipped. */
  private readonly enterpriseNumber: number;

  constructor(
    private readonly templateTimeoutMs: number,
    private readonly report: DecodeReport,
    enterpriseNumber?: number,
  ) {
    this.enterpriseNumber = enterpriseNumber ?? -1;
  }

  /**
   * Decodes one datagram from `exporter`, appending its flow records to `out`. `nowMs` (wall
   * clock) dates templates for expiry.
   */
  decode(b: Buffer, exporter: Exporter, nowMs: number, out: FlowRecord[]): void {
    if (b.length < 2) return this.fail('datagram shorter than a message header');
    const version = u16(b, 0);
    let end: number;
    let at: number;
    let sequence: number;
    let domainId: number;
    if (version === 10) {
      if (b.length < IPFIX_HEADER) return this.fail('IPFIX datagram shorter than its message header');
      end = u16(b, 2);
      if (end < IPFIX_HEADER || end > b.length)
        return this.fail(`IPFIX message length ${end} does not fit its datagram of ${b.length} bytes`);
      this.exportMs = u32(b, 4) * 1000;
      sequence = u32(b, 8);
      domainId = u32(b, 12);
      at = IPFIX_HEADER;
    } else if (version === 9) {
      if (b.length < V9_HEADER) return this.fail('NetFlow v9 datagram shorter than its packet header');
      end = b.length;
      this.sysUptimeMs = u32(b, 4);
      this.exportMs = u32(b, 8) * 1000;
      sequence = u32(b, 12);
      domainId = u32(b, 16);
      at = V9_HEADER;
    } else {
      return this.fail(`not an IPFIX or NetFlow v9 datagram (version ${version})`);
    }
    this.version = version;
    this.exporter = exporter;
    this.nowMs = nowMs;
    // The version is part of the key: v9 and IPFIX template ids are separate spaces.
    const key = version === 10 ? domainId : domainId + TWO_32;
    let domain = exporter.domains.get(key);
    if (domain === undefined) {
      domain = {
        templates: new Map(),
        withdrawn: new Set(),
        systemInitMs: -1,
        samplingInterval: 0,
        hasLast: false,
        lastSequence: 0,
        lastDataRecords: 0,
        sequenceStyle: 0,
        seenMs: nowMs,
      };
      exporter.domains.set(key, domain);
    }
    domain.seenMs = nowMs;
    this.domain = domain;
    this.dataRecords = 0;
    this.flowRecords = 0;
    this.whole = true;

    while (at < end) {
      if (end - at < SET_HEADER) {
        // v9 may pad a packet; IPFIX sets are never followed by loose bytes.
        if (version === 10) this.failSet(`${end - at} bytes after the last set`);
        break;
      }
      const setId = u16(b, at);
      const setLength = u16(b, at + 2);
      if (setLength < SET_HEADER || at + setLength > end) {
        this.failSet(`set ${setId} of ${setLength} bytes runs past its message of ${end} bytes`);
        break;
      }
      const body = at + SET_HEADER;
      const setEnd = at + setLength;
      if (version === 10) {
        if (setId === 2) this.templates(b, body, setEnd, false, nowMs);
        else if (setId === 3) this.templates(b, body, setEnd, true, nowMs);
        else if (setId >= 256) this.data(b, setId, body, setEnd, nowMs, out);
      } else {
        if (setId === 0) this.templates(b, body, setEnd, false, nowMs);
        else if (setId === 1) this.v9OptionsTemplates(b, body, setEnd, nowMs);
        else if (setId >= 256) this.data(b, setId, body, setEnd, nowMs, out);
      }
      at = setEnd;
    }
    this.sequence(sequence);
  }

  /**
   * Forgets expired templates, then domains that have none left and have sent nothing for the
   * template timeout, then exporters without domains: what many short-lived exporters or
   * datagrams from ever new ports would otherwise leave behind. Returns the exporters removed.
   */
  sweep(exporters: Map<string, Exporter>, nowMs: number): number {
    let removed = 0;
    for (const [key, exporter] of exporters) {
      for (const [id, domain] of exporter.domains) {
        for (const [tid, t] of domain.templates) {
          if (nowMs - t.receivedMs > this.templateTimeoutMs) domain.templates.delete(tid);
        }
        if (domain.templates.size === 0 && nowMs - domain.seenMs > this.templateTimeoutMs)
          exporter.domains.delete(id);
      }
      if (exporter.domains.size === 0) {
        exporters.delete(key);
        removed++;
      }
    }
    return removed;
  }

  private fail(why: string): void {
    this.report.failed++;
    this.report.failure = why;
  }

  private failSet(why: string): void {
    this.whole = false;
    this.fail(`${this.version === 10 ? 'IPFIX' : 'NetFlow v9'} from ${this.exporter.address}: ${why}`);
  }

  /** Counts what the sequence number says was lost before this message. */
  private sequence(sequence: number): void {
    const d = this.domain;
    if (!this.whole) {
      // How many records this message held is not known, so neither is the next expected number.
      d.hasLast = false;
      return;
    }
    if (d.hasLast) {
      let gap: number;
      if (this.version === 9) {
        gap = (sequence - d.lastSequence - 1) >>> 0;
      } else {
        const rfc = (sequence - d.lastSequence - d.lastDataRecords) >>> 0;
        const inclusive = (sequence - d.lastSequence - this.flowRecords) >>> 0;
        if (d.sequenceStyle === 0) {
          // Learned from the first pair of messages that tells the two apart.
          if (rfc === 0 && inclusive !== 0) d.sequenceStyle = 1;
          else if (inclusive === 0 && rfc !== 0) d.sequenceStyle = 2;
        }
        gap = d.sequenceStyle === 2 ? inclusive : rfc;
      }
      // Behind the expected number (half the space or more ahead): reordered, or the exporter
      // restarted; nothing is counted and the count starts again from here.
      if (gap !== 0 && gap < 0x80000000) {
        this.report.lost += gap;
        this.report.loss = `${this.version === 10 ? 'IPFIX' : 'NetFlow v9'} from ${this.exporter.address}: sequence number ${sequence}, ${gap} ${this.version === 10 ? 'records' : 'export packets'} missing before it`;
      }
    }
    d.hasLast = true;
    d.lastSequence = sequence;
    d.lastDataRecords = this.dataRecords;
  }

  /** A template set (IPFIX 2/3, v9 0): template records one after another, maybe padded. */
  private templates(b: Buffer, at: number, end: number, options: boolean, nowMs: number): void {
    const headerLength = options ? 6 : 4;
    while (end - at >= 4) {
      const id = u16(b, at);
      const count = u16(b, at + 2);
      if (count === 0) {
        // IPFIX withdrawal: of one template, or (id 2 / 3) of all of the domain's of that kind.
        if (this.version === 10) this.withdraw(id, options);
        at += 4;
        continue;
      }
      if (id < 256) {
        // Padding in a v9 set is zero; anything else is not a template record.
        if (this.version === 9 && id === 0) break;
        this.failSet(`template id ${id} is below 256`);
        return;
      }
      if (end - at < headerLength) {
        this.failSet(`template ${id} runs past its set`);
        return;
      }
      const scopeCount = options ? u16(b, at + 4) : 0;
      if (options && (scopeCount === 0 || scopeCount > count)) {
        this.failSet(`options template ${id} has scope field count ${scopeCount} of ${count} fields`);
        return;
      }
      at += headerLength;
      const codes = new Uint8Array(count);
      const lengths = new Uint16Array(count);
      let fixedLength = 0;
      let minLength = 0;
      let problem: string | undefined;
      for (let i = 0; i < count; i++) {
        if (end - at < 4) {
          this.failSet(`template ${id} runs past its set`);
          return;
        }
        let ie = u16(b, at);
        const length = u16(b, at + 2);
        at += 4;
        let enterprise = -1;
        if (this.version === 10 && ie & 0x8000) {
          if (end - at < 4) {
            this.failSet(`template ${id} runs past its set`);
            return;
          }
          ie &= 0x7fff;
          enterprise = u32(b, at);
          at += 4;
        }
        lengths[i] = length;
        if (length === VARIABLE) {
          fixedLength = -1;
          minLength += 1;
        } else {
          if (fixedLength >= 0) fixedLength += length;
          minLength += length;
        }
        let code = F_SKIP;
        if (i < scopeCount) {
          // A scope field says what an options record is about: nothing a flow record takes.
        } else if (enterprise < 0) {
          code = CODE_OF.get(ie) ?? F_SKIP;
          if (code !== F_SKIP) {
            const want = LENGTH_OF.get(ie)!;
            const ok = want === 0 ? length >= 1 && length <= 8 : length === want;
            if (!ok) problem ??= `element ${ie} has length ${length}`;
          }
        } else if (enterprise === this.enterpriseNumber && RXFLOW_FIELD[ie] !== undefined) {
          code = F_RXFLOW + ie;
          // A string of any length; a number of 1 to 8 bytes (reduced-size encoding).
          if (!((RXFLOW_STRINGS >> ie) & 1) && (length < 1 || length > 8))
            problem ??= `element ${ie} of enterprise ${enterprise} (${RXFLOW_FIELD[ie]}) has length ${length}`;
        }
        codes[i] = code;
      }
      if (problem !== undefined || minLength === 0) {
        // Read as declared, its records would come out wrong: it is not kept, so its data counts
        // as data without a template.
        this.failSet(`template ${id} not usable: ${problem ?? 'its records have no bytes'}`);
        this.domain.templates.delete(id);
        continue;
      }
      this.domain.withdrawn.delete(id);
      this.domain.templates.set(id, { codes, lengths, fixedLength, minLength, options, receivedMs: nowMs });
      this.domain.withdrawn.delete(id);
      this.report.templatesLearned++;
    }
  }

  /** A v9 options template set (1): id, scope length and option length in bytes, then the fields. */
  private v9OptionsTemplates(b: Buffer, at: number, end: number, nowMs: number): void {
    while (end - at >= 6) {
      const id = u16(b, at);
      if (id === 0) break; // padding
      const scopeBytes = u16(b, at + 2);
      const optionBytes = u16(b, at + 4);
      if (id < 256 || scopeBytes % 4 !== 0 || optionBytes % 4 !== 0 || scopeBytes === 0) {
        this.failSet(`options template ${id} is malformed`);
        return;
      }
      at += 6;
      if (end - at < scopeBytes + optionBytes) {
        this.failSet(`options template ${id} runs past its set`);
        return;
      }
      const scopeCount = scopeBytes / 4;
      const count = scopeCount + optionBytes / 4;
      const codes = new Uint8Array(count);
      const lengths = new Uint16Array(count);
      let length = 0;
      let problem: string | undefined;
      for (let i = 0; i < count; i++, at += 4) {
        const ie = u16(b, at);
        const fieldLength = u16(b, at + 2);
        lengths[i] = fieldLength;
        length += fieldLength;
        const code = i < scopeCount ? F_SKIP : (CODE_OF.get(ie) ?? F_SKIP);
        if (code !== F_SKIP && LENGTH_OF.get(ie) === 0 && (fieldLength < 1 || fieldLength > 8))
          problem ??= `element ${ie} has length ${fieldLength}`;
        codes[i] = code;
      }
      if (problem !== undefined || length === 0) {
        this.failSet(`options template ${id} not usable: ${problem ?? 'its records have no bytes'}`);
        this.domain.templates.delete(id);
        continue;
      }
      this.domain.templates.set(id, {
        codes,
        lengths,
        fixedLength: length,
        minLength: length,
        options: true,
        receivedMs: nowMs,
      });
      this.report.templatesLearned++;
    }
  }

  private withdraw(id: number, options: boolean): void {
    const templates = this.domain.templates;
    if (id === 2 || id === 3) {
      for (const [tid, t] of templates) {
        if (t.options === options) {
          templates.delete(tid);
          this.domain.withdrawn.add(tid);
          this.report.templatesWithdrawn++;
        }
      }
    } else if (templates.delete(id)) {
      this.domain.withdrawn.add(id);
      this.report.templatesWithdrawn++;
    }
  }

  /** A data set: records of template `id` until fewer bytes than a record are left (padding). */
  private data(b: Buffer, id: number, at: number, end: number, nowMs: number, out: FlowRecord[]): void {
    const templates = this.domain.templates;
    const t = templates.get(id);
    if (t === undefined || nowMs - t.receivedMs > this.templateTimeoutMs) {
      if (t !== undefined) templates.delete(id);
      const why = t !== undefined ? 'expired' : this.domain.withdrawn.has(id) ? 'withdrawn' : 'unknown';
      this.failSet(`data set of template ${id}, which is ${why}`);
      return;
    }
    this.templateId = id;
    while (end - at >= t.minLength) {
      const next = t.options ? this.optionsRecord(b, at, end, t) : this.record(b, at, end, t, out);
      if (next < 0) {
        this.failSet(`a record of template ${id} runs past its set`);
        return;
      }
      at = next;
      this.dataRecords++;
      if (!t.options) this.flowRecords++;
    }
  }

  /**
   * The field of template length `length` at `at`: its bytes x 65536 + where its value starts (after
   * the length prefix of a variable-length field), or -1 when it runs past `end`.
   */
  private static field(b: Buffer, at: number, end: number, length: number): number {
    if (length === VARIABLE) {
      if (at >= end) return -1;
      length = b[at]!;
      at += 1;
      if (length === 255) {
        if (end - at < 2) return -1;
        length = u16(b, at);
        at += 2;
      }
    }
    return end - at < length ? -1 : length * 65536 + at;
  }

  /** Reads an options data record for what the domain's flow records use. Returns where it ends. */
  private optionsRecord(b: Buffer, at: number, end: number, t: Template): number {
    const { codes, lengths } = t;
    let interval = 0;
    let space = -1;
    for (let i = 0; i < codes.length; i++) {
      const f = IpfixDecoder.field(b, at, end, lengths[i]!);
      if (f < 0) return -1;
      const length = (f / 65536) | 0;
      at = f - length * 65536;
      switch (codes[i]) {
        case F_SYSTEM_INIT:
          this.domain.systemInitMs = unsigned(b, at, length);
          break;
        case F_SAMPLING:
          this.domain.samplingInterval = unsigned(b, at, length);
          break;
        case F_SAMPLING_INTERVAL:
          interval = unsigned(b, at, length);
          break;
        case F_SAMPLING_SPACE:
          space = unsigned(b, at, length);
          break;
      }
      at += length;
    }
    // PSAMP systematic count-based sampling: `interval` packets taken, then `space` skipped.
    if (interval > 0 && space >= 0) this.domain.samplingInterval = Math.round((interval + space) / interval);
    return at;
  }

  /**
   * Sets the fields of rxflow's elements in the record (bit n of `own`: element n): those
   * presentElements marks, else every one but empty strings. Returns false when a value is out of
   * its field's range (the record then gets the full check, for its reason). One typed, named
   * store a field: stores by computed name cost ~5% more CPU a record (~710 against ~675 ns
   * decoding rxflow's sink messages with its fields).
   */
  private ownFields(b: Buffer, rec: IpfixFlowRecord, own: number): boolean {
    const { ownAt, ownLength } = this;
    const flags = 1 << RXFLOW_PRESENT_ELEMENTS;
    let present = own;
    if (own & flags) {
      const n = ownLength[RXFLOW_PRESENT_ELEMENTS]!;
      // The low 32 bits (a wider value's), where the element bits are.
      present &= unsigned(b, ownAt[RXFLOW_PRESENT_ELEMENTS]! + n - Math.min(n, 4), Math.min(n, 4));
    } else {
      for (let bits = own & RXFLOW_STRINGS; bits !== 0; bits &= bits - 1) {
        const id = 31 - Math.clz32(bits & -bits);
        if (ownLength[id] === 0) present &= ~(1 << id);
      }
    }
    this.ownInRange = true;
    if (present & (1 << 2)) rec.tcpHandshakeRttMicroseconds = this.ownNumber(b, 2, 0xffffffff);
    if (present & (1 << 3)) rec.tcpSmoothedRttMicroseconds = this.ownNumber(b, 3, 0xffffffff);
    if (present & (1 << 4)) rec.tcpSmoothedRttMinMicroseconds = this.ownNumber(b, 4, 0xffffffff);
    if (present & (1 << 5)) rec.dnsLatencyMicroseconds = this.ownNumber(b, 5, 0xffffffff);
    if (present & (1 << 6)) rec.dnsTransactionId = this.ownNumber(b, 6, 0xffff);
    if (present & (1 << 7)) rec.dnsResponseCode = this.ownNumber(b, 7, 0xffff);
    if (present & (1 << 8)) rec.dropReason = this.ownText(b, 8, MAX_TEXT_CHARS);
    if (present & (1 << 9)) rec.tcpState = this.ownText(b, 9, MAX_TEXT_CHARS);
    if (present & (1 << 10)) rec.dnsQueryName = this.ownText(b, 10, MAX_DNS_NAME_CHARS);
    if (present & (1 << 11)) rec.networkNamespace = this.ownText(b, 11, MAX_TEXT_CHARS);
    return this.ownInRange;
  }

  /** rxflow's number element `id` of the record; one above `max` marks the record for the full check. */
  private ownNumber(b: Buffer, id: number, max: number): number {
    const value = unsigned(b, this.ownAt[id]!, this.ownLength[id]!);
    if (value > max) this.ownInRange = false;
    return value;
  }

  /** rxflow's string element `id`; one longer than `most` or with a control character marks the record. */
  private ownText(b: Buffer, id: number, most: number): string {
    const at = this.ownAt[id]!;
    const text = b.toString('utf8', at, at + this.ownLength[id]!);
    if (text.length > most || hasControlCharacter(text)) this.ownInRange = false;
    return text;
  }

  /** Reads one flow record; returns where it ends, or -1 when it runs past `end`. */
  private record(b: Buffer, at: number, end: number, t: Template, out: FlowRecord[]): number {
    const { codes, lengths } = t;
    if (t.fixedLength >= 0 && end - at < t.fixedLength) return -1;
    let octets = 0;
    let packets = 0;
    let octetsTotal = -1;
    let packetsTotal = -1;
    let protocol = 0;
    let dscp = 0;
    let tcpFlags = 0;
    let srcPort = 0;
    let dstPort = -1;
    let srcV4 = -1;
    let dstV4 = -1;
    let srcV6 = -1;
    let dstV6 = -1;
    let ingress = 0;
    let egress = 0;
    let startUp = -1;
    let endUp = -1;
    let icmp = -1;
    let icmpType = -1;
    let icmpCode = -1;
    let sampling = 0;
    let srcMac = -1;
    let dstMac = -1;
    let ipVersion = 0;
    let direction = 0;
    let endReason = 0;
    let start = -1;
    let finish = -1;
    let startDelta = -1;
    let endDelta = -1;
    let systemInit = this.domain.systemInitMs;
    let duration = -1;
    let ethertype = -1;
    let l2Octets = -1;
    let droppedOctets = 0;
    let droppedPackets = 0;
    let vlan = -1;
    let dot1qVlan = -1;
    let customerVlan = -1;
    /** Bit n set: rxflow's element n is in the record (ownAt, ownLength). */
    let own = 0;
    for (let i = 0; i < codes.length; i++) {
      const f = IpfixDecoder.field(b, at, end, lengths[i]!);
      if (f < 0) return -1;
      const length = (f / 65536) | 0;
      at = f - length * 65536;
      switch (codes[i]) {
        case F_SKIP:
          break;
        case F_OCTETS:
          octets = unsigned(b, at, length);
          break;
        case F_PACKETS:
          packets = unsigned(b, at, length);
          break;
        case F_OCTETS_TOTAL:
          octetsTotal = unsigned(b, at, length);
          break;
        case F_PACKETS_TOTAL:
          packetsTotal = unsigned(b, at, length);
          break;
        case F_PROTOCOL:
          protocol = unsigned(b, at, length);
          break;
        case F_TOS:
          dscp = b[at + length - 1]! >> 2;
          break;
        case F_DSCP:
          dscp = unsigned(b, at, length) & 63;
          break;
        case F_TCP_FLAGS:
          // Reduced to one byte, or two with the header-length nibble in front (RFC 7125).
          tcpFlags = unsigned(b, at, length) & 0xfff;
          break;
        case F_SRC_PORT:
          srcPort = unsigned(b, at, length);
          break;
        case F_DST_PORT:
          dstPort = unsigned(b, at, length);
          break;
        case F_SRC_V4:
          srcV4 = at;
          break;
        case F_DST_V4:
          dstV4 = at;
          break;
        case F_SRC_V6:
          srcV6 = at;
          break;
        case F_DST_V6:
          dstV6 = at;
          break;
        case F_INGRESS_IF:
          ingress = unsigned(b, at, length);
          break;
        case F_EGRESS_IF:
          egress = unsigned(b, at, length);
          break;
        case F_START_UP:
          startUp = unsigned(b, at, length);
          break;
        case F_END_UP:
          endUp = unsigned(b, at, length);
          break;
        case F_ICMP_V4:
        case F_ICMP_V6:
          icmp = unsigned(b, at, length);
          break;
        case F_ICMP_TYPE_V4:
        case F_ICMP_TYPE_V6:
          icmpType = unsigned(b, at, length);
          break;
        case F_ICMP_CODE_V4:
        case F_ICMP_CODE_V6:
          icmpCode = unsigned(b, at, length);
          break;
        case F_SAMPLING:
          sampling = unsigned(b, at, length);
          break;
        case F_SRC_MAC:
          srcMac = at;
          break;
        case F_DST_MAC:
          dstMac = at;
          break;
        case F_IP_VERSION:
          ipVersion = unsigned(b, at, length);
          break;
        case F_DIRECTION:
          direction = unsigned(b, at, length);
          break;
        case F_END_REASON:
          endReason = unsigned(b, at, length);
          break;
        case F_START_S:
          start = unsigned(b, at, length) * 1000;
          break;
        case F_END_S:
          finish = unsigned(b, at, length) * 1000;
          break;
        case F_START_MS:
          start = unsigned(b, at, length);
          break;
        case F_END_MS:
          finish = unsigned(b, at, length);
          break;
        case F_START_NTP:
          start = ntpMs(b, at);
          break;
        case F_END_NTP:
          finish = ntpMs(b, at);
          break;
        case F_START_DELTA_US:
          startDelta = unsigned(b, at, length);
          break;
        case F_END_DELTA_US:
          endDelta = unsigned(b, at, length);
          break;
        case F_SYSTEM_INIT:
          systemInit = unsigned(b, at, length);
          break;
        case F_DURATION_MS:
          duration = unsigned(b, at, length);
          break;
        case F_ETHERTYPE:
          ethertype = unsigned(b, at, length);
          break;
        case F_L2_OCTETS:
          l2Octets = unsigned(b, at, length);
          break;
        case F_DROPPED_OCTETS:
          droppedOctets = unsigned(b, at, length);
          break;
        case F_DROPPED_PACKETS:
          droppedPackets = unsigned(b, at, length);
          break;
        case F_VLAN:
          vlan = unsigned(b, at, length);
          break;
        case F_DOT1Q_VLAN:
          dot1qVlan = unsigned(b, at, length);
          break;
        case F_CUSTOMER_VLAN:
          customerVlan = unsigned(b, at, length);
          break;
        default: {
          const n = codes[i]! - F_RXFLOW;
          if (n > 0) {
            own |= 1 << n;
            this.ownAt[n] = at;
            this.ownLength[n] = length;
          }
        }
      }
      at += length;
    }
    // NetFlow v5 habit, kept by v9 exporters (softflowd): ICMP type and code in the destination port.
    if (icmp < 0 && dstPort >= 0 && (protocol === 1 || protocol === 58)) icmp = dstPort;
    if (dstPort < 0) dstPort = 0;
    if (octetsTotal >= 0 && octets === 0) octets = octetsTotal;
    if (packetsTotal >= 0 && packets === 0) packets = packetsTotal;

    // Times, in the order of precedence: absolute, relative to the export, relative to uptime.
    if (start < 0 && startDelta >= 0) start = this.exportMs - Math.floor(startDelta / 1000);
    if (finish < 0 && endDelta >= 0) finish = this.exportMs - Math.floor(endDelta / 1000);
    if (this.version === 9) {
      // sysUpTime of the header is now; the difference is taken in 32 bits, so uptime may wrap.
      if (start < 0 && startUp >= 0) start = this.exportMs - ((this.sysUptimeMs - startUp) | 0);
      if (finish < 0 && endUp >= 0) finish = this.exportMs - ((this.sysUptimeMs - endUp) | 0);
    } else if (systemInit >= 0) {
      if (start < 0 && startUp >= 0) start = systemInit + startUp;
      if (finish < 0 && endUp >= 0) finish = systemInit + endUp;
    }
    if (start >= 0 && finish < 0 && duration >= 0) finish = start + duration;
    if (finish < 0) finish = start >= 0 ? start : this.exportMs;
    if (start < 0) start = duration >= 0 ? finish - duration : finish;

    const exporter = this.exporter;
    const version =
      srcV4 >= 0 && dstV4 >= 0
        ? 4
        : srcV6 >= 0 && dstV6 >= 0
          ? 6
          : ipVersion === 4 || ipVersion === 6
            ? -1
            : 0;
    if (version < 0) {
      // It says it is IP, but does not carry both addresses: no record rather than a wrong one.
      this.report.failed++;
      this.report.failure = `${this.version === 10 ? 'IPFIX' : 'NetFlow v9'} from ${exporter.address}: an IPv${ipVersion} record without its two addresses`;
      return at;
    }
    const rec: IpfixFlowRecord = {
      ipVersion: version as 0 | 4 | 6,
      sourceTransportPort: srcPort,
      destinationTransportPort: dstPort,
      protocolIdentifier: protocol,
      octetDeltaCount: octets,
      packetDeltaCount: packets,
      flowStartMilliseconds: start,
      flowEndMilliseconds: finish,
      tcpControlBits: tcpFlags,
      ipDiffServCodePoint: dscp,
      ingressInterface: ingress,
      flowDirection: direction === 1 ? 1 : 0,
      sourceMacAddress: srcMac >= 0 ? formatMac(b, srcMac) : ZERO_MAC,
      destinationMacAddress: dstMac >= 0 ? formatMac(b, dstMac) : ZERO_MAC,
      ethernetType: ethertype >= 0 ? ethertype : version === 4 ? 0x0800 : version === 6 ? 0x86dd : 0,
    };
    if (version === 4) {
      rec.sourceIPv4Address = formatIPv4(b, srcV4);
      rec.destinationIPv4Address = formatIPv4(b, dstV4);
      attachIPv4Words(rec, u32(b, srcV4), u32(b, dstV4));
      if (protocol === 1 && (icmp >= 0 || icmpType >= 0)) {
        rec.icmpTypeIPv4 = icmpType >= 0 ? icmpType : icmp >> 8;
        rec.icmpCodeIPv4 = icmpCode >= 0 ? icmpCode : icmp >= 0 ? icmp & 255 : 0;
      }
    } else if (version === 6) {
      rec.sourceIPv6Address = formatIPv6(b, srcV6);
      rec.destinationIPv6Address = formatIPv6(b, dstV6);
      if (protocol === 58 && (icmp >= 0 || icmpType >= 0)) {
        rec.icmpTypeIPv6 = icmpType >= 0 ? icmpType : icmp >> 8;
        rec.icmpCodeIPv6 = icmpCode >= 0 ? icmpCode : icmp >= 0 ? icmp & 255 : 0;
      }
    }
    if (exporter.ipVersion === 4) rec.exporterIPv4Address = exporter.address;
    else rec.exporterIPv6Address = exporter.address;
    if (endReason !== 0) rec.flowEndReason = endReason;
    if (sampling === 0) sampling = this.domain.samplingInterval;
    if (sampling > 1) rec.samplingInterval = sampling;
    if (egress !== 0) rec.egressInterface = egress;
    if (l2Octets >= 0) rec.layer2OctetDeltaCount = l2Octets;
    // 0 is no drop, as in rxflow's records (its sink writes 0 for a record without drops).
    if (droppedPackets > 0 || droppedOctets > 0) {
      rec.droppedPacketDeltaCount = droppedPackets;
      rec.droppedOctetDeltaCount = droppedOctets;
    }
    // dot1qVlanId, else vlanId (58, what v9 exporters send); 0 is no tag, as in rxflow's records.
    if (dot1qVlan < 0) dot1qVlan = vlan;
    if (dot1qVlan > 0) rec.dot1qVlanId = dot1qVlan;
    if (customerVlan > 0) rec.dot1qCustomerVlanId = customerVlan;
    const ownInRange = own === 0 || this.ownFields(b, rec, own);
    // The check every record from outside passes (file_replay, kafka_consumer): a value out of its
    // element's range (a protocol sent in 8 bytes), a time before 2000 or past tomorrow, start
    // after end. Such a record is dropped rather than passed on wrong. Addresses and MACs are
    // right by construction and the other values integers, so comparing the numbers as read is
    // enough to pass a record; only one that fails them is put to the full check, for its reason.
    if (!(
      protocol <= 0xff &&
      srcPort <= 0xffff &&
      dstPort <= 0xffff &&
      icmp <= 0xffff &&
      icmpType <= 0xff &&
      icmpCode <= 0xff &&
      ingress <= 0xffffffff &&
      egress <= 0xffffffff &&
      endReason <= 0xff &&
      ethertype <= 0xffff &&
      sampling <= 0xffffffff &&
      octets <= Number.MAX_SAFE_INTEGER &&
      packets <= Number.MAX_SAFE_INTEGER &&
      l2Octets <= Number.MAX_SAFE_INTEGER &&
      droppedOctets <= Number.MAX_SAFE_INTEGER &&
      droppedPackets <= Number.MAX_SAFE_INTEGER &&
      dot1qVlan <= 0xfff &&
      customerVlan <= 0xfff &&
      start >= EARLIEST_FLOW_MS &&
      start <= finish &&
      finish <= this.nowMs + FUTURE_SLACK_MS &&
      ownInRange
    )) {
      const problem = flowRecordProblem(rec, this.nowMs);
      if (problem !== undefined) {
        this.report.failed++;
        this.report.failure = `${this.version === 10 ? 'IPFIX' : 'NetFlow v9'} from ${exporter.address}: a record of template ${this.templateId}: ${problem}`;
        return at;
      }
    }
    out.push(rec);
    return at;
  }
}
