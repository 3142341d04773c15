import { execFileSync } from 'node:child_process';
import {
  SessionKeyMemo,
  type FirewallCollection,
  type FirewallSession,
  type SessionKey as FirewallSessionKey,
} from '../datapath/firewall/index.js';
import type { FlowRecord } from '../records/flow.js';
import type { FirewallSessionRecord } from '../records/firewall-session.js';
import type { ClockTranslator } from './clock.js';
import { sessionKvKeyOfBytes } from './codec.js';
import type {
  RemoteApplyResult,
  RemoteDecision,
  RemoteSessionStore,
  ReplicatedSession,
  SessionEvent,
  SessionKey,
} from './session.js';

/** Interface names by index and back, in one network namespace. */
export interface InterfaceTable {
  nameOf(ifindex: number): string | undefined;
  indexOf(name: string): number | undefined;
}

/**
 * The interfaces of a network namespace from `ip -o link show`: sysfs shows the namespace of the
 * mount, not the one of the calling thread, so /sys/class/net cannot answer for another netns.
 * The table is read again when asked for an interface it does not know (interfaces come and go).
 */
export function ipLinkTable(netns?: string): InterfaceTable {
  let byIndex = new Map<number, string>();
  let byName = new Map<string, number>();
  let readAt = 0;
  const read = (): void => {
    // At most once a second, so a stream of sessions naming a missing interface costs nothing.
    if (Date.now() - readAt < 1000) return;
    readAt = Date.now();
    const args = netns === undefined ? ['-o', 'link', 'show'] : ['-n', netns, '-o', 'link', 'show'];
    let out: string;
    try {
      out = execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      return;
    }
    byIndex = new Map();
    byName = new Map();
    for (const line of out.split('\n')) {
      const m = /^(\d+): ([^:@\s]+)[@:]/.exec(line);
      if (m === null) continue;
      byIndex.set(Number(m[1]), m[2]!);
      byName.set(m[2]!, Number(m[1]));
    }
  };
  return {
    nameOf(ifindex) {
      if (ifindex === 0) return undefined;
      if (!byIndex.has(ifindex)) read();
      return byIndex.get(ifindex);
    },
    indexOf(name) {
      if (!byName.has(name)) read();
      return byName.get(name);
    },
  };
}

/** The replicated form of a firewall session: counters dropped, interface names added. */
export function fromFirewallSession(s: FirewallSession, interfaces?: InterfaceTable): ReplicatedSession {
  const r: ReplicatedSession = {
    key: {
      protocol: s.protocol,
      srcAddr: s.srcAddr,
      srcPort: s.srcPort,
      dstAddr: s.dstAddr,
      dstPort: s.dstPort,
      vni: s.vni,
    },
    tunnel: {
      type: s.tunnel,
      vni: s.vni,
      cookie: s.cookie,
      outerSrcAddr: s.outerSrcAddr,
      outerDstAddr: s.outerDstAddr,
      outerSrcMac: s.outerSrcMac,
      outerDstMac: s.outerDstMac,
      outerSrcPort: s.outerSrcPort,
      outerDstPort: s.outerDstPort,
      ingressIfindex: s.ingressIfindex,
    },
    verdict: {
      action: s.action,
      direction: s.direction,
      policyId: s.policyId,
      ruleId: s.ruleId,
      reason: s.reason,
      redirectIfindex: s.redirectIfindex,
    },
    tcpState: s.tcpState,
    tcpFlags: s.tcpFlags,
    createdNs: s.createdNs,
    lastSeenNs: s.lastSeenNs,
  };
  const ingress = interfaces?.nameOf(s.ingressIfindex);
  if (ingress !== undefined) r.ingressIfname = ingress;
  const redirect = interfaces?.nameOf(s.redirectIfindex);
  if (redirect !== undefined) r.redirectIfname = redirect;
  return r;
}

type RestorableSession = FirewallSessionKey &
  Partial<Omit<FirewallSession, keyof FirewallSessionKey>> & { lastSeenNs: bigint };

/**
 * The firewall session of a replicated one, on this node. Interface indexes are node-local: an
 * interface of the same name here is used; otherwise the ingress device of this firewall (hairpin)
 * and its egress device (redirect), which is where a peer in an HA pair sends the same traffic.
 */
