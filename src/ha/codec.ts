import { isIPv4, isIPv6 } from 'node:net';
import { SESSION_KEY, decodeSessionKey } from '../datapath/firewall/types.js';
import type { ClockTranslator } from './clock.js';
import { HaError } from './errors.js';
import type {
  ReplicatedSession,
  SessionAction,
  SessionDirection,
  SessionKey,
  SessionReason,
  SessionTunnel,
  SessionVerdict,
  TcpState,
  TunnelType,
} from './session.js';

/**
 * The KV layout of a replicated session.
 *
 * Key: `s.<proto>.<src>_<sport>.<dst>_<dport>.<vni>`, e.g. `s.tcp.10-0-0-1_40000.10-0-0-2_443.0`
 * or `s.udp.fd00--1_5353.fd00--2_53.42`. KV keys allow only `[-/_=.a-zA-Z0-9]` and dots separate
 * subject tokens, so address dots and colons become `-`; every key has exactly five tokens, which
 * keeps wildcard watches such as `s.tcp.>` or `s.*.*.*.42` meaningful.
 *
 * Value: JSON `{v, node, session}`: the format version, the id of the node that wrote it, and the
 * session with its times as wall-clock milliseconds (monotonic clocks differ between nodes).
 */
export const FORMAT_VERSION = 1;

const PROTOCOL_NAMES: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmp6', 132: 'sctp' };
const PROTOCOL_NUMBERS: Record<string, number> = Object.fromEntries(
  Object.entries(PROTOCOL_NAMES).map(([n, name]) => [name, Number(n)]),
);

const TUNNEL_TYPES: readonly TunnelType[] = ['none', 'geneve', 'vxlan'];
const ACTIONS: readonly SessionAction[] = ['allow', 'redirect', 'block'];
const DIRECTIONS: readonly SessionDirection[] = ['ingress', 'egress'];
const REASONS: readonly SessionReason[] = ['session', 'rule', 'policy_default', 'no_network', 'no_policy'];
const TCP_STATES: readonly TcpState[] = ['none', 'syn_sent', 'syn_recv', 'established', 'fin_wait', 'closed'];

function keyAddress(addr: string): string {
  return addr.replace(/[.:]/g, '-');
}

function parseKeyAddress(token: string): string | undefined {
  // IPv4 has exactly four decimal groups; a valid IPv6 text never has four groups without '::'.
  const v4 = token.replace(/-/g, '.');
  if (isIPv4(v4)) return v4;
  const v6 = token.replace(/-/g, ':');
  return isIPv6(v6) ? v6 : undefined;
}

/** The KV key of a session; stable for a given key and readable by a human. */
export function sessionKvKey(key: SessionKey): string {
  const proto = PROTOCOL_NAMES[key.protocol] ?? String(key.protocol);
  return `s.${proto}.${keyAddress(key.srcAddr)}_${key.srcPort}.${keyAddress(key.dstAddr)}_${key.dstPort}.${key.vni}`;
}

const K = SESSION_KEY.fields;

function mappedV4(bytes: Uint8Array, at: number): boolean {
  for (let i = 0; i < 10; i++) if (bytes[at + i] !== 0) return false;
  return bytes[at + 10] === 0xff && bytes[at + 11] === 0xff;
}

/**
 * sessionKvKey of a key as the kernel map holds it (SESSION_KEY.size bytes at `offset`): an IPv4
 * key is written straight from its bytes, without decoding it first; an IPv6 one is decoded.
 */
