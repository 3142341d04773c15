import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { Subject, Subscription, from, type SchedulerAction, type SchedulerLike } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../../src/cli/io.js';
import { runCli } from '../../../src/cli/program.js';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger, type Logger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import { flowRecordProblem, type FlowBatch, type FlowRecord } from '../../../src/records/flow.js';
import fileModule from '../../../src/sinks/file.js';
import stdoutModule from '../../../src/sinks/stdout.js';
import fileReplayModule, {
  MAX_LINE_CHARS,
  Pacer,
  compareRotation,
  type FileReplayConfig,
} from '../../../src/sources/file_replay.js';
import { SourceError } from '../../../src/sources/errors.js';
import { cleanup, makeTempDir } from '../../fixtures/cleanup.js';
import { flowRecord, variedFlowRecord } from '../../fixtures/records.js';

afterAll(() => cleanup.dispose());

/**
 * Record i, some with extra (firewall) fields, so the replay is held to every kind of line the file
 * sink writes.
 */
function record(i: number): FlowRecord {
  const r = variedFlowRecord(i);
  if (i % 13 === 6) Object.assign(r, { firewallAction: 'block', firewallRuleId: 7 });
  return r;
}

const records = (first: number, count: number): FlowRecord[] =>
  Array.from({ length: count }, (_, k) => record(first + k));

function batchesOf(all: FlowRecord[], size: number): FlowBatch[] {
  const out: FlowBatch[] = [];
  for (let i = 0; i < all.length; i += size) out.push(all.slice(i, i + size));
  return out;
}

/** Bytes of the JSON lines of `all`. */
const jsonBytes = (all: FlowRecord[]): number =>
  all.reduce((n, r) => n + Buffer.byteLength(`${JSON.stringify(r)}\n`), 0);

/** Writes `all` with the real file sink, rotating every `maxFileBytes`. */
async function writeWithFileSink(file: string, all: FlowRecord[], maxFileBytes = 0): Promise<void> {
  const ledger = new Ledger();
  const sink = fileModule.build(
    { path: file, max_file_bytes: maxFileBytes, max_files: 100 },
    { id: 'w', logger: silentLogger(), ledger, counters: ledger.stage('w', 'file', 'sink') },
  );
  await sink.consume(from(batchesOf(all, 300)));
  await sink.close();
  expect(ledger.stage('w', 'file').snapshot()).toMatchObject({ sent: all.length, dropped: {} });
}

interface Run {
  batches: FlowBatch[];
  /** Scheduler time of each batch. */
  times: number[];
  context: ComponentContext;
  done: Promise<void>;
  stop$: Subject<void>;
  subscription: Subscription;
}

function contextFor(ledger = new Ledger(), logger: Logger = silentLogger()): ComponentContext {
  return { id: 'replay', logger, ledger, counters: ledger.stage('replay', 'file_replay', 'source') };
}

function replay(config: FileReplayConfig, extra: Partial<ComponentContext> = {}): Run {
  const stop$ = new Subject<void>();
  const context = { ...contextFor(), stop$, ...extra };
  const batches: FlowBatch[] = [];
  const times: number[] = [];
  let subscription!: Subscription;
  const done = new Promise<void>((resolve, reject) => {
    subscription = fileReplayModule.build(config, context).subscribe({
      next: (b) => {
        batches.push(b);
        times.push(context.scheduler?.now() ?? 0);
      },
      error: reject,
      complete: resolve,
    });
  });
  return { batches, times, context, done, stop$, subscription };
}

/** A logger whose lines are kept as objects. */
function capturingLogger(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level: 'info' },
    { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) },
  );
  return { logger, lines };
}

const sizes = (batches: FlowBatch[]): number[] => batches.map((b) => b.length);

