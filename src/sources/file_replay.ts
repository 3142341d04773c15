/**
 * `file_replay`: flow records read back from JSON-lines files, as the `file` sink writes them (one
 * JSON object per line, IPFIX names). `paths` lists files or patterns; a pattern (`*`, `?`, `[...]`
 * in the file name only) reads its matches oldest first as the file sink rotates them: for one
 * base name, `flows.jsonl.4` ... `flows.jsonl.1`, then `flows.jsonl`. Entries are read in the order
 * given, a file listed twice once. The files are listed when the pipeline is built, so a missing
 * one fails the build with its path.
 *
 * Files are streamed in chunks and split into lines, never read whole; records leave in batches of
 * batch_size. Without pacing they leave as fast as the files are read: a sink that cannot keep up
 * drops what overflows its buffer (counted in the ledger), unless its `when_full` is `block`: then
 * the replay waits while that sink's buffer is full (context.hold). `speed` replays at N times
 * the records' own pace (by flowEndMilliseconds) and `rate_limit_records_per_s` caps the rate;
 * with both, a record waits for the later of the two.
 *
 * A line that is not a flow record (not JSON, not an object, a required field missing or of the
 * wrong type, or a value out of its range: see flowRecordProblem in src/records/flow.ts) is counted as
 * received and dropped as `parse_failed`, and logged with its file:line and the reason
 * (rate-limited); blank lines are skipped. The source completes at the end of the last file, or
 * when the pipeline drains (stop$), after emitting the records it has read.
 */
import fs from 'node:fs';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { Observable, asyncScheduler, type SchedulerLike, type Subscriber } from 'rxjs';
import type { ComponentContext, JsonSchema, SourceHold, SourceModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import { flowRecordProblem, type FlowBatch, type FlowRecord } from '../records/flow.js';
import { LossLog } from '../delivery/loss-log.js';
import { messageOf } from '../errors.js';
import { SourceError } from './errors.js';
import { Sleeper } from '../delivery/sleeper.js';

export interface FileReplayConfig {
  /** Files or patterns (wildcards in the file name only), read in this order. */
  paths: string[];
  /** Records per emitted batch. */
  batch_size?: number;
  /** 0: as fast as the files are read; N: N times the records' own pace. */
  speed?: number;
  /** Records per second at most; 0: no limit. */
  rate_limit_records_per_s?: number;
}

type Resolved = Required<FileReplayConfig>;

const DEFAULTS = {
  batch_size: 1000,
  speed: 0,
  rate_limit_records_per_s: 0,
} as const satisfies Partial<FileReplayConfig>;

const LOSS_LOG_INTERVAL_MS = 10_000;
/** Chunks read at once: large enough that reading costs little next to JSON.parse. */
const READ_CHUNK_BYTES = 1 << 20;
/** A "line" longer than this is not a flow record; it is skipped instead of held in memory. */
export const MAX_LINE_CHARS = 8 << 20;

// --------------------------------------------------------------------------------------------
// Files

const WILDCARD = /[*?[]/;

/** A file-name pattern as a RegExp: `*` any run, `?` one character, `[abc]`/`[!abc]` a class. */
function patternRegExp(name: string): RegExp {
  let re = '';
  for (let i = 0; i < name.length; i++) {
    const c = name[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const close = name.indexOf(']', i + 2);
      if (close < 0) {
        re += '\\[';
        continue;
      }
      let body = name.slice(i + 1, close);
      const negated = body.startsWith('!');
      if (negated) body = body.slice(1);
      re += `[${negated ? '^' : ''}${body.replace(/[\\\]^]/g, '\\$&')}]`;
      i = close;
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function rotationKey(name: string): [string, number] {
  const m = /^(.*)\.(\d+)$/.exec(name);
  return m ? [m[1]!, Number(m[2])] : [name, 0];
}

/**
 * Orders file names oldest first as the file sink rotates them: by base name, then the rotation
 * number descending, the live file (no number) last.
 */
export function compareRotation(a: string, b: string): number {
  const [baseA, nA] = rotationKey(path.basename(a));
  const [baseB, nB] = rotationKey(path.basename(b));
  if (baseA !== baseB) return baseA < baseB ? -1 : 1;
  return nB - nA;
}

function isRegularFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function expandPattern(pattern: string): string[] {
  const dir = path.dirname(pattern);
  const name = path.basename(pattern);
  if (WILDCARD.test(dir)) {
    throw new SourceError(
      'EPATTERN',
      `file replay ${pattern}: wildcards work in the file name only; list each directory's files`,
    );
  }
  const re = patternRegExp(name);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new SourceError(
        'EREAD',
        `file replay ${pattern}: ${messageOf(err)}; check the permissions of ${dir}`,
        {
          cause: err,
        },
      );
    }
    names = [];
  }
  const files = names
    .filter((n) => re.test(n))
    .map((n) => path.join(dir, n))
    .filter(isRegularFile)
    .sort(compareRotation);
  if (files.length === 0) {
    throw new SourceError('ENOMATCH', `file replay ${pattern}: no file matches; check the pattern in paths`);
  }
  return files;
}

function checkFile(file: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new SourceError('ENOFILE', `file replay ${file}: no such file; check the path in paths`, {
        cause: err,
      });
    }
    throw new SourceError('EREAD', `file replay ${file}: ${messageOf(err)}; check its permissions`, {
      cause: err,
    });
  }
  if (stat.isDirectory()) {
    throw new SourceError(
      'EISDIR',
      `file replay ${file}: is a directory; name its files, e.g. ${path.join(file, '*.jsonl')}`,
    );
  }
}

/**
 * The files `paths` names, in reading order: each entry in turn, a pattern's matches oldest first,
 * a file named twice once. Throws a SourceError naming the first path that names nothing.
 */
export function replayFiles(paths: readonly string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const entry of paths) {
    let files: string[];
    if (WILDCARD.test(path.basename(entry)) || WILDCARD.test(path.dirname(entry))) {
      files = expandPattern(entry);
    } else {
      checkFile(entry);
      files = [entry];
    }
    for (const file of files) {
      const key = path.resolve(file);
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(file);
    }
  }
  return out;
}

