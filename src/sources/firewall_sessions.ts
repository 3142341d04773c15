import { Observable, asyncScheduler, interval, map, type SchedulerLike } from 'rxjs';
import { msOption, type ComponentContext, type JsonSchema, type SourceModule } from '../component.js';
import { sessionKeyId, type FirewallCollection } from '../datapath/firewall/index.js';
import {
  decodeSessionEvent,
  type FirewallSession,
  type FirewallSessionEvent,
  type SessionEnd,
  type SessionEventKind,
} from '../datapath/firewall/types.js';
import { monotonicToWallClockOffsetMs } from '../datapath/flow/types.js';
import type { Logger } from '../logger.js';
import type { FlowBatch } from '../records/flow.js';
import type { FirewallSessionRecord } from '../records/firewall-session.js';
import { FIREWALL_SOURCE_PROPERTIES, firewallSource, setAddresses } from './firewall-source.js';

/**
 * Session lifecycle events of a firewall.
 *
 * CREATED and UPDATED come from the kernel, on the fw_sess_events ring buffer: a session is
 * created by exactly one packet (the map insert with BPF_NOEXIST succeeds once), so the event is
 * exact and arrives even for sessions shorter than any scan interval; updates are sent on a TCP
 * state change and at most once per session_update_interval_ms otherwise, so their rate is
 * bounded by the number of sessions, not packets.
 *
 * A session ends in one of three ways, each a DELETED event from here, once:
 * - closed: the kernel's UPDATED on the TCP state change to closed (FIN seen both ways, or a RST)
 *   is the end of the connection, and is passed on as DELETED at the next drain (drain_interval_ms)
 *   without waiting for the session to time out. The kernel keeps the closed session until
 *   session_closed_timeout_s, for the last ACK and retransmissions; its later updates and its
 *   expiry are not reported again, and a new SYN on its tuple is a CREATED again.
 * - idle: the kernel never deletes a session (an idle one simply stops matching), so the one
 *   deleting it, expireSessions() on a timer, knows exactly which and when.
 * - evicted: the map is an LRU hash, so a full map drops its least recently used session to make
 *   room, and nothing in the kernel can report that. The expiry's read of the map (which it makes
 *   anyway, one batch read sized to the map) also says which of the sessions this source reported
 *   and has not seen end are no longer there: each is reported DELETED then.
 *
 * A userspace diff of map scans alone would miss sessions that lived between two scans and could
 * not tell a delete followed by a re-create from an update. Events the kernel could not queue
 * (ring full) are counted (session_events_lost): a consumer that must not miss any (HA
 * replication) repairs with a periodic full read of the map.
 */
export interface SessionEventsOptions {
  collection: FirewallCollection;
  /** How often the ring buffer is read. */
  drainIntervalMs: number;
  /** How often idle sessions are expired and evicted ones looked for; 0: never, something else expires them. */
  expireIntervalMs: number;
  /** Called with how many events the kernel lost since the last drain. */
  onLost?: (n: number) => void;
  logger?: Logger;
  /** When it emits, the ring is read a last time and the stream completes. */
  stop$?: Observable<unknown>;
  /** Each value reads the ring and, unless expireIntervalMs is 0, runs the expiry now (a flush on demand). */
  flush$?: Observable<unknown>;
  scheduler?: SchedulerLike;
}