export function sessionKvKeyOfBytes(bytes: Uint8Array, offset: number): string {
  const src = offset + K.src_ip.offset;
  const dst = offset + K.dst_ip.offset;
  if (!mappedV4(bytes, src) || !mappedV4(bytes, dst)) return sessionKvKey(decodeSessionKey(bytes, offset));
  const protocol = bytes[offset + K.protocol.offset]!;
  const proto = PROTOCOL_NAMES[protocol] ?? String(protocol);
  const sp = offset + K.src_port.offset;
  const dp = offset + K.dst_port.offset;
  const v = offset + K.vni.offset;
  const vni = (bytes[v]! | (bytes[v + 1]! << 8) | (bytes[v + 2]! << 16) | (bytes[v + 3]! << 24)) >>> 0;
  return `s.${proto}.${bytes[src + 12]}-${bytes[src + 13]}-${bytes[src + 14]}-${bytes[src + 15]}_${bytes[sp]! | (bytes[sp + 1]! << 8)}.${bytes[dst + 12]}-${bytes[dst + 13]}-${bytes[dst + 14]}-${bytes[dst + 15]}_${bytes[dp]! | (bytes[dp + 1]! << 8)}.${vni}`;
}

const KEY_RE = /^s\.([a-z0-9]+)\.([-0-9a-f]+)_(\d{1,5})\.([-0-9a-f]+)_(\d{1,5})\.(\d{1,8})$/;

/** The session key of a KV key written by {@link sessionKvKey}. */
export function parseSessionKvKey(kvKey: string): SessionKey {
  const m = KEY_RE.exec(kvKey);
  const bad = (why: string) =>
    new HaError('EKEY', `kv key ${kvKey}: ${why}; expected s.<proto>.<src>_<sport>.<dst>_<dport>.<vni>`);
  if (m === null) throw bad('not a session key');
  const [, proto, src, sport, dst, dport, vni] = m as unknown as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const protocol = PROTOCOL_NUMBERS[proto] ?? (/^\d+$/.test(proto) ? Number(proto) : NaN);
  if (!(protocol >= 0 && protocol <= 255)) throw bad(`unknown protocol '${proto}'`);
  const srcAddr = parseKeyAddress(src);
  const dstAddr = parseKeyAddress(dst);
  if (srcAddr === undefined || dstAddr === undefined) throw bad('bad address');
  const key: SessionKey = {
    protocol,
    srcAddr,
    srcPort: Number(sport),
    dstAddr,
    dstPort: Number(dport),
    vni: Number(vni),
  };
  if (key.srcPort > 65535 || key.dstPort > 65535 || key.vni > 0xffffff) throw bad('port or vni out of range');
  return key;
}

/** The session as stored in a KV value: times are wall-clock milliseconds. */
export interface WireSession extends SessionKey {
  tunnel: SessionTunnel;
  verdict: SessionVerdict;
  tcpState: TcpState;
  tcpFlags: number;
  createdMs: number;
  lastSeenMs: number;
  ingressIfname?: string;
  redirectIfname?: string;
}

export interface SessionRecord {
  v: number;
  node: string;
  session: WireSession;
}

const decoder = new TextDecoder();

type Ifnames = Pick<WireSession, 'ingressIfname' | 'redirectIfname'>;

/** The interface names a session and its wire form carry when the node that saw it knew them. */
function copyIfnames(from: Ifnames, to: Ifnames): void {
  if (from.ingressIfname !== undefined) to.ingressIfname = from.ingressIfname;
  if (from.redirectIfname !== undefined) to.redirectIfname = from.redirectIfname;
}

/** The wire form of a session, converting its monotonic times with `clock`. */
export function toWire(session: ReplicatedSession, clock: ClockTranslator): WireSession {
  const { key, tunnel } = session;
  const wire: WireSession = {
    protocol: key.protocol,
    srcAddr: key.srcAddr,
    srcPort: key.srcPort,
    dstAddr: key.dstAddr,
    dstPort: key.dstPort,
    vni: key.vni,
    tunnel: {
      type: tunnel.type,
      vni: tunnel.vni,
      cookie: tunnel.cookie,
      outerSrcAddr: tunnel.outerSrcAddr,
      outerDstAddr: tunnel.outerDstAddr,
      outerSrcMac: tunnel.outerSrcMac,
      outerDstMac: tunnel.outerDstMac,
      outerSrcPort: tunnel.outerSrcPort,
      outerDstPort: tunnel.outerDstPort,
      ingressIfindex: tunnel.ingressIfindex,
    },
    verdict: { ...session.verdict },
    tcpState: session.tcpState,
    tcpFlags: session.tcpFlags,
    createdMs: clock.toWallMs(session.createdNs),
    lastSeenMs: clock.toWallMs(session.lastSeenNs),
  };
  copyIfnames(session, wire);
  return wire;
}

