/**
 * The TypeScript side of bpf/firewall.h: struct layouts, enum values, and the encoders and decoders
 * of map keys, map values and ring-buffer records. test/kernel/firewall-btf.test.ts holds every
 * layout here against the BTF of the compiled bpf/firewall.o, so a change to the header that is not
 * mirrored here fails a test.
 *
 * Decoders read whole batches through one DataView per buffer; only the returned objects allocate.
 */
import { endianness } from 'node:os';
import { formatIp16, formatMac, hex } from '../flow/types.js';
import { struct, u64, viewOf, type FieldLayout, type StructLayout } from '../layout.js';
import {
  AddressError,
  notAnAddress,
  parseCidr as parsePrefix,
  writeIp16,
  writeMac,
  type Cidr,
} from '../../net/address.js';
import { FirewallError } from '../../config/firewall-errors.js';
import type {
  Direction,
  FirewallAction,
  FirewallReason,
  SessionEventKind,
  SessionKey,
  SessionOrigin,
  SessionOuter,
  TcpState,
  TunnelType,
} from '../../records/firewall-session.js';

/** The session key and enum names, defined with the records that carry them. */
export type * from '../../records/firewall-session.js';

export type { FieldLayout } from '../layout.js';
/** A firewall struct layout; the same type as the flow structs'. */
export type FirewallStruct<F extends string = string> = StructLayout<F>;

export const NETWORK_KEY = struct('fw_network_key', 20, { prefixlen: [0, 4], addr: [4, 16] });

export const RULE_KEY = struct('fw_rule_key', 28, {
  prefixlen: [0, 4],
  policy_id: [4, 4],
  protocol: [8, 1],
  _pad0: [9, 1],
  port: [10, 2],
  addr: [12, 16],
});

export const RULE = struct('fw_rule', 16, {
  action: [0, 4],
  rule_id: [4, 4],
  dst_prefixlen: [8, 4],
  _pad0: [12, 4],
});

export const POLICY = struct('fw_policy', 8, { default_action: [0, 4], redirect_ifindex: [4, 4] });

export const CONFIG = struct('fw_config', 24, {
  ingress_addr: [0, 16],
  ingress_ifindex: [16, 4],
  egress_ifindex: [20, 4],
});

export const SESSION_KEY = struct('fw_session_key', 44, {
  src_ip: [0, 16],
  dst_ip: [16, 16],
  vni: [32, 4],
  src_port: [36, 2],
  dst_port: [38, 2],
  protocol: [40, 1],
  _pad0: [41, 3],
});

export const SESSION = struct('fw_session', 136, {
  created_ns: [0, 8],
  last_seen_ns: [8, 8],
  last_event_ns: [16, 8],
  packets_fwd: [24, 8],
  bytes_fwd: [32, 8],
  packets_rev: [40, 8],
  bytes_rev: [48, 8],
  cookie: [56, 8],
  outer_src_ip: [64, 16],
  outer_dst_ip: [80, 16],
  outer_src_mac: [96, 6],
  outer_dst_mac: [102, 6],
  outer_src_port: [108, 2],
  outer_dst_port: [110, 2],
  ifindex: [112, 4],
  redirect_ifindex: [116, 4],
  policy_id: [120, 4],
  rule_id: [124, 4],
  tunnel_type: [128, 1],
  tcp_state: [129, 1],
  tcp_flags: [130, 1],
  action: [131, 1],
  direction: [132, 1],
  origin: [133, 1],
  reason: [134, 1],
  _pad0: [135, 1],
});

export const SESSION_EVENT = struct('fw_session_event', 184, {
  type: [0, 4],
  key: [4, 44],
  value: [48, 136],
});

export const AUDIT_EVENT = struct('fw_audit_event', 72, {
  time_ns: [0, 8],
  src_ip: [8, 16],
  dst_ip: [24, 16],
  vni: [40, 4],
  ifindex: [44, 4],
  policy_id: [48, 4],
  rule_id: [52, 4],
  packet_len: [56, 4],
  src_port: [60, 2],
  dst_port: [62, 2],
  protocol: [64, 1],
  action: [65, 1],
  reason: [66, 1],
  direction: [67, 1],
  tunnel_type: [68, 1],
  enforced: [69, 1],
  _pad0: [70, 2],
});

