/**
 * Flow records as they travel through pipelines. Field names are IPFIX information element
 * names (RFC 7012, IANA registry) so a NetFlow/IPFIX user reads them without a manual.
 * Times are wall-clock milliseconds; the sources convert kernel monotonic time once.
 */
export interface FlowRecord {
  /**
   * 4 or 6, with exactly one of the v4/v6 address pairs set; 0 for a layer-2 flow (a frame that
   * is not IP: ARP, LLDP, ...), which has no addresses and is told apart by sourceMacAddress,
   * destinationMacAddress and ethernetType.
   */
  ipVersion: 0 | 4 | 6;
  sourceIPv4Address?: string;
  destinationIPv4Address?: string;
  sourceIPv6Address?: string;
  destinationIPv6Address?: string;
  sourceTransportPort: number;
  destinationTransportPort: number;
  protocolIdentifier: number;
  icmpTypeIPv4?: number;
  icmpCodeIPv4?: number;
  icmpTypeIPv6?: number;
  icmpCodeIPv6?: number;
  octetDeltaCount: number;
  packetDeltaCount: number;
  flowStartMilliseconds: number;
  flowEndMilliseconds: number;
  tcpControlBits: number;
  ipDiffServCodePoint: number;
  ingressInterface: number;
  /** 0 ingress, 1 egress. */
  flowDirection: 0 | 1;
  sourceMacAddress: string;
  destinationMacAddress: string;
  ethernetType: number;
  /** Set by the decorate operator. */
  interfaceName?: string;
  exporterIPv4Address?: string;
  exporterIPv6Address?: string;
  /** IPFIX flowEndReason: 1 idle timeout, 2 active timeout, 3 end of flow, 4 forced end, 5 lack of resources. */
  flowEndReason?: number;
  /** Tunnel metadata, present only for flows seen inside VXLAN or GENEVE. */
  encapsulationType?: 'vxlan' | 'geneve';
  virtualNetworkIdentifier?: number;
  tunnelSourceIPAddress?: string;
  tunnelDestinationIPAddress?: string;
  tunnelSourceTransportPort?: number;
  tunnelDestinationTransportPort?: number;
  /** GENEVE: first 8 bytes of the options, hex. */
  flowCookie?: string;
  /** Set by dedupe in just_mark mode on copies seen on a second interface. */
  duplicate?: boolean;
  /** Number of 1-in-N sampling in force when the flow was counted (absent: not sampled). */
  samplingInterval?: number;
  /**
   * rxflow's own field (no IPFIX element): the network namespace the flow was counted in, set by
   * `ebpf_flows` when it is not the agent's own: the `ip netns` name, else `net:[<inode>]` as
   * `lsns` shows it. `ingressInterface` is an ifindex of that namespace.
   */
  networkNamespace?: string;
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
  ingressInterface: 'number',
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
 * version's address pair or 0 for a layer-2 flow, flowDirection 0 or 1). Other fields ride along unchecked, so records
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
  if (r.flowDirection !== 0 && r.flowDirection !== 1) return 'flowDirection is not 0 or 1';
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
