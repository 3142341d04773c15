import fc from 'fast-check';
import { Subject, asyncScheduler, of, type SchedulerLike } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import dedupeModule, { SeenTable, dedupe, type DedupeOptions } from '../../../src/operators/dedupe.js';
import { FlowKey, OperatorError, flowKeyString } from '../../../src/records/flow-key.js';
import { Ledger, StageCounters } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import { flowInterface, type FlowBatch, type FlowRecord } from '../../../src/records/flow.js';
import { flowRecord } from '../../fixtures/records.js';

function rec(p: Partial<FlowRecord> = {}): FlowRecord {
  return flowRecord({
    destinationIPv4Address: '10.0.1.1',
    destinationTransportPort: 80,
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 1000,
    flowEndMilliseconds: 1000,
    ...p,
  });
}

/** The same packet as seen by a router: ingress on eth0 (2), egress on eth1 (3). */
const onEth0 = (p: Partial<FlowRecord> = {}) => rec({ ingressInterface: 2, flowDirection: 0, ...p });
const onEth1 = (p: Partial<FlowRecord> = {}) => rec({ ingressInterface: 3, flowDirection: 1, ...p });

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

/** A clock the test sets; dedupe only reads `now()`. */
function manualClock(): SchedulerLike & { time: number } {
  const clock = {
    time: 0,
    now: () => clock.time,
    schedule: () => {
      throw new Error('dedupe must not schedule timers');
    },
  };
  return clock;
}

function run(batches: FlowBatch[], options: Partial<DedupeOptions> = {}) {
  const counters = options.counters ?? new StageCounters('dd', 'dedupe');
  const input = new Subject<FlowBatch>();
  const out: FlowBatch[] = [];
  let error: unknown;
  input
    .pipe(dedupe({ mode: 'first_come', expireMs: 10_000, justMark: false, counters, ...options }))
    .subscribe({ next: (b) => out.push(b), error: (e: unknown) => (error = e) });
  for (const b of batches) input.next(b);
  return { out, counters, error };
}

