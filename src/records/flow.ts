/**
 * Flow records as they travel through pipelines. Field names are IPFIX information element
 * names (RFC 7012, IANA "IPFIX Information Elements" registry), with the registry's meaning, so a
 * NetFlow/IPFIX user reads them without a manual; each field below gives its element id, or says
 * it is rxflow's own (no IANA element means the same; the ipfix sink leaves those out or puts them
 * under its enterprise number). Times are wall-clock milliseconds; the sources convert kernel
 * monotonic time once.
 */
import { ipv4ToUint32, isIPv6Text, writeMac } from '../net/address.js';

export interface FlowRecord {
  /**
   * ipVersion (60): 4 or 6, with exactly one of the v4/v6 address pairs set. rxflow's own value 0
   * marks a layer-2 flow (a frame that is not IP: ARP, LLDP, ...), which has no addresses and is
   * told apart by sourceMacAddress, destinationMacAddress and ethernetType.
   */
  ipVersion: 0 | 4 | 6;
  /** sourceIPv4Address (8). */
  sourceIPv4Address?: string;
  /** destinationIPv4Address (12). */
  destinationIPv4Address?: string;
  /** sourceIPv6Address (27). */
  sourceIPv6Address?: string;
  /** destinationIPv6Address (28). */
  destinationIPv6Address?: string;
  /** sourceTransportPort (7); 0 without ports (ICMP, non-first fragments, layer-2 flows). */
  sourceTransportPort: number;
  /** destinationTransportPort (11). */
  destinationTransportPort: number;
  /** protocolIdentifier (4); 0 for a layer-2 flow. */
  protocolIdentifier: number;
  /** icmpTypeIPv4 (176), ICMP flows only. */
  icmpTypeIPv4?: number;
  /** icmpCodeIPv4 (177). */
  icmpCodeIPv4?: number;
  /** icmpTypeIPv6 (178), ICMPv6 flows only. */
  icmpTypeIPv6?: number;
  /** icmpCodeIPv6 (179). */
  icmpCodeIPv6?: number;
  /**
   * octetDeltaCount (1): IP octets, IP header and payload, no layer-2 header (a 98-byte ping
   * frame counts 84). For a flow seen inside VXLAN or GENEVE, those of the inner IP packets (the
   * flow the record describes); the outer headers count only in layer2OctetDeltaCount. 0 for a
   * layer-2 flow, which has no IP octets.
   */
  octetDeltaCount: number;
  /**
   * layer2OctetDeltaCount (352): the frames as on the wire, Ethernet header and 802.1Q tags
   * included (also a tag the kernel took out of the frame into packet metadata, as a veth or a NIC
   * with VLAN offload does), FCS not included. For a tunnelled flow, the outer frames. Always set
   * by ebpf_flows; records written by older versions lack it.
   */
  layer2OctetDeltaCount?: number;
  /** packetDeltaCount (2). */
  packetDeltaCount: number;
  /** flowStartMilliseconds (152): first packet. */
  flowStartMilliseconds: number;
  /** flowEndMilliseconds (153): last packet. */
  flowEndMilliseconds: number;
  /** tcpControlBits (6): OR of the flags of every TCP packet; 0 for other protocols. */
  tcpControlBits: number;
  /** ipDiffServCodePoint (195), of the (inner) IP header. */
  ipDiffServCodePoint: number;
  /**
   * ingressInterface (10): the ifindex a packet was received on; set on ingress records
   * (flowDirection 0). Egress records carry egressInterface instead; egress records written by
   * older versions carry their interface here (see flowInterface()).
   */
  ingressInterface?: number;
  /** egressInterface (14): the ifindex a packet was sent on; set on egress records (flowDirection 1). */
  egressInterface?: number;
  /** flowDirection (61): 0 ingress, 1 egress. */
  flowDirection: 0 | 1;
  /** sourceMacAddress (56), of the outermost Ethernet header. */
  sourceMacAddress: string;
  /** destinationMacAddress (80). */
  destinationMacAddress: string;
  /** ethernetType (256): of the (inner) IP packet, or of the frame for a layer-2 flow. */
  ethernetType: number;
  /**
   * dot1qVlanId (243): the VLAN id (12 bits of the tag's TCI) of the outermost 802.1Q/802.1ad tag
   * of the frame, on either direction: the one a veth or VLAN offload takes into packet metadata,
   * else the first in the frame; absent when untagged. For QinQ it is the service (S-) VLAN.
   * IANA's vlanId (58) and postVlanId (59) mean the VLAN of the ingress or egress interface, not
   * of the frame: the ipfix sink may write the same value under 58 (ingress) or 59 (egress) for
   * collectors that read only those.
   */
  dot1qVlanId?: number;
  /** dot1qCustomerVlanId (245): for a QinQ frame, the VLAN id of the second (customer, C-) tag. */
  dot1qCustomerVlanId?: number;
  /** interfaceName (82): the current name of the record's interface. Set by the decorate operator. */
  interfaceName?: string;
  /** exporterIPv4Address (130), set by decorate. */
  exporterIPv4Address?: string;
  /** exporterIPv6Address (131), set by decorate. */
  exporterIPv6Address?: string;
  /**
   * flowEndReason (136), set by ebpf_flows on every record: 1 idle timeout (no packet during the
   * last half of the eviction interval before the eviction), 2 active timeout (packets still came;
   * the flow goes on in the next record), 3 end of flow (a TCP FIN or RST was seen), 4 forced end
   * (the final eviction at shutdown, for flows without FIN/RST), 5 lack of resources (the kernel
   * map was full or failed and the packet went through the ring buffer).
   */
  flowEndReason?: number;
  /**
   * rxflow's own: 'vxlan' or 'geneve' for a flow seen inside a tunnel; the tunnel fields below
   * are present only then. IANA has no element for the encapsulation; for VXLAN, element
   * layer2SegmentId (351) carries type and VNI together: see layer2SegmentId().
   */
  encapsulationType?: 'vxlan' | 'geneve';
  /** rxflow's own: the 24-bit VXLAN or GENEVE VNI (in layer2SegmentId (351) for VXLAN). */
  virtualNetworkIdentifier?: number;
  /** rxflow's own: the outer (tunnel) source address, IPv4 or IPv6 text. */
  tunnelSourceIPAddress?: string;
  /** rxflow's own: the outer (tunnel) destination address. */
  tunnelDestinationIPAddress?: string;
  /** rxflow's own: the outer UDP source port. */
  tunnelSourceTransportPort?: number;
  /** rxflow's own: the outer UDP destination port (4789 VXLAN, 6081 GENEVE). */
  tunnelDestinationTransportPort?: number;
  /** rxflow's own: GENEVE only, the first 8 bytes of the options, hex. */
  flowCookie?: string;
  /** rxflow's own: set by dedupe in just_mark mode on copies seen on a second interface. */
  duplicate?: boolean;
  /**
   * samplingPacketInterval (305) and samplingPacketSpace (306), present when 1-in-N packet
   * sampling was in force (N > 1) when the flow was counted: 1 and N-1, one packet counted per
   * N, the mapping IANA gives for the deprecated samplingInterval (34). rxflow picks each packet
   * independently with probability 1/N (PSAMP selectorAlgorithm 4, uniform probabilistic), not
   * every N-th packet: the rate is exact, the pattern random. Scale counts by
   * (samplingPacketInterval + samplingPacketSpace) / samplingPacketInterval.
   */
  samplingPacketInterval?: number;
  /** samplingPacketSpace (306): N-1, see samplingPacketInterval. */
  samplingPacketSpace?: number;
  /**
   * samplingInterval (34, deprecated): N of 1-in-N sampling, only on records written by older
   * versions (read back by kafka_consumer and file_replay, passed on unchanged).
   */
  samplingInterval?: number;
  /**
   * rxflow's own field (no IPFIX element): the network namespace the flow was counted in, set by
   * `ebpf_flows` when it is not the agent's own: the `ip netns` name, else `net:[<inode>]` as
   * `lsns` shows it. `ingressInterface` is an ifindex of that namespace.
   */
  networkNamespace?: string;
  /**
   * Drops (`ebpf_flows` with `drops: true`): packets and octets of the flow the kernel freed as
   * dropped during the interval (IPFIX droppedPacketDeltaCount 133, droppedOctetDeltaCount 132,
   * IP octets as octetDeltaCount).
   * A record whose flow had drops but no packet counted in the same interval has packetDeltaCount 0.
   */
  droppedPacketDeltaCount?: number;
  droppedOctetDeltaCount?: number;
  /**
   * rxflow's own fields (no IPFIX element): the kernel's reason for the latest drop, as its
   * `enum skb_drop_reason` names it without the SKB_DROP_REASON_ prefix (NETFILTER_DROP,
   * NO_SOCKET, ...), and for TCP the state of the socket at that drop (ESTABLISHED, SYN_SENT, ...,
   * as `ss` shows it), absent when the packet had no socket.
   */
  dropReason?: string;
  tcpState?: string;
  /**
   * rxflow's own fields (IPFIX has no element for a round-trip time), microseconds, set by
   * `ebpf_flows` with `rtt: true`. tcpHandshakeRttMicroseconds: the TCP handshake as the agent's
   * interface saw it, on the ingress flow of the packet that completed it: SYN sent to SYN-ACK
   * received on a client, SYN-ACK sent to ACK received on a server. tcpSmoothedRttMicroseconds and
   * tcpSmoothedRttMinMicroseconds: the latest and the smallest smoothed RTT of the local socket
   * (what `ss -ti` shows as rtt) the kernel's tcp_probe tracepoint reported during the interval,
   * on the ingress flow of the segments it sampled.
   */
  tcpHandshakeRttMicroseconds?: number;
  tcpSmoothedRttMicroseconds?: number;
  tcpSmoothedRttMinMicroseconds?: number;
  /**
   * rxflow's own fields (IPFIX has no element for DNS), set by `ebpf_flows` with `dns: true` on
   * the flow of a DNS response (ingress on a client, egress on a server) that answered a query the
   * agent's interface saw, paired by transaction id and 5-tuple, UDP or TCP: for the latest one
   * answered, microseconds from the query to the response (dnsLatencyMicroseconds), its
   * transaction id (dnsTransactionId, 0-65535) and its response code (dnsResponseCode, the header's
   * 4-bit RCODE: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, ...).
   */
  dnsLatencyMicroseconds?: number;
  dnsTransactionId?: number;
  dnsResponseCode?: number;
  /**
   * rxflow's own field, set by `ebpf_flows` with `dns_query_name: true` next to the fields above:
   * the name the answered query asked for (the response's question), in DNS presentation form
   * (RFC 1035 5.1): labels joined by dots, no trailing dot, case as on the wire, octets outside
   * printable ASCII as `\DDD` and a dot or backslash inside a label escaped. At most
   * MAX_DNS_NAME_CHARS characters (a name is at most 255 octets on the wire).
   */
  dnsQueryName?: string;
  /**
   * rxflow's own field (IPFIX has no element for it; netobserv calls it the `Interfaces` /
   * `DupList` of a flow): every (interface, direction) the flow was seen on, when `dedupe` saw it
   * on more than one, the first one first, at most MAX_OBSERVED_INTERFACES.
   */
  observedInterfaces?: ObservedInterface[];
}