/** Every struct shared with the kernel, for layout checks against the object's BTF. */
export const FIREWALL_LAYOUTS: readonly FirewallStruct[] = [
  NETWORK_KEY,
  RULE_KEY,
  RULE,
  POLICY,
  CONFIG,
  SESSION_KEY,
  SESSION,
  SESSION_EVENT,
  AUDIT_EVENT,
];

/** Map names in bpf/firewall.o. */
export const FW_MAPS = {
  networks: 'fw_networks',
  rules: 'fw_rules',
  policies: 'fw_policies',
  settings: 'fw_settings',
  config: 'fw_config',
  counters: 'fw_counters',
  sessions: 'fw_sessions',
  audit: 'fw_audit',
  sessionEvents: 'fw_sess_events',
} as const;

/** Bits of a rule key before the destination address: policy id, protocol, pad and port. */
export const RULE_KEY_FIXED_BITS = 64;

export const ACTIONS: readonly (FirewallAction | 'none')[] = ['none', 'allow', 'block', 'redirect'];

export const REASONS: readonly FirewallReason[] = [
  'session',
  'rule',
  'policy_default',
  'no_network',
  'no_policy',
];

export const TUNNELS: readonly TunnelType[] = ['none', 'vxlan', 'geneve'];

export const DIRECTIONS: readonly Direction[] = ['ingress', 'egress'];

export const TCP_STATES: readonly TcpState[] = [
  'none',
  'syn_sent',
  'syn_recv',
  'established',
  'fin_wait',
  'closed',
];

export const ORIGINS: readonly SessionOrigin[] = ['kernel', 'restored'];

/** enum fw_session_event_type: index = kernel value. */
export const SESSION_EVENT_KINDS: readonly (SessionEventKind | undefined)[] = [
  undefined,
  'created',
  'updated',
  'deleted',
];

/** Indexes of the per-CPU fw_counters array (enum fw_counter without FW_CTR_). */
export const FW_CTR = {
  packets: 0,
  allowed: 1,
  blocked: 2,
  redirected: 3,
  audit_passed: 4,
  session_hits: 5,
  non_ip: 6,
  parse_failed: 7,
  own_hairpin: 8,
  session_create_failed: 9,
  audit_lost: 10,
  session_events_lost: 11,
} as const;
export const FW_CTR_MAX = 16;
export type FirewallCounterName = keyof typeof FW_CTR;
export type FirewallCounters = Record<FirewallCounterName, number>;

/** TC verdicts the programs return (BPF_PROG_TEST_RUN reports them as retval). */
export const TC_ACT_UNSPEC = -1;
export const TC_ACT_OK = 0;
export const TC_ACT_SHOT = 2;
export const TC_ACT_REDIRECT = 7;

const LE = endianness() === 'LE';

function isZero(bytes: Uint8Array, offset: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (bytes[offset + i] !== 0) return false;
  return true;
}

/** An address stored in 16 bytes (IPv4 as IPv4-mapped) in its natural text form. */
export const formatAddress = formatIp16;

/** Like formatAddress, but '' for all zero bytes (no outer header). */
function formatOptionalAddress(bytes: Uint8Array, offset: number): string {
  return isZero(bytes, offset, 16) ? '' : formatAddress(bytes, offset);
}

/** Writes the 16-byte form of `text` (IPv4 as IPv4-mapped) at offset; returns the IP version. */
export function writeAddress(text: string, out: Uint8Array, offset: number): 4 | 6 {
  const version = writeIp16(text, out, offset);
  if (version === 0) throw new FirewallError('EADDRESS', notAnAddress(text));
  return version;
}

/** 16 bytes of an address. */
export function addressBytes(text: string): Uint8Array {
  const out = new Uint8Array(16);
  writeAddress(text, out, 0);
  return out;
}

/** The canonical text of an address (IPv6 compressed, IPv4-mapped IPv6 as IPv4). */
export function canonicalAddress(text: string): string {
  return formatAddress(addressBytes(text), 0);
}

