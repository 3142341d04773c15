import fc from 'fast-check';
import { Subject, from } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import accountModule, { account } from '../../../src/operators/account.js';
import { OperatorError, flowKeyString } from '../../../src/records/flow-key.js';
import { Ledger, StageCounters } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import {
  attachIPv4Words,
  readIPv4Words,
  type FlowBatch,
  type FlowRecord,
} from '../../../src/records/flow.js';
import { flowRecord } from '../../fixtures/records.js';
import { TrackingScheduler } from './tracking-scheduler.js';

function rec(p: Partial<FlowRecord> = {}): FlowRecord {
  return flowRecord({
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 1000,
    flowEndMilliseconds: 1000,
    ...p,
  });
}

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

function collect(batches: FlowBatch[], opts: Parameters<typeof account>[0]) {
  const out: FlowBatch[] = [];
  let error: unknown;
  let completed = false;
  from(batches)
    .pipe(account(opts))
    .subscribe({
      next: (b) => out.push(b),
      error: (e: unknown) => (error = e),
      complete: () => (completed = true),
    });
  return { out, error, completed };
}

describe('account', () => {
  it('sums layer2OctetDeltaCount beside octetDeltaCount, and leaves it absent on records without it', () => {
    const counters = new StageCounters('acc', 'account');
    const { out } = collect(
      [
        [
          rec({ octetDeltaCount: 46, layer2OctetDeltaCount: 60 }),
          rec({ sourceTransportPort: 40001, octetDeltaCount: 70 }),
          rec({ octetDeltaCount: 1486, layer2OctetDeltaCount: 1500 }),
          rec({ sourceTransportPort: 40001, octetDeltaCount: 30 }),
        ],
      ],
      { maxEntries: 100, evictTimeoutMs: 5000, counters },
    );
    expect(
      out
        .flat()
        .map((r) => [r.sourceTransportPort, r.packetDeltaCount, r.octetDeltaCount, r.layer2OctetDeltaCount]),
    ).toEqual([
      [40000, 2, 1532, 1560],
      [40001, 2, 100, undefined],
    ]);
  });

  it('sums packets and bytes per flow, keeps the earliest start, latest end, ORed flags', () => {
    const counters = new StageCounters('acc', 'account');
    const { out, completed } = collect(
      [
        [
          rec({
            packetDeltaCount: 1,
            octetDeltaCount: 60,
            flowStartMilliseconds: 1005,
            flowEndMilliseconds: 1005,
            tcpControlBits: 0x02,
          }),
          rec({ sourceTransportPort: 40001, octetDeltaCount: 70 }),
        ],
        [
          rec({
            packetDeltaCount: 2,
            octetDeltaCount: 1500,
            flowStartMilliseconds: 1001,
            flowEndMilliseconds: 1009,
            tcpControlBits: 0x10,
            ipDiffServCodePoint: 46,
          }),
          rec({
            packetDeltaCount: 1,
            octetDeltaCount: 40,
            flowStartMilliseconds: 1003,
            flowEndMilliseconds: 1004,
            tcpControlBits: 0x01,
          }),
        ],
      ],
      { maxEntries: 100, evictTimeoutMs: 5000, counters },
    );
    expect(completed).toBe(true);
    expect(out).toEqual([
      [
        rec({
          packetDeltaCount: 4,
          octetDeltaCount: 1600,
          flowStartMilliseconds: 1001,
          flowEndMilliseconds: 1009,
          tcpControlBits: 0x13,
        }),
        rec({ sourceTransportPort: 40001, octetDeltaCount: 70 }),
      ],
    ]);
    expect(counters.snapshot()).toEqual({
      id: 'acc',
      type: 'account',
      received: 4,
      sent: 2,
      merged: 2,
      dropped: {},
      inFlight: 0,
    });
  });

  it('keys on 5-tuple, ICMP type and code, VNI, interface and direction', () => {
    const counters = new StageCounters('acc', 'account');
    const distinct = [
      rec(),
      rec({ sourceIPv4Address: '10.0.0.3' }),
      rec({ destinationIPv4Address: '10.0.0.3' }),
      rec({ sourceTransportPort: 1 }),
      rec({ destinationTransportPort: 1 }),
      rec({ protocolIdentifier: 17 }),
      rec({ ingressInterface: 3 }),
      rec({ flowDirection: 1 }),
      rec({ virtualNetworkIdentifier: 42, encapsulationType: 'vxlan' }),
      rec({ virtualNetworkIdentifier: 42, encapsulationType: 'geneve' }),
      rec({
        protocolIdentifier: 1,
        sourceTransportPort: 0,
        destinationTransportPort: 0,
        icmpTypeIPv4: 8,
        icmpCodeIPv4: 0,
      }),
      rec({
        protocolIdentifier: 1,
        sourceTransportPort: 0,
        destinationTransportPort: 0,
        icmpTypeIPv4: 0,
        icmpCodeIPv4: 0,
      }),
      rec({
        ipVersion: 6,
        sourceIPv4Address: undefined,
        destinationIPv4Address: undefined,
        sourceIPv6Address: 'fd00::1',
        destinationIPv6Address: 'fd00::2',
        ethernetType: 0x86dd,
      }),
    ];
    // Fields outside the key do not split a flow.
    const same = [rec({ ipDiffServCodePoint: 10, sourceMacAddress: '02:00:00:00:00:09' })];
    const { out } = collect([distinct, same], { maxEntries: 100, evictTimeoutMs: 5000, counters });
    expect(out).toHaveLength(1);
    expect(out[0]!.map((r) => flowKeyString(r))).toEqual(distinct.map((r) => flowKeyString(r)));
    expect(out[0]![0]!.packetDeltaCount).toBe(2);
    expect(out[0]!.slice(1).every((r) => r.packetDeltaCount === 1)).toBe(true);
    expect(counters.snapshot()).toMatchObject({ received: 14, sent: 13, merged: 1, inFlight: 0 });
  });

  it('keeps apart flows that differ only in VLAN ids or network namespace, as the kernel does', () => {
    const counters = new StageCounters('acc', 'account');
    // One 5-tuple on one interface and direction, counted where the kernel's flow map has a key
    // of its own: untagged, on VLANs 10 and 20, QinQ 10.100 and 10.200, and in two namespaces
    // whose interfaces share ifindex 2 (as fresh veth peers do), plus a tagged one in a namespace.
    const places: Partial<FlowRecord>[] = [
      {},
      { dot1qVlanId: 10 },
      { dot1qVlanId: 20 },
      { dot1qVlanId: 10, dot1qCustomerVlanId: 100 },
      { dot1qVlanId: 10, dot1qCustomerVlanId: 200 },
      { networkNamespace: 'blue' },
      { networkNamespace: 'net:[4026532001]' },
      { networkNamespace: 'blue', dot1qVlanId: 10 },
    ];
    // Place i sends i + 1 packets of 100 + i bytes, interleaved over two batches.
    const batch = (from: number): FlowRecord[] =>
      places.flatMap((p, i) =>
        Array.from({ length: i + 1 }, (_, n) => n)
          .filter((n) => n % 2 === from)
          .map(() => rec({ ingressInterface: 2, octetDeltaCount: 100 + i, ...p })),
      );
    const input = [batch(0), batch(1)];
    const { out } = collect(input, { maxEntries: 100, evictTimeoutMs: 5000, counters });
    expect(out).toHaveLength(1);
    expect(
      out[0]!.map((r) => ({
        vlan: r.dot1qVlanId,
        customerVlan: r.dot1qCustomerVlanId,
        netns: r.networkNamespace,
        packets: r.packetDeltaCount,
        bytes: r.octetDeltaCount,
      })),
    ).toEqual(
      places.map((p, i) => ({
        vlan: p.dot1qVlanId,
        customerVlan: p.dot1qCustomerVlanId,
        netns: p.networkNamespace,
        packets: i + 1,
        bytes: (i + 1) * (100 + i),
      })),
    );
    expect(counters.snapshot()).toMatchObject({ received: 36, sent: 8, merged: 28, inFlight: 0 });
    expect(new Set(out[0]!.map((r) => flowKeyString(r))).size).toBe(8);
  });

  it('keys a layer-2 flow (ipVersion 0) on its MACs and ethertype, as the kernel does', () => {
    const counters = new StageCounters('acc', 'account');
    const l2 = (p: Partial<FlowRecord> = {}): FlowRecord => {
      const r = rec({
        ipVersion: 0,
        protocolIdentifier: 0,
        sourceTransportPort: 0,
        destinationTransportPort: 0,
        ethernetType: 0x0806,
        ...p,
      });
      delete r.sourceIPv4Address;
      delete r.destinationIPv4Address;
      return r;
    };
    const distinct = [
      l2(),
      l2({ ethernetType: 0x88b5 }),
      l2({ sourceMacAddress: '02:00:00:00:00:09' }),
      l2({ destinationMacAddress: 'ff:ff:ff:ff:ff:ff' }),
      l2({ flowDirection: 1 }),
    ];
    const { out, error } = collect([distinct, [l2({ octetDeltaCount: 60 })]], {
      maxEntries: 100,
      evictTimeoutMs: 5000,
      counters,
    });
    expect(error).toBeUndefined();
    expect(out).toHaveLength(1);
    expect(
      out[0]!.map((r) => [
        r.ethernetType,
        r.sourceMacAddress,
        r.destinationMacAddress,
        r.flowDirection,
        r.packetDeltaCount,
        r.octetDeltaCount,
      ]),
    ).toEqual([
      [0x0806, '02:00:00:00:00:01', '02:00:00:00:00:02', 0, 2, 160],
      [0x88b5, '02:00:00:00:00:01', '02:00:00:00:00:02', 0, 1, 100],
      [0x0806, '02:00:00:00:00:09', '02:00:00:00:00:02', 0, 1, 100],
      [0x0806, '02:00:00:00:00:01', 'ff:ff:ff:ff:ff:ff', 0, 1, 100],
      [0x0806, '02:00:00:00:00:01', '02:00:00:00:00:02', 1, 1, 100],
    ]);
  });

  it('moves only the times a later record extends', () => {
    const counters = new StageCounters('acc', 'account');
    const a = (start: number, end: number) =>
      rec({ sourceTransportPort: 1, flowStartMilliseconds: start, flowEndMilliseconds: end });
    const b = (start: number, end: number) =>
      rec({ sourceTransportPort: 2, flowStartMilliseconds: start, flowEndMilliseconds: end });
    const untimed = rec({ sourceTransportPort: 3 }) as Partial<FlowRecord>;
    delete untimed.flowStartMilliseconds;
    delete untimed.flowEndMilliseconds;
    const { out } = collect(
      [[a(10, 20), b(10, 20), untimed as FlowRecord, a(15, 30), b(5, 15), rec({ sourceTransportPort: 3 })]],
      {
        maxEntries: 100,
        evictTimeoutMs: 5000,
        counters,
      },
    );
    expect(out[0]!.map((r) => [r.flowStartMilliseconds, r.flowEndMilliseconds, r.packetDeltaCount])).toEqual([
      [10, 30, 2],
      [5, 20, 2],
      [undefined, undefined, 2],
    ]);
  });

  it('merges records of one flow whether or not their addresses come as words', () => {
    const counters = new StageCounters('acc', 'account');
    const worded = rec({ octetDeltaCount: 10 });
    attachIPv4Words(worded, 0x0a000001, 0x0a000002);
    const other = rec({ destinationIPv4Address: '10.0.0.3', octetDeltaCount: 20 });
    attachIPv4Words(other, 0x0a000001, 0x0a000003);
    const { out } = collect(
      [
        [
          worded,
          rec({ octetDeltaCount: 1 }),
          other,
          rec({ destinationIPv4Address: '10.0.0.3', octetDeltaCount: 2 }),
        ],
      ],
      { maxEntries: 100, evictTimeoutMs: 5000, counters },
    );
    expect(out).toEqual([
      [
        rec({ packetDeltaCount: 2, octetDeltaCount: 11 }),
        rec({ destinationIPv4Address: '10.0.0.3', packetDeltaCount: 2, octetDeltaCount: 22 }),
      ],
    ]);
    expect(out[0]![0]).toBe(worded);
  });

  it('attaches the addresses it parsed to the records it emits, as words', () => {
    const counters = new StageCounters('acc', 'account');
    const v6 = rec({
      ipVersion: 6,
      sourceIPv4Address: undefined,
      destinationIPv4Address: undefined,
      sourceIPv6Address: 'fd00::1',
      destinationIPv6Address: 'fd00::2',
    });
    const { out } = collect([[rec({ sourceIPv4Address: '192.168.1.20' }), v6]], {
      maxEntries: 100,
      evictTimeoutMs: 5000,
      counters,
    });
    const words = { src: 0, dst: 0 };
    expect(readIPv4Words(out[0]![0]!, words)).toBe(true);
    expect(words).toEqual({ src: 0xc0a80114 | 0, dst: 0x0a000002 });
    expect(readIPv4Words(out[0]![1]!, words)).toBe(false);
  });

  it('emits everything as one batch when max_entries distinct flows are held', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('acc', 'account');
      const a = rec({ sourceTransportPort: 1 });
      const b = rec({ sourceTransportPort: 2 });
      const c = rec({ sourceTransportPort: 3 });
      const source = cold<FlowBatch>('x 9ms y', {
        x: [a, rec({ sourceTransportPort: 1 }), b, rec({ sourceTransportPort: 1 })],
        y: [c, rec({ sourceTransportPort: 2 }), rec({ sourceTransportPort: 2 })],
      });
      // Flow 1 twice then flow 2 fills the table at the third record; the fourth starts a new one.
      expectObservable(
        source.pipe(account({ maxEntries: 2, evictTimeoutMs: 1000, counters })),
        '^ 20ms !',
      ).toBe('p 9ms q', {
        p: [
          rec({ sourceTransportPort: 1, packetDeltaCount: 2, octetDeltaCount: 200 }),
          rec({ sourceTransportPort: 2 }),
        ],
        q: [rec({ sourceTransportPort: 1 }), rec({ sourceTransportPort: 3 })],
      });
    });
  });

  it('emits what it holds evict_timeout_ms after the first record entered an empty table', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('acc', 'account');
      const source = cold<FlowBatch>('a 499ms b 999ms c 2000ms |', {
        a: [rec()],
        b: [rec({ octetDeltaCount: 50 }), rec({ sourceTransportPort: 7 })],
        c: [rec({ destinationTransportPort: 53, protocolIdentifier: 17 })],
      });
      expectObservable(source.pipe(account({ maxEntries: 100, evictTimeoutMs: 1000, counters }))).toBe(
        '1000ms x 1499ms y 1000ms |',
        {
          x: [rec({ packetDeltaCount: 2, octetDeltaCount: 150 }), rec({ sourceTransportPort: 7 })],
          y: [rec({ destinationTransportPort: 53, protocolIdentifier: 17 })],
        },
      );
    });
  });

  it('clears its timer and counts held records as dropped when unsubscribed', () => {
    const ts = testScheduler();
    ts.run(({ cold, expectObservable }) => {
      const tracking = new TrackingScheduler(ts);
      const counters = new StageCounters('acc', 'account');
      const source = cold<FlowBatch>('a 9ms b', { a: [rec()], b: [rec({ sourceTransportPort: 1 })] });
      expectObservable(
        source.pipe(account({ maxEntries: 100, evictTimeoutMs: 100, counters, scheduler: tracking })),
        '^ 50ms !',
      ).toBe('');
      ts.schedule(() => {
        expect(tracking.scheduled).toHaveLength(1);
        expect(tracking.scheduled[0]!.closed).toBe(true);
        expect(counters.snapshot()).toEqual({
          id: 'acc',
          type: 'account',
          received: 2,
          sent: 0,
          dropped: { shutdown: 2 },
          inFlight: 0,
        });
      }, 60);
    });
  });

  it('turns a bad record into an error notification naming it, and clears its timer', () => {
    const ts = testScheduler();
    ts.run(({ cold, expectObservable }) => {
      const tracking = new TrackingScheduler(ts);
      const counters = new StageCounters('acc', 'account');
      const bad = { ...rec(), octetDeltaCount: '12' } as unknown as FlowRecord;
      const source = cold<FlowBatch>('a 9ms b', {
        a: [rec()],
        b: [rec({ sourceTransportPort: 5 }), bad, rec()],
      });
      expectObservable(
        source.pipe(
          account({ maxEntries: 100, evictTimeoutMs: 100, counters, scheduler: tracking, id: 'a1' }),
        ),
      ).toBe(
        '10ms #',
        undefined,
        new OperatorError(
          'EBADRECORD',
          'account a1: bad record at index 1 of a batch of 3: octetDeltaCount is string, not a number; fix the source that produced it',
        ),
      );
      ts.schedule(() => {
        expect(tracking.scheduled.every((s) => s.closed)).toBe(true);
        // 2 held + the bad record and the one after it.
        expect(counters.snapshot()).toMatchObject({
          received: 4,
          sent: 0,
          dropped: { shutdown: 4 },
          inFlight: 0,
        });
      }, 20);
    });
  });

  it('reports a record without addresses with its field name', () => {
    const counters = new StageCounters('acc', 'account');
    const { error, out } = collect([[rec({ sourceIPv4Address: undefined })]], {
      maxEntries: 10,
      evictTimeoutMs: 10,
      counters,
    });
    expect(out).toEqual([]);
    expect(error).toBeInstanceOf(OperatorError);
    expect((error as OperatorError).code).toBe('EBADRECORD');
    expect((error as OperatorError).message).toBe(
      'account: bad record at index 0 of a batch of 1: sourceIPv4Address is missing for an IPv4 flow; fix the source that produced it',
    );
    expect(counters.snapshot()).toMatchObject({
      received: 1,
      sent: 0,
      dropped: { shutdown: 1 },
      inFlight: 0,
    });
  });

  it('keeps state per subscription', () => {
    const counters = new StageCounters('acc', 'account');
    const input = new Subject<FlowBatch>();
    const op = input.pipe(account({ maxEntries: 10, evictTimeoutMs: 1000, counters }));
    const first: FlowBatch[] = [];
    const second: FlowBatch[] = [];
    op.subscribe((b) => first.push(b));
    op.subscribe((b) => second.push(b));
    // Both subscriptions see the same record; a shared table would fold it into itself (2 packets).
    input.next([rec({ sourceTransportPort: 1 })]);
    input.complete();
    expect(first).toEqual([[rec({ sourceTransportPort: 1 })]]);
    expect(second).toEqual([[rec({ sourceTransportPort: 1 })]]);
    expect(first[0]).not.toBe(second[0]);
    expect(counters.snapshot()).toMatchObject({ received: 2, sent: 2, inFlight: 0 });
  });

  it('rejects a bad config at build time', () => {
    const counters = new StageCounters('acc', 'account');
    expect(() => account({ maxEntries: 0, evictTimeoutMs: 10, counters })).toThrow(
      'account: max_entries must be an integer >= 1, got 0',
    );
    expect(() => account({ maxEntries: 1, evictTimeoutMs: 0, counters })).toThrow(
      'account: evict_timeout_ms must be > 0, got 0',
    );
  });

  it('conserves packets and bytes per flow for any stream of single-packet records', () => {
    const record = fc.record({
      src: fc.constantFrom('10.0.0.1', '10.0.0.2', 'fd00::1'),
      port: fc.integer({ min: 0, max: 3 }),
      ifindex: fc.integer({ min: 1, max: 2 }),
      direction: fc.constantFrom<0 | 1>(0, 1),
      bytes: fc.integer({ min: 40, max: 9000 }),
      time: fc.integer({ min: 0, max: 1_000_000 }),
      flags: fc.integer({ min: 0, max: 0xff }),
      place: fc.constantFrom<Partial<FlowRecord>>(
        {},
        { dot1qVlanId: 10 },
        { dot1qVlanId: 10, dot1qCustomerVlanId: 20 },
        { networkNamespace: 'a' },
        { networkNamespace: 'b', dot1qVlanId: 10 },
      ),
    });
    fc.assert(
      fc.property(
        fc.array(fc.array(record, { maxLength: 30 }), { maxLength: 20 }),
        fc.integer({ min: 1, max: 40 }),
        (raw, maxEntries) => {
          const make = (x: (typeof raw)[number][number]): FlowRecord =>
            x.src.includes(':')
              ? rec({
                  ipVersion: 6,
                  sourceIPv4Address: undefined,
                  destinationIPv4Address: undefined,
                  sourceIPv6Address: x.src,
                  destinationIPv6Address: 'fd00::9',
                  sourceTransportPort: x.port,
                  ingressInterface: x.ifindex,
                  flowDirection: x.direction,
                  octetDeltaCount: x.bytes,
                  flowStartMilliseconds: x.time,
                  flowEndMilliseconds: x.time,
                  tcpControlBits: x.flags,
                  ...x.place,
                })
              : rec({
                  sourceIPv4Address: x.src,
                  sourceTransportPort: x.port,
                  ingressInterface: x.ifindex,
                  flowDirection: x.direction,
                  octetDeltaCount: x.bytes,
                  flowStartMilliseconds: x.time,
                  flowEndMilliseconds: x.time,
                  tcpControlBits: x.flags,
                  ...x.place,
                });
          const batches = raw.map((b) => b.map(make));
          const expected = new Map<
            string,
            { packets: number; bytes: number; start: number; end: number; flags: number }
          >();
          let total = 0;
          for (const b of batches) {
            for (const r of b) {
              total++;
              const k = flowKeyString(r);
              const e = expected.get(k) ?? {
                packets: 0,
                bytes: 0,
                start: Infinity,
                end: -Infinity,
                flags: 0,
              };
              e.packets += r.packetDeltaCount;
              e.bytes += r.octetDeltaCount;
              e.start = Math.min(e.start, r.flowStartMilliseconds);
              e.end = Math.max(e.end, r.flowEndMilliseconds);
              e.flags |= r.tcpControlBits;
              expected.set(k, e);
            }
          }
          const counters = new StageCounters('acc', 'account');
          const { out, completed } = collect(batches, { maxEntries, evictTimeoutMs: 60_000, counters });
          expect(completed).toBe(true);
          const got = new Map<
            string,
            { packets: number; bytes: number; start: number; end: number; flags: number }
          >();
          let emitted = 0;
          for (const b of out) {
            expect(b.length).toBeGreaterThan(0);
            expect(b.length).toBeLessThanOrEqual(maxEntries);
            // A flow appears at most once per emitted batch.
            expect(new Set(b.map((r) => flowKeyString(r))).size).toBe(b.length);
            for (const r of b) {
              emitted++;
              const k = flowKeyString(r);
              const e = got.get(k) ?? { packets: 0, bytes: 0, start: Infinity, end: -Infinity, flags: 0 };
              e.packets += r.packetDeltaCount;
              e.bytes += r.octetDeltaCount;
              e.start = Math.min(e.start, r.flowStartMilliseconds);
              e.end = Math.max(e.end, r.flowEndMilliseconds);
              e.flags |= r.tcpControlBits;
              got.set(k, e);
            }
          }
          expect(got).toEqual(expected);
          expect(counters.snapshot()).toMatchObject({
            received: total,
            sent: emitted,
            dropped: {},
            inFlight: 0,
          });
          expect(counters.merged).toBe(total - emitted);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('account module', () => {
  const registry = new ComponentRegistry([accountModule]);

  it('validates its example and fills defaults', () => {
    expect(registry.validate(accountModule, accountModule.example as never)).toMatchObject({ ok: true });
    expect(registry.validate(accountModule, {})).toMatchObject({
      ok: true,
      config: { max_entries: 5000, evict_timeout_ms: 5000 },
    });
  });

  it('rejects unknown options and bad values', () => {
    expect(registry.validate(accountModule, { max_entries: 10, evict_timeout: 5 }).ok).toBe(false);
    expect(registry.validate(accountModule, { max_entries: 0 }).ok).toBe(false);
    expect(registry.validate(accountModule, { evict_timeout_ms: 1.5 }).ok).toBe(false);
  });

  it('builds an operator that counts into the context counters and runs on the context scheduler', () => {
    const ts = testScheduler();
    const ledger = new Ledger();
    const counters = ledger.stage('acc', 'account');
    ts.run(({ cold, expectObservable }) => {
      const op = accountModule.build(
        { max_entries: 10, evict_timeout_ms: 5 },
        { id: 'acc', logger: silentLogger(), ledger, counters, scheduler: ts },
      );
      expectObservable(cold<FlowBatch>('a', { a: [rec(), rec()] }).pipe(op), '^ 10ms !').toBe('5ms x', {
        x: [rec({ packetDeltaCount: 2, octetDeltaCount: 200 })],
      });
    });
    expect(ledger.totals()).toMatchObject({ seen: 0, delivered: 0, merged: 1, inFlight: 0 });
    expect(counters.snapshot()).toEqual({
      id: 'acc',
      type: 'account',
      received: 2,
      sent: 1,
      merged: 1,
      dropped: {},
      inFlight: 0,
    });
  });
});