describe('dedupe', () => {
  it('keeps a flow from the first interface that reported it and drops the copies', () => {
    const { out, counters } = run([
      [onEth0(), onEth1(), onEth1({ sourceTransportPort: 5 })],
      [onEth1(), onEth0(), onEth0({ sourceTransportPort: 5 })],
    ]);
    expect(out).toEqual([[onEth0(), onEth1({ sourceTransportPort: 5 })], [onEth0()]]);
    expect(counters.snapshot()).toEqual({
      id: 'dd',
      type: 'dedupe',
      received: 6,
      sent: 3,
      dropped: { dedupe_duplicate: 3 },
      inFlight: 0,
    });
  });

  it('passes both directions on the first interface (it compares the interface only)', () => {
    const { out } = run([[onEth0(), onEth0({ flowDirection: 1 })]]);
    expect(out).toEqual([[onEth0(), onEth0({ flowDirection: 1 })]]);
  });

  it('tells flows apart by 5-tuple, VNI and ICMP type, not by interface', () => {
    const batch = [
      onEth0(),
      onEth1({ destinationTransportPort: 81 }),
      onEth1({ virtualNetworkIdentifier: 7, encapsulationType: 'vxlan' }),
      onEth1({ protocolIdentifier: 17 }),
      onEth1({ sourceIPv4Address: '10.0.0.9' }),
    ];
    const { out, counters } = run([batch.map((r) => ({ ...r }))]);
    expect(out).toEqual([batch]);
    expect(counters.snapshot()).toMatchObject({ received: 5, sent: 5, dropped: {} });
  });

  it('takes one packet for one flow across VLAN tags and namespaces: it keys on neither', () => {
    // Tagged on a trunk (eth0, 2), untagged on its VLAN subinterface (eth0.10, 5); then out of a
    // namespace by a veth (ifindex 2 there) into the agent's namespace (7).
    const { out, counters } = run([
      [onEth0({ dot1qVlanId: 10 }), rec({ ingressInterface: 5, flowDirection: 0 })],
      [
        rec({ sourceTransportPort: 5, egressInterface: 2, flowDirection: 1, networkNamespace: 'pod' }),
        rec({ sourceTransportPort: 5, ingressInterface: 7, flowDirection: 0 }),
      ],
    ]);
    expect(
      out.map((b) => b.map((r) => [r.ingressInterface ?? r.egressInterface, r.networkNamespace])),
    ).toEqual([[[2, undefined]], [[2, 'pod']]]);
    expect(counters.snapshot()).toMatchObject({ received: 4, sent: 2, dropped: { dedupe_duplicate: 2 } });
  });

  it('tells interfaces apart by namespace: ifindex 2 in two namespaces is two interfaces', () => {
    // A packet between two pods on one host: out of pod a's eth0 (ifindex 2 in a), into pod b's
    // eth0 (ifindex 2 in b), and seen on the agent's own ifindex 2 as well.
    const { out, counters } = run([
      [
        rec({ egressInterface: 2, flowDirection: 1, networkNamespace: 'a' }),
        rec({ ingressInterface: 2, flowDirection: 0, networkNamespace: 'b' }),
        rec({ ingressInterface: 2, flowDirection: 0 }),
      ],
      [
        rec({ ingressInterface: 2, flowDirection: 0, networkNamespace: 'b' }),
        rec({ ingressInterface: 2, flowDirection: 0, networkNamespace: 'a' }),
      ],
    ]);
    expect(out.map((b) => b.map((r) => r.networkNamespace))).toEqual([['a'], ['a']]);
    expect(counters.snapshot()).toMatchObject({ received: 5, sent: 2, dropped: { dedupe_duplicate: 3 } });
  });

  it('passes the same batch object on when nothing is dropped, and emits nothing for an emptied batch', () => {
    const first = [onEth0()];
    const { out, counters } = run([first, [onEth1()], []]);
    expect(out).toHaveLength(1);
    expect(out[0]).toBe(first);
    expect(counters.snapshot()).toMatchObject({
      received: 2,
      sent: 1,
      dropped: { dedupe_duplicate: 1 },
      inFlight: 0,
    });
  });

  it('with just_mark passes copies with duplicate: true', () => {
    const { out, counters } = run([[onEth0(), onEth1(), onEth1({ sourceTransportPort: 5 })]], {
      justMark: true,
    });
    expect(out).toEqual([[onEth0(), onEth1({ duplicate: true }), onEth1({ sourceTransportPort: 5 })]]);
    expect(out[0]![0]).not.toHaveProperty('duplicate');
    expect(counters.snapshot()).toMatchObject({ received: 3, sent: 3, dropped: {}, inFlight: 0 });
  });

  it('with mode none passes everything', () => {
    const { out, counters } = run([[onEth0(), onEth1()]], { mode: 'none' });
    expect(out).toEqual([[onEth0(), onEth1()]]);
    expect(counters.snapshot()).toMatchObject({ received: 2, sent: 2, dropped: {}, inFlight: 0 });
  });

  it('forgets a flow expire_ms after its last record from any interface (virtual time)', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      // a: eth0 registers at 0. b: eth1 copy at 500 (dropped; refreshes the entry). c: eth1 at
      // 1500, exactly expire_ms after b: still known, dropped. d: eth1 at 2501, 1001 ms after c:
      // expired, so eth1 is now the first interface and passes. e: eth0 at 2600: now the copy.
      const source = cold<FlowBatch>('a 499ms b 999ms c 1000ms d 98ms e', {
        a: [onEth0()],
        b: [onEth1()],
        c: [onEth1()],
        d: [onEth1()],
        e: [onEth0()],
      });
      expectObservable(
        source.pipe(dedupe({ mode: 'first_come', expireMs: 1000, justMark: false, counters })),
      ).toBe('a 2500ms d', { a: [onEth0()], d: [onEth1()] });
    });
  });

  it('forgets everything after a silence longer than twice expire_ms', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      const source = cold<FlowBatch>('a 5000ms b', { a: [onEth0()], b: [onEth1()] });
      expectObservable(
        source.pipe(dedupe({ mode: 'first_come', expireMs: 1000, justMark: false, counters })),
      ).toBe('a 5000ms b', { a: [onEth0()], b: [onEth1()] });
    });
  });

  it('matches the plain expiring-map model for any stream, across generations', () => {
    const step = fc.record({
      advance: fc.integer({ min: 0, max: 2500 }),
      records: fc.array(
        fc.record({
          flow: fc.integer({ min: 0, max: 6 }),
          ifindex: fc.integer({ min: 1, max: 3 }),
          netns: fc.constantFrom(undefined, 'a', 'b'),
        }),
        {
          maxLength: 8,
        },
      ),
    });
    fc.assert(
      fc.property(fc.array(step, { maxLength: 40 }), fc.boolean(), (steps, justMark) => {
        const expireMs = 1000;
        const clock = manualClock();
        const counters = new StageCounters('dd', 'dedupe');
        const input = new Subject<FlowBatch>();
        const out: FlowBatch[] = [];
        input
          .pipe(dedupe({ mode: 'first_come', expireMs, justMark, counters, scheduler: clock }))
          .subscribe((b) => out.push(b));
        // The model: a map from flow to (first interface and its namespace, last seen), entries
        // older than expireMs replaced.
        const model = new Map<string, { ifindex: number; netns?: string; lastSeen: number }>();
        const expected: FlowBatch[] = [];
        let received = 0;
        let duplicates = 0;
        for (const s of steps) {
          clock.time += s.advance;
          const make = () =>
            s.records.map((x) =>
              rec({
                sourceTransportPort: 1000 + x.flow,
                ingressInterface: x.ifindex,
                flowDirection: 0,
                ...(x.netns === undefined ? {} : { networkNamespace: x.netns }),
              }),
            );
          const batch = make();
          const mine = make();
          const kept: FlowRecord[] = [];
          for (const r of mine) {
            received++;
            const k = flowKeyString(r, false);
            const e = model.get(k);
            if (e && clock.time - e.lastSeen <= expireMs) {
              e.lastSeen = clock.time;
              if (e.ifindex !== r.ingressInterface || e.netns !== r.networkNamespace) {
                duplicates++;
                if (justMark) {
                  r.duplicate = true;
                  kept.push(r);
                }
                continue;
              }
            } else {
              model.set(k, { ifindex: flowInterface(r), netns: r.networkNamespace, lastSeen: clock.time });
            }
            kept.push(r);
          }
          if (kept.length > 0) expected.push(kept);
          input.next(batch);
        }
        expect(out).toEqual(expected);
        const sent = expected.reduce((n, b) => n + b.length, 0);
        expect(counters.snapshot()).toMatchObject({
          received,
          sent,
          dropped: justMark || duplicates === 0 ? {} : { dedupe_duplicate: duplicates },
          inFlight: 0,
        });
      }),
      { numRuns: 300 },
    );
  });

  it('handles more flows than its initial table (growth) and keeps the first interface of each', () => {
    const n = 5000;
    const flows = (ifindex: number) =>
      Array.from({ length: n }, (_, i) =>
        rec({ sourceIPv4Address: `10.1.${i >> 8}.${i & 255}`, ingressInterface: ifindex, flowDirection: 0 }),
      );
    const { out, counters } = run([flows(2), flows(3), flows(2)]);
    expect(out.map((b) => b.length)).toEqual([n, n]);
    expect(out[1]!.every((r) => r.ingressInterface === 2)).toBe(true);
    expect(counters.snapshot()).toMatchObject({
      received: 3 * n,
      sent: 2 * n,
      dropped: { dedupe_duplicate: n },
    });
  });

  it('keeps the namespace of the first interface of each flow across growth', () => {
    const n = 5000;
    const flows = (netns: string) =>
      Array.from({ length: n }, (_, i) =>
        rec({ sourceIPv4Address: `10.1.${i >> 8}.${i & 255}`, ingressInterface: 2, networkNamespace: netns }),
      );
    const { out, counters } = run([flows('a'), flows('b'), flows('a')]);
    expect(out.map((b) => b.length)).toEqual([n, n]);
    expect(out[1]!.every((r) => r.networkNamespace === 'a')).toBe(true);
    expect(counters.snapshot()).toMatchObject({
      received: 3 * n,
      sent: 2 * n,
      dropped: { dedupe_duplicate: n },
    });
  });

  it('handles IPv6 flows past its initial table and keeps the first interface of each', () => {
    const n = 3000;
    const flows = (ifindex: number) =>
      Array.from({ length: n }, (_, i) =>
        rec({
          ipVersion: 6,
          sourceIPv4Address: undefined,
          destinationIPv4Address: undefined,
          sourceIPv6Address: `fd00::${i.toString(16)}`,
          destinationIPv6Address: 'fd00::ffff',
          ingressInterface: ifindex,
          flowDirection: 0,
        }),
      );
    const { out, counters } = run([flows(3), flows(2), flows(3)]);
    expect(out.map((b) => b.length)).toEqual([n, n]);
    expect(out.flat().every((r) => r.ingressInterface === 3)).toBe(true);
    expect(counters.snapshot()).toMatchObject({ sent: 2 * n, dropped: { dedupe_duplicate: n } });
  });

  it('turns a bad record into an error notification', () => {
    const bad = { ...onEth0(), ipVersion: 5 } as unknown as FlowRecord;
    const { out, counters, error } = run(
      [[onEth0({ sourceTransportPort: 1 }), onEth1({ sourceTransportPort: 1 }), bad]],
      {
        id: 'dd',
      },
    );
    expect(out).toEqual([]);
    expect(error).toBeInstanceOf(OperatorError);
    expect((error as OperatorError).message).toBe(
      'dedupe dd: bad record at index 2 of a batch of 3: ipVersion is 5, not 0, 4 or 6; fix the source that produced it',
    );
    expect(counters.snapshot()).toMatchObject({
      received: 3,
      sent: 0,
      dropped: { dedupe_duplicate: 1, shutdown: 2 },
      inFlight: 0,
    });
  });

  it('keeps state per subscription', () => {
    const counters = new StageCounters('dd', 'dedupe');
    const input = new Subject<FlowBatch>();
    const op = input.pipe(
      dedupe({ mode: 'first_come', expireMs: 1000, justMark: false, counters, scheduler: asyncScheduler }),
    );
    const first: FlowBatch[] = [];
    const second: FlowBatch[] = [];
    op.subscribe((b) => first.push(b));
    input.next([onEth0()]);
    op.subscribe((b) => second.push(b));
    input.next([onEth1()]);
    // The second subscription saw eth1 first; the first one had eth0.
    expect(first).toEqual([[onEth0()]]);
    expect(second).toEqual([[onEth1()]]);
  });

  it('rejects a bad config at build time', () => {
    const counters = new StageCounters('dd', 'dedupe');
    expect(() => dedupe({ mode: 'firstCome' as never, expireMs: 1, justMark: false, counters })).toThrow(
      "dedupe: mode must be 'none' or 'first_come', got 'firstCome'",
    );
    expect(() => dedupe({ mode: 'first_come', expireMs: 0, justMark: false, counters })).toThrow(
      'dedupe: expire_ms must be > 0, got 0',
    );
  });
});