/** Batches of session events in the order they happened: ring-buffer events before the expiry that follows them. */
export function firewallSessionEvents(options: SessionEventsOptions): Observable<FirewallSessionEvent[]> {
  const scheduler = options.scheduler ?? asyncScheduler;
  return new Observable<FirewallSessionEvent[]>((subscriber) => {
    const fw = options.collection;
    const reader = fw.sessionEventReader();
    let lost = fw.counter('session_events_lost');
    // Sessions reported and not ended, with the scan that last found each in the map; and those
    // reported as closed, whose later updates and expiry are not reported again.
    const live = new Map<string, { session: FirewallSession; scan: number }>();
    const closed = new Map<string, number>();
    let scan = 0;
    const onEvent = (out: FirewallSessionEvent[], e: FirewallSessionEvent): void => {
      const id = sessionKeyId(e.session);
      if (e.kind === 'created') closed.delete(id);
      else if (closed.has(id)) return;
      if (e.session.tcpState === 'closed') {
        live.delete(id);
        closed.set(id, scan);
        out.push({ kind: 'deleted', session: e.session, end: 'closed' });
        return;
      }
      live.set(id, { session: e.session, scan });
      out.push(e);
    };
    const drain = (out: FirewallSessionEvent[]): void => {
      reader.drain((view, offset, length) => onEvent(out, decodeSessionEvent(view, offset, length)));
      const now = fw.counter('session_events_lost');
      if (now > lost) {
        options.logger?.warn({ lost: now - lost }, 'firewall session events lost: the ring buffer was full');
        options.onLost?.(now - lost);
        lost = now;
      }
    };
    const expire = (out: FirewallSessionEvent[]): void => {
      const current = ++scan;
      const present =
        live.size === 0 && closed.size === 0
          ? undefined
          : (key: Uint8Array): void => {
              const id = sessionKeyId(key);
              const entry = live.get(id);
              if (entry !== undefined) entry.scan = current;
              else if (closed.has(id)) closed.set(id, current);
            };
      for (const session of fw.expireSessions(undefined, present)) {
        const id = sessionKeyId(session);
        live.delete(id);
        if (!closed.delete(id)) out.push({ kind: 'deleted', session, end: 'idle' });
      }
      for (const [id, entry] of live) {
        if (entry.scan === current) continue;
        live.delete(id);
        out.push({ kind: 'deleted', session: entry.session, end: 'evicted' });
      }
      // A closed session that left the map without expiring is forgotten without a word.
      for (const [id, seen] of closed) if (seen !== current) closed.delete(id);
    };
    const tick = (withExpiry: boolean): boolean => {
      const out: FirewallSessionEvent[] = [];
      try {
        drain(out);
        if (withExpiry) expire(out);
      } catch (err) {
        subscriber.error(err);
        return false;
      }
      if (out.length > 0) subscriber.next(out);
      return true;
    };
    const subs = [interval(options.drainIntervalMs, scheduler).subscribe(() => void tick(false))];
    if (options.expireIntervalMs > 0) {
      subs.push(interval(options.expireIntervalMs, scheduler).subscribe(() => void tick(true)));
    }
    if (options.flush$) {
      subs.push(options.flush$.subscribe(() => void tick(options.expireIntervalMs > 0)));
    }
    if (options.stop$) {
      subs.push(
        options.stop$.subscribe(() => {
          if (tick(false)) subscriber.complete();
        }),
      );
    }
    return () => {
      for (const s of subs) s.unsubscribe();
      reader.close();
    };
  });
}

/** IPFIX flowEndReason (IANA element 136) of each way a session ends. */
const FLOW_END_REASON: Record<SessionEnd, number> = { idle: 1, closed: 3, evicted: 5 };

/** A flow record of a session event: the session's 5-tuple, counters each way, state and tunnel. */
export type { FirewallSessionRecord };

/**
 * The record of a session event. Times are wall-clock: flowStartMilliseconds when the session
 * opened, flowEndMilliseconds when it was last seen; a deleted session has the IPFIX flowEndReason
 * of its end: 1 idle timeout, 3 end of flow detected (closed), 5 lack of resources (evicted).
 */
