import { Subject, type Subscription } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { WhenFull } from '../../../src/component.js';
import { StageCounters } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { checkPipeline } from '../../../src/pipeline/load.js';
import { formatProblem } from '../../../src/config/errors.js';
import { defaultRegistry } from '../../../src/pipeline/registry.js';
import type { FlowBatch } from '../../../src/records/flow.js';
import { SinkBuffer } from '../../../src/sinks/buffer.js';
import { flowRecord } from '../../fixtures/records.js';

/** Records numbered by their source port, so what reaches the sink names itself. */
const batch = (from: number, count: number): FlowBatch =>
  Array.from({ length: count }, (_, k) => flowRecord({ sourceTransportPort: from + k }));
const ports = (batches: FlowBatch[]): number[] => batches.flat().map((r) => r.sourceTransportPort);

/** A buffer in front of a sink that holds what it is handed until `write(n)`. */
function setup(maxRecords: number, whenFull: WhenFull) {
  const counters = new StageCounters('out', 'test');
  const buffer = new SinkBuffer({ maxRecords, whenFull }, counters, silentLogger(), 'out');
  const fullness: boolean[] = [];
  buffer.onFull((full) => fullness.push(full));
  const input = new Subject<FlowBatch>();
  const handed: FlowBatch[] = [];
  let completed = false;
  const subscription: Subscription = input
    .pipe(buffer.operator())
    .subscribe({ next: (b) => handed.push(b), complete: () => (completed = true) });
  const write = (n: number): void => counters.addSent(n);
  return { counters, input, handed, fullness, subscription, write, done: () => completed };
}

describe('the buffer in front of a sink', () => {
  it('drop_newest: counts every record handed, keeps what fits the bound (what the sink holds counts) and drops the rest', () => {
    const { counters, input, handed, write } = setup(10, 'drop_newest');
    input.next(batch(0, 6));
    input.next(batch(6, 7));
    expect(ports(handed)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    write(4);
    input.next(batch(13, 6));
    expect(ports(handed).slice(10)).toEqual([13, 14, 15, 16]);
    const { received, sent, dropped, inFlight } = counters.snapshot();
    expect([received, sent, dropped, inFlight]).toEqual([19, 4, { sink_buffer_full: 5 }, 10]);
  });

  it('drop_oldest without a sink that gives records back: what does not fit is the oldest arriving', () => {
    const { counters, input, handed } = setup(5, 'drop_oldest');
    input.next(batch(0, 3));
    input.next(batch(3, 4));
    expect(ports(handed)).toEqual([0, 1, 2, 5, 6]);
    expect(counters.snapshot()).toMatchObject({ received: 7, dropped: { sink_buffer_full: 2 }, inFlight: 5 });
  });

  it('block: a batch that finds the sink full waits and goes as the sink writes; nothing is dropped; the sources are held meanwhile', () => {
    const { counters, input, handed, fullness, write, done } = setup(10, 'block');
    input.next(batch(0, 6));
    input.next(batch(6, 6)); // room before it: handed whole, one batch past the bound
    input.next(batch(12, 3)); // full: waits here
    expect(ports(handed)).toEqual(Array.from({ length: 12 }, (_, k) => k));
    expect(fullness).toEqual([true]);
    write(2); // the sink holds 10 of 12: still full
    expect(handed).toHaveLength(2);
    write(1); // room: the waiting batch goes, and the sink is full again with it
    expect(ports(handed).slice(12)).toEqual([12, 13, 14]);
    expect(fullness).toEqual([true]);
    write(12);
    expect(fullness).toEqual([true, false]);
    input.complete();
    expect(done()).toBe(true);
    expect(counters.snapshot()).toMatchObject({ received: 15, sent: 15, dropped: {}, inFlight: 0 });
  });

  it('block: what a source that cannot wait sends past another buffer_max_records waiting is dropped newest', () => {
    const { counters, input, handed } = setup(4, 'block');
    input.next(batch(0, 4));
    input.next(batch(4, 3));
    input.next(batch(7, 3));
    expect(ports(handed)).toEqual([0, 1, 2, 3]);
    expect(counters.snapshot()).toMatchObject({
      received: 10,
      dropped: { sink_buffer_full: 2 },
      inFlight: 8,
    });
  });

  it('block: at the end of the input what waits is handed over; on unsubscribe it is counted shutdown and the sources are let go', () => {
    const ended = setup(2, 'block');
    ended.input.next(batch(0, 2));
    ended.input.next(batch(2, 2));
    ended.input.complete();
    expect(ports(ended.handed)).toEqual([0, 1, 2, 3]);
    expect(ended.counters.snapshot()).toMatchObject({ received: 4, dropped: {}, inFlight: 4 });

    const left = setup(2, 'block');
    left.input.next(batch(0, 2));
    left.input.next(batch(2, 2));
    left.subscription.unsubscribe();
    expect(left.fullness).toEqual([true, false]);
    expect(left.counters.snapshot()).toMatchObject({ received: 4, dropped: { shutdown: 2 }, inFlight: 2 });
    left.write(2);
    expect(left.handed).toHaveLength(1);
  });

  it('a pipeline that still names limit_capacity is refused, saying what to set instead', () => {
    const text = `sources:
  in: {type: file_replay, paths: [/x.jsonl]}
transforms:
  limited: {type: limit_capacity, inputs: [in], buffer_length: 100}
sinks:
  out: {type: stdout, inputs: [limited]}
`;
    const result = checkPipeline(text, 'old.yaml', { registry: defaultRegistry(), env: {} });
    expect(result.problems.map(formatProblem)).toEqual([
      "old.yaml:4:19: transforms.limited.type: transform type 'limit_capacity' was removed: every sink has a buffer in front of it now; remove this transform, read its input from the sinks it fed, and set buffer_max_records and when_full on them",
    ]);
  });
});
