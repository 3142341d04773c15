/**
 * `file`: writes flow records as JSON lines (one object per line, IPFIX names) to a file, rotating
 * by size: when the next line would take the file past max_file_bytes, the file is renamed to
 * `<path>.1` (`<path>.1` to `<path>.2`, and so on; the oldest beyond max_files is deleted) and a
 * new one is started. A line is never split across files; a single line longer than
 * max_file_bytes gets a file of its own.
 *
 * Each batch becomes one write per file it lands in. Writes run one after another; while they
 * fall behind, up to buffer_max_records wait, and what arrives beyond that is dropped as
 * `sink_buffer_full`. A failed write counts its records as `sink_failed` and the next batch
 * reopens the file.
 */
import fs from 'node:fs/promises';
import { asyncScheduler, type Observable, type Subscription } from 'rxjs';
import type { ComponentContext, JsonSchema, Sink, SinkModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import type { FlowBatch } from '../records.js';
import { admitNewest, consumeBatches } from './consume.js';
import { SinkError, messageOf } from './errors.js';
import { LossLog } from './loss-log.js';

export interface FileSinkConfig {
  path: string;
  /** Rotate before a file would exceed this many bytes; 0: never rotate. */
  max_file_bytes?: number;
  /** Files kept, the one being written included. */
  max_files?: number;
  buffer_max_records?: number;
}

type Resolved = Required<FileSinkConfig>;

const DEFAULTS = {
  max_file_bytes: 100 * 1024 * 1024,
  max_files: 5,
  buffer_max_records: 100_000,
} as const satisfies Partial<FileSinkConfig>;

const LOSS_LOG_INTERVAL_MS = 10_000;

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
    buffer_max_records: {
      type: 'integer',
      minimum: 1,
      maximum: 16777216,
      default: DEFAULTS.buffer_max_records,
      description: 'Records waiting for the disk at most; beyond it they are dropped as sink_buffer_full.',
    },
  },
};

/** One write: the text of consecutive lines, how many records and bytes, and whether to rotate first. */
interface Chunk {
  text: string;
  records: number;
  rotateFirst: boolean;
}

export class FileSink implements Sink {
  private readonly config: Resolved;
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly losses: LossLog;
  private file: fs.FileHandle | undefined;
  /** Bytes in the current file once every queued chunk is written. */
  private plannedSize = -1;
  private pending = 0;
  private tail: Promise<void> = Promise.resolve();
  private subscription: Subscription | undefined;
  private endConsume: (() => void) | undefined;
  private closed: Promise<void> | undefined;

  constructor(config: FileSinkConfig, context: ComponentContext) {
    this.config = { ...DEFAULTS, ...config };
    this.counters = context.counters;
    this.logger = context.logger;
    this.losses = new LossLog(
      this.logger,
      `file sink ${this.config.path}: records dropped`,
      LOSS_LOG_INTERVAL_MS,
      context.scheduler ?? asyncScheduler,
    );
  }

  /** Opens (or creates) the file first: a path that cannot be written fails here, with the reason. */
  async consume(input: Observable<FlowBatch>): Promise<void> {
    if (this.subscription !== undefined || this.closed !== undefined) {
      throw new SinkError(
        'ECONSUME',
        `file sink ${this.config.path}: consume() was already called or the sink is closed`,
      );
    }
    try {
      await this.open();
    } catch (err) {
      throw new SinkError(
        'EOPEN',
        `file sink ${this.config.path}: cannot open: ${messageOf(err)}; check that the directory exists and is writable`,
        { cause: err },
      );
    }
    const consumption = consumeBatches(
      input,
      (batch) => this.accept(batch),
      () => this.flush(),
    );
    this.subscription = consumption.subscription;
    this.endConsume = consumption.end;
    return consumption.done;
  }

  /** Resolves once every record received so far is written or counted as failed. */
  flush(): Promise<void> {
    return this.tail;
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      this.subscription?.unsubscribe();
      await this.tail;
      await this.closeFile();
      this.losses.close();
      this.endConsume?.();
    })();
    return this.closed;
  }

  private accept(batch: FlowBatch): void {
    if (batch.length === 0) return;
    const room = this.config.buffer_max_records - this.pending;
    const kept = admitNewest(batch, room, this.counters, this.losses);
    if (kept.length === 0) return;
    this.pending += kept.length;
    const chunks = this.plan(kept);
    this.tail = this.tail.then(() => this.write(chunks));
  }

  /**
   * Cuts a batch into writes at the rotation points. Sizes are planned ahead of the writes (they
   * run in order), so a batch is planned once, when it arrives.
   */
  private plan(batch: FlowBatch): Chunk[] {
    const max = this.config.max_file_bytes;
    const chunks: Chunk[] = [];
    let lines: string[] = [];
    let rotateFirst = false;
    let size = this.plannedSize;
    for (const r of batch) {
      const line = `${JSON.stringify(r)}\n`;
      const bytes = Buffer.byteLength(line);
      if (max > 0 && size > 0 && size + bytes > max) {
        if (lines.length > 0) chunks.push({ text: lines.join(''), records: lines.length, rotateFirst });
        lines = [];
        rotateFirst = true;
        size = 0;
      }
      lines.push(line);
      size += bytes;
    }
    chunks.push({ text: lines.join(''), records: lines.length, rotateFirst });
    this.plannedSize = size;
    return chunks;
  }

  private async write(chunks: Chunk[]): Promise<void> {
    for (const chunk of chunks) {
      try {
        if (chunk.rotateFirst) await this.rotate();
        if (!this.file) await this.open();
        await this.file!.write(chunk.text, null, 'utf8');
        this.counters.addSent(chunk.records);
      } catch (err) {
        this.counters.addDropped('sink_failed', chunk.records);
        this.losses.add('sink_failed', chunk.records, messageOf(err));
        // Start over from what is on disk at the next write.
        await this.closeFile();
        this.plannedSize = -1;
      } finally {
        this.pending -= chunk.records;
      }
    }
  }

  private async open(): Promise<void> {
    const file = await fs.open(this.config.path, 'a');
    this.file = file;
    const { size } = await file.stat();
    // Batches planned while the file was closed planned from 0 (or -1); re-plan only future ones.
    if (this.plannedSize < 0) this.plannedSize = size;
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

async function renameIfPresent(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

const fileModule: SinkModule<FileSinkConfig> = {
  type: 'file',
  kind: 'sink',
  description: 'Appends flow records to a file as JSON lines, rotating by size.',
  schema,
  example: { path: '/var/log/rxflow/flows.jsonl', max_file_bytes: 104857600, max_files: 5 },
  build(config: FileSinkConfig, context: ComponentContext): Sink {
    return new FileSink(config, context);
  },
};

export default fileModule;