// --------------------------------------------------------------------------------------------
// Pacing

/**
 * When each record is due. With `speed` N, a record whose flowEndMilliseconds is T leaves at
 * start + (T - T0) / N, T0 being the first record's; a record that ends before an earlier one is
 * due at once. With a rate limit R, record k (from 0) leaves no earlier than start + k * 1000 / R.
 * `start` is the time the first record was offered.
 */
export class Pacer {
  private start = NaN;
  private firstEnd = 0;
  private count = 0;

  constructor(
    private readonly speed: number,
    private readonly ratePerS: number,
  ) {}

  get active(): boolean {
    return this.speed > 0 || this.ratePerS > 0;
  }

  /** The time (scheduler ms) the next record, ending at `endMs`, is due; `now` is the current time. */
  due(endMs: number, now: number): number {
    if (Number.isNaN(this.start)) {
      this.start = now;
      this.firstEnd = endMs;
    }
    let due = this.start;
    if (this.speed > 0) due = Math.max(due, this.start + (endMs - this.firstEnd) / this.speed);
    if (this.ratePerS > 0) due = Math.max(due, this.start + (this.count * 1000) / this.ratePerS);
    this.count++;
    return due;
  }
}

// --------------------------------------------------------------------------------------------
// Reading

class Replay {
  private batch: FlowRecord[] = [];
  private stopped = false;
  private cancelled = false;
  private readonly sleeper: Sleeper;
  private stream: fs.ReadStream | undefined;
  private readonly pacer: Pacer;
  private readonly counters: StageCounters;
  private readonly scheduler: SchedulerLike;
  private readonly hold: SourceHold | undefined;
  /** Resolves on stop(): a replay held by a full sink stops waiting. */
  private readonly stopSignal: Promise<void>;
  private signalStop!: () => void;
  readonly losses: LossLog;
  failed = 0;