/**
 * rxflow's own record, no flow: a sample of a firewall's counters and state, as `firewall_metrics`
 * takes it and `otel_metrics` publishes it (other sinks write it as any record). ipVersion 0, no
 * addresses or counts; flowStartMilliseconds and flowEndMilliseconds are the time of the sample.
 */
export interface FirewallMetricsRecord extends FlowRecord {
  /** The firewall instance given to `rxflow firewall load`. */
  firewallInstance: string;
  /**
   * The kernel's counters by name (packets by outcome, session hits, losses), summed over CPUs,
   * since the firewall was first loaded: what `rxflow firewall counters` prints.
   */
  firewallCounters: Record<string, number>;
  /** Sessions in the kernel's session map, and the most it holds. */
  firewallSessionCount: number;
  firewallSessionLimit: number;
  /** Present when the pipeline replicates the instance's sessions (nats_sessions). */
  firewallReplication?: FirewallReplicationSample;
}

/** A firewall's session replication at the time of a FirewallMetricsRecord. */
export interface FirewallReplicationSample {
  connected: boolean;
  ready: boolean;
  /** The kernel map compared with the bucket: keys in both, only in the map, only in the bucket; absent before a comparison. */
  sessionsInBoth?: number;
  sessionsOnlyLocal?: number;
  sessionsOnlyKv?: number;
  /** Age of the oldest change not yet in the bucket, ms; 0 when none. */
  lagMs: number;
  /** Changes not yet acknowledged by the bucket. */
  pending: number;
  /** Acknowledged writes since start, and failed ones. */
  puts: number;
  deletes: number;
  failedWrites: number;
  /** Time since the last full sync finished, ms; absent before the first. */
  lastSyncAgeMs?: number;
}

