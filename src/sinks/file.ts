/**
 * `file`: writes flow records as JSON lines (one object per line, IPFIX names) to a file, rotating
 * by size: when the next line would take the file past max_file_bytes, the file is renamed to
 * `<path>.1` (`<path>.1` to `<path>.2`, and so on; the oldest beyond max_files is deleted) and a
 * new one is started. A line is never split across files; a single line longer than
 * max_file_bytes gets a file of its own.
 *
 * A record counts as exported only once its whole line is on the file: every write's byte count
 * is checked, and a write that stops short (the disk filled up in the middle of it) counts the
 * lines it completed and cuts the file back to the end of the last one (ftruncate), so the file
 * always ends on a complete line and `file_replay` reads it without a parse error. A file found
 * ending in a partial line when the sink opens it (a crash mid-write) is cut back the same way.
 *
 * Records wait in one queue, written in order, one write of up to 1 MiB at a time. Up to
 * buffer_max_records wait; the pipeline's buffer in front of the sink applies when_full to what
 * arrives beyond that (dropped as `sink_buffer_full`, or held upstream: src/sinks/buffer.ts). When the
 * disk is full (ENOSPC, EDQUOT) the records stay queued and the write is tried again every
 * retry_interval_ms, so nothing is lost to a disk that fills up for a while; the sink reports
 * itself degraded until a write succeeds again. Any other failed write (a rename for rotation, a
 * file that cannot be opened) counts its records as `sink_failed` and the next write reopens the
 * file. flush() (and so the end of the input) does not wait for space: it writes what the disk
 * takes now and leaves the rest held, so a stop is never stuck behind a full disk. close(timeoutMs)
 * keeps trying until the deadline and counts what is still queued then as `shutdown`; close()
 * without a deadline tries once more and counts the rest as `shutdown`.
 *
 * Files are created with `mode` (default 0640: flow records are not for every local user) and,
 * if set, `group`; both are applied with fchmod/fchown when the sink opens a file, created or
 * already there, so the umask never widens them.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import { asyncScheduler, type Observable, type SchedulerLike, type Subscription } from 'rxjs';
import {
  msOption,
  type ComponentContext,
  type HealthReporter,
  type JsonSchema,
  type Sink,
  type SinkModule,
  type WhenFull,
} from '../component.js';
import type { DropReason, StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import type { FlowBatch, FlowRecord } from '../records/flow.js';
import { messageOf } from '../errors.js';
import { bufferOptions, bufferSettings, type BufferSettings } from './buffer.js';
import { SinkInput, throughBuffer } from './consume.js';
import { SinkError } from './errors.js';
import { beforeDeadline } from '../delivery/deadline.js';
import { LossLog } from '../delivery/loss-log.js';

export interface FileSinkConfig {
  path: string;
  /** Rotate before a file would exceed this many bytes; 0: never rotate. */
  max_file_bytes?: number;
  /** Files kept, the one being written included. */
  max_files?: number;
  /** Records waiting for the disk at most, also while it is full. */
  buffer_max_records?: number;
  /** With buffer_max_records held: drop what arrives, or hold the sources upstream. */
  when_full?: Exclude<WhenFull, 'drop_oldest'>;
  /** While the disk is full, how often the write is tried again. */
  retry_interval_ms?: number;
  /** Permission bits of the files, octal digits: "0640". */
  mode?: string;
  /** Group of the files: a name or a gid; unset: the process's group. */
  group?: string | number;
}

type Resolved = Required<Omit<FileSinkConfig, 'group' | 'when_full'>> & Pick<FileSinkConfig, 'group'>;

const DEFAULTS = {
  max_file_bytes: 100 * 1024 * 1024,
  max_files: 5,
  buffer_max_records: 100_000,
  retry_interval_ms: 1000,
  mode: '0640',
} as const satisfies Partial<FileSinkConfig>;

const execFileAsync = promisify(execFile);

