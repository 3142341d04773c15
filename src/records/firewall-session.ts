/**
 * Firewall sessions as records: the session key and the names of the kernel's enums, shared by the
 * datapath that decodes them, the HA layer that replicates them, and the `firewall_sessions`
 * source whose records carry them.
 */
import type { FirewallAction } from '../config/firewall-policy.js';
import type { FlowRecord } from '../records/flow.js';

export type { FirewallAction };

/** The key of a session: the 5-tuple as the initiator sent it, plus the VNI (0 without a tunnel). */
export interface SessionKey {
  /** IP protocol number: 6 tcp, 17 udp, 1 icmp, 58 icmpv6. */
  protocol: number;
  /** Canonical text: IPv4 dotted, IPv6 compressed lower-case. */
  srcAddr: string;
  srcPort: number;
  dstAddr: string;
  dstPort: number;
  vni: number;
}

/**
 * What a session keeps of the packet that opened it, so its later packets (on this node or, after
 * a failover, on its peer) go the same way.
 */
export interface SessionOuter {
  /** GENEVE flow cookie: 8 bytes as 16 lower-case hex digits, wire order; all zero without one. */
  cookie: string;
  /** Outer addresses of the packet that opened the session; '' without a tunnel. */
  outerSrcAddr: string;
  outerDstAddr: string;
  /** (Outer) Ethernet addresses of the packet that opened the session, aa:bb:cc:dd:ee:ff. */
  outerSrcMac: string;
  outerDstMac: string;
  outerSrcPort: number;
  outerDstPort: number;
  /** The interface the opening packet came in on (the hairpin target), on the node that saw it. */
  ingressIfindex: number;
}

export type FirewallReason = 'session' | 'rule' | 'policy_default' | 'no_network' | 'no_policy';
export type TunnelType = 'none' | 'vxlan' | 'geneve';
export type Direction = 'ingress' | 'egress';
export type TcpState = 'none' | 'syn_sent' | 'syn_recv' | 'established' | 'fin_wait' | 'closed';
export type SessionOrigin = 'kernel' | 'restored';
export type SessionEventKind = 'created' | 'updated' | 'deleted';

/** A record of the `firewall_sessions` source: one session event. */
export interface FirewallSessionRecord extends FlowRecord {
  firewallSessionEvent: SessionEventKind;
  firewallAction: FirewallAction;
  firewallReason: FirewallReason;
  firewallPolicyId: number;
  firewallRuleId: number;
  firewallSessionOrigin: SessionOrigin;
  tcpState: TcpState;
  /** RFC 5103 reverse direction (responder to initiator), totals since the session opened. */
  reversePacketTotalCount: number;
  reverseOctetTotalCount: number;
  /** Forward totals; packetDeltaCount and octetDeltaCount carry the same numbers. */
  packetTotalCount: number;
  octetTotalCount: number;
  /** Where forward packets of a redirect session go. */
  egressInterface?: number;
}
