/**
 * The full sync as a pure function: given what the local kernel holds and what the KV bucket
 * holds, which keys to write and which to delete.
 *
 * Who wins:
 * - The local kernel is the truth for what this node holds. A local session missing from KV is
 *   written. A local session whose KV copy was written by this node but differs in its tunnel
 *   metadata or TCP state is written.
 * - A KV copy whose last-seen is older than the local one by more than `toleranceMs` is outdated
 *   and is written, whichever node wrote it: traffic through this node since then makes this node
 *   the session's owner (that is how a standby claims sessions after a failover). A KV copy as new
 *   as the local one, or newer, is left alone even when another node wrote it, so a standby that
 *   loaded another node's sessions on boot does not take them over while the active node lives.
 * - A KV key written by this node that is no longer local is stale and is deleted.
 * - A KV key written by another node that is not local is that node's business and is left
 *   alone, unless `staleBeforeMs` is given and its last-seen is older: then no firewall can still
 *   hold it (it idled out everywhere) and it is deleted, so a dead node's keys do not live forever.
 * - A value this version cannot decode is overwritten by a local session of the same key, unless
 *   a newer format version wrote it (a newer node's data is never downgraded); it is otherwise left.
 * - Keys with a write pending or in flight (`skip`) are left out: that write settles them.
 */

/** A session as compared by the sync: its last-seen as wall-clock ms and its fingerprint. */
export interface SyncView {
  lastSeenMs: number;
  fingerprint: string;
}

export interface KvView extends SyncView {
  node: string;
}

/** A KV value this version cannot read. */
export interface UnreadableKvView {
  unreadable: true;
  /** Written by a newer format version. */
  newer: boolean;
}

export interface SyncInput {
  nodeId: string;
  local: ReadonlyMap<string, SyncView>;
  kv: ReadonlyMap<string, KvView | UnreadableKvView>;
  toleranceMs: number;
  skip?: ReadonlySet<string> | { has(key: string): boolean };
  /** KV copies of other nodes last seen before this wall-clock time are deleted when not local. */
  staleBeforeMs?: number;
}

export interface ReplicationCounts {
  /** Sessions in the local kernel. */
  local: number;
  /** Keys in the KV bucket. */
  kv: number;
  /** Keys both local and in KV. */
  both: number;
  /** Local sessions whose key is not in KV. */
  onlyLocal: number;
  /** KV keys with no local session. */
  onlyKv: number;
  /** Of onlyKv, keys another node wrote (expected on a standby or in active-active). */
  onlyKvOtherNodes: number;
}

export interface SyncPlan {
  puts: string[];
  deletes: string[];
  /** The comparison before the plan is carried out. */
  before: ReplicationCounts;
}

export function isUnreadable(v: KvView | UnreadableKvView): v is UnreadableKvView {
  return 'unreadable' in v;
}

export function planSync(input: SyncInput): SyncPlan {
  const { nodeId, local, kv, toleranceMs, staleBeforeMs } = input;
  const skip = input.skip ?? new Set<string>();
  const puts: string[] = [];
  const deletes: string[] = [];
  for (const [key, mine] of local) {
    if (skip.has(key)) continue;
    const theirs = kv.get(key);
    if (theirs === undefined) {
      puts.push(key);
    } else if (isUnreadable(theirs)) {
      if (!theirs.newer) puts.push(key);
    } else if (mine.lastSeenMs > theirs.lastSeenMs + toleranceMs) {
      puts.push(key);
    } else if (theirs.node === nodeId && mine.fingerprint !== theirs.fingerprint) {
      puts.push(key);
    }
  }
  for (const [key, theirs] of kv) {
    if (local.has(key) || skip.has(key) || isUnreadable(theirs)) continue;
    if (theirs.node === nodeId) deletes.push(key);
    else if (staleBeforeMs !== undefined && theirs.lastSeenMs < staleBeforeMs) deletes.push(key);
  }
  return { puts, deletes, before: compare(nodeId, local, kv) };
}

/** Counts local sessions against KV keys. */
export function compare(
  nodeId: string,
  local: { has(key: string): boolean; readonly size: number; keys(): Iterable<string> },
  kv: ReadonlyMap<string, KvView | UnreadableKvView>,
): ReplicationCounts {
  let both = 0;
  let onlyKvOtherNodes = 0;
  for (const [key, v] of kv) {
    if (local.has(key)) both++;
    else if (isUnreadable(v) || v.node !== nodeId) onlyKvOtherNodes++;
  }
  return {
    local: local.size,
    kv: kv.size,
    both,
    onlyLocal: local.size - both,
    onlyKv: kv.size - both,
    onlyKvOtherNodes,
  };
}