export function toFirewallSession(
  r: ReplicatedSession,
  local: { ingressIfindex: number; egressIfindex: number },
  interfaces?: InterfaceTable,
): RestorableSession {
  const byName = (name: string | undefined): number | undefined =>
    name === undefined ? undefined : interfaces?.indexOf(name);
  const redirect =
    r.verdict.action === 'redirect'
      ? (byName(r.redirectIfname) ?? local.egressIfindex)
      : r.verdict.redirectIfindex;
  // Fields one by one: `{...r.key, more}` takes V8 (Node 20) some 50 us per object here, which
  // alone made a boot load of 100k sessions take 5 s.
  const k = r.key;
  return {
    protocol: k.protocol,
    srcAddr: k.srcAddr,
    srcPort: k.srcPort,
    dstAddr: k.dstAddr,
    dstPort: k.dstPort,
    vni: k.vni,
    createdNs: r.createdNs,
    lastSeenNs: r.lastSeenNs,
    tunnel: r.tunnel.type,
    cookie: r.tunnel.cookie,
    outerSrcAddr: r.tunnel.outerSrcAddr,
    outerDstAddr: r.tunnel.outerDstAddr,
    outerSrcMac: r.tunnel.outerSrcMac,
    outerDstMac: r.tunnel.outerDstMac,
    outerSrcPort: r.tunnel.outerSrcPort,
    outerDstPort: r.tunnel.outerDstPort,
    ingressIfindex: byName(r.ingressIfname) ?? local.ingressIfindex,
    redirectIfindex: redirect,
    policyId: r.verdict.policyId,
    ruleId: r.verdict.ruleId,
    tcpState: r.tcpState,
    tcpFlags: r.tcpFlags,
    action: r.verdict.action,
    direction: r.verdict.direction,
    reason: r.verdict.reason,
    origin: 'restored',
  };
}

/** Session events of the firewall in the replicator's form. */
export function fromFirewallEvents(
  events: readonly { kind: SessionEvent['kind']; session: FirewallSession }[],
  interfaces?: InterfaceTable,
): SessionEvent[] {
  return events.map((e) => ({ kind: e.kind, session: fromFirewallSession(e.session, interfaces) }));
}

/** The firewall's session map as the replicator's SessionStore. */
export class FirewallSessionStore implements RemoteSessionStore {
  private readonly kvKeyMemo = new SessionKeyMemo<string>();

  constructor(
    private readonly fw: FirewallCollection,
    readonly interfaces: InterfaceTable = ipLinkTable(),
  ) {}

  /**
   * The sessions to replicate: a closed TCP session (FIN both ways, or a RST) has ended, and the
   * kernel keeps it only for the connection's last packets, so it is left out like a deleted one
   * and a sync deletes its KV copy instead of writing it back.
   */
  list(): ReplicatedSession[] {
    const out: ReplicatedSession[] = [];
    for (const s of this.fw.sessions()) {
      if (s.tcpState !== 'closed') out.push(fromFirewallSession(s, this.interfaces));
    }
    return out;
  }

  /**
   * The KV keys of list()'s sessions from one batch read of the map: keys are matched as bytes
   * against the previous read's, so only sessions new since then are decoded (the live status of
   * 100k sessions in tens of ms, where list() decodes each).
   */
  kvKeys(): Set<string> {
    const { count, keys } = this.fw.sessionKeys({ open: true });
    return new Set(this.kvKeyMemo.map(keys, count, sessionKvKeyOfBytes));
  }

  restore(sessions: readonly ReplicatedSession[]): { written: number; skipped: number } {
    const config = this.fw.config();
    const local = { ingressIfindex: config.ingressIfindex, egressIfindex: config.egressIfindex };
    return this.fw.restoreSessions(
      sessions.map((s) => toFirewallSession(s, local, this.interfaces)),
      { replace: false },
    );
  }