const LOSS_LOG_INTERVAL_MS = 10_000;
/** Bytes per write at most: large enough to cost one syscall per thousands of records. */
const CHUNK_MAX_BYTES = 1 << 20;
/** How far back from the end a partial last line is looked for, per read. */
const TAIL_READ_BYTES = 64 * 1024;
const MODE_PATTERN = '^0?[0-7]{3}$';
/** Errors a full disk gives; the write is held and tried again. */
const SPACE_ERRORS = new Set(['ENOSPC', 'EDQUOT']);

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['path'],
  properties: {
    path: { type: 'string', minLength: 1, description: 'File the JSON lines are appended to.' },
    max_file_bytes: {
      type: 'integer',
      minimum: 0,
      maximum: 1099511627776,
      default: DEFAULTS.max_file_bytes,
      description: 'Rotate before the file would grow past this size; 0 never rotates.',
    },
    max_files: {
      type: 'integer',
      minimum: 1,
      maximum: 10000,
      default: DEFAULTS.max_files,
      description: 'Files kept, the one being written included: path, path.1 ... path.(max_files-1).',
    },
    ...bufferOptions({
      maxRecords: DEFAULTS.buffer_max_records,
      maximum: 16777216,
      choices: ['drop_newest', 'block'],
      held: 'waiting for the disk, while writes are behind or the disk is full',
    }),
    retry_interval_ms: {
      ...msOption(
        'While the disk is full (ENOSPC, EDQUOT), how often the held records are tried again; the sink reports itself degraded until a write succeeds.',
        DEFAULTS.retry_interval_ms,
        10,
      ),
      maximum: 3_600_000,
    },
    mode: {
      type: 'string',
      pattern: MODE_PATTERN,
      default: DEFAULTS.mode,
      description:
        'Permission bits of the files, rotated ones included, in octal as a quoted string ("0640"; YAML reads an unquoted 0640 as the number 640). Applied whatever the umask, also to a file that already exists.',
    },
    group: {
      anyOf: [
        { type: 'integer', minimum: 0, maximum: 4_294_967_294 },
        { type: 'string', minLength: 1, maxLength: 256 },
      ],
      description:
        "Group of the files, rotated ones included: a group name or a gid. Unset: the process's group. Giving a file to a group needs root or membership of that group.",
    },
  },
};

/** Records waiting for the disk, oldest first, as the batches they came in. */
class RecordQueue {
  private batches: FlowBatch[] = [];
  /** Records of batches[0] already taken. */
  private offset = 0;
  length = 0;

  push(batch: FlowBatch): void {
    this.batches.push(batch);
    this.length += batch.length;
  }

  /**
   * Calls `visit` with the queued records in order, from the oldest, until it returns false. A
   * callback, not an iterator: no object per record.
   */
  visit(visit: (record: FlowRecord) => boolean): void {
    let offset = this.offset;
    for (const batch of this.batches) {
      for (let i = offset; i < batch.length; i++) if (!visit(batch[i]!)) return;
      offset = 0;
    }
  }

  /** Records left in the oldest batch. */
  head(): number {
    return this.batches.length === 0 ? 0 : this.batches[0]!.length - this.offset;
  }

  /** Takes the oldest `n` records off. */
  shift(n: number): void {
    this.length -= n;
    while (n > 0) {
      const left = this.batches[0]!.length - this.offset;
      if (n < left) {
        this.offset += n;
        return;
      }
      n -= left;
      this.batches.shift();
      this.offset = 0;
    }
  }

  /** Empties the queue; returns how many records it held. */
  clear(): number {
    const n = this.length;
    this.batches = [];
    this.offset = 0;
    this.length = 0;
    return n;
  }
}

/** One write: consecutive lines, where each ends, and whether the file rotates first. */
interface Chunk {
  buffer: Buffer;
  /** Byte offset just past each line, in the buffer. */
  ends: number[];
  rotateFirst: boolean;
}