/** parseCidr of net/address.ts, failing with a FirewallError as the firewall's callers expect. */
export function parseCidr(text: string): Cidr {
  try {
    return parsePrefix(text);
  } catch (err) {
    if (err instanceof AddressError) throw new FirewallError('EADDRESS', err.message, err);
    throw err;
  }
}

function parseMac(text: string, out: Uint8Array, offset: number): void {
  if (!writeMac(text, out, offset)) {
    throw new FirewallError('EARG', `'${text}' is not a MAC address like 02:00:00:00:00:01`);
  }
}

function enumName<T>(names: readonly (T | undefined)[], value: number, what: string): T {
  const name = names[value];
  if (name === undefined) {
    throw new FirewallError(
      'ELAYOUT',
      `decode ${what}: unknown value ${value}; rebuild bpf/firewall.o with 'bash bpf/build.sh' and update rxflow`,
    );
  }
  return name;
}

/** A session of fw_sessions, key and value. Times are the kernel's CLOCK_MONOTONIC in ns. */
export interface FirewallSession extends SessionKey, SessionOuter {
  createdNs: bigint;
  lastSeenNs: bigint;
  /** When the kernel last sent an event for it. */
  lastEventNs: bigint;
  packetsForward: number;
  bytesForward: number;
  packetsReverse: number;
  bytesReverse: number;
  tunnel: TunnelType;
  /** Forward packets of a redirect session go to this interface; 0 otherwise. */
  redirectIfindex: number;
  policyId: number;
  /** 0 when a default action decided. */
  ruleId: number;
  tcpState: TcpState;
  /** OR of the TCP flags of every packet, both ways. */
  tcpFlags: number;
  /** block: an audit-mode session, of a connection the policy blocks, passed while enforcement is off. */
  action: 'allow' | 'redirect' | 'block';
  direction: Direction;
  origin: SessionOrigin;
  reason: FirewallReason;
}

export function encodeSessionKey(
  key: SessionKey,
  out = new Uint8Array(SESSION_KEY.size),
  offset = 0,
): Uint8Array {
  const v = viewOf(out);
  out.fill(0, offset, offset + SESSION_KEY.size);
  const a = writeAddress(key.srcAddr, out, offset + SESSION_KEY.fields.src_ip.offset);
  const b = writeAddress(key.dstAddr, out, offset + SESSION_KEY.fields.dst_ip.offset);
  if (a !== b) {
    throw new FirewallError(
      'EARG',
      `session ${key.srcAddr} -> ${key.dstAddr}: both addresses must be IPv4 or both IPv6`,
    );
  }
  v.setUint32(offset + SESSION_KEY.fields.vni.offset, key.vni, LE);
  v.setUint16(offset + SESSION_KEY.fields.src_port.offset, key.srcPort, LE);
  v.setUint16(offset + SESSION_KEY.fields.dst_port.offset, key.dstPort, LE);
  out[offset + SESSION_KEY.fields.protocol.offset] = key.protocol;
  return out;
}

export function decodeSessionKey(bytes: Uint8Array, offset = 0): SessionKey {
  const v = viewOf(bytes);
  return {
    protocol: bytes[offset + SESSION_KEY.fields.protocol.offset]!,
    srcAddr: formatAddress(bytes, offset + SESSION_KEY.fields.src_ip.offset),
    srcPort: v.getUint16(offset + SESSION_KEY.fields.src_port.offset, LE),
    dstAddr: formatAddress(bytes, offset + SESSION_KEY.fields.dst_ip.offset),
    dstPort: v.getUint16(offset + SESSION_KEY.fields.dst_port.offset, LE),
    vni: v.getUint32(offset + SESSION_KEY.fields.vni.offset, LE),
  };
}

const S = SESSION.fields;

function sessionAction(value: number): FirewallSession['action'] {
  return value === 3 ? 'redirect' : value === 2 ? 'block' : 'allow';
}

