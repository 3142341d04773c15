/**
 * Flow records as they travel through pipelines. Field names are IPFIX information element
 * names (RFC 7012, IANA registry) so a NetFlow/IPFIX user reads them without a manual.
 * Times are wall-clock milliseconds; the sources convert kernel monotonic time once.
 */
export interface FlowRecord {
  /** 4 or 6. Exactly one of the v4/v6 address pairs is set. */
  ipVersion: 4 | 6;
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
}

/** Flows travel in arrays: every hot path works on a batch, not a record. */
export type FlowBatch = FlowRecord[];

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