/** Whether `r` is a firewall metrics sample rather than a flow. */
export function isFirewallMetricsRecord(r: FlowRecord): r is FirewallMetricsRecord {
  return (r as Partial<FirewallMetricsRecord>).firewallCounters !== undefined;
}

/**
 * One (interface, direction) a flow was seen on, the interface under its IPFIX name for the
 * direction: `ingressInterface` (10) for ingress, `egressInterface` (14) for egress.
 */
export interface ObservedInterface {
  ingressInterface?: number;
  egressInterface?: number;
  /** 0 ingress, 1 egress. */
  flowDirection: 0 | 1;
  /** Its name, when the record carried one (decorate ran before dedupe). */
  interfaceName?: string;
}

/** Entries of observedInterfaces at most: more are left out by dedupe, refused by the readers. */
export const MAX_OBSERVED_INTERFACES = 16;

/**
 * The ifindex of the interface the record was observed on: egressInterface for an egress record
 * (or ingressInterface on egress records written by older versions), ingressInterface otherwise.
 */
export function flowInterface(r: FlowRecord): number {
  return (r.flowDirection === 1 ? (r.egressInterface ?? r.ingressInterface) : r.ingressInterface) ?? 0;
}

/** IANA layer2SegmentId's encapsulation type byte for VXLAN (its most significant byte). */
const LAYER2_SEGMENT_VXLAN = 0x01n;

