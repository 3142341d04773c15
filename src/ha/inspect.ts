import { ClockTranslator } from './clock.js';
import { sessionKvKey } from './codec.js';
import { kvViewOf, localViews } from './full-sync.js';
import type { SessionKv } from './kv.js';
import type { SessionStore } from './session.js';
import { compare, planSync, type KvView, type ReplicationCounts, type UnreadableKvView } from './sync.js';

export interface Inspection {
  counts: ReplicationCounts;
  /** What a full sync of `nodeId` would write and delete now. */
  wouldPut: number;
  wouldDelete: number;
}

/**
 * Compares the kernel session map with the bucket from outside the replicating process (the CLI):
 * the same comparison a full sync makes, without writing anything.
 */
export async function inspectReplication(
  store: SessionStore,
  kv: Pick<SessionKv, 'snapshot'>,
  nodeId: string,
  toleranceMs = 1000,
): Promise<Inspection> {
  return inspectAgainst(store, await readKvViews(kv), nodeId, toleranceMs);
}

/** The bucket as the sync compares it: one snapshot, every value decoded to its view. */
export async function readKvViews(
  kv: Pick<SessionKv, 'snapshot'>,
): Promise<Map<string, KvView | UnreadableKvView>> {
  const { records } = await kv.snapshot();
  const kvViews = new Map<string, KvView | UnreadableKvView>();
  for (const r of records) kvViews.set(r.key, kvViewOf(r.value));
  return kvViews;
}

/** The KV keys of the store's sessions: from its keys alone when it can tell them. */
export function localKvKeys(store: SessionStore): ReadonlySet<string> {
  if (store.kvKeys !== undefined) return store.kvKeys();
  const out = new Set<string>();
  for (const s of store.list()) out.add(sessionKvKey(s.key));
  return out;
}

/**
 * The counts of the comparison alone, what the live status shows: they depend on the keys only,
 * so no session is decoded and no fingerprint made.
 */
export function countAgainst(
  store: SessionStore,
  kvViews: ReadonlyMap<string, KvView | UnreadableKvView>,
  nodeId: string,
): ReplicationCounts {
  return compare(nodeId, localKvKeys(store), kvViews);
}

/**
 * The same comparison against a view of the bucket already at hand: what a running node with a
 * watch of the bucket knows it holds (every acknowledged write of its own and every change the
 * watch delivered), so asking costs a read of the kernel map and no read of the bucket.
 */
export function inspectAgainst(
  store: SessionStore,
  kvViews: ReadonlyMap<string, KvView | UnreadableKvView>,
  nodeId: string,
  toleranceMs = 1000,
): Inspection {
  const local = localViews(store.list(), new ClockTranslator());
  const plan = planSync({ nodeId, local, kv: kvViews, toleranceMs });
  return {
    counts: compare(nodeId, local, kvViews),
    wouldPut: plan.puts.length,
    wouldDelete: plan.deletes.length,
  };
}