  constructor(
    private readonly files: readonly string[],
    private readonly config: Resolved,
    context: ComponentContext,
    private readonly subscriber: Subscriber<FlowBatch>,
  ) {
    this.counters = context.counters;
    this.scheduler = context.scheduler ?? asyncScheduler;
    this.hold = context.hold;
    this.stopSignal = new Promise((resolve) => (this.signalStop = resolve));
    this.sleeper = new Sleeper(this.scheduler);
    this.pacer = new Pacer(config.speed, config.rate_limit_records_per_s);
    this.losses = new LossLog(
      context.logger,
      'file replay: lines skipped',
      LOSS_LOG_INTERVAL_MS,
      this.scheduler,
    );
  }

  /** Ends the replay after the records read so far: the pipeline drains. */
  stop(): void {
    this.stopped = true;
    this.sleeper.wake();
    this.signalStop();
  }

  /** Ends it at once, emitting nothing more: the subscriber left. */
  cancel(): void {
    this.cancelled = true;
    this.stop();
    this.stream?.destroy();
  }

  async run(): Promise<void> {
    for (const file of this.files) {
      if (this.stopped) break;
      await this.readFile(file);
    }
    this.emit();
  }

  private emit(): void {
    const batch = this.batch;
    if (batch.length === 0 || this.cancelled) return;
    this.batch = [];
    this.counters.addReceived(batch.length);
    this.counters.addSent(batch.length);
    this.subscriber.next(batch);
  }

  private async readFile(file: string): Promise<void> {
    const stream = fs.createReadStream(file, { highWaterMark: READ_CHUNK_BYTES });
    this.stream = stream;
    const decoder = new StringDecoder('utf8');
    let carry = '';
    let lineNo = 0;
    // Set while the rest of an over-long line is passed over, up to its newline.
    let skipping = false;
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        const text = carry + decoder.write(chunk);
        // Flow times are checked against the clock once per chunk, not per line.
        const nowMs = Date.now();
        let from = 0;
        for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', from)) {
          lineNo++;
          const line = text.slice(from, nl);
          from = nl + 1;
          if (skipping) {
            skipping = false;
            continue;
          }
          const record = this.parse(line, file, lineNo, nowMs);
          if (record === undefined) continue;
          const wait = this.pace(record);
          if (wait > 0) {
            await this.sleeper.sleep(wait);
            if (this.cancelled) return;
          }
          this.push(record);
          if (this.stopped) return;
          // A sink downstream that blocks upstream is full: wait until it has room.
          const held = this.hold?.ready();
          if (held !== undefined) {
            await Promise.race([held, this.stopSignal]);
            if (this.cancelled) return;
          }
        }
        carry = text.slice(from);
        if (carry.length > MAX_LINE_CHARS) {
          if (!skipping) this.fail(file, lineNo + 1, `line longer than ${MAX_LINE_CHARS} characters`);
          skipping = true;
          carry = '';
        }
      }
      carry += decoder.end();
      const last = skipping ? undefined : this.parse(carry, file, lineNo + 1, Date.now());
      if (last !== undefined) {
        const wait = this.pace(last);
        if (wait > 0) await this.sleeper.sleep(wait);
        if (!this.cancelled) this.push(last);
      }
    } catch (err) {
      if (this.cancelled) return;
      throw new SourceError(
        'EREAD',
        `file replay ${file}: cannot read: ${messageOf(err)}; check that the file exists and is readable`,
        { cause: err },
      );
    } finally {
      stream.destroy();
      this.stream = undefined;
    }
  }

  /** The flow record of a line, or undefined for a blank line or one counted as parse_failed. */
  private parse(line: string, file: string, lineNo: number, nowMs: number): FlowRecord | undefined {
    if (line.length === 0 || (line.charCodeAt(0) <= 0x20 && line.trim() === '')) return undefined;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      this.fail(file, lineNo, `not JSON: ${messageOf(err)}`);
      return undefined;
    }
    const problem = flowRecordProblem(value, nowMs);
    if (problem !== undefined) {
      this.fail(file, lineNo, problem);
      return undefined;
    }
    return value as FlowRecord;
  }

  /**
   * How long `record` waits for its moment (0: none). Before it waits, what was read ahead of it
   * leaves, so nothing is held back longer than its own due time.
   */
  private pace(record: FlowRecord): number {
    if (!this.pacer.active) return 0;
    const now = this.scheduler.now();
    const wait = this.pacer.due(record.flowEndMilliseconds, now) - now;
    if (wait > 0) this.emit();
    return wait;
  }

  private push(record: FlowRecord): void {
    this.batch.push(record);
    if (this.batch.length >= this.config.batch_size) this.emit();
  }

  private fail(file: string, lineNo: number, problem: string): void {
    this.failed++;
    this.counters.addReceived(1);
    this.counters.addDropped('parse_failed', 1);
    this.losses.add('parse_failed', 1, `${file}:${lineNo}: ${problem}`);
  }
}

