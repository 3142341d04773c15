import { pino } from 'pino';
import {
  NEVER,
  Observable,
  Subject,
  from,
  interval,
  map,
  merge,
  mergeMap,
  startWith,
  take,
  tap,
  timer,
  type SchedulerLike,
} from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import limitCapacityModule, {
  limitCapacity,
  type LimitCapacityOptions,
} from '../../../src/operators/limit_capacity.js';
import { OperatorError } from '../../../src/operators/flow-key.js';
import { Ledger, StageCounters } from '../../../src/ledger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch, FlowRecord } from '../../../src/records.js';
import { TrackingScheduler } from './tracking-scheduler.js';
import { flowRecord } from '../../fixtures/records.js';

function rec(port: number): FlowRecord {
  return flowRecord({
    sourceTransportPort: port,
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
  });
}

/** A batch of n records whose ports start at `tag`, so batches are told apart. */
function batch(tag: number, n: number): FlowBatch {
  return Array.from({ length: n }, (_, i) => rec(tag + i));
}

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

interface LogLine {
  at: number;
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** A pino logger whose lines are kept with the (virtual) time they were written at. */
function captureLogger(now: () => number) {
  const lines: LogLine[] = [];
  const logger = pino(
    { level: 'info', base: undefined, timestamp: false },
    {
      write: (s: string) => {
        const line = JSON.parse(s) as LogLine;
        line.at = now();
        lines.push(line);
      },
    },
  );
  return { logger, lines };
}

/** Emits each group of batches synchronously at its frame, then completes at `end`. */
function bursts(ts: SchedulerLike, groups: [number, FlowBatch[]][], end: number): Observable<FlowBatch> {
  return merge(
    ...groups.map(([at, batches]) => timer(at, ts).pipe(mergeMap(() => from(batches)))),
    timer(end, ts).pipe(mergeMap(() => from([] as FlowBatch[]))),
  );
}

function options(
  o: Partial<LimitCapacityOptions> & Pick<LimitCapacityOptions, 'counters' | 'logger'>,
): LimitCapacityOptions {
  return { bufferLength: 3, logIntervalMs: 10, ...o };
}

describe('limit_capacity', () => {
  it('hands batches over in the same frame when the next stage keeps up', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    ts.run(({ cold, expectObservable }) => {
      const { logger, lines } = captureLogger(() => ts.now());
      const values = { a: batch(0, 2), b: batch(10, 2), c: batch(20, 2) };
      expectObservable(
        cold('a b c |', values).pipe(
          limitCapacity(options({ bufferLength: 1, counters, logger, scheduler: ts })),
        ),
      ).toBe('a b c |', values);
      ts.schedule(() => expect(lines).toEqual([]), 10);
    });
    expect(counters.snapshot()).toEqual({
      id: 'lim',
      type: 'limit_capacity',
      received: 6,
      sent: 6,
      dropped: {},
      inFlight: 0,
    });
  });

  it('drops whole batches beyond buffer_length from a synchronous burst, and hands the rest over on completion', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    let lines: LogLine[] = [];
    ts.run(({ cold, expectObservable }) => {
      const captured = captureLogger(() => ts.now());
      lines = captured.lines;
      const values = { a: batch(0, 1), b: batch(10, 2), c: batch(20, 3), d: batch(30, 4), e: batch(40, 5) };
      expectObservable(
        cold('(abcde|)', values).pipe(
          limitCapacity(options({ counters, logger: captured.logger, scheduler: ts })),
        ),
      ).toBe('(abc|)', values);
    });
    expect(counters.snapshot()).toEqual({
      id: 'lim',
      type: 'limit_capacity',
      received: 15,
      sent: 6,
      dropped: { limiter_dropped: 9 },
      inFlight: 0,
    });
    // d is logged at once; e, lost while the log interval runs, is logged when the stage stops.
    expect(
      lines.map(({ at, msg, dropped_records, dropped_batches, total_dropped_records }) => ({
        at,
        msg,
        dropped_records,
        dropped_batches,
        total_dropped_records,
      })),
    ).toEqual([
      {
        at: 0,
        msg: 'limit_capacity: next stage cannot keep up; flows dropped',
        dropped_records: 4,
        dropped_batches: 1,
        total_dropped_records: 4,
      },
      {
        at: 0,
        msg: 'limit_capacity: next stage cannot keep up; flows dropped',
        dropped_records: 5,
        dropped_batches: 1,
        total_dropped_records: 9,
      },
    ]);
  });