describe('SeenTable', () => {
  it('finds what it holds across growth, forgets all on clear, and gives the memory back', () => {
    const table = new SeenTable(16);
    const key = new FlowKey(false);
    const initial = table.capacity;
    const flows = Array.from({ length: 5000 }, (_, i) =>
      i % 3 === 0
        ? rec({
            ipVersion: 6,
            sourceIPv4Address: undefined,
            destinationIPv4Address: undefined,
            sourceIPv6Address: `fd00::${i.toString(16)}`,
            destinationIPv6Address: 'fd00::1',
          })
        : rec({ sourceIPv4Address: `10.2.${i >> 8}.${i & 255}`, sourceTransportPort: i }),
    );
    flows.forEach((r, i) => {
      const free = table.find(key.read(r));
      expect(free).toBeLessThan(0);
      table.insert(key, free, i, 1000 + i);
    });
    expect(table.size).toBe(5000);
    expect(table.capacity).toBeGreaterThanOrEqual(5000);
    // Fresh objects with equal fields (new strings too) find the same entries.
    flows.forEach((r, i) => {
      const s = table.find(
        key.read({ ...r, sourceIPv6Address: r.sourceIPv6Address && `fd00::${i.toString(16)}` }),
      );
      expect([s >= 0, table.firstInterface(s), table.lastSeen(s)]).toEqual([true, i, 1000 + i]);
    });
    const s = table.find(key.read(flows[7]!));
    table.setLastSeen(s, 42);
    expect(table.lastSeen(table.find(key.read(flows[7]!)))).toBe(42);
    const grown = table.capacity;
    table.clear();
    expect([table.size, table.capacity]).toEqual([0, grown]);
    expect(flows.every((r) => table.find(key.read(r)) < 0)).toBe(true);
    // A light fill of a grown table gives the memory back at the next clear.
    flows.slice(0, 10).forEach((r) => table.insert(key.read(r), table.find(key), 1, 1));
    table.clear();
    expect([table.size, table.capacity]).toEqual([0, initial]);
    expect(table.find(key.read(flows[5]!))).toBeLessThan(0);
  });
});