/**
 * layer2SegmentId (351, unsigned64) of a tunnelled record: the encapsulation type in the most
 * significant byte (0x01 VXLAN) and the VNI in the low bytes. A bigint: the value exceeds 2^53, so
 * records carry encapsulationType and virtualNetworkIdentifier and the ipfix sink builds the
 * element. Undefined for GENEVE (IANA assigns it no type) and for flows not in a tunnel.
 */
export function layer2SegmentId(r: FlowRecord): bigint | undefined {
  if (r.encapsulationType !== 'vxlan' || r.virtualNetworkIdentifier === undefined) return undefined;
  return (LAYER2_SEGMENT_VXLAN << 56n) | BigInt(r.virtualNetworkIdentifier >>> 0);
}

/** Flows travel in arrays: every hot path works on a batch, not a record. */
export type FlowBatch = FlowRecord[];

/** The fields every FlowRecord has (the rest are optional). */
export type RequiredFlowField = {
  [K in keyof FlowRecord]-?: object extends Pick<FlowRecord, K> ? never : K;
}[keyof FlowRecord];

/**
 * The JSON type of each required field, in declaration order. Typed from FlowRecord, so a field
 * made required there, or given another type, breaks compilation here until this follows.
 */
const REQUIRED_FLOW_FIELD_TYPES: {
  [K in RequiredFlowField]: FlowRecord[K] extends string ? 'string' : 'number';
} = {
  ipVersion: 'number',
  sourceTransportPort: 'number',
  destinationTransportPort: 'number',
  protocolIdentifier: 'number',
  octetDeltaCount: 'number',
  packetDeltaCount: 'number',
  flowStartMilliseconds: 'number',
  flowEndMilliseconds: 'number',
  tcpControlBits: 'number',
  ipDiffServCodePoint: 'number',
  flowDirection: 'number',
  sourceMacAddress: 'string',
  destinationMacAddress: 'string',
  ethernetType: 'number',
};

/** The fields every FlowRecord has (the rest are optional), in declaration order. */
export const REQUIRED_FLOW_FIELDS = Object.keys(REQUIRED_FLOW_FIELD_TYPES) as readonly RequiredFlowField[];

/** Checked by value rather than by type: ipVersion 0, 4 or 6 with its address pair, flowDirection 0 or 1. */
type ValueCheckedField = 'ipVersion' | 'flowDirection';

const fieldsOfType = (type: 'number' | 'string'): Exclude<RequiredFlowField, ValueCheckedField>[] =>
  REQUIRED_FLOW_FIELDS.filter(
    (f): f is Exclude<RequiredFlowField, ValueCheckedField> =>
      f !== 'ipVersion' && f !== 'flowDirection' && REQUIRED_FLOW_FIELD_TYPES[f] === type,
  );

const NUMBER_FIELDS = fieldsOfType('number');
const ADDRESS_FIELDS = [
  'sourceIPv4Address',
  'destinationIPv4Address',
  'sourceIPv6Address',
  'destinationIPv6Address',
] as const;
const STRING_FIELDS = fieldsOfType('string');

/** The earliest flow time a record may carry: 2000-01-01T00:00:00Z. */
export const EARLIEST_FLOW_MS = Date.UTC(2000, 0, 1);
/** How far past the reader's clock a flow time may lie (clocks of exporters drift). */
export const FUTURE_SLACK_MS = 86_400_000;
/** Characters a string field may have at most (interface names, and fields riding along). */
export const MAX_TEXT_CHARS = 256;
/**
 * Characters of dnsQueryName at most: 255 wire octets, every one of them escaped as `\DDD`
 * (4 characters) in the worst case.
 */
export const MAX_DNS_NAME_CHARS = 1024;

// What each known field must hold. Numbers are integers in the field's IPFIX range.
const IPV4 = 0;
const IPV6 = 1;
const IP = 2;
const U8 = 3;
const U6 = 4;
const U16 = 5;
const U24 = 6;
const U32 = 7;
const COUNT = 8;
const TIME = 9;
const MAC = 10;
const TEXT = 11;
const TUNNEL = 12;
const COOKIE = 13;
const BOOLEAN = 14;
const VERSION = 15;
const DIRECTION = 16;
const OBSERVED = 17;
const DNS_NAME = 18;
const KIND_MASK = 31;
/** Set on the kind of a field every record has. */
const REQUIRED = 32;