  it('logs losses at most once per log_interval_ms: the first at once, the rest summed per interval', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    let lines: LogLine[] = [];
    ts.run(({ expectObservable }) => {
      const captured = captureLogger(() => ts.now());
      lines = captured.lines;
      // buffer_length 1: in each burst the first batch is queued and the second dropped.
      const source = bursts(
        ts,
        [
          [0, [batch(0, 1), batch(100, 1)]],
          [3, [batch(0, 1), batch(100, 2)]],
          [5, [batch(0, 1), batch(100, 4)]],
          [12, [batch(0, 1), batch(100, 8)]],
          [35, [batch(0, 1), batch(100, 16)]],
        ],
        50,
      );
      expectObservable(
        source.pipe(
          limitCapacity(
            options({
              bufferLength: 1,
              logIntervalMs: 10,
              counters,
              logger: captured.logger,
              scheduler: ts,
              id: 'lim',
            }),
          ),
        ),
      ).toBe('a 2ms a 1ms a 6ms a 22ms a 14ms |', { a: batch(0, 1) });
    });
    // 0: first loss, logged at once. 3 and 5: summed, logged when the interval ends at 10. 12: the
    // interval restarted at 10, so it waits for 20. 30: nothing to log, the timer stops. 35: logged
    // at once again.
    expect(
      lines.map((l) => [
        l.at,
        l.level,
        l.dropped_records,
        l.dropped_batches,
        l.total_dropped_records,
        l.buffer_length,
      ]),
    ).toEqual([
      [0, 40, 1, 1, 1, 1],
      [10, 40, 6, 2, 7, 1],
      [20, 40, 8, 1, 15, 1],
      [35, 40, 16, 1, 31, 1],
    ]);
    expect(lines[0]!.msg).toBe('limit_capacity lim: next stage cannot keep up; flows dropped');
    expect(counters.snapshot()).toMatchObject({
      received: 36,
      sent: 5,
      dropped: { limiter_dropped: 31 },
      inFlight: 0,
    });
  });

  it('with a slow asynchronous consumer, holds at most buffer_length batches and drops the rest', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    const inFlight: number[] = [];
    ts.run(({ cold, expectObservable }) => {
      const { logger } = captureLogger(() => ts.now());
      const letters = 'abcdefghijklmnopqrst';
      const values = Object.fromEntries([...letters].map((l, i) => [l, batch(i * 100, 10)]));
      const produced = cold(`${letters}|`, values);
      // Samples what the stage holds right after it took each batch.
      const sampled = new Observable<FlowBatch>((sub) =>
        produced.subscribe({
          next: (b) => {
            sub.next(b);
            inFlight.push(counters.snapshot().inFlight);
          },
          complete: () => sub.complete(),
        }),
      );
      const acks = new Subject<number>();
      // The consumer takes 5 ms per batch and asks for the next one when done.
      const consumed = sampled.pipe(
        limitCapacity(
          options({ bufferLength: 3, counters, logger, scheduler: ts, demand$: acks.pipe(startWith(1)) }),
        ),
        tap(() => ts.schedule(() => acks.next(1), 5)),
      );
      // Worked by hand: a goes at 0; b, c, d queue; e, f drop; each ack at 5, 10, 15 hands over the
      // head (b, c, d) after that frame's batch found the queue full; g, l, q refill the slot each
      // ack freed; completion at 20 hands over g, l, q.
      expectObservable(consumed).toBe('a 4ms b 4ms c 4ms d 4ms (glq|)', values);
    });
    expect(Math.max(...inFlight)).toBe(30);
    expect(counters.snapshot()).toEqual({
      id: 'lim',
      type: 'limit_capacity',
      received: 200,
      sent: 70,
      dropped: { limiter_dropped: 130 },
      inFlight: 0,
    });
  });

  it('keeps dropped = produced - delivered exactly over a long run with a consumer slower than the producer', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    let delivered = 0;
    let maxHeld = 0;
    ts.run(() => {
      const { logger } = captureLogger(() => ts.now());
      const acks = new Subject<number>();
      interval(1, ts)
        .pipe(
          take(1000),
          map((i) => batch(i, 100)),
          tap(() => (maxHeld = Math.max(maxHeld, counters.snapshot().inFlight))),
          limitCapacity(
            options({
              bufferLength: 5,
              logIntervalMs: 1000,
              counters,
              logger,
              scheduler: ts,
              demand$: acks.pipe(startWith(1)),
            }),
          ),
        )
        .subscribe(() => {
          delivered++;
          ts.schedule(() => acks.next(1), 7);
        });
    });
    // One batch every 7 ms from frame 1 to 995 (143 of them), then the 5 queued on completion at 1000.
    expect(delivered).toBe(148);
    expect(maxHeld).toBe(500);
    expect(counters.snapshot()).toEqual({
      id: 'lim',
      type: 'limit_capacity',
      received: 100_000,
      sent: 14_800,
      dropped: { limiter_dropped: 100_000 - 14_800 },
      inFlight: 0,
    });
  });

  it('hands everything over on a flush$ value, regardless of demand', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    ts.run(({ cold, hot, expectObservable }) => {
      const { logger } = captureLogger(() => ts.now());
      const values = { a: batch(0, 1), b: batch(10, 1) };
      const flush$ = hot('5ms f');
      expectObservable(
        cold('a b', values).pipe(
          limitCapacity(options({ counters, logger, scheduler: ts, demand$: NEVER, flush$ })),
        ),
        '^ 10ms !',
      ).toBe('5ms (ab)', values);
    });
    expect(counters.snapshot()).toMatchObject({ received: 2, sent: 2, dropped: {}, inFlight: 0 });
  });

  it('drops what it holds as shutdown, logs pending losses and clears its timers when unsubscribed', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    let lines: LogLine[] = [];
    let tracking!: TrackingScheduler;
    ts.run(({ cold, expectObservable }) => {
      tracking = new TrackingScheduler(ts);
      const captured = captureLogger(() => ts.now());
      lines = captured.lines;
      const values = { a: batch(0, 1), b: batch(10, 2), c: batch(20, 3) };
      expectObservable(
        cold('(ab) 5ms c', values).pipe(
          limitCapacity(
            options({
              bufferLength: 1,
              logIntervalMs: 100,
              counters,
              logger: captured.logger,
              scheduler: tracking,
              demand$: NEVER,
            }),
          ),
        ),
        '^ 20ms !',
      ).toBe('');
    });
    // The log timer armed by b's loss and everything else is closed.
    expect(tracking.scheduled.length).toBeGreaterThan(0);
    expect(tracking.scheduled.every((s) => s.closed)).toBe(true);
    expect(counters.snapshot()).toEqual({
      id: 'lim',
      type: 'limit_capacity',
      received: 6,
      sent: 0,
      dropped: { limiter_dropped: 5, shutdown: 1 },
      inFlight: 0,
    });
    expect(lines.map((l) => [l.at, l.dropped_records])).toEqual([
      [0, 2],
      [21, 3],
    ]);
  });

  it('passes an input error on and counts what it held as shutdown', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    ts.run(({ cold, expectObservable }) => {
      const { logger } = captureLogger(() => ts.now());
      const values = { a: batch(0, 1), b: batch(10, 2) };
      const boom = new Error('source failed');
      expectObservable(
        cold('a b #', values, boom).pipe(
          limitCapacity(options({ counters, logger, scheduler: ts, demand$: NEVER })),
        ),
      ).toBe('--#', undefined, boom);
    });
    expect(counters.snapshot()).toMatchObject({
      received: 3,
      sent: 0,
      dropped: { shutdown: 3 },
      inFlight: 0,
    });
  });

  it('errors on a demand that is not a positive number', () => {
    const ts = testScheduler();
    const counters = new StageCounters('lim', 'limit_capacity');
    ts.run(({ cold, hot, expectObservable }) => {
      const { logger } = captureLogger(() => ts.now());
      const demand$ = hot<number>('--z', { z: 0 });
      expectObservable(
        cold('a', { a: batch(0, 1) }).pipe(
          limitCapacity(options({ counters, logger, scheduler: ts, demand$, id: 'l' })),
        ),
      ).toBe(
        '--#',
        undefined,
        new OperatorError('EDEMAND', 'limit_capacity l: demand must be a positive number of batches, got 0'),
      );
    });
    expect(counters.snapshot()).toMatchObject({
      received: 1,
      sent: 0,
      dropped: { shutdown: 1 },
      inFlight: 0,
    });
  });

  it('hands over in a microtask by default, so a synchronous burst beyond buffer_length is cut', async () => {
    const counters = new StageCounters('lim', 'limit_capacity');
    const { logger, lines } = captureLogger(() => 0);
    const input = new Subject<FlowBatch>();
    const out: FlowBatch[] = [];
    const sub = input
      .pipe(limitCapacity({ bufferLength: 2, logIntervalMs: 60_000, counters, logger }))
      .subscribe((b) => out.push(b));
    input.next(batch(0, 1));
    input.next(batch(10, 1));
    input.next(batch(20, 1));
    expect(out).toEqual([]);
    await new Promise((resolve) => setImmediate(resolve));
    expect(out).toEqual([batch(0, 1), batch(10, 1)]);
    input.next(batch(30, 1));
    await new Promise((resolve) => setImmediate(resolve));
    expect(out).toEqual([batch(0, 1), batch(10, 1), batch(30, 1)]);
    sub.unsubscribe();
    expect(lines).toHaveLength(1);
    expect(counters.snapshot()).toMatchObject({
      received: 4,
      sent: 3,
      dropped: { limiter_dropped: 1 },
      inFlight: 0,
    });
  });

  it('rejects a bad config at build time', () => {
    const counters = new StageCounters('lim', 'limit_capacity');
    const { logger } = captureLogger(() => 0);
    expect(() => limitCapacity({ bufferLength: 0, logIntervalMs: 1, counters, logger })).toThrow(
      'limit_capacity: buffer_length must be an integer >= 1, got 0',
    );
    expect(() => limitCapacity({ bufferLength: 1, logIntervalMs: -1, counters, logger })).toThrow(
      'limit_capacity: log_interval_ms must be > 0, got -1',
    );
  });
});