describe('dedupe module', () => {
  const registry = new ComponentRegistry([dedupeModule]);

  it('validates its example, fills defaults, rejects unknown options', () => {
    expect(registry.validate(dedupeModule, dedupeModule.example as never).ok).toBe(true);
    expect(registry.validate(dedupeModule, {})).toMatchObject({
      ok: true,
      config: { mode: 'first_come', expire_ms: 10000, just_mark: false },
    });
    expect(registry.validate(dedupeModule, { mode: 'first-come' }).ok).toBe(false);
    expect(registry.validate(dedupeModule, { expire: 5 }).ok).toBe(false);
  });

  it("accepts the firewall design's spelling firstCome for first_come", () => {
    const v = registry.validate(dedupeModule, { mode: 'firstCome' });
    expect(v).toMatchObject({ ok: true, config: { mode: 'firstCome' } });
    const ledger = new Ledger();
    const counters = ledger.stage('dd', 'dedupe');
    const op = dedupeModule.build(
      { mode: 'firstCome', expire_ms: 10_000, just_mark: false },
      { id: 'dd', logger: silentLogger(), ledger, counters },
    );
    const out: FlowBatch[] = [];
    of([onEth0(), onEth1()])
      .pipe(op)
      .subscribe((b) => out.push(b));
    expect(out).toEqual([[onEth0()]]);
    expect(counters.snapshot().dropped).toEqual({ dedupe_duplicate: 1 });
  });

  it('builds an operator on the context scheduler and counters', () => {
    const ts = testScheduler();
    const ledger = new Ledger();
    const counters = ledger.stage('dd', 'dedupe');
    ts.run(({ cold, expectObservable }) => {
      const op = dedupeModule.build(
        { mode: 'first_come', expire_ms: 100, just_mark: true },
        { id: 'dd', logger: silentLogger(), ledger, counters, scheduler: ts },
      );
      expectObservable(cold<FlowBatch>('a 200ms b', { a: [onEth0()], b: [onEth1()] }).pipe(op)).toBe(
        'a 200ms b',
        {
          a: [onEth0()],
          b: [onEth1()],
        },
      );
    });
    expect(counters.snapshot()).toEqual({
      id: 'dd',
      type: 'dedupe',
      received: 2,
      sent: 2,
      dropped: {},
      inFlight: 0,
    });
  });
});