/**
 * What the known field `name` must hold, with REQUIRED set for the fields every record has; -1 for
 * a field rxflow does not know. A switch on the (internalized) key costs far less per field than
 * a Map or object lookup, and checking fields as the record lists them (for...in) far less than
 * loading a list of names from each record (a megamorphic keyed load per name).
 */
function kindOf(name: string): number {
  // In the order the sinks write fields: the cases are tried one after the other.
  switch (name) {
    case 'ipVersion':
      return VERSION | REQUIRED;
    case 'sourceIPv4Address':
    case 'destinationIPv4Address':
      return IPV4;
    case 'sourceTransportPort':
    case 'destinationTransportPort':
      return U16 | REQUIRED;
    case 'protocolIdentifier':
      return U8 | REQUIRED;
    case 'octetDeltaCount':
    case 'packetDeltaCount':
      return COUNT | REQUIRED;
    case 'flowStartMilliseconds':
    case 'flowEndMilliseconds':
      return TIME | REQUIRED;
    case 'tcpControlBits':
      return U16 | REQUIRED;
    case 'ipDiffServCodePoint':
      return U6 | REQUIRED;
    case 'ingressInterface':
    case 'egressInterface':
      return U32;
    case 'flowDirection':
      return DIRECTION | REQUIRED;
    case 'sourceMacAddress':
    case 'destinationMacAddress':
      return MAC | REQUIRED;
    case 'ethernetType':
      return U16 | REQUIRED;
    case 'interfaceName':
      return TEXT;
    case 'sourceIPv6Address':
    case 'destinationIPv6Address':
      return IPV6;
    case 'icmpTypeIPv4':
    case 'icmpCodeIPv4':
    case 'icmpTypeIPv6':
    case 'icmpCodeIPv6':
    case 'flowEndReason':
      return U8;
    case 'exporterIPv4Address':
      return IPV4;
    case 'exporterIPv6Address':
      return IPV6;
    case 'encapsulationType':
      return TUNNEL;
    case 'virtualNetworkIdentifier':
      return U24;
    case 'tunnelSourceIPAddress':
    case 'tunnelDestinationIPAddress':
      return IP;
    case 'tunnelSourceTransportPort':
    case 'tunnelDestinationTransportPort':
      return U16;
    case 'flowCookie':
      return COOKIE;
    case 'duplicate':
      return BOOLEAN;
    case 'samplingInterval':
    case 'samplingPacketInterval':
    case 'samplingPacketSpace':
      return U32;
    case 'observedInterfaces':
      return OBSERVED;
    case 'layer2OctetDeltaCount':
      return COUNT;
    case 'dot1qVlanId':
    case 'dot1qCustomerVlanId':
      return U16;
    case 'dropReason':
    case 'tcpState':
      return TEXT;
    case 'tcpHandshakeRttMicroseconds':
    case 'tcpSmoothedRttMicroseconds':
    case 'tcpSmoothedRttMinMicroseconds':
    case 'dnsLatencyMicroseconds':
      return U32;
    case 'dnsTransactionId':
    case 'dnsResponseCode':
      return U16;
    case 'dnsQueryName':
      return DNS_NAME;
    case 'droppedPacketDeltaCount':
    case 'droppedOctetDeltaCount':
    case 'octetTotalCount':
    case 'packetTotalCount':
    case 'reverseOctetTotalCount':
    case 'reversePacketTotalCount':
      return COUNT;
    default:
      return -1;
  }
}

// The switch and FlowRecord must agree on which fields every record has.
for (const name of REQUIRED_FLOW_FIELDS) {
  if (!(kindOf(name) & REQUIRED)) throw new Error(`records: kindOf does not mark ${name} as required`);
}

const MAX_OF = [0, 0, 0, 0xff, 0x3f, 0xffff, 0xffffff, 0xffffffff, Number.MAX_SAFE_INTEGER];
const RANGE_TEXT = [
  '',
  '',
  '',
  'an integer from 0 to 255',
  'an integer from 0 to 63',
  'an integer from 0 to 65535',
];
RANGE_TEXT[U24] = 'an integer from 0 to 16777215';
RANGE_TEXT[U32] = 'an integer from 0 to 4294967295';
RANGE_TEXT[COUNT] = 'an integer from 0 to 2^53-1';

/** A value for a message: JSON (control characters escaped), cut to a readable length. */
function shown(value: unknown): string {
  const text = typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? typeof value);
  return text.length > 40 ? `${text.slice(0, 40)}...` : text;
}

/** Whether `s` holds a C0 or C1 control character or DEL (a NUL, an escape sequence, a newline). */
export function hasControlCharacter(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || (c >= 0x7f && c <= 0x9f)) return true;
  }
  return false;
}

/** The last two MAC address texts found good: a host's records mostly carry a handful of MACs. */
let goodMac = '';
let goodMacBefore = '';
const macScratch = new Uint8Array(6);