interface FlushWaiter {
  /** Resolves when this many records have left the queue. */
  target: number;
  /** Resolves also when a write finds the disk full: flush() does not wait for space (close() does). */
  untilFull: boolean;
  resolve: () => void;
}

export class FileSink implements Sink {
  private readonly config: Resolved;
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly losses: LossLog;
  private readonly scheduler: SchedulerLike;
  private readonly health: HealthReporter | undefined;
  private readonly context: ComponentContext;
  private readonly buffer: BufferSettings;
  private readonly mode: number;
  private gid: number | undefined;
  private file: fs.FileHandle | undefined;
  /** Bytes of complete lines in the open file; every one of them is on the disk. */
  private size = 0;
  private readonly queue = new RecordQueue();
  /** Records ever queued, and those that left the queue (written or dropped): flush() targets. */
  private admitted = 0;
  private settled = 0;
  private flushWaiters: FlushWaiter[] = [];
  /** The writer while it runs; one at a time. */
  private writing: Promise<void> | undefined;
  private retryTimer: Subscription | undefined;
  /** Set when nothing more is written: close() gave up. */
  private stopped = false;
  /** What is wrong right now, as reported to health; undefined while writes work. */
  private degradedBy: string | undefined;
  private degradedSince = 0;
  private readonly input = new SinkInput();
  private closed: Promise<void> | undefined;

  constructor(config: FileSinkConfig, context: ComponentContext) {
    this.config = { ...DEFAULTS, ...config };
    this.context = context;
    this.buffer = bufferSettings(this.config);
    this.counters = context.counters;
    this.logger = context.logger;
    this.health = context.health;
    this.scheduler = context.scheduler ?? asyncScheduler;
    this.mode = parseMode(this.config.mode);
    this.losses = new LossLog(
      this.logger,
      `file sink ${this.config.path}: records dropped`,
      LOSS_LOG_INTERVAL_MS,
      this.scheduler,
    );
  }

  /** Opens (or creates) the file first: a path that cannot be written fails here, with the reason. */
  async consume(input: Observable<FlowBatch>): Promise<void> {
    const refused = this.input.claim(`file sink ${this.config.path}`, this.closed !== undefined);
    if (refused) throw refused;
    if (this.config.group !== undefined) this.gid = await resolveGroup(this.config.path, this.config.group);
    try {
      await this.open();
    } catch (err) {
      if (err instanceof SinkError) throw err;
      throw new SinkError(
        'EOPEN',
        `file sink ${this.config.path}: cannot open: ${messageOf(err)}; check that the directory exists and is writable`,
        { cause: err },
      );
    }
    if (this.closed !== undefined) {
      // close() came while the file was being opened: it found no file to close.
      await this.closeFile();
      return;
    }
    return this.input.start(
      throughBuffer(input, this.context, this.buffer, this),
      (batch) => this.accept(batch),
      () => this.flush(),
    );
  }

  /**
   * Resolves once every record received so far is written or counted as dropped, or the disk, tried
   * now, has no room for the rest: those stay held for the next retry or close().
   */
  flush(): Promise<void> {
    // Tried now, not at the next retry tick.
    this.cancelRetry();
    return this.settledUpTo(this.admitted, true);
  }

