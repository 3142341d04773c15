import { NEVER, of, type Observable } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { FlowBatch, FlowRecord } from '../../../src/records.js';
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
 * run out) and is logged with the virtual time it was made at; `failAt` makes that call throw.
 */
function fakeMap(ts: TestScheduler, batches: FlowBatch[], failAt?: number) {
  const calls: number[] = [];
  const error = new Error('read flow_map: bpf_map_lookup_and_delete_batch: Bad file descriptor');
  const evict = (): FlowRecord[] => {
    calls.push(ts.now());
    if (calls.length === failAt) throw error;
    return batches[calls.length - 1] ?? [];
  };
  return { evict, calls, error };
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
});