/** "" (no link layer) or six colon-separated pairs of hex digits. */
function isMac(s: string): boolean {
  if (s.length === 0 || s === goodMac || s === goodMacBefore) return true;
  if (!writeMac(s, macScratch, 0)) return false;
  goodMacBefore = goodMac;
  goodMac = s;
  return true;
}

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70);
}

function isCookie(s: string): boolean {
  if (s.length !== 16) return false;
  for (let i = 0; i < 16; i++) if (!isHex(s.charCodeAt(i))) return false;
  return true;
}

/** Why the value of the known field `name` (of kind `kind`) is wrong, or undefined. */
function fieldProblem(name: string, kind: number, v: unknown, nowMs: number): string | undefined {
  switch (kind) {
    case IPV4:
      if (typeof v !== 'string') return `${name} is not a string`;
      return ipv4ToUint32(v) < 0 ? `${name} is not an IPv4 address: ${shown(v)}` : undefined;
    case IPV6:
      if (typeof v !== 'string') return `${name} is not a string`;
      return isIPv6Text(v) ? undefined : `${name} is not an IPv6 address: ${shown(v)}`;
    case IP:
      if (typeof v !== 'string') return `${name} is not a string`;
      return ipv4ToUint32(v) >= 0 || isIPv6Text(v) ? undefined : `${name} is not an IP address: ${shown(v)}`;
    case U8:
    case U6:
    case U16:
    case U24:
    case U32:
    case COUNT:
      if (typeof v !== 'number') return `${name} is not a number`;
      return Number.isInteger(v) && v >= 0 && v <= MAX_OF[kind]!
        ? undefined
        : `${name} is not ${RANGE_TEXT[kind]!}: ${shown(v)}`;
    case TIME:
      if (typeof v !== 'number') return `${name} is not a number`;
      return Number.isInteger(v) && v >= EARLIEST_FLOW_MS && v <= nowMs + FUTURE_SLACK_MS
        ? undefined
        : `${name} is not a time in milliseconds from 2000-01-01 to a day from now: ${shown(v)}`;
    case MAC:
      if (typeof v !== 'string') return `${name} is not a string`;
      return isMac(v) ? undefined : `${name} is not a MAC address (aa:bb:cc:dd:ee:ff): ${shown(v)}`;
    case TEXT:
      if (typeof v !== 'string') return `${name} is not a string`;
      if (v.length > MAX_TEXT_CHARS) return `${name} is longer than ${MAX_TEXT_CHARS} characters`;
      return hasControlCharacter(v) ? `${name} holds a control character: ${shown(v)}` : undefined;
    case DNS_NAME:
      if (typeof v !== 'string') return `${name} is not a string`;
      if (v.length > MAX_DNS_NAME_CHARS) return `${name} is longer than ${MAX_DNS_NAME_CHARS} characters`;
      return hasControlCharacter(v) ? `${name} holds a control character: ${shown(v)}` : undefined;
    case TUNNEL:
      return v === 'vxlan' || v === 'geneve' ? undefined : `${name} is not "vxlan" or "geneve": ${shown(v)}`;
    case COOKIE:
      if (typeof v !== 'string') return `${name} is not a string`;
      return isCookie(v) ? undefined : `${name} is not 16 hex digits: ${shown(v)}`;
    case BOOLEAN:
      return typeof v === 'boolean' ? undefined : `${name} is not true or false`;
    case VERSION:
      return v === 0 || v === 4 || v === 6 ? undefined : 'ipVersion is not 0, 4 or 6';
    case DIRECTION:
      return v === 0 || v === 1 ? undefined : 'flowDirection is not 0 or 1';
    case OBSERVED:
      return observedProblem(name, v);
    default:
      return undefined;
  }
}

/**
 * Why `v` is not a list of ObservedInterface: at most MAX_OBSERVED_INTERFACES objects, each with
 * flowDirection 0 and ingressInterface, or 1 and egressInterface, an integer from 0 to 2^32-1, and
 * optionally interfaceName; nothing else.
 */
function observedProblem(name: string, v: unknown): string | undefined {
  if (!Array.isArray(v)) return `${name} is not an array`;
  if (v.length > MAX_OBSERVED_INTERFACES) return `${name} has more than ${MAX_OBSERVED_INTERFACES} entries`;
  for (let i = 0; i < v.length; i++) {
    const e = v[i] as unknown;
    const at = `${name}[${i}]`;
    if (typeof e !== 'object' || e === null || Array.isArray(e)) return `${at} is not an object`;
    const o = e as Record<string, unknown>;
    const direction = o.flowDirection;
    if (direction !== 0 && direction !== 1) return `${at}.flowDirection is not 0 or 1`;
    const field = direction === 0 ? 'ingressInterface' : 'egressInterface';
    let fields = 2;
    const problem = fieldProblem(`${at}.${field}`, U32, o[field], 0);
    if (problem !== undefined) return problem;
    if (o.interfaceName !== undefined) {
      fields++;
      const nameProblem = fieldProblem(`${at}.interfaceName`, TEXT, o.interfaceName, 0);
      if (nameProblem !== undefined) return nameProblem;
    }
    if (Object.keys(o).length !== fields)
      return `${at} has fields other than flowDirection, ${field} and interfaceName`;
  }
  return undefined;
}