describe('limit_capacity module', () => {
  const registry = new ComponentRegistry([limitCapacityModule]);

  it('validates its example, fills defaults, rejects unknown options', () => {
    expect(registry.validate(limitCapacityModule, limitCapacityModule.example as never).ok).toBe(true);
    expect(registry.validate(limitCapacityModule, {})).toMatchObject({
      ok: true,
      config: { buffer_length: 50, log_interval_ms: 15000 },
    });
    expect(registry.validate(limitCapacityModule, { buffer_length: 0 }).ok).toBe(false);
    expect(registry.validate(limitCapacityModule, { buffer: 5 }).ok).toBe(false);
  });

  it('builds with the context and takes demand$ from the hooks', () => {
    const ts = testScheduler();
    const ledger = new Ledger();
    const counters = ledger.stage('lim', 'limit_capacity');
    ts.run(({ cold, hot, expectObservable }) => {
      const { logger } = captureLogger(() => ts.now());
      const values = { a: batch(0, 1), b: batch(10, 1) };
      const op = limitCapacityModule.build(
        { buffer_length: 5, log_interval_ms: 1000 },
        { id: 'lim', logger, ledger, counters, scheduler: ts },
        { demand$: hot<number>('---x', { x: 2 }) },
      );
      expectObservable(cold('ab', values).pipe(op), '^ 10ms !').toBe('---(ab)', values);
    });
    expect(counters.snapshot()).toMatchObject({ received: 2, sent: 2, inFlight: 0 });
  });
});
