import { pino } from 'pino';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../../src/records/flow.js';
import { ringbufTracer, type RingbufTracerOptions } from '../../../src/sources/ringbuf-tracer.js';
import { flowRecord } from '../../fixtures/records.js';

function flow(port: number): FlowRecord {
  return flowRecord({
    sourceTransportPort: port,
    destinationTransportPort: 53,
    protocolIdentifier: 17,
    octetDeltaCount: 60,
    packetDeltaCount: 1,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
    flowEndReason: 5,
  });
}

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

/** A record the kernel submits at virtual time `at`: `id` becomes the source port. */
interface Pending {
  at: number;
  id: number;
  /** The kernel put it on the ring because the flow map was full. */
  pressure?: boolean;
}

const RECORD_BYTES = 8;

/**
 * A stand-in for RingBufferReader.drain over one buffer of 8-byte records (byte 0..1 the id,
 * byte 2 the pressure flag): each drain hands over, in order, the records submitted by then.
 * `decode` is the matching decoder. Drains are logged with the virtual time they ran at.
 */
function fakeRing(ts: TestScheduler, pending: Pending[]) {
  const view = new DataView(new ArrayBuffer(pending.length * RECORD_BYTES));
  pending.forEach((p, i) => {
    view.setUint16(i * RECORD_BYTES, p.id);
    view.setUint8(i * RECORD_BYTES + 2, p.pressure ? 1 : 0);
  });
  let next = 0;
  const drains: number[] = [];
  const drain: RingbufTracerOptions['drain'] = (onRecord) => {
    drains.push(ts.now());
    let n = 0;
    while (next < pending.length && pending[next]!.at <= ts.now()) {
      onRecord(view, next * RECORD_BYTES, RECORD_BYTES);
      next++;
      n++;
    }
    return n;
  };
  const decode: RingbufTracerOptions['decode'] = (v, offset, _length, out) => {
    out.push(flow(v.getUint16(offset)));
    return v.getUint8(offset + 2) === 1;
  };
  return { drain, decode, drains };
}

interface LogLine {
  at: number;
  msg: string;
  records?: number;
  interval_ms?: number;
}

/** A pino logger whose lines are kept with the virtual time they were written at. */
function captureLogger(ts: TestScheduler) {
  const lines: LogLine[] = [];
  const logger = pino(
    { level: 'info', base: undefined, timestamp: false },
    {
      write: (s: string) => {
        const { msg, records, interval_ms } = JSON.parse(s) as LogLine;
        lines.push({ at: ts.now(), msg, records, interval_ms });
      },
    },
  );
  return { logger, lines };
}

