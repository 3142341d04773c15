import { asyncScheduler } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { ClockTranslator } from '../../../src/ha/clock.js';
import { encodeSessionValue, sessionKvKey, toWire } from '../../../src/ha/codec.js';
import { loadSessions } from '../../../src/ha/loader.js';
import { BOOT_WALL_MS, FakeKv, MapStore, session } from './helpers.js';

function fixedClock(monoNs: bigint, wallMs: number): ClockTranslator {
  return new ClockTranslator({ monotonicNs: () => monoNs, wallMs: () => wallMs });
}

describe('boot loader', () => {
  it('loads every readable session, translated to this node’s clock, in batches, keeping sessions the kernel has', async () => {
    const now = BOOT_WALL_MS + 100_000;
    const writer = fixedClock(100_000_000_000n, now); // booted at BOOT
    const reader = fixedClock(40_000_000_000n, now); // booted 60 s later
    const kv = new FakeKv(asyncScheduler);
    for (let n = 1; n <= 5; n++) {
      // Last seen n seconds ago on the writer.
      const s = session(n, 100_000 - n * 1000);
      kv.put(sessionKvKey(s.key), encodeSessionValue(toWire(s, writer), 'node-a'), () => undefined);
    }
    kv.put('s.tcp.junk_1.junk_2.0', new TextEncoder().encode('not json'), () => undefined);
    kv.put('s.tcp.newer_1.newer_2.0', new TextEncoder().encode('{"v":9}'), () => undefined);
    const store = new MapStore();
    const kernelsOwn = session(5, 39_000);
    store.set([kernelsOwn]);

    const result = await loadSessions(kv, store, { clock: reader, batchSize: 2 });
    expect(result).toMatchObject({ loaded: 4, present: 1, unreadable: 1, newer: 1, expired: 0 });
    expect(result.records).toHaveLength(7);
    // A watch goes on after the seventh write, the last the load read.
    expect(result.revision).toBe(7);
    expect(store.restores).toBe(3);
    for (let n = 1; n <= 4; n++) {
      const loaded = store.sessions.get(sessionKvKey(session(n).key))!;
      expect(loaded.lastSeenNs).toBe(40_000_000_000n - BigInt(n) * 1_000_000_000n);
    }
    expect(store.sessions.get(sessionKvKey(kernelsOwn.key))).toBe(kernelsOwn);
  });

  it('skips sessions last seen longer ago than maxAgeMs', async () => {
    const clock = new ClockTranslator();
    const kv = new FakeKv(asyncScheduler);
    const now = clock.monotonicNowNs();
    const fresh = session(1, 0, { lastSeenNs: now - 1_000_000_000n });
    const old = session(2, 0, { lastSeenNs: now - 600_000_000_000n });
    for (const s of [fresh, old]) kv.data.set(sessionKvKey(s.key), encodeSessionValue(toWire(s, clock), 'a'));
    const store = new MapStore();
    expect(await loadSessions(kv, store, { clock, maxAgeMs: 300_000 })).toMatchObject({
      loaded: 1,
      expired: 1,
    });
    expect([...store.sessions.keys()]).toEqual([sessionKvKey(fresh.key)]);
  });
});