describe('file_replay', () => {
  it('replays exactly what the file sink wrote across its rotated files, oldest first, in batches of 1000', async () => {
    const dir = makeTempDir('rxrpl');
    const sent = records(0, 2500);
    // A size that takes exactly four files: 3.5 files' worth each, and lines are far shorter.
    await writeWithFileSink(path.join(dir, 'flows.jsonl'), sent, Math.ceil(jsonBytes(sent) / 3.5));
    expect(fs.readdirSync(dir).sort()).toEqual([
      'flows.jsonl',
      'flows.jsonl.1',
      'flows.jsonl.2',
      'flows.jsonl.3',
    ]);

    const run = replay({ paths: [path.join(dir, 'flows.jsonl*')] });
    await run.done;
    expect(sizes(run.batches)).toEqual([1000, 1000, 500]);
    expect(run.batches.flat()).toEqual(sent);
    expect(run.context.counters.snapshot()).toEqual({
      id: 'replay',
      type: 'file_replay',
      received: 2500,
      sent: 2500,
      dropped: {},
      inFlight: 0,
    });
  });

  it('emits batches of batch_size, spanning files, and a last partial one', async () => {
    const dir = makeTempDir('rxrpl');
    await writeWithFileSink(path.join(dir, 'a.jsonl'), records(0, 10));
    await writeWithFileSink(path.join(dir, 'b.jsonl'), records(10, 15));
    const run = replay({ paths: [path.join(dir, 'a.jsonl'), path.join(dir, 'b.jsonl')], batch_size: 7 });
    await run.done;
    expect(sizes(run.batches)).toEqual([7, 7, 7, 4]);
    expect(run.batches.flat()).toEqual(records(0, 25));
  });

  it('reads paths in the order given, a pattern oldest first, and a file named twice once', async () => {
    const dir = makeTempDir('rxrpl');
    const p = (name: string): string => path.join(dir, name);
    fs.writeFileSync(p('x.jsonl'), `${JSON.stringify(record(0))}\n`);
    fs.writeFileSync(p('f.jsonl.2'), `${JSON.stringify(record(1))}\n`);
    fs.writeFileSync(p('f.jsonl.10'), `${JSON.stringify(record(2))}\n`);
    fs.writeFileSync(p('f.jsonl'), `${JSON.stringify(record(3))}\n`);
    fs.writeFileSync(p('f.jsonl.1'), `${JSON.stringify(record(4))}\n`);
    fs.mkdirSync(p('f.jsonl.d'));
    const run = replay({ paths: [p('x.jsonl'), p('f.jsonl*'), p('x.jsonl'), p('f.jsonl')] });
    await run.done;
    expect(run.batches.flat()).toEqual([0, 2, 1, 4, 3].map(record));
  });

  it('orders rotated names oldest first: higher numbers first, the live file last', () => {
    expect(['f.1', 'f', 'f.10', 'g', 'f.2', 'e.3', '/d/f.3'].sort(compareRotation)).toEqual([
      'e.3',
      'f.10',
      '/d/f.3',
      'f.2',
      'f.1',
      'f',
      'g',
    ]);
  });

  it('counts malformed lines as parse_failed with exact counts, skips blank ones, and logs them with file:line', async () => {
    const dir = makeTempDir('rxrpl');
    const file = path.join(dir, 'bad.jsonl');
    const good = (i: number): string => JSON.stringify(record(i));
    fs.writeFileSync(
      file,
      [
        good(0),
        'not json',
        good(1),
        '',
        '{"ipVersion":4}',
        '[1,2]',
        '   ',
        '42',
        JSON.stringify({ ...record(9), octetDeltaCount: '12' }),
        good(2),
        good(3).slice(0, 40),
      ].join('\n'),
    );
    const { logger, lines } = capturingLogger();
    const run = replay({ paths: [file] }, { logger });
    await run.done;
    expect(run.batches).toEqual([[record(0), record(1), record(2)]]);
    expect(run.context.counters.snapshot()).toMatchObject({
      received: 9,
      sent: 3,
      dropped: { parse_failed: 6 },
      inFlight: 0,
    });
    const warnings = lines.filter((l) => l.level === 40);
    // The first loss is logged at once; the rest of the interval's are summed when the replay ends.
    expect(warnings.map((w) => [w.msg, w.dropped, w.cause])).toEqual([
      ['file replay: lines skipped', { parse_failed: 1 }, expect.stringMatching(`^${file}:2: not JSON: `)],
      ['file replay: lines skipped', { parse_failed: 5 }, expect.stringMatching(`^${file}:11: not JSON: `)],
    ]);
    expect(lines.find((l) => l.msg === 'file replay: done')).toMatchObject({
      files: 1,
      records: 3,
      skipped: 6,
    });
  });

  it('names why a value is not a flow record', () => {
    const base = flowRecord();
    expect(flowRecordProblem(base)).toBeUndefined();
    expect(flowRecordProblem({ ...base, interfaceName: 'eth0', custom: { a: 1 } })).toBeUndefined();
    const v6 = { ...flowRecord({ ipVersion: 6 }), sourceIPv6Address: '::1', destinationIPv6Address: '::2' };
    expect(flowRecordProblem(v6)).toBeUndefined();
    // A layer-2 flow (not IP) has no addresses.
    const l2 = { ...base, ipVersion: 0 } as Record<string, unknown>;
    delete l2.sourceIPv4Address;
    delete l2.destinationIPv4Address;
    expect(flowRecordProblem(l2)).toBeUndefined();
    const cases: [unknown, string][] = [
      [null, 'not a JSON object'],
      [[base], 'not a JSON object'],
      ['x', 'not a JSON object'],
      [{ ...base, ipVersion: 5 }, 'ipVersion is not 0, 4 or 6'],
      [{ ...base, destinationIPv4Address: 1 }, 'destinationIPv4Address is not a string'],
      [{ ...base, ipVersion: 6 }, 'sourceIPv6Address is not a string'],
      [{ ...base, packetDeltaCount: null }, 'packetDeltaCount is not a number'],
      [{ ...base, ethernetType: undefined }, 'ethernetType is not a number'],
      [{ ...base, flowDirection: 2 }, 'flowDirection is not 0 or 1'],
      [{ ...base, destinationMacAddress: 0 }, 'destinationMacAddress is not a string'],
    ];
    expect(cases.map(([v]) => flowRecordProblem(v))).toEqual(cases.map(([, why]) => why));
  });

  it('skips a line longer than MAX_LINE_CHARS without holding it, and reads on after it', async () => {
    const dir = makeTempDir('rxrpl');
    const file = path.join(dir, 'long.jsonl');
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, `${JSON.stringify(record(0))}\n`);
    const block = 'x'.repeat(1 << 20);
    for (let n = 0; n <= MAX_LINE_CHARS; n += block.length) fs.writeSync(fd, block);
    fs.writeSync(fd, `\n${JSON.stringify(record(1))}\n`);
    fs.closeSync(fd);
    const run = replay({ paths: [file] });
    await run.done;
    expect(run.batches.flat()).toEqual([record(0), record(1)]);
    expect(run.context.counters.snapshot()).toMatchObject({
      received: 3,
      sent: 2,
      dropped: { parse_failed: 1 },
    });
  });

  it('fails when built with a path that names nothing, saying which and what to do', () => {
    const dir = makeTempDir('rxrpl');
    fs.writeFileSync(path.join(dir, 'flows.jsonl'), '');
    const attempt = (paths: string[]): unknown => {
      try {
        fileReplayModule.build({ paths }, contextFor());
      } catch (err) {
        return err;
      }
      return undefined;
    };
    const missing = path.join(dir, 'missing.jsonl');
    const err = attempt([path.join(dir, 'flows.jsonl'), missing]);
    expect(err).toBeInstanceOf(SourceError);
    expect(err).toMatchObject({
      code: 'ENOFILE',
      message: `file replay ${missing}: no such file; check the path in paths`,
    });
    expect(attempt([path.join(dir, 'nothing*.jsonl')])).toMatchObject({
      code: 'ENOMATCH',
      message: `file replay ${dir}/nothing*.jsonl: no file matches; check the pattern in paths`,
    });
    expect(attempt([path.join(dir, 'no-dir', '*.jsonl')])).toMatchObject({
      code: 'ENOMATCH',
      message: `file replay ${dir}/no-dir/*.jsonl: no file matches; check the pattern in paths`,
    });
    expect(attempt([dir])).toMatchObject({
      code: 'EISDIR',
      message: `file replay ${dir}: is a directory; name its files, e.g. ${dir}/*.jsonl`,
    });
    expect(attempt([path.join(dir, '*', 'flows.jsonl')])).toMatchObject({
      code: 'EPATTERN',
      message: `file replay ${dir}/*/flows.jsonl: wildcards work in the file name only; list each directory's files`,
    });
  });

  it('fails the stream, naming the file, when a listed file is gone by the time it is read', async () => {
    const dir = makeTempDir('rxrpl');
    const file = path.join(dir, 'gone.jsonl');
    fs.writeFileSync(file, `${JSON.stringify(record(0))}\n`);
    const context = contextFor();
    const source = fileReplayModule.build({ paths: [file] }, context);
    fs.rmSync(file);
    const err = await new Promise<unknown>((resolve) =>
      source.subscribe({ error: resolve, complete: () => resolve(undefined) }),
    );
    expect(err).toBeInstanceOf(SourceError);
    expect((err as SourceError).code).toBe('EREAD');
    expect((err as SourceError).message).toMatch(
      new RegExp(
        `^file replay ${file}: cannot read: ENOENT: .*; check that the file exists and is readable$`,
      ),
    );
  });

  it('on stop$ emits what it has read and completes, mid-file', async () => {
    const dir = makeTempDir('rxrpl');
    const file = path.join(dir, 'big.jsonl');
    await writeWithFileSink(file, records(0, 20_000));
    const stop$ = new Subject<void>();
    const context = { ...contextFor(), stop$ };
    const batches: FlowBatch[] = [];
    let completed = false;
    await new Promise<void>((resolve, reject) => {
      fileReplayModule.build({ paths: [file], batch_size: 100 }, context).subscribe({
        next: (b) => {
          batches.push(b);
          if (batches.length === 1) stop$.next();
        },
        error: reject,
        complete: () => {
          completed = true;
          resolve();
        },
      });
    });
    expect(completed).toBe(true);
    expect(batches).toEqual([records(0, 100)]);
    expect(context.counters.snapshot()).toMatchObject({ received: 100, sent: 100, dropped: {}, inFlight: 0 });
  });

  it('stops reading and counting once unsubscribed', async () => {
    const dir = makeTempDir('rxrpl');
    const file = path.join(dir, 'big.jsonl');
    await writeWithFileSink(file, records(0, 5000));
    const context = contextFor();
    let first!: () => void;
    const emitted = new Promise<void>((resolve) => (first = resolve));
    const sub = fileReplayModule.build({ paths: [file], batch_size: 100 }, context).subscribe(() => first());
    await emitted;
    sub.unsubscribe();
    const sent = context.counters.sent;
    // Another read of the whole file completes; by then a replay still running would have counted more.
    const again = replay({ paths: [file] });
    await again.done;
    expect(again.context.counters.sent).toBe(5000);
    expect(context.counters.snapshot()).toMatchObject({ received: sent, sent, inFlight: 0 });
    expect(sent).toBeLessThan(5000);
  });
});