  /**
   * One lookup per key and one write or delete per decided change: the kernel has no keyed batch
   * lookup, and the datapath no batch update, so this is the fewest system calls a batch can take;
   * what the batch saves is a store call, a config read and buffer set-up per change.
   */
  applyRemote(
    keys: readonly SessionKey[],
    decide: (index: number, local: ReplicatedSession | undefined) => RemoteDecision,
  ): RemoteApplyResult {
    const config = this.fw.config();
    const local = { ingressIfindex: config.ingressIfindex, egressIfindex: config.egressIfindex };
    const writes: RestorableSession[] = [];
    const writeIndex: number[] = [];
    const deletes: SessionKey[] = [];
    const deleteIndex: number[] = [];
    for (let i = 0; i < keys.length; i++) {
      const have = this.fw.session(keys[i]!);
      const d = decide(i, have === undefined ? undefined : fromFirewallSession(have, this.interfaces));
      if (d === undefined) continue;
      if (d === 'delete') {
        deletes.push(keys[i]!);
        deleteIndex.push(i);
        continue;
      }
      const s = toFirewallSession(d, local, this.interfaces);
      if (have !== undefined) {
        // Counters and the last event time stay this kernel's: they count this node's packets.
        s.packetsForward = have.packetsForward;
        s.bytesForward = have.bytesForward;
        s.packetsReverse = have.packetsReverse;
        s.bytesReverse = have.bytesReverse;
        s.lastEventNs = have.lastEventNs;
      }
      writes.push(s);
      writeIndex.push(i);
    }
    const failed: number[] = [];
    let error: unknown;
    try {
      this.fw.restoreSessions(writes, { replace: true });
    } catch (err) {
      // restoreSessions stops at the first failure (a full map); writing one by one finds which.
      // Writes replace, so doing the first ones again changes nothing.
      error = err;
      for (let j = 0; j < writes.length; j++) {
        try {
          this.fw.restoreSessions([writes[j]!], { replace: true });
        } catch {
          failed.push(writeIndex[j]!);
        }
      }
    }
    try {
      this.fw.deleteSessions(deletes);
    } catch (err) {
      error ??= err;
      for (let j = 0; j < deletes.length; j++) {
        try {
          this.fw.deleteSessions([deletes[j]!]);
        } catch {
          failed.push(deleteIndex[j]!);
        }
      }
    }
    return error === undefined ? { failed } : { failed, error };
  }
}

/**
 * The session event a `firewall_sessions` record stands for, or undefined when the record is not
 * a session event (another source fed the sink). Record times are wall-clock ms, converted with
 * `clock`; ifindexes are named with `interfaces` so a peer can map them to its own.
 */
export function sessionEventOfRecord(
  rec: FlowRecord,
  clock: ClockTranslator,
  interfaces?: InterfaceTable,
): SessionEvent | undefined {
  const r = rec as Partial<FirewallSessionRecord>;
  if (r.firewallSessionEvent === undefined || r.firewallAction === undefined || r.tcpState === undefined)
    return undefined;
  const srcAddr = rec.sourceIPv4Address ?? rec.sourceIPv6Address;
  const dstAddr = rec.destinationIPv4Address ?? rec.destinationIPv6Address;
  if (srcAddr === undefined || dstAddr === undefined) return undefined;
  const vni = rec.virtualNetworkIdentifier ?? 0;
  const session: ReplicatedSession = {
    key: {
      protocol: rec.protocolIdentifier,
      srcAddr,
      srcPort: rec.sourceTransportPort,
      dstAddr,
      dstPort: rec.destinationTransportPort,
      vni,
    },
    tunnel: {
      type: rec.encapsulationType ?? 'none',
      vni,
      cookie: rec.flowCookie ?? '0000000000000000',
      outerSrcAddr: rec.tunnelSourceIPAddress ?? '',
      outerDstAddr: rec.tunnelDestinationIPAddress ?? '',
      outerSrcMac: rec.sourceMacAddress,
      outerDstMac: rec.destinationMacAddress,
      outerSrcPort: rec.tunnelSourceTransportPort ?? 0,
      outerDstPort: rec.tunnelDestinationTransportPort ?? 0,
      ingressIfindex: rec.ingressInterface ?? 0,
    },
    verdict: {
      action: r.firewallAction === 'redirect' || r.firewallAction === 'block' ? r.firewallAction : 'allow',
      direction: rec.flowDirection === 1 ? 'egress' : 'ingress',
      policyId: r.firewallPolicyId ?? 0,
      ruleId: r.firewallRuleId ?? 0,
      reason: r.firewallReason ?? 'session',
      redirectIfindex: r.egressInterface ?? 0,
    },
    tcpState: r.tcpState,
    tcpFlags: rec.tcpControlBits,
    createdNs: clock.toMonotonicNs(rec.flowStartMilliseconds),
    lastSeenNs: clock.toMonotonicNs(rec.flowEndMilliseconds),
  };
  const ingress = rec.ingressInterface === undefined ? undefined : interfaces?.nameOf(rec.ingressInterface);
  if (ingress !== undefined) session.ingressIfname = ingress;
  const redirect = r.egressInterface === undefined ? undefined : interfaces?.nameOf(r.egressInterface);
  if (redirect !== undefined) session.redirectIfname = redirect;
  return { kind: r.firewallSessionEvent, session };
}