  /** Resolves when `target` records have left the queue (or, with `untilFull`, a write found the disk full). */
  private settledUpTo(target: number, untilFull: boolean): Promise<void> {
    if (this.settled >= target || this.stopped) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.flushWaiters.push({ target, untilFull, resolve });
      this.pump();
    });
  }

  /**
   * Writes what is queued and closes the file. With `timeoutMs`, a full disk is retried until the
   * deadline; without, once more. What is still queued then is counted `shutdown`; a write already
   * started is waited for (a local write takes milliseconds, and its records must be counted by
   * what it wrote).
   */
  close(timeoutMs?: number): Promise<void> {
    this.closed ??= this.shutdown(timeoutMs);
    return this.closed;
  }

  private async shutdown(timeoutMs: number | undefined): Promise<void> {
    this.input.stop();
    if (timeoutMs === undefined) {
      // One more try at once, not at the next retry tick.
      this.cancelRetry();
      this.pump();
      while (this.writing) await this.writing;
    } else {
      await beforeDeadline(this.settledUpTo(this.admitted, false), Math.max(0, timeoutMs), this.scheduler);
    }
    this.stopped = true;
    this.cancelRetry();
    while (this.writing) await this.writing;
    const left = this.queue.clear();
    this.settled += left;
    if (left > 0) {
      const why =
        this.degradedBy === undefined
          ? 'not written before close'
          : `not written before close: ${this.degradedBy}`;
      this.drop('shutdown', left, why);
      this.logger.warn({ path: this.config.path, dropped: left }, 'file sink: closed with records unwritten');
    }
    this.settleFlushes();
    await this.closeFile();
    this.losses.close();
    this.input.end();
  }

  private accept(batch: FlowBatch): void {
    if (batch.length === 0) return;
    this.queue.push(batch);
    this.admitted += batch.length;
    this.pump();
  }

  private drop(reason: DropReason, n: number, cause?: string): void {
    if (n <= 0) return;
    this.counters.addDropped(reason, n);
    this.losses.add(reason, n, cause);
  }

  /** Starts the writer unless it runs, waits for a retry, or has nothing to do. */
  private pump(): void {
    if (this.writing || this.retryTimer || this.stopped || this.queue.length === 0) return;
    const run = this.drain().finally(() => {
      this.writing = undefined;
      this.settleFlushes();
      this.pump();
    });
    this.writing = run;
  }

  /** Writes queued records until none is left, the disk is full, or the sink stops. */
  private async drain(): Promise<void> {
    while (this.queue.length > 0 && !this.stopped) {
      const outcome = await this.writeNext();
      this.settleFlushes(outcome === 'full');
      if (outcome === 'full') {
        if (!this.stopped) this.scheduleRetry();
        return;
      }
    }
  }

  private scheduleRetry(): void {
    this.retryTimer = this.scheduler.schedule(() => {
      this.retryTimer = undefined;
      this.pump();
    }, this.config.retry_interval_ms);
  }

  private cancelRetry(): void {
    this.retryTimer?.unsubscribe();
    this.retryTimer = undefined;
  }

  /**
   * Writes the next chunk of the queue. 'full': the disk had no room, the records not written stay
   * queued; 'failed': they were dropped as sink_failed.
   */
  private async writeNext(): Promise<'written' | 'full' | 'failed'> {
    let chunk: Chunk | undefined;
    let written = 0;
    let completed = 0;
    try {
      if (!this.file) await this.open();
      chunk = this.plan(true);
      if (chunk.rotateFirst) {
        await this.rotate();
        await this.open();
        chunk = this.plan(false);
      }
      const file = this.file!;
      const { buffer, ends } = chunk;
      try {
        while (written < buffer.length) {
          const { bytesWritten } = await file.write(buffer, written, buffer.length - written, null);
          if (bytesWritten <= 0) {
            throw new SinkError('ENOSPC', `write took no bytes after ${written} of ${buffer.length}`);
          }
          written += bytesWritten;
        }
      } finally {
        // What a short write left past the last complete line is cut off before anything else.
        completed = linesWithin(ends, written);
        const good = completed === 0 ? 0 : ends[completed - 1]!;
        this.confirm(completed, good);
        if (written > good) await this.cutBack(file);
      }
      this.recovered();
      return 'written';
    } catch (err) {
      const reason = `${this.config.path}: ${messageOf(err)}`;
      if (isSpaceError(err)) {
        this.degrade(
          `file sink ${reason}; holding up to ${this.config.buffer_max_records} records and retrying every ${this.config.retry_interval_ms} ms; free space on its filesystem`,
          err,
        );
        return 'full';
      }
      const records = chunk === undefined ? this.queue.head() : chunk.ends.length - completed;
      this.queue.shift(records);
      this.settled += records;
      this.drop('sink_failed', records, messageOf(err));
      this.degrade(`file sink ${reason}; records are dropped as sink_failed until a write succeeds`, err);
      // Start over from what is on disk at the next write.
      await this.closeFile();
      return 'failed';
    }
  }

  /** Counts `records` lines of `bytes` as on the file. */
  private confirm(records: number, bytes: number): void {
    if (records === 0) return;
    this.size += bytes;
    this.queue.shift(records);
    this.settled += records;
    this.counters.addSent(records);
  }

  /**
   * Cuts the open file back to its complete lines. If that fails too, the file is closed: the next
   * open cuts a partial last line off before writing.
   */
  private async cutBack(file: fs.FileHandle): Promise<void> {
    try {
      await file.truncate(this.size);
    } catch (err) {
      this.logger.warn(
        { err, path: this.config.path },
        'file sink: cannot cut a partial line off; retrying on reopen',
      );
      await this.closeFile();
    }
  }

  /**
   * The next write from the head of the queue: lines up to CHUNK_MAX_BYTES or the rotation point.
   * With `mayRotate`, a first line that does not fit the current file asks for rotation.
   */
  private plan(mayRotate: boolean): Chunk {
    const max = this.config.max_file_bytes;
    const lines: string[] = [];
    const ends: number[] = [];
    let size = this.size;
    let bytes = 0;
    let rotateFirst = false;
    this.queue.visit((r) => {
      const line = `${JSON.stringify(r)}\n`;
      const n = Buffer.byteLength(line);
      if (max > 0 && size > 0 && size + n > max) {
        if (lines.length > 0) return false;
        if (mayRotate) {
          rotateFirst = true;
          size = 0;
        }
      }
      if (lines.length > 0 && bytes + n > CHUNK_MAX_BYTES) return false;
      lines.push(line);
      size += n;
      bytes += n;
      ends.push(bytes);
      return true;
    });
    return { buffer: Buffer.from(lines.join(''), 'utf8'), ends, rotateFirst };
  }

  private settleFlushes(full = false): void {
    if (this.flushWaiters.length === 0) return;
    const waiting: FlushWaiter[] = [];
    for (const w of this.flushWaiters) {
      if (this.settled >= w.target || this.stopped || (full && w.untilFull)) w.resolve();
      else waiting.push(w);
    }
    this.flushWaiters = waiting;
  }

  private degrade(reason: string, err: unknown): void {
    if (this.degradedBy === undefined) {
      this.degradedSince = this.scheduler.now();
      this.logger.warn({ err, path: this.config.path, held: this.queue.length }, 'file sink: cannot write');
    }
    if (reason !== this.degradedBy) this.health?.degraded(reason);
    this.degradedBy = reason;
  }

  private recovered(): void {
    if (this.degradedBy === undefined) return;
    this.degradedBy = undefined;
    this.logger.info(
      {
        path: this.config.path,
        after_ms: this.scheduler.now() - this.degradedSince,
        held: this.queue.length,
      },
      'file sink: writing again',
    );
    this.health?.healthy();
  }

  /**
   * Opens the file for appending, creating it with the sink's mode (group and others kept out until
   * the group is set), gives it its mode and group, and cuts off a partial last line.
   */
  private async open(): Promise<void> {
    const { path } = this.config;
    const file = await fs.open(path, 'a+', this.mode & 0o700);
    try {
      const stat = await file.stat();
      if (this.gid !== undefined && stat.gid !== this.gid) {
        try {
          await file.chown(-1, this.gid);
        } catch (err) {
          throw new SinkError(
            'EGROUP',
            `file sink ${path}: cannot give the file group ${String(this.config.group)}: ${messageOf(err)}; run as root or as a member of that group`,
            { cause: err },
          );
        }
      }
      if ((stat.mode & 0o7777) !== this.mode) {
        try {
          await file.chmod(this.mode);
        } catch (err) {
          throw new SinkError(
            'EMODE',
            `file sink ${path}: cannot set mode ${this.config.mode}: ${messageOf(err)}; run as the file's owner or root`,
            { cause: err },
          );
        }
      }
      this.size = await completeLines(file, stat.size);
      if (this.size < stat.size) {
        await file.truncate(this.size);
        this.logger.warn(
          { path, bytes: stat.size - this.size },
          'file sink: cut off a partial last line (an earlier write was interrupted)',
        );
      }
    } catch (err) {
      await file.close().catch(() => undefined);
      throw err;
    }
    this.file = file;
  }

  private async closeFile(): Promise<void> {
    const file = this.file;
    this.file = undefined;
    await file?.close().catch((err: unknown) => this.logger.debug({ err }, 'file sink: close failed'));
  }

  private async rotate(): Promise<void> {
    await this.closeFile();
    const { path, max_files: keep } = this.config;
    if (keep === 1) {
      await fs.rm(path, { force: true });
    } else {
      for (let k = keep - 1; k >= 2; k--) await renameIfPresent(`${path}.${k - 1}`, `${path}.${k}`);
      await renameIfPresent(path, `${path}.1`);
    }
    this.logger.debug({ path }, 'file sink: rotated');
  }
}

