import { describe, expect, it } from 'vitest';
import { planSync, type KvView, type SyncView, type UnreadableKvView } from '../../../src/ha/sync.js';

const local = (lastSeenMs: number, fingerprint = 'f'): SyncView => ({ lastSeenMs, fingerprint });
const kv = (node: string, lastSeenMs: number, fingerprint = 'f'): KvView => ({
  node,
  lastSeenMs,
  fingerprint,
});

function plan(
  l: Record<string, SyncView>,
  k: Record<string, KvView | UnreadableKvView>,
  extra: { skip?: string[]; staleBeforeMs?: number } = {},
) {
  const p = planSync({
    nodeId: 'a',
    local: new Map(Object.entries(l)),
    kv: new Map(Object.entries(k)),
    toleranceMs: 1000,
    skip: new Set(extra.skip ?? []),
    ...(extra.staleBeforeMs !== undefined ? { staleBeforeMs: extra.staleBeforeMs } : {}),
  });
  return { puts: p.puts.sort(), deletes: p.deletes.sort(), before: p.before };
}

describe('full sync decisions (pure)', () => {
  it('writes local sessions missing from KV, deletes its own keys no longer local', () => {
    expect(plan({ k1: local(100), k2: local(100) }, { k2: kv('a', 100), k3: kv('a', 50) })).toEqual({
      puts: ['k1'],
      deletes: ['k3'],
      before: { local: 2, kv: 2, both: 1, onlyLocal: 1, onlyKv: 1, onlyKvOtherNodes: 0 },
    });
  });

  it('leaves other nodes keys alone, unless last seen before staleBeforeMs', () => {
    const k = { k1: kv('b', 100), k2: kv('b', 5000) };
    expect(plan({}, k)).toMatchObject({ puts: [], deletes: [], before: { onlyKv: 2, onlyKvOtherNodes: 2 } });
    expect(plan({}, k, { staleBeforeMs: 1000 })).toMatchObject({ puts: [], deletes: ['k1'] });
  });

  it('rewrites a KV copy older than the local session by more than the tolerance, whoever wrote it', () => {
    expect(
      plan(
        { k1: local(5000), k2: local(5000), k3: local(1500) },
        { k1: kv('a', 3000), k2: kv('b', 3000), k3: kv('b', 1000) },
      ),
    ).toEqual({
      puts: ['k1', 'k2'],
      deletes: [],
      before: { local: 3, kv: 3, both: 3, onlyLocal: 0, onlyKv: 0, onlyKvOtherNodes: 0 },
    });
  });

  it('does not take over another node’s session it only loaded (KV as new or newer than local)', () => {
    expect(plan({ k1: local(3000, 'x') }, { k1: kv('b', 3500, 'y') })).toMatchObject({
      puts: [],
      deletes: [],
    });
  });

  it('rewrites its own copy whose metadata differs, even at the same age', () => {
    expect(plan({ k1: local(3000, 'new') }, { k1: kv('a', 3000, 'old') })).toMatchObject({ puts: ['k1'] });
  });

  it('overwrites unreadable values of local sessions, except those of a newer format, and never deletes either', () => {
    const k = {
      k1: { unreadable: true, newer: false } as const,
      k2: { unreadable: true, newer: true } as const,
      k3: { unreadable: true, newer: false } as const,
    };
    expect(plan({ k1: local(1), k2: local(1) }, k)).toEqual({
      puts: ['k1'],
      deletes: [],
      before: { local: 2, kv: 3, both: 2, onlyLocal: 0, onlyKv: 1, onlyKvOtherNodes: 1 },
    });
  });

  it('leaves out keys with a write pending or in flight', () => {
    expect(plan({ k1: local(100) }, { k2: kv('a', 100) }, { skip: ['k1', 'k2'] })).toMatchObject({
      puts: [],
      deletes: [],
    });
  });
});