export function sessionRecord(
  kind: SessionEventKind,
  s: FirewallSession,
  offsetMs: number,
  end: SessionEnd = 'idle',
): FirewallSessionRecord {
  const v4 = !s.srcAddr.includes(':');
  const rec: FirewallSessionRecord = {
    ipVersion: v4 ? 4 : 6,
    sourceTransportPort: s.srcPort,
    destinationTransportPort: s.dstPort,
    protocolIdentifier: s.protocol,
    octetDeltaCount: s.bytesForward,
    packetDeltaCount: s.packetsForward,
    flowStartMilliseconds: Math.floor(Number(s.createdNs) / 1e6 + offsetMs),
    flowEndMilliseconds: Math.floor(Number(s.lastSeenNs) / 1e6 + offsetMs),
    tcpControlBits: s.tcpFlags,
    ipDiffServCodePoint: 0,
    ingressInterface: s.ingressIfindex,
    flowDirection: s.direction === 'egress' ? 1 : 0,
    sourceMacAddress: s.outerSrcMac,
    destinationMacAddress: s.outerDstMac,
    ethernetType: v4 ? 0x0800 : 0x86dd,
    firewallSessionEvent: kind,
    firewallAction: s.action,
    firewallReason: s.reason,
    firewallPolicyId: s.policyId,
    firewallRuleId: s.ruleId,
    firewallSessionOrigin: s.origin,
    tcpState: s.tcpState,
    reversePacketTotalCount: s.packetsReverse,
    reverseOctetTotalCount: s.bytesReverse,
    packetTotalCount: s.packetsForward,
    octetTotalCount: s.bytesForward,
  };
  setAddresses(rec, s.srcAddr, s.dstAddr, v4);
  if (s.redirectIfindex !== 0) rec.egressInterface = s.redirectIfindex;
  if (s.tunnel !== 'none') {
    rec.encapsulationType = s.tunnel;
    rec.virtualNetworkIdentifier = s.vni;
    rec.tunnelSourceIPAddress = s.outerSrcAddr;
    rec.tunnelDestinationIPAddress = s.outerDstAddr;
    rec.tunnelSourceTransportPort = s.outerSrcPort;
    rec.tunnelDestinationTransportPort = s.outerDstPort;
    if (s.cookie !== '0000000000000000') rec.flowCookie = s.cookie;
  }
  if (kind === 'deleted') rec.flowEndReason = FLOW_END_REASON[end];
  return rec;
}

export interface FirewallSessionsConfig {
  instance: string;
  pin_root: string;
  drain_interval_ms: number;
  expire_interval_ms: number;
}

export function firewallSessions(
  config: FirewallSessionsConfig,
  context: ComponentContext,
): Observable<FlowBatch> {
  return firewallSource(config, context, 'reading firewall session events', (fw) => {
    const offsetMs = monotonicToWallClockOffsetMs();
    return firewallSessionEvents({
      collection: fw,
      drainIntervalMs: config.drain_interval_ms,
      expireIntervalMs: config.expire_interval_ms,
      onLost: (n) => {
        context.counters.addReceived(n);
        context.counters.addDropped('ringbuf_reserve_failed', n);
      },
      logger: context.logger,
      scheduler: context.scheduler ?? asyncScheduler,
      ...(context.stop$ ? { stop$: context.stop$ } : {}),
      ...(context.flush$ ? { flush$: context.flush$ } : {}),
    }).pipe(map((events) => events.map((e) => sessionRecord(e.kind, e.session, offsetMs, e.end))));
  });
}

const ms = (description: string, dflt: number, minimum = 1): JsonSchema =>
  msOption(description, dflt, minimum);

const firewallSessionsModule: SourceModule<FirewallSessionsConfig> = {
  type: 'firewall_sessions',
  kind: 'source',
  description: 'session lifecycle events (created, updated, deleted) of a loaded firewall',
  drainsOnStop: true,
  flushesOnDemand: true,
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      ...FIREWALL_SOURCE_PROPERTIES,
      drain_interval_ms: ms('how often the session event ring buffer is read', 100),
      expire_interval_ms: ms(
        'how often idle sessions are deleted, each a deleted event, and sessions the full LRU map evicted are looked for (the same read of the map), each a deleted event too; 0: never. Closed TCP sessions (FIN both ways, RST) are deleted events at the next drain. `rxflow flush` reads the ring and runs the expiry at once.',
        1000,
        0,
      ),
    },
  },
  example: { instance: 'default', pin_root: '/sys/fs/bpf', drain_interval_ms: 100, expire_interval_ms: 1000 },
  build: firewallSessions,
};

export default firewallSessionsModule;
