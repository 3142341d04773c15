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