function isSpaceError(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && SPACE_ERRORS.has(code);
}

/** How many of the lines ending at `ends` lie wholly within the first `bytes`. */
function linesWithin(ends: readonly number[], bytes: number): number {
  let lo = 0;
  let hi = ends.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ends[mid]! <= bytes) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The size of the file up to and including its last newline (all of it if it ends in one). */
async function completeLines(file: fs.FileHandle, size: number): Promise<number> {
  if (size === 0) return 0;
  const buffer = Buffer.alloc(Math.min(TAIL_READ_BYTES, size));
  let end = size;
  while (end > 0) {
    const start = Math.max(0, end - buffer.length);
    const { bytesRead } = await file.read(buffer, 0, end - start, start);
    const nl = buffer.subarray(0, bytesRead).lastIndexOf(0x0a);
    if (nl >= 0) return start + nl + 1;
    end = start;
  }
  return 0;
}

async function renameIfPresent(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** "0640" as a number; the schema has checked its digits. */
function parseMode(mode: string): number {
  if (!new RegExp(MODE_PATTERN).test(mode)) {
    throw new SinkError(
      'EBADCONFIG',
      `file sink: mode '${mode}' is not octal permission bits; write e.g. "0640"`,
    );
  }
  return parseInt(mode, 8);
}

/** The gid of a group name (through NSS, as `getent group` sees it) or of a number. */
async function resolveGroup(path: string, group: string | number): Promise<number> {
  if (typeof group === 'number') return group;
  if (/^\d+$/.test(group)) return Number(group);
  let line: string | undefined;
  try {
    ({ stdout: line } = await execFileAsync('getent', ['group', group], { timeout: 5000 }));
  } catch (err) {
    // getent exits 2 when the group does not exist.
    if ((err as { code?: unknown }).code !== 2) {
      throw new SinkError(
        'EGROUP',
        `file sink ${path}: cannot look up group ${group}: ${messageOf(err)}; give its gid instead`,
        { cause: err },
      );
    }
  }
  const gid = line === undefined ? NaN : Number(line.split(':')[2]);
  if (!Number.isInteger(gid)) {
    throw new SinkError(
      'EGROUP',
      `file sink ${path}: group ${group} does not exist; name an existing group or give its gid`,
    );
  }
  return gid;
}

const fileModule: SinkModule<FileSinkConfig> = {
  type: 'file',
  kind: 'sink',
  buffered: true,
  description: 'Appends flow records to a file as JSON lines, rotating by size.',
  schema,
  example: {
    path: '/var/log/rxflow/flows.jsonl',
    max_file_bytes: 104857600,
    max_files: 5,
    mode: '0640',
  },
  build(config: FileSinkConfig, context: ComponentContext): Sink {
    return new FileSink(config, context);
  },
};

export default fileModule;