/**
 * Flow records from JSON-lines files (see the module comment). The files are resolved now, so a
 * path that names nothing fails when the pipeline is built; they are read when subscribed.
 */
export function fileReplay(config: FileReplayConfig, context: ComponentContext): Observable<FlowBatch> {
  const resolved: Resolved = { ...DEFAULTS, ...config };
  const files = replayFiles(resolved.paths);
  const logger: Logger = context.logger;
  return new Observable<FlowBatch>((subscriber) => {
    const replay = new Replay(files, resolved, context, subscriber);
    const started = Date.now();
    logger.info({ files }, 'file replay: reading');
    const stopping = context.stop$?.subscribe(() => replay.stop());
    replay.run().then(
      () => {
        replay.losses.close();
        logger.info(
          {
            files: files.length,
            records: context.counters.sent,
            skipped: replay.failed,
            duration_ms: Date.now() - started,
          },
          'file replay: done',
        );
        subscriber.complete();
      },
      (err: unknown) => {
        replay.losses.close();
        subscriber.error(err);
      },
    );
    return () => {
      stopping?.unsubscribe();
      replay.cancel();
      replay.losses.close();
    };
  });
}

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['paths'],
  properties: {
    paths: {
      type: 'array',
      minItems: 1,
      items: { type: 'string', minLength: 1 },
      description:
        'JSON-lines files as the file sink writes them, read in this order. Wildcards (*, ?, [...]) in a file name read every match, rotated files oldest first: flows.jsonl* reads flows.jsonl.N ... flows.jsonl.1, flows.jsonl.',
    },
    batch_size: {
      type: 'integer',
      minimum: 1,
      maximum: 1000000,
      default: DEFAULTS.batch_size,
      description: 'Records per emitted batch.',
    },
    speed: {
      type: 'number',
      minimum: 0,
      maximum: 1000000,
      default: DEFAULTS.speed,
      description:
        "0: as fast as the files are read (a sink that cannot keep up drops what overflows its buffer); N: N times the records' own pace, by flowEndMilliseconds.",
    },
    rate_limit_records_per_s: {
      type: 'number',
      minimum: 0,
      maximum: 1000000000,
      default: DEFAULTS.rate_limit_records_per_s,
      description: 'Records per second at most; 0: no limit.',
    },
  },
};

const fileReplayModule: SourceModule<FileReplayConfig> = {
  type: 'file_replay',
  kind: 'source',
  description:
    'Replays flow records from JSON-lines files written by the file sink, rotated files oldest first.',
  drainsOnStop: true,
  schema,
  example: {
    paths: ['/var/log/rxflow/flows.jsonl*'],
    batch_size: 1000,
    speed: 0,
    rate_limit_records_per_s: 0,
  },
  build: fileReplay,
};

export default fileReplayModule;