describe('ringbufTracer', () => {
  it('drains every drain_interval_ms and emits each non-empty drain as one batch', () => {
    const ts = testScheduler();
    const ring = fakeRing(ts, [
      { at: 50, id: 1 },
      { at: 50, id: 2 },
      { at: 250, id: 3 },
    ]);
    ts.run(({ expectObservable }) => {
      const tracer = ringbufTracer({ ...ring, drainIntervalMs: 100, logIntervalMs: 10_000 });
      expectObservable(tracer, '^ 450ms !').toBe('100ms a 199ms b', {
        a: [flow(1), flow(2)],
        b: [flow(3)],
      });
    });
    expect(ring.drains).toEqual([100, 200, 300, 400]);
  });

  it('asks for a map flush once per drain whose records report map pressure', () => {
    const ts = testScheduler();
    const ring = fakeRing(ts, [
      { at: 50, id: 1, pressure: true },
      { at: 60, id: 2, pressure: true },
      { at: 70, id: 3 },
      { at: 150, id: 4 },
      { at: 250, id: 5, pressure: true },
    ]);
    const asked: number[] = [];
    ts.run(({ expectObservable }) => {
      const tracer = ringbufTracer({
        ...ring,
        drainIntervalMs: 100,
        logIntervalMs: 10_000,
        onMapPressure: () => asked.push(ts.now()),
        scheduler: ts,
      });
      expectObservable(tracer, '^ 350ms !').toBe('100ms a 99ms b 99ms c', {
        a: [flow(1), flow(2), flow(3)],
        b: [flow(4)],
        c: [flow(5)],
      });
    });
    expect(asked).toEqual([100, 300]);
  });

  it('logs how many records arrived at most once per log_interval_ms, and nothing while none do', () => {
    const ts = testScheduler();
    // One record every 100 ms from 50 to 2450, then one at 4550.
    const pending: Pending[] = Array.from({ length: 25 }, (_, i) => ({ at: 50 + 100 * i, id: i + 1 }));
    pending.push({ at: 4550, id: 100 });
    const ring = fakeRing(ts, pending);
    let lines: LogLine[] = [];
    ts.run(() => {
      const captured = captureLogger(ts);
      lines = captured.lines;
      const tracer = ringbufTracer({
        ...ring,
        drainIntervalMs: 100,
        logIntervalMs: 1000,
        logger: captured.logger,
      });
      const sub = tracer.subscribe();
      ts.schedule(() => sub.unsubscribe(), 5000);
    });
    const msg = 'ring buffer flows received';
    expect(lines).toEqual([
      { at: 1000, msg, records: 10, interval_ms: 1000 },
      { at: 2000, msg, records: 10, interval_ms: 1000 },
      // The last 5 (2050..2450) are logged when the interval is up, though no record came since.
      { at: 3000, msg, records: 5, interval_ms: 1000 },
      { at: 4600, msg, records: 1, interval_ms: 1600 },
    ]);
  });

  it('on stop$ drains one last time, emits what it found and completes; nothing is drained after', () => {
    const ts = testScheduler();
    const ring = fakeRing(ts, [
      { at: 50, id: 1 },
      { at: 130, id: 2 },
    ]);
    ts.run(({ hot, expectObservable, expectSubscriptions }) => {
      const stop$ = hot('150ms s');
      const tracer = ringbufTracer({ ...ring, drainIntervalMs: 100, logIntervalMs: 10_000, stop$ });
      expectObservable(tracer).toBe('100ms a 49ms (b|)', { a: [flow(1)], b: [flow(2)] });
      expectSubscriptions(stop$.subscriptions).toBe('^ 149ms !');
    });
    expect(ring.drains).toEqual([100, 150]);
  });

  it('a drain that throws errors the stream and stops the timer', () => {
    const ts = testScheduler();
    const error = new Error('read flow_events: ring buffer consumer position out of range');
    const drains: number[] = [];
    ts.run(({ expectObservable }) => {
      const tracer = ringbufTracer({
        drain: () => {
          drains.push(ts.now());
          if (drains.length === 2) throw error;
          return 0;
        },
        decode: () => false,
        drainIntervalMs: 100,
        logIntervalMs: 10_000,
      });
      expectObservable(tracer).toBe('200ms #', undefined, error);
    });
    expect(drains).toEqual([100, 200]);
  });

  it('a record the decoder rejects errors the stream, with nothing of that drain emitted', () => {
    const ts = testScheduler();
    const ring = fakeRing(ts, [
      { at: 50, id: 1 },
      { at: 150, id: 2 },
      { at: 150, id: 3 },
    ]);
    const error = new Error('decode flow_events: record of 8 bytes is shorter than struct flow_event (152)');
    ts.run(({ expectObservable }) => {
      const tracer = ringbufTracer({
        ...ring,
        decode: (view, offset, length, out) => {
          if (view.getUint16(offset) === 3) throw error;
          return ring.decode(view, offset, length, out);
        },
        drainIntervalMs: 100,
        logIntervalMs: 10_000,
      });
      expectObservable(tracer).toBe('100ms a 99ms #', { a: [flow(1)] }, error);
    });
    expect(ring.drains).toEqual([100, 200]);
  });

  it('a map-pressure callback that throws errors the stream instead of escaping the timer', () => {
    const ts = testScheduler();
    const ring = fakeRing(ts, [{ at: 50, id: 1, pressure: true }]);
    const error = new Error('flush: flow map closed');
    ts.run(({ expectObservable }) => {
      const tracer = ringbufTracer({
        ...ring,
        drainIntervalMs: 100,
        logIntervalMs: 10_000,
        onMapPressure: () => {
          throw error;
        },
      });
      expectObservable(tracer).toBe('100ms (a#)', { a: [flow(1)] }, error);
    });
    expect(ring.drains).toEqual([100]);
  });
});