/** Why a field rxflow does not know is unfit to pass on: a string or number that is not sane. */
function extraProblem(name: string, v: unknown): string | undefined {
  if (typeof v === 'string') {
    if (v.length > MAX_TEXT_CHARS) return `${shown(name)} is longer than ${MAX_TEXT_CHARS} characters`;
    if (hasControlCharacter(v)) return `${shown(name)} holds a control character: ${shown(v)}`;
  } else if (typeof v === 'number' && !Number.isFinite(v)) {
    return `${shown(name)} is not a finite number: ${shown(v)}`;
  }
  if (hasControlCharacter(name)) return `a field name holds a control character: ${shown(name)}`;
  return undefined;
}

/**
 * Why a decoded value is not a flow record, or undefined when it is one, for the sources that read
 * records from outside (file_replay, kafka_consumer). A flow record is an object whose required
 * FlowRecord fields are present with their types (ipVersion 4 or 6 with that version's address
 * pair, or 0 for a layer-2 flow without addresses; flowDirection 0 or 1, with ingressInterface
 * for 0 and egressInterface for 1, or ingressInterface as older versions wrote egress records), and whose every known field, required or not, holds a sane value:
 * addresses parse (IPv4 as a canonical dotted quad), counts are integers from 0 to 2^53-1, ports,
 * protocols and other numbers are integers in their IPFIX range, flow times are integer
 * milliseconds from 2000-01-01 to a day past `nowMs` with start <= end, MAC addresses are
 * aa:bb:cc:dd:ee:ff (or "" where there is no link layer), strings hold no control character and
 * at most MAX_TEXT_CHARS characters. Fields rxflow does not know ride along (firewall verdicts, a
 * producer's own fields) if they are not strings or numbers that fail the same tests. The message
 * names the field and shows the value escaped and cut short.
 *
 * Allocates nothing for a good record: `nowMs` is read once per batch by the caller.
 */
export function flowRecordProblem(value: unknown, nowMs: number = Date.now()): string | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'not a JSON object';
  const r = value as Record<string, unknown>;
  let required = 0;
  const latest = nowMs + FUTURE_SLACK_MS;
  for (const name in r) {
    const v = r[name];
    const kind = kindOf(name);
    if (kind >= REQUIRED) required++;
    // Numbers in range, the most of a record, are passed here without a call.
    const k = kind & KIND_MASK;
    if (typeof v === 'number' && kind >= 0 && Number.isInteger(v)) {
      if (
        k <= COUNT ? k >= U8 && v >= 0 && v <= MAX_OF[k]! : k === TIME && v >= EARLIEST_FLOW_MS && v <= latest
      )
        continue;
    }
    const problem = kind < 0 ? extraProblem(name, v) : fieldProblem(name, k, v, nowMs);
    if (problem !== undefined) return shapeProblem(r) ?? problem;
  }
  if (required !== REQUIRED_FLOW_FIELDS.length) return shapeProblem(r) ?? 'a required field is missing';
  if (r.ipVersion === 4) {
    if (typeof r.sourceIPv4Address !== 'string' || typeof r.destinationIPv4Address !== 'string')
      return shapeProblem(r);
  } else if (r.ipVersion === 6) {
    if (typeof r.sourceIPv6Address !== 'string' || typeof r.destinationIPv6Address !== 'string')
      return shapeProblem(r);
  } else if (
    r.sourceIPv4Address !== undefined ||
    r.destinationIPv4Address !== undefined ||
    r.sourceIPv6Address !== undefined ||
    r.destinationIPv6Address !== undefined
  ) {
    return shapeProblem(r);
  }
  // The interface of the record's direction; egress records written by older versions carry it
  // as ingressInterface.
  if (
    r.flowDirection === 0
      ? typeof r.ingressInterface !== 'number'
      : typeof r.egressInterface !== 'number' && typeof r.ingressInterface !== 'number'
  )
    return shapeProblem(r);
  if ((r.flowStartMilliseconds as number) > (r.flowEndMilliseconds as number))
    return 'flowStartMilliseconds is after flowEndMilliseconds';
  return undefined;
}

/**
 * The first required field that is missing or of the wrong type, ipVersion's address pair
 * included, or undefined: what a record lacks is told before what a value is wrong. Error path
 * only.
 */
