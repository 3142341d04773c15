import { NEVER, Subject, of, type Observable } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';
import { mapTracer } from '../../../src/sources/map-tracer.js';
import { flowRecord } from '../../fixtures/records.js';

function flow(port: number): FlowRecord {
  return flowRecord({
    sourceTransportPort: port,
    destinationTransportPort: 53,
    protocolIdentifier: 17,
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
  });
}

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

/**
 * A stand-in for FlowDatapath.evictFlows: the n-th call returns the n-th batch (empty once they
 * run out) and is logged with the virtual time it was made at and whether it was the final one; `failAt` makes that call throw.
 */
function fakeMap(ts: TestScheduler, batches: FlowBatch[], failAt?: number) {
  const calls: number[] = [];
  const finals: boolean[] = [];
  const error = new Error('read flow_map: bpf_map_lookup_and_delete_batch: Bad file descriptor');
  const evict = (final: boolean): FlowRecord[] => {
    calls.push(ts.now());
    finals.push(final);
    if (calls.length === failAt) throw error;
    return batches[calls.length - 1] ?? [];
  };
  return { evict, calls, finals, error };
}

/**
 * A PromiseLike the test settles. Unlike a native promise, its callbacks run at once when it
 * settles, so a settle scheduled on the TestScheduler is seen at that virtual time inside run()
 * (native promise callbacks would wait for a microtask after run() returned).
 */
function deferred<T>() {
  type Callbacks = [(value: T) => unknown, (err: unknown) => unknown];
  const waiting: Callbacks[] = [];
  let settled: { ok: true; value: T } | { ok: false; err: unknown } | undefined;
  const run = ([ok, fail]: Callbacks) => {
    if (settled!.ok) ok(settled!.value);
    else fail(settled!.err);
  };
  const settle = (s: NonNullable<typeof settled>) => {
    if (settled) throw new Error('deferred: settled twice');
    settled = s;
    for (const cbs of waiting.splice(0)) run(cbs);
  };
  const promise: PromiseLike<T> = {
    then(ok, fail) {
      const cbs: Callbacks = [ok ?? (() => undefined), fail ?? (() => undefined)];
      if (settled) run(cbs);
      else waiting.push(cbs);
      // mapTracer ignores what then() returns.
      return undefined as never;
    },
  };
  return {
    promise,
    resolve: (value: T) => settle({ ok: true, value }),
    reject: (err: unknown) => settle({ ok: false, err }),
  };
}

/**
 * A stand-in for FlowDatapath.evictFlowsAsync: each call takes `durationMs` of virtual time, then
 * settles with the next batch (rejects on call `failAt`). Logs start and end times and the most
 * evictions ever running at once.
 */
function slowMap(ts: TestScheduler, batches: FlowBatch[], durationMs: number, failAt?: number) {
  const calls: number[] = [];
  const ends: number[] = [];
  let running = 0;
  let maxRunning = 0;
  const error = new Error('update map flow_maps: bpf_map_update_elem: bad file descriptor (EBADF)');
  const evict = (): PromiseLike<FlowRecord[]> => {
    calls.push(ts.now());
    const n = calls.length;
    running++;
    maxRunning = Math.max(maxRunning, running);
    const d = deferred<FlowRecord[]>();
    ts.schedule(() => {
      running--;
      ends.push(ts.now());
      if (n === failAt) d.reject(error);
      else d.resolve(batches[n - 1] ?? []);
    }, durationMs);
    return d.promise;
  };
  return { evict, calls, ends, error, maxRunning: () => maxRunning };
}