/**
 * A clock for the pacing tests: the replay reads real files, so RxJS's virtual-time schedulers
 * (which run synchronously) cannot drive it; this one fires each timer on the next turn of the
 * event loop and moves its clock forward by the timer's delay. The replay has at most one timer
 * at a time, so the clock is the replay's schedule, exactly.
 */
class SteppingScheduler implements SchedulerLike {
  time = 0;

  now(): number {
    return this.time;
  }

  schedule<T>(work: (this: SchedulerAction<T>, state?: T) => void, delay = 0, state?: T): Subscription {
    const subscription = new Subscription();
    setImmediate(() => {
      if (subscription.closed) return;
      this.time += delay;
      work.call(subscription as unknown as SchedulerAction<T>, state);
    });
    return subscription;
  }
}

describe('file_replay pacing', () => {
  /** Records whose flowEndMilliseconds are these offsets from the first (which ends after every start). */
  function timedFile(offsets: number[]): string {
    const dir = makeTempDir('rxrpl');
    const file = path.join(dir, 'timed.jsonl');
    const text = offsets
      .map((o, i) => JSON.stringify({ ...record(i), flowEndMilliseconds: 1_700_000_001_000 + o }))
      .join('\n');
    fs.writeFileSync(file, `${text}\n`);
    return file;
  }

  const indexes = (batches: FlowBatch[]): number[][] =>
    batches.map((b) => b.map((r) => r.flowStartMilliseconds - 1_700_000_000_000));

  it('speed N replays at N times the records own pace, by flowEndMilliseconds', async () => {
    const file = timedFile([0, 1000, 1000, 3000, 2000, 5000]);
    const run = replay({ paths: [file], speed: 2 }, { scheduler: new SteppingScheduler() });
    await run.done;
    // Record 4 ends before record 3 and is due as soon as it is read.
    expect(run.times).toEqual([0, 500, 1500, 2500]);
    expect(indexes(run.batches)).toEqual([[0], [1, 2], [3, 4], [5]]);
  });

  it('rate_limit_records_per_s spaces records 1000/R ms apart, and with speed each waits for the later', async () => {
    const file = timedFile([0, 1000, 1000, 3000, 2000, 5000]);
    const limited = replay(
      { paths: [file], rate_limit_records_per_s: 4 },
      { scheduler: new SteppingScheduler() },
    );
    await limited.done;
    expect(limited.times).toEqual([0, 250, 500, 750, 1000, 1250]);
    expect(indexes(limited.batches)).toEqual([[0], [1], [2], [3], [4], [5]]);

    const both = replay(
      { paths: [file], speed: 2, rate_limit_records_per_s: 2 },
      { scheduler: new SteppingScheduler() },
    );
    await both.done;
    expect(both.times).toEqual([0, 500, 1000, 1500, 2000, 2500]);
  });

  it('stop$ while a record waits ends the wait, and the records read leave at once', async () => {
    const file = timedFile([0, 0, 60_000, 60_000]);
    const scheduler = new SteppingScheduler();
    // The timer never fires by itself: the clock only moves when the test says.
    scheduler.schedule = () => new Subscription();
    const run = replay({ paths: [file], speed: 1 }, { scheduler });
    await new Promise<void>((resolve) => {
      const poll = (): void => (run.batches.length > 0 ? resolve() : void setImmediate(poll));
      poll();
    });
    run.stop$.next();
    await run.done;
    expect(indexes(run.batches)).toEqual([[0, 1], [2]]);
    expect(run.context.counters.snapshot()).toMatchObject({ received: 3, sent: 3, inFlight: 0 });
  });

  it('Pacer: due times from flowEndMilliseconds and the rate', () => {
    const speed = new Pacer(10, 0);
    expect([1000, 1500, 1200, 3000].map((end) => speed.due(end, 50))).toEqual([50, 100, 70, 250]);
    const rate = new Pacer(0, 100);
    expect([5, 5, 5].map((end) => rate.due(end, 7))).toEqual([7, 17, 27]);
    expect(new Pacer(0, 0).active).toBe(false);
  });
});

