import { pino } from 'pino';
import { of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import type { FlowRecord } from '../../../src/records/flow.js';
import top, { TopTable, topModule, type TopConfig } from '../../../src/sinks/top.js';
import { flowRecord } from '../../fixtures/records.js';

function rec(over: Partial<FlowRecord> = {}): FlowRecord {
  return flowRecord({
    sourceIPv4Address: '192.0.2.1',
    destinationIPv4Address: '192.0.2.2',
    sourceTransportPort: 40001,
    destinationTransportPort: 9001,
    protocolIdentifier: 17,
    octetDeltaCount: 1000,
    packetDeltaCount: 10,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
    ingressInterface: 7,
    ...over,
  });
}

function clock(start = 0): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('TopTable', () => {
  it('ranks by the bytes on the wire, layer2OctetDeltaCount, or octetDeltaCount for records without it', () => {
    const table = new TopTable(10, 10_000, 100, clock().now);
    table.add([
      rec({ octetDeltaCount: 840, layer2OctetDeltaCount: 980 }),
      rec({ sourceTransportPort: 40002, octetDeltaCount: 900 }),
    ]);
    expect(table.snapshot().flows.map((f) => [f.sourcePort, f.bytes])).toEqual([
      [40001, 980],
      [40002, 900],
    ]);
  });

  it('sums records of one flow, keeps directions and interfaces apart, and ranks by bytes', () => {
    const c = clock();
    const table = new TopTable(10, 10_000, 100, c.now);
    table.add([
      rec(),
      rec({ flowDirection: 1 }),
      rec({ interfaceName: 'eth1', octetDeltaCount: 5000, packetDeltaCount: 5 }),
    ]);
    c.advance(2000);
    table.add([rec({ octetDeltaCount: 3000, packetDeltaCount: 2 })]);
    const s = table.snapshot();
    expect(s.flows.map((f) => [f.interface, f.direction, f.packets, f.bytes])).toEqual([
      ['eth1', 0, 5, 5000],
      ['7', 0, 12, 4000],
      ['7', 1, 10, 1000],
    ]);
    expect(s).toMatchObject({ windowFlows: 3, windowPackets: 27, windowBytes: 10_000, totalRecords: 4 });
    expect(s.flows[0]).toMatchObject({
      source: '192.0.2.1',
      destination: '192.0.2.2',
      sourcePort: 40001,
      destinationPort: 9001,
      protocol: 17,
      // 5000 bytes over the 2 s the table has existed.
      bytesPerSecond: 2500,
    });
  });

  it('lets traffic older than the window go, a tenth of the window at a time', () => {
    const c = clock(50_000);
    const table = new TopTable(10, 10_000, 100, c.now);
    table.add([rec({ sourceTransportPort: 1 })]);
    c.advance(5000);
    table.add([rec({ sourceTransportPort: 2, octetDeltaCount: 10 })]);
    c.advance(5000);
    // The first bucket is exactly one window old now: gone; the second stays.
    expect(table.snapshot().flows.map((f) => f.sourcePort)).toEqual([2]);
    c.advance(5000);
    const s = table.snapshot();
    expect(s.flows).toEqual([]);
    expect(s.windowFlows).toBe(0);
    // Totals since the start do not expire.
    expect([s.totalRecords, s.totalPackets, s.totalBytes]).toEqual([2, 20, 1010]);
  });

  it('shows the top N only, and rates over the whole window once the table is older than it', () => {
    const c = clock();
    const table = new TopTable(2, 1000, 100, c.now);
    c.advance(5000);
    table.add([1, 2, 3].map((p) => rec({ sourceTransportPort: p, octetDeltaCount: p * 100 })));
    const s = table.snapshot();
    expect(s.flows.map((f) => [f.sourcePort, f.bytesPerSecond])).toEqual([
      [3, 300],
      [2, 200],
    ]);
    expect(s.windowFlows).toBe(3);
  });

  it('refuses new flows beyond max_flows per bucket and says how many records found no room', () => {
    const table = new TopTable(10, 10_000, 2, clock().now);
    expect(table.add([1, 2, 3, 1, 4].map((p) => rec({ sourceTransportPort: p })))).toBe(2);
    expect(
      table
        .snapshot()
        .flows.map((f) => f.sourcePort)
        .sort(),
    ).toEqual([1, 2]);
  });
});

function context(ledger: Ledger, logger = silentLogger(), scheduler?: TestScheduler): ComponentContext {
  const ctx: ComponentContext = { id: 'top', logger, ledger, counters: ledger.stage('top', 'top', 'sink') };
  if (scheduler) ctx.scheduler = scheduler;
  return ctx;
}

const CONFIG: TopConfig = { top_n: 5, window_ms: 10_000, max_flows: 1, log_interval_ms: 0 };

describe('top sink', () => {
  it('counts what it took in and what it had no room for in the ledger, and hands out its table', async () => {
    const ledger = new Ledger();
    const tables: TopTable[] = [];
    const sink = topModule({ onBuild: (id, t) => id === 'top' && tables.push(t) }).build(
      CONFIG,
      context(ledger),
    );
    await sink.consume(of([rec(), rec({ sourceTransportPort: 2 })], [rec()]));
    await sink.flush();
    await sink.close();
    await sink.close();
    expect(ledger.totals().stages[0]).toEqual({
      id: 'top',
      type: 'top',
      received: 3,
      sent: 2,
      dropped: { sink_buffer_full: 1 },
      inFlight: 0,
    });
    expect(tables).toHaveLength(1);
    expect(tables[0]!.snapshot().flows.map((f) => f.packets)).toEqual([20]);
  });

  it('logs the top flows every log_interval_ms and when its input completes', () => {
    const lines: { msg: string; window_bytes: number; flows: { packets: number }[] }[] = [];
    const logger = pino(
      { level: 'info' },
      { write: (line: string) => void lines.push(JSON.parse(line) as never) },
    );
    const scheduler = new TestScheduler((a, b) => expect(a).toEqual(b));
    scheduler.run(({ cold, flush }) => {
      const sink = top.build(
        { ...CONFIG, max_flows: 10, log_interval_ms: 1000 },
        context(new Ledger(), logger, scheduler),
      );
      void sink.consume(cold('a 1499ms b 1999ms |', { a: [rec()], b: [rec({ sourceTransportPort: 2 })] }));
      flush();
    });
    expect(lines.map((l) => [l.msg, l.window_bytes, l.flows.length])).toEqual([
      ['top flows', 1000, 1],
      ['top flows', 2000, 2],
      ['top flows', 2000, 2],
      ['top flows', 2000, 2],
    ]);
  });
});