function shapeProblem(r: Record<string, unknown>): string | undefined {
  const version = r.ipVersion;
  if (version === 4) {
    if (typeof r.sourceIPv4Address !== 'string') return 'sourceIPv4Address is not a string';
    if (typeof r.destinationIPv4Address !== 'string') return 'destinationIPv4Address is not a string';
  } else if (version === 6) {
    if (typeof r.sourceIPv6Address !== 'string') return 'sourceIPv6Address is not a string';
    if (typeof r.destinationIPv6Address !== 'string') return 'destinationIPv6Address is not a string';
  } else if (version === 0) {
    for (const name of ADDRESS_FIELDS) {
      if (r[name] !== undefined) return `ipVersion is 0 (a layer-2 flow) but ${name} is set`;
    }
  } else {
    return 'ipVersion is not 0, 4 or 6';
  }
  for (const name of NUMBER_FIELDS) {
    if (typeof r[name] !== 'number') return `${name} is not a number`;
  }
  if (r.flowDirection === 0) {
    if (typeof r.ingressInterface !== 'number') return 'ingressInterface is not a number';
  } else if (r.flowDirection === 1) {
    // Egress records written by older versions carry their interface as ingressInterface.
    if (typeof r.egressInterface !== 'number' && typeof r.ingressInterface !== 'number')
      return 'egressInterface is not a number';
  } else {
    return 'flowDirection is not 0 or 1';
  }
  for (const name of STRING_FIELDS) {
    if (typeof r[name] !== 'string') return `${name} is not a string`;
  }
  return undefined;
}

/**
 * A base whose constructor returns the object it is given: `new Subclass(obj)` then installs the
 * subclass's private fields on `obj` itself (class fields go on whatever the base returned).
 */
class OnObject {
  constructor(target: object) {
    return target;
  }
}

/**
 * A record's IPv4 addresses as 32-bit words, attached by whoever has them at hand: the flow
 * decoder reads them from the key bytes, and `account` attaches what it parsed so `dedupe` does not
 * parse the same text again. Reading two dotted quads costs more than the rest of an operator's
 * work on a record (bench/operators.bench.ts), and both key on them.
 *
 * Why private fields on the record: they are invisible to JSON.stringify, Object.keys, spread and
 * deep equality, so a record serialises and compares exactly as without them; and unlike a side
 * table they travel with the record through any batching. Each word is trusted only while the
 * record still holds the very text it was attached with (checked by `===`, which for the same
 * string is one pointer compare), so a stage that rewrites an address needs no special care.
 */
class IPv4Words extends OnObject {
  #source: number;
  #destination: number;
  #sourceText: string | undefined;
  #destinationText: string | undefined;

  private constructor(r: FlowRecord, source: number, destination: number) {
    super(r);
    this.#source = source | 0;
    this.#destination = destination | 0;
    this.#sourceText = r.sourceIPv4Address;
    this.#destinationText = r.destinationIPv4Address;
  }

  static attach(r: FlowRecord, source: number, destination: number): void {
    if (#source in r) {
      const w = r as unknown as IPv4Words;
      w.#source = source | 0;
      w.#destination = destination | 0;
      w.#sourceText = r.sourceIPv4Address;
      w.#destinationText = r.destinationIPv4Address;
    } else {
      new IPv4Words(r, source, destination);
    }
  }

  static read(r: FlowRecord, out: IPv4WordsOut): boolean {
    if (!(#source in r)) return false;
    const w = r as unknown as IPv4Words;
    const source = w.#sourceText;
    const destination = w.#destinationText;
    if (source !== r.sourceIPv4Address || destination !== r.destinationIPv4Address) return false;
    if (source === undefined || destination === undefined) return false;
    out.src = w.#source;
    out.dst = w.#destination;
    return true;
  }
}

/**
 * Attaches `r`'s IPv4 addresses as unsigned 32-bit numbers (10.0.0.1 is 0x0a000001), for the
 * operators that key on flows. They must be the numbers of the record's address text at this
 * moment: a producer that has the address bytes calls this right after setting the text. Calling
 * it again replaces the words.
 */
export function attachIPv4Words(r: FlowRecord, source: number, destination: number): void {
  IPv4Words.attach(r, source, destination);
}

/** Where `readIPv4Words` puts the words: as signed 32-bit ints (`word | 0`), as flow keys hold them. */
export interface IPv4WordsOut {
  src: number;
  dst: number;
}

/**
 * Puts the words attached to `r` into `out` and returns true, if `r` has words and both its
 * address texts are still the ones they were attached with; else returns false and leaves `out`
 * alone.
 */
export function readIPv4Words(r: FlowRecord, out: IPv4WordsOut): boolean {
  return IPv4Words.read(r, out);
}