describe('file_replay in a pipeline', () => {
  const registry = new ComponentRegistry([fileReplayModule, fileModule, stdoutModule]);

  function io(): { io: CliIo; err: string[] } {
    const err: string[] = [];
    return {
      err,
      io: {
        out: () => undefined,
        err: (s) => void err.push(s),
        env: {},
        registry,
        signals: new EventEmitter(),
        exit: () => undefined,
        logger: silentLogger(),
      },
    };
  }

  it('rxflow run replays rotated files into a file sink, drains it and exits 0', async () => {
    const dir = makeTempDir('rxrpl');
    const sent = records(0, 3000);
    await writeWithFileSink(path.join(dir, 'in.jsonl'), sent, Math.ceil(jsonBytes(sent) / 2.5));
    const inputs = fs
      .readdirSync(dir)
      .sort(compareRotation)
      .map((f) => fs.readFileSync(path.join(dir, f), 'utf8'));
    expect(inputs.length).toBe(3);
    const out = path.join(dir, 'out.jsonl');
    const yaml = path.join(dir, 'replay.yaml');
    fs.writeFileSync(
      yaml,
      `sources:\n  replay: {type: file_replay, paths: ['${dir}/in.jsonl*'], batch_size: 250}\n` +
        `sinks:\n  out: {type: file, inputs: [replay], path: '${out}', max_file_bytes: 0}\n`,
    );
    const t = io();
    expect(await runCli(['run', yaml, '--no-status-socket'], t.io)).toBe(0);
    expect(t.err).toEqual([]);
    // Byte for byte: JSON.parse keeps the order of keys, and the sink wrote them with JSON.stringify.
    expect(fs.readFileSync(out, 'utf8')).toBe(inputs.join(''));
  });

  it('rxflow run with a missing file exits 1 and names it', async () => {
    const dir = makeTempDir('rxrpl');
    const yaml = path.join(dir, 'missing.yaml');
    fs.writeFileSync(
      yaml,
      `sources:\n  replay: {type: file_replay, paths: ['${dir}/none.jsonl']}\nsinks:\n  out: {type: stdout, inputs: [replay]}\n`,
    );
    const t = io();
    expect(await runCli(['run', yaml, '--no-status-socket'], t.io)).toBe(1);
    expect(t.err.join('')).toBe(
      `build sources.replay (file_replay): file replay ${dir}/none.jsonl: no such file; check the path in paths\n`,
    );
  });
});