describe('mapTracer', () => {
  it('evicts every eviction_interval_ms and emits each non-empty eviction as one batch', () => {
    const ts = testScheduler();
    const a = [flow(1)];
    const c = [flow(2), flow(3)];
    const map = fakeMap(ts, [a, [], c]);
    ts.run(({ expectObservable }) => {
      // The default scheduler (asyncScheduler) runs in virtual time inside run().
      const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000 });
      expectObservable(tracer, '^ 3500ms !').toBe('1000ms a 1999ms c', { a, c });
    });
    expect(map.calls).toEqual([1000, 2000, 3000]);
  });

  it('evicts at once on each flush$ value, without moving the interval', () => {
    const ts = testScheduler();
    const batches = [[flow(1)], [flow(2)], [flow(3)], [flow(4)]];
    const map = fakeMap(ts, batches);
    ts.run(({ hot, expectObservable, expectSubscriptions }) => {
      const flush$ = hot('300ms x 199ms x');
      const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, flush$, scheduler: ts });
      expectObservable(tracer, '^ 2500ms !').toBe('300ms a 199ms b 499ms c 999ms d', {
        a: batches[0],
        b: batches[1],
        c: batches[2],
        d: batches[3],
      });
      expectSubscriptions(flush$.subscriptions).toBe('^ 2500ms !');
    });
    expect(map.calls).toEqual([300, 500, 1000, 2000]);
  });

  it('on stop$ evicts one last time, emits what it found and completes; nothing is evicted after', () => {
    const ts = testScheduler();
    const a = [flow(1)];
    const b = [flow(2), flow(3)];
    const map = fakeMap(ts, [a, b]);
    ts.run(({ hot, expectObservable, expectSubscriptions }) => {
      const stop$ = hot('1500ms s');
      const flush$ = hot('-');
      const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, flush$, stop$ });
      expectObservable(tracer).toBe('1000ms a 499ms (b|)', { a, b });
      expectSubscriptions(stop$.subscriptions).toBe('^ 1499ms !');
      expectSubscriptions(flush$.subscriptions).toBe('^ 1499ms !');
    });
    expect(map.calls).toEqual([1000, 1500]);
    // Only the stop$ eviction is final (its flows end forced, flowEndReason 4).
    expect(map.finals).toEqual([false, true]);
  });

  it('completes without a batch when the map is empty at stop$', () => {
    const ts = testScheduler();
    const map = fakeMap(ts, []);
    ts.run(({ hot, expectObservable }) => {
      const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, stop$: hot('700ms s') });
      expectObservable(tracer).toBe('700ms |');
    });
    expect(map.calls).toEqual([700]);
  });

  it('a stop$ that has already fired (a replayed value) evicts and completes at subscription', () => {
    const ts = testScheduler();
    const a = [flow(9)];
    const map = fakeMap(ts, [a]);
    ts.run(({ expectObservable }) => {
      const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, stop$: of('s') });
      expectObservable(tracer).toBe('(a|)', { a });
    });
    expect(map.calls).toEqual([0]);
  });

  it('an eviction that throws errors the stream with that error and stops every timer', () => {
    const ts = testScheduler();
    const a = [flow(1)];
    const map = fakeMap(ts, [a], 2);
    ts.run(({ hot, expectObservable, expectSubscriptions }) => {
      const flush$ = hot('1500ms x');
      const stop$: Observable<unknown> = NEVER;
      const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, flush$, stop$ });
      expectObservable(tracer).toBe('1000ms a 499ms #', { a }, map.error);
      expectSubscriptions(flush$.subscriptions).toBe('^ 1499ms !');
    });
    // The interval would have evicted again at 2000, 3000, ... had it not been torn down.
    expect(map.calls).toEqual([1000, 1500]);
  });

  it('after an eviction failed at subscription, a stop$ that already fired does not empty the map', () => {
    const ts = testScheduler();
    const map = fakeMap(ts, [[flow(1)]], 1);
    ts.run(({ expectObservable }) => {
      // of() emits during subscribe, as a ReplaySubject that already fired does.
      const tracer = mapTracer({
        evict: map.evict,
        evictionIntervalMs: 1000,
        flush$: of('x'),
        stop$: of('s'),
      });
      expectObservable(tracer).toBe('#', undefined, map.error);
    });
    // A second read would delete flows nobody can receive any more.
    expect(map.calls).toEqual([0]);
  });

  it('a final eviction that throws errors the stream instead of completing it', () => {
    const ts = testScheduler();
    const map = fakeMap(ts, [], 1);
    ts.run(({ hot, expectObservable }) => {
      const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, stop$: hot('400ms s') });
      expectObservable(tracer).toBe('400ms #', undefined, map.error);
    });
    expect(map.calls).toEqual([400]);
  });

  describe('with evictions that return a promise', () => {
    it('never overlaps evictions: interval ticks during one queue a single next eviction', () => {
      const ts = testScheduler();
      const [a, b, c, d] = [[flow(1)], [flow(2)], [flow(3)], [flow(4)]];
      // 230 ms per eviction against a 100 ms interval: two ticks land in each eviction.
      const map = slowMap(ts, [a, b, c, d], 230);
      ts.run(({ expectObservable }) => {
        const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 100 });
        expectObservable(tracer, '^ 950ms !').toBe('330ms a 229ms b 229ms c', { a, b, c });
      });
      // Each eviction starts when the one before ends; the one running at unsubscribe (790-1020)
      // emits nothing and nothing starts after it.
      expect(map.calls).toEqual([100, 330, 560, 790]);
      expect(map.ends).toEqual([330, 560, 790, 1020]);
      expect(map.maxRunning()).toBe(1);
    });

    it('a burst of flush$ values during an eviction adds exactly one eviction after it', () => {
      const ts = testScheduler();
      const [a, b, c] = [[flow(1)], [flow(2)], [flow(3)]];
      const map = slowMap(ts, [a, b, c], 100);
      ts.run(({ hot, expectObservable }) => {
        const flush$ = hot('200ms x 9ms x 9ms x 9ms x');
        const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, flush$ });
        expectObservable(tracer, '^ 1500ms !').toBe('300ms a 99ms b 699ms c', { a, b, c });
      });
      expect(map.calls).toEqual([200, 300, 1000]);
      expect(map.maxRunning()).toBe(1);
    });

    it('stop$ during an eviction waits for it, evicts once more instead of the queued one, and completes', () => {
      const ts = testScheduler();
      const a = [flow(1)];
      const b = [flow(2), flow(3)];
      const map = slowMap(ts, [a, b, [flow(9)]], 230);
      ts.run(({ hot, expectObservable, expectSubscriptions }) => {
        // The tick at 200 queued an eviction before stop$ at 250.
        const stop$ = hot('250ms s');
        const flush$ = hot('-');
        const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 100, flush$, stop$ });
        expectObservable(tracer).toBe('330ms a 229ms (b|)', { a, b });
        // No tick can start anything once stop$ fired.
        expectSubscriptions(flush$.subscriptions).toBe('^ 249ms !');
        expectSubscriptions(stop$.subscriptions).toBe('^ 559ms !');
      });
      expect(map.calls).toEqual([100, 330]);
      expect(map.maxRunning()).toBe(1);
    });

    it('a stop$ that has already fired evicts at subscription and completes when that eviction ends', () => {
      const ts = testScheduler();
      const a = [flow(5)];
      const map = slowMap(ts, [a], 230);
      ts.run(({ expectObservable }) => {
        const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 100, stop$: of('s') });
        expectObservable(tracer).toBe('230ms (a|)', { a });
      });
      expect(map.calls).toEqual([0]);
    });

    it('a rejected eviction errors the stream; queued ticks and a later stop$ evict nothing', () => {
      const ts = testScheduler();
      const a = [flow(1)];
      const map = slowMap(ts, [a, [flow(2)], [flow(3)]], 230, 2);
      ts.run(({ hot, expectObservable, expectSubscriptions }) => {
        const stop$ = hot('600ms s');
        const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 100, stop$ });
        expectObservable(tracer).toBe('330ms a 229ms #', { a }, map.error);
        expectSubscriptions(stop$.subscriptions).toBe('^ 559ms !');
      });
      // The ticks at 400 and 500 had queued an eviction: it must not run after the failure.
      expect(map.calls).toEqual([100, 330]);
    });

    it('a final eviction that rejects errors the stream instead of completing it', () => {
      const ts = testScheduler();
      const map = slowMap(ts, [], 230, 1);
      ts.run(({ hot, expectObservable }) => {
        const tracer = mapTracer({ evict: map.evict, evictionIntervalMs: 1000, stop$: hot('50ms s') });
        expectObservable(tracer).toBe('280ms #', undefined, map.error);
      });
      expect(map.calls).toEqual([50]);
    });

    it('works with native promises: serial, one queued eviction, final flush, batches in order', async () => {
      const flush$ = new Subject<void>();
      const stop$ = new Subject<void>();
      const pending: ((batch: FlowRecord[]) => void)[] = [];
      const batches: FlowBatch[] = [];
      let completed = false;
      let failed: unknown;
      const tracer = mapTracer({
        evict: () => new Promise<FlowRecord[]>((resolve) => pending.push(resolve)),
        // Never fires within the test; flush$ and stop$ drive it.
        evictionIntervalMs: 3_600_000,
        flush$,
        stop$,
      });
      const sub = tracer.subscribe({
        next: (b) => batches.push(b),
        error: (err: unknown) => (failed = err),
        complete: () => (completed = true),
      });
      // Runs every promise callback queued so far.
      const settle = () => new Promise((resolve) => setImmediate(resolve));
      try {
        flush$.next();
        flush$.next();
        flush$.next();
        expect(pending).toHaveLength(1);
        const [a, b, c] = [[flow(1)], [flow(2)], [flow(3)]];
        pending[0]!(a);
        await settle();
        expect(batches).toEqual([a]);
        expect(pending).toHaveLength(2);
        stop$.next();
        flush$.next();
        await settle();
        expect(pending).toHaveLength(2);
        pending[1]!(b);
        await settle();
        expect(pending).toHaveLength(3);
        expect(completed).toBe(false);
        pending[2]!(c);
        await settle();
        expect({ batches, completed, failed }).toEqual({
          batches: [a, b, c],
          completed: true,
          failed: undefined,
        });
      } finally {
        sub.unsubscribe();
      }
    });
  });
});