/** The session a wire form stands for on this node, its times converted back with `clock`. */
export function fromWire(wire: WireSession, clock: ClockTranslator): ReplicatedSession {
  const session: ReplicatedSession = {
    key: {
      protocol: wire.protocol,
      srcAddr: wire.srcAddr,
      srcPort: wire.srcPort,
      dstAddr: wire.dstAddr,
      dstPort: wire.dstPort,
      vni: wire.vni,
    },
    createdNs: clock.toMonotonicNs(wire.createdMs),
    lastSeenNs: clock.toMonotonicNs(wire.lastSeenMs),
    tunnel: { ...wire.tunnel },
    verdict: { ...wire.verdict },
    tcpState: wire.tcpState,
    tcpFlags: wire.tcpFlags,
  };
  copyIfnames(wire, session);
  return session;
}

/**
 * What must match for two copies of a session to be the same apart from their age: the tunnel
 * metadata, the verdict and the TCP state. Compared by the full sync to find outdated KV values.
 */
export function wireFingerprint(wire: WireSession): string {
  const t = wire.tunnel;
  const v = wire.verdict;
  return [
    t.type,
    t.vni,
    t.cookie,
    t.outerSrcAddr,
    t.outerDstAddr,
    t.outerSrcMac,
    t.outerDstMac,
    t.outerSrcPort,
    t.outerDstPort,
    t.ingressIfindex,
    v.action,
    v.direction,
    v.policyId,
    v.ruleId,
    v.redirectIfindex,
    v.reason,
    wire.tcpState,
    wire.tcpFlags,
  ].join('|');
}

