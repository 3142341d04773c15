import type { Observable } from 'rxjs';
import type {
  Direction,
  FirewallAction,
  FirewallReason,
  SessionEventKind,
  SessionKey,
  SessionOuter,
  TcpState,
  TunnelType,
} from '../records/firewall-session.js';

/** The session key is the kernel map's: the 5-tuple plus the VNI. */
export type { SessionEventKind, SessionKey, TcpState, TunnelType };

/** The tunnel a session came through and what its opening packet said (node-local ifindex). */
export interface SessionTunnel extends SessionOuter {
  type: TunnelType;
  vni: number;
}

/** block: an audit-mode session (enforcement off), which peers keep as such. */
export type SessionAction = FirewallAction;
export type SessionDirection = Direction;
export type SessionReason = FirewallReason;

/** The verdict that created the session, which its later packets get without a policy lookup. */
export interface SessionVerdict {
  action: SessionAction;
  /** The hook that created the session. */
  direction: SessionDirection;
  policyId: number;
  /** 0: decided by a default action. */
  ruleId: number;
  /** What decided the verdict. */
  reason: SessionReason;
  /** Forward packets of a redirect session go out this interface (node-local). */
  redirectIfindex: number;
}

/**
 * What the replicator needs of a firewall session, independent of the kernel layout: the key the
 * kernel map is indexed by (5-tuple plus VNI), the tunnel metadata a standby needs to hairpin the
 * session's packets, and when it was last seen. Packet and byte counters are deliberately absent:
 * they change with every packet and a standby does not need them to pass established traffic.
 */
export interface ReplicatedSession {
  key: SessionKey;
  tunnel: SessionTunnel;
  verdict: SessionVerdict;
  /** Kernel monotonic time (CLOCK_MONOTONIC ns) of the last packet, on this node. */
  lastSeenNs: bigint;
  /** Kernel monotonic time the session was created, on this node. */
  createdNs: bigint;
  tcpState: TcpState;
  /** OR of the TCP flags seen both ways. */
  tcpFlags: number;
  /**
   * Interface names of tunnel.ingressIfindex and verdict.redirectIfindex on the node that saw the
   * session. Interface indexes differ between nodes; a loader maps the names to its own indexes.
   */
  ingressIfname?: string;
  redirectIfname?: string;
}

export interface SessionEvent {
  kind: SessionEventKind;
  session: ReplicatedSession;
}

/** Session events travel in arrays, like flows: a scan of the kernel map yields many at once. */
export type SessionEventBatch = readonly SessionEvent[];

export type SessionEvents = Observable<SessionEventBatch>;

/**
 * The kernel session map as the replicator sees it. The firewall collection satisfies it through
 * an adapter (src/sinks/session-store-firewall.ts); unit tests use a Map.
 */
export interface SessionStore {
  /** Every session in the kernel map now. */
  list(): ReplicatedSession[];
  /**
   * Writes sessions the kernel map does not have (one batch per call). A session the kernel
   * already has is left alone: traffic made it, so it is newer than any copy.
   */
  restore(sessions: readonly ReplicatedSession[]): { written: number; skipped: number };
  /**
   * The KV keys of the sessions list() returns, for a store that can tell them without decoding
   * every session (the live status asks for the keys only).
   */
  kvKeys?(): ReadonlySet<string>;
}

/**
 * What to do with one change another node made, decided against this kernel's copy of the
 * session: the session to write (replacing the local copy), 'delete', or undefined to leave it.
 */
export type RemoteDecision = ReplicatedSession | 'delete' | undefined;

export interface RemoteApplyResult {
  /** Indexes (into the keys given) whose kernel write failed. */
  failed: number[];
  /** The first failure, for the log. */
  error?: unknown;
}

/** A SessionStore that can also take the changes a watch of the bucket receives. */
export interface RemoteSessionStore extends SessionStore {
  /**
   * Applies one batch of other nodes' changes: reads the kernel's copy of every key, asks
   * `decide` what to do with it, then writes and deletes what was decided. A written session
   * replaces the kernel's copy but keeps its packet counters.
   */
  applyRemote(
    keys: readonly SessionKey[],
    decide: (index: number, local: ReplicatedSession | undefined) => RemoteDecision,
  ): RemoteApplyResult;
}

export function canApplyRemote(store: SessionStore): store is RemoteSessionStore {
  return typeof (store as Partial<RemoteSessionStore>).applyRemote === 'function';
}