/** The session (key fields taken from `key`) from the fw_session value at offset. */
export function decodeSession(key: SessionKey, bytes: Uint8Array, offset = 0): FirewallSession {
  const v = viewOf(bytes);
  const o = offset;
  return {
    ...key,
    createdNs: v.getBigUint64(o + S.created_ns.offset, LE),
    lastSeenNs: v.getBigUint64(o + S.last_seen_ns.offset, LE),
    lastEventNs: v.getBigUint64(o + S.last_event_ns.offset, LE),
    packetsForward: u64(v, o + S.packets_fwd.offset),
    bytesForward: u64(v, o + S.bytes_fwd.offset),
    packetsReverse: u64(v, o + S.packets_rev.offset),
    bytesReverse: u64(v, o + S.bytes_rev.offset),
    tunnel: enumName(TUNNELS, bytes[o + S.tunnel_type.offset]!, 'session tunnel type'),
    cookie: hex(bytes, o + S.cookie.offset, 8),
    outerSrcAddr: formatOptionalAddress(bytes, o + S.outer_src_ip.offset),
    outerDstAddr: formatOptionalAddress(bytes, o + S.outer_dst_ip.offset),
    outerSrcMac: formatMac(bytes, o + S.outer_src_mac.offset),
    outerDstMac: formatMac(bytes, o + S.outer_dst_mac.offset),
    outerSrcPort: v.getUint16(o + S.outer_src_port.offset, LE),
    outerDstPort: v.getUint16(o + S.outer_dst_port.offset, LE),
    ingressIfindex: v.getUint32(o + S.ifindex.offset, LE),
    redirectIfindex: v.getUint32(o + S.redirect_ifindex.offset, LE),
    policyId: v.getUint32(o + S.policy_id.offset, LE),
    ruleId: v.getUint32(o + S.rule_id.offset, LE),
    tcpState: enumName(TCP_STATES, bytes[o + S.tcp_state.offset]!, 'session tcp state'),
    tcpFlags: bytes[o + S.tcp_flags.offset]!,
    action: sessionAction(bytes[o + S.action.offset]!),
    direction: enumName(DIRECTIONS, bytes[o + S.direction.offset]!, 'session direction'),
    origin: enumName(ORIGINS, bytes[o + S.origin.offset]!, 'session origin'),
    reason: enumName(REASONS, bytes[o + S.reason.offset]!, 'session reason'),
  };
}

/**
 * The fw_session value of a session. Fields a restored session may lack default to what the
 * kernel would write: no counters, no tunnel, state by protocol.
 */
export function encodeSession(
  s: SessionKey & Partial<Omit<FirewallSession, keyof SessionKey>> & { lastSeenNs: bigint },
  out = new Uint8Array(SESSION.size),
  offset = 0,
): Uint8Array {
  const v = viewOf(out);
  const o = offset;
  out.fill(0, o, o + SESSION.size);
  const setU64 = (field: FieldLayout, n: bigint | number | undefined): void =>
    v.setBigUint64(o + field.offset, BigInt(n ?? 0), LE);
  setU64(S.created_ns, s.createdNs ?? s.lastSeenNs);
  setU64(S.last_seen_ns, s.lastSeenNs);
  setU64(S.last_event_ns, s.lastEventNs ?? 0n);
  setU64(S.packets_fwd, s.packetsForward);
  setU64(S.bytes_fwd, s.bytesForward);
  setU64(S.packets_rev, s.packetsReverse);
  setU64(S.bytes_rev, s.bytesReverse);
  const cookie = s.cookie ?? '0000000000000000';
  if (!/^[0-9a-fA-F]{16}$/.test(cookie)) {
    throw new FirewallError('EARG', `session cookie '${cookie}' is not 16 hex digits`);
  }
  for (let i = 0; i < 8; i++) out[o + S.cookie.offset + i] = parseInt(cookie.slice(2 * i, 2 * i + 2), 16);
  if (s.outerSrcAddr) writeAddress(s.outerSrcAddr, out, o + S.outer_src_ip.offset);
  if (s.outerDstAddr) writeAddress(s.outerDstAddr, out, o + S.outer_dst_ip.offset);
  if (s.outerSrcMac) parseMac(s.outerSrcMac, out, o + S.outer_src_mac.offset);
  if (s.outerDstMac) parseMac(s.outerDstMac, out, o + S.outer_dst_mac.offset);
  v.setUint16(o + S.outer_src_port.offset, s.outerSrcPort ?? 0, LE);
  v.setUint16(o + S.outer_dst_port.offset, s.outerDstPort ?? 0, LE);
  v.setUint32(o + S.ifindex.offset, s.ingressIfindex ?? 0, LE);
  v.setUint32(o + S.redirect_ifindex.offset, s.redirectIfindex ?? 0, LE);
  v.setUint32(o + S.policy_id.offset, s.policyId ?? 0, LE);
  v.setUint32(o + S.rule_id.offset, s.ruleId ?? 0, LE);
  out[o + S.tunnel_type.offset] = TUNNELS.indexOf(s.tunnel ?? (s.vni !== 0 ? 'geneve' : 'none'));
  const state = s.tcpState ?? (s.protocol === 6 ? 'established' : 'none');
  out[o + S.tcp_state.offset] = TCP_STATES.indexOf(state);
  out[o + S.tcp_flags.offset] = s.tcpFlags ?? 0;
  out[o + S.action.offset] = s.action === 'redirect' ? 3 : s.action === 'block' ? 2 : 1;
  out[o + S.direction.offset] = s.direction === 'egress' ? 1 : 0;
  out[o + S.origin.offset] = ORIGINS.indexOf(s.origin ?? 'restored');
  out[o + S.reason.offset] = REASONS.indexOf(s.reason ?? 'session');
  return out;
}

