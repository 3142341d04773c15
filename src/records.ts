/**
 * Flow records as they travel through pipelines. Field names are IPFIX information element
 * names (RFC 7012, IANA "IPFIX Information Elements" registry), with the registry's meaning, so a
 * NetFlow/IPFIX user reads them without a manual; each field below gives its element id, or says
 * it is rxflow's own (no IANA element means the same; the ipfix sink leaves those out or puts them
 * under its enterprise number). Times are wall-clock milliseconds; the sources convert kernel
 * monotonic time once.
 */
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
   * vlanId (58): the VLAN id of the outermost 802.1Q/802.1ad tag of the frame (the one a veth or
   * VLAN offload takes into packet metadata, else the first in the frame); absent when untagged.
   * IANA's dot1qVlanId (243) means the same for 802.1Q frames; vlanId is the one collectors read.
   */
  vlanId?: number;
  /** dot1qCustomerVlanId (245): for a QinQ frame, the VLAN id of the second (customer) tag. */
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
}

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

/** Checked by value rather than by type: ipVersion 4 or 6 with its address pair, flowDirection 0 or 1. */
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

/**
 * Why a decoded value is not a flow record, or undefined when it is one: an object whose required
 * FlowRecord fields are present with their types (numbers, strings, ipVersion 4 or 6 with that
 * version's address pair or 0 for a layer-2 flow, flowDirection 0 or 1 with ingressInterface for
 * 0 and egressInterface (or, as older versions wrote it, ingressInterface) for 1). Other fields ride along unchecked, so records
 * with extra fields (firewall verdicts, tunnel metadata) pass as they were written. For the
 * sources that read records back (file_replay, kafka_consumer).
 */
export function flowRecordProblem(value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'not a JSON object';
  const r = value as Record<string, unknown>;
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