/** The KV value of a session written by `node`. */
export function encodeSessionValue(session: WireSession, node: string): Uint8Array {
  const record: SessionRecord = { v: FORMAT_VERSION, node, session };
  // Buffer.from encodes UTF-8 several times faster than TextEncoder.encode for short strings.
  return Buffer.from(JSON.stringify(record));
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

const isUint = (x: unknown, max: number): x is number =>
  typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= max;

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const COOKIE_RE = /^[0-9a-f]{16}$/;

function checkTunnel(t: unknown): string | undefined {
  if (!isObject(t)) return 'session.tunnel is not an object';
  if (!TUNNEL_TYPES.includes(t.type as TunnelType))
    return `session.tunnel.type must be one of ${TUNNEL_TYPES.join(', ')}`;
  if (!isUint(t.vni, 0xffffff)) return 'session.tunnel.vni must be a 24-bit number';
  if (typeof t.cookie !== 'string' || !COOKIE_RE.test(t.cookie))
    return 'session.tunnel.cookie must be 16 hex digits';
  for (const f of ['outerSrcAddr', 'outerDstAddr'] as const) {
    if (typeof t[f] !== 'string') return `session.tunnel.${f} must be an address`;
  }
  for (const f of ['outerSrcMac', 'outerDstMac'] as const) {
    if (typeof t[f] !== 'string' || !MAC_RE.test(t[f])) return `session.tunnel.${f} must be a MAC address`;
  }
  for (const f of ['outerSrcPort', 'outerDstPort'] as const) {
    if (!isUint(t[f], 65535)) return `session.tunnel.${f} must be a port`;
  }
  if (!isUint(t.ingressIfindex, 0xffffffff))
    return 'session.tunnel.ingressIfindex must be an interface index';
  return undefined;
}

function checkVerdict(v: unknown): string | undefined {
  if (!isObject(v)) return 'session.verdict is not an object';
  if (!ACTIONS.includes(v.action as SessionAction))
    return `session.verdict.action must be one of ${ACTIONS.join(', ')}`;
  if (!DIRECTIONS.includes(v.direction as SessionDirection)) {
    return `session.verdict.direction must be one of ${DIRECTIONS.join(', ')}`;
  }
  if (!REASONS.includes(v.reason as SessionReason))
    return `session.verdict.reason must be one of ${REASONS.join(', ')}`;
  for (const f of ['policyId', 'ruleId', 'redirectIfindex'] as const) {
    if (!isUint(v[f], 0xffffffff)) return `session.verdict.${f} must be a 32-bit number`;
  }
  return undefined;
}

function checkSession(s: unknown): string | undefined {
  if (!isObject(s)) return 'session is not an object';
  if (!isUint(s.protocol, 255)) return 'session.protocol must be 0..255';
  if (typeof s.srcAddr !== 'string' || typeof s.dstAddr !== 'string')
    return 'session addresses must be strings';
  if (!isUint(s.srcPort, 65535) || !isUint(s.dstPort, 65535)) return 'session ports must be 0..65535';
  if (!isUint(s.vni, 0xffffff)) return 'session.vni must be a 24-bit number';
  if (!isUint(s.lastSeenMs, Number.MAX_SAFE_INTEGER))
    return 'session.lastSeenMs must be wall-clock milliseconds';
  if (!isUint(s.createdMs, Number.MAX_SAFE_INTEGER))
    return 'session.createdMs must be wall-clock milliseconds';
  if (!TCP_STATES.includes(s.tcpState as TcpState))
    return `session.tcpState must be one of ${TCP_STATES.join(', ')}`;
  if (!isUint(s.tcpFlags, 255)) return 'session.tcpFlags must be 0..255';
  for (const f of ['ingressIfname', 'redirectIfname'] as const) {
    if (s[f] !== undefined && typeof s[f] !== 'string') return `session.${f} must be an interface name`;
  }
  return checkTunnel(s.tunnel) ?? checkVerdict(s.verdict);
}

/** A KV value that is not a session this version understands; `newer` when a later format wrote it. */
export interface UndecodableValue {
  error: string;
  newer: boolean;
}

/** Decodes and checks a KV value; never throws. */
export function decodeSessionValue(value: Uint8Array): SessionRecord | UndecodableValue {
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoder.decode(value));
  } catch {
    return { error: 'not JSON', newer: false };
  }
  if (!isObject(parsed)) return { error: 'not a JSON object', newer: false };
  if (typeof parsed.v !== 'number') return { error: 'no format version v', newer: false };
  if (parsed.v > FORMAT_VERSION) {
    return { error: `format version ${parsed.v} is newer than ${FORMAT_VERSION}`, newer: true };
  }
  if (parsed.v !== FORMAT_VERSION) return { error: `unknown format version ${parsed.v}`, newer: false };
  if (typeof parsed.node !== 'string' || parsed.node === '') return { error: 'no node id', newer: false };
  const problem = checkSession(parsed.session);
  if (problem !== undefined) return { error: problem, newer: false };
  return parsed as unknown as SessionRecord;
}

export function isSessionRecord(x: SessionRecord | UndecodableValue): x is SessionRecord {
  return !('error' in x);
}

/** Decodes a value or throws EFORMAT naming the key. */
export function decodeSessionValueOrThrow(kvKey: string, value: Uint8Array): SessionRecord {
  const decoded = decodeSessionValue(value);
  if (!isSessionRecord(decoded)) {
    throw new HaError(
      'EFORMAT',
      `kv key ${kvKey}: ${decoded.error}; the value was not written by this rxflow version`,
    );
  }
  return decoded;
}

/** True for node ids usable in values and logs: printable, no spaces. */
export function validNodeId(id: string): boolean {
  return /^[-_.:a-zA-Z0-9]{1,128}$/.test(id);
}