/** A session lifecycle event: what happened and the session as it was then. */
export interface FirewallSessionEvent {
  kind: SessionEventKind;
  session: FirewallSession;
  /**
   * Why a deleted session ended: `closed` (the kernel saw FIN both ways or a RST), `idle` (it
   * timed out and was expired), `evicted` (it vanished from the map without an event: the LRU
   * map made room for another, or something else deleted it). Absent on other kinds.
   */
  end?: SessionEnd;
}

export type SessionEnd = 'closed' | 'idle' | 'evicted';

/** Decodes one fw_sess_events record (as RingBufferReader.drain hands it over). */
export function decodeSessionEvent(view: DataView, offset: number, length: number): FirewallSessionEvent {
  if (length < SESSION_EVENT.size) {
    throw new FirewallError(
      'ELAYOUT',
      `decode fw_sess_events: record of ${length} bytes is shorter than struct fw_session_event (${SESSION_EVENT.size}); rebuild bpf/firewall.o with 'bash bpf/build.sh'`,
    );
  }
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  const kind = enumName(SESSION_EVENT_KINDS, view.getUint32(offset, LE), 'session event type');
  const key = decodeSessionKey(bytes, offset + SESSION_EVENT.fields.key.offset);
  return { kind, session: decodeSession(key, bytes, offset + SESSION_EVENT.fields.value.offset) };
}

/** A record of fw_audit: one verdict on one packet. */
export interface AuditEvent extends SessionKey {
  timeNs: bigint;
  ifindex: number;
  policyId: number;
  ruleId: number;
  packetLength: number;
  action: FirewallAction;
  reason: FirewallReason;
  direction: Direction;
  tunnel: TunnelType;
  /** false in audit mode: a block verdict was reported, not applied. */
  enforced: boolean;
}

const A = AUDIT_EVENT.fields;

export function decodeAuditEvent(view: DataView, offset: number, length: number): AuditEvent {
  if (length < AUDIT_EVENT.size) {
    throw new FirewallError(
      'ELAYOUT',
      `decode fw_audit: record of ${length} bytes is shorter than struct fw_audit_event (${AUDIT_EVENT.size}); rebuild bpf/firewall.o with 'bash bpf/build.sh'`,
    );
  }
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  const o = offset;
  const action = enumName(ACTIONS, bytes[o + A.action.offset]!, 'audit action');
  return {
    timeNs: view.getBigUint64(o + A.time_ns.offset, LE),
    protocol: bytes[o + A.protocol.offset]!,
    srcAddr: formatAddress(bytes, o + A.src_ip.offset),
    srcPort: view.getUint16(o + A.src_port.offset, LE),
    dstAddr: formatAddress(bytes, o + A.dst_ip.offset),
    dstPort: view.getUint16(o + A.dst_port.offset, LE),
    vni: view.getUint32(o + A.vni.offset, LE),
    ifindex: view.getUint32(o + A.ifindex.offset, LE),
    policyId: view.getUint32(o + A.policy_id.offset, LE),
    ruleId: view.getUint32(o + A.rule_id.offset, LE),
    packetLength: view.getUint32(o + A.packet_len.offset, LE),
    action: action === 'none' ? 'allow' : action,
    reason: enumName(REASONS, bytes[o + A.reason.offset]!, 'audit reason'),
    direction: enumName(DIRECTIONS, bytes[o + A.direction.offset]!, 'audit direction'),
    tunnel: enumName(TUNNELS, bytes[o + A.tunnel_type.offset]!, 'audit tunnel type'),
    enforced: bytes[o + A.enforced.offset] !== 0,
  };
}

/** fw_networks key of a prefix. */
export function encodeNetworkKey(cidr: Cidr): Uint8Array {
  const out = new Uint8Array(NETWORK_KEY.size);
  viewOf(out).setUint32(0, cidr.bits, LE);
  out.set(cidr.bytes, NETWORK_KEY.fields.addr.offset);
  return out;
}

export function encodeU32(n: number): Uint8Array {
  const out = new Uint8Array(4);
  viewOf(out).setUint32(0, n, LE);
  return out;
}

export function decodeU32(bytes: Uint8Array, offset = 0): number {
  return viewOf(bytes).getUint32(offset, LE);
}

/** fw_rules key: policy, protocol (0 any), port (0 any) and destination prefix. */
export function encodeRuleKey(policyId: number, protocol: number, port: number, dst: Cidr): Uint8Array {
  const out = new Uint8Array(RULE_KEY.size);
  const v = viewOf(out);
  v.setUint32(RULE_KEY.fields.prefixlen.offset, RULE_KEY_FIXED_BITS + dst.bits, LE);
  v.setUint32(RULE_KEY.fields.policy_id.offset, policyId, LE);
  out[RULE_KEY.fields.protocol.offset] = protocol;
  v.setUint16(RULE_KEY.fields.port.offset, port, LE);
  out.set(dst.bytes, RULE_KEY.fields.addr.offset);
  return out;
}

export function encodeRule(action: FirewallAction, ruleId: number, dstBits: number): Uint8Array {
  const out = new Uint8Array(RULE.size);
  const v = viewOf(out);
  v.setUint32(RULE.fields.action.offset, ACTIONS.indexOf(action), LE);
  v.setUint32(RULE.fields.rule_id.offset, ruleId, LE);
  v.setUint32(RULE.fields.dst_prefixlen.offset, dstBits, LE);
  return out;
}

export function encodePolicy(defaultAction: FirewallAction, redirectIfindex: number): Uint8Array {
  const out = new Uint8Array(POLICY.size);
  const v = viewOf(out);
  v.setUint32(POLICY.fields.default_action.offset, ACTIONS.indexOf(defaultAction), LE);
  v.setUint32(POLICY.fields.redirect_ifindex.offset, redirectIfindex, LE);
  return out;
}

export interface FirewallConfig {
  /** Tunnel traffic is decapsulated only when sent to (from, on egress) this address; '' for any. */
  ingressAddress: string;
  ingressIfindex: number;
  egressIfindex: number;
}

export function encodeConfig(c: FirewallConfig): Uint8Array {
  const out = new Uint8Array(CONFIG.size);
  const v = viewOf(out);
  if (c.ingressAddress !== '') writeAddress(c.ingressAddress, out, CONFIG.fields.ingress_addr.offset);
  v.setUint32(CONFIG.fields.ingress_ifindex.offset, c.ingressIfindex, LE);
  v.setUint32(CONFIG.fields.egress_ifindex.offset, c.egressIfindex, LE);
  return out;
}

export function decodeConfig(bytes: Uint8Array): FirewallConfig {
  const v = viewOf(bytes);
  return {
    ingressAddress: formatOptionalAddress(bytes, CONFIG.fields.ingress_addr.offset),
    ingressIfindex: v.getUint32(CONFIG.fields.ingress_ifindex.offset, LE),
    egressIfindex: v.getUint32(CONFIG.fields.egress_ifindex.offset, LE),
  };
}

/** Sum over CPUs of a per-CPU u64 slot buffer. */
export { sumPerCpu } from '../layout.js';
