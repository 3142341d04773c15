import { silentLogger, type Logger } from '../logger.js';
import { ClockTranslator } from './clock.js';
import { decodeSessionValue, fromWire, isSessionRecord } from './codec.js';
import { HaError, messageOf } from './errors.js';
import type { KvRecord, SessionKv } from './kv.js';
import type { ReplicatedSession, SessionStore } from './session.js';

export interface LoadOptions {
  clock?: ClockTranslator;
  logger?: Logger;
  /** Sessions per store.restore() call. Default 8192. */
  batchSize?: number;
  /**
   * Skip sessions last seen longer ago than this (wall-clock ms): the firewall would expire them
   * at once. Unset: load every session.
   */
  maxAgeMs?: number;
}

export interface LoadResult {
  /** Sessions written into the kernel map. */
  loaded: number;
  /** Sessions the kernel already had (kept: traffic made them, they are newer). */
  present: number;
  /** Values this version cannot read (not JSON, bad fields, older unknown format). */
  unreadable: number;
  /** Values of a newer format version. */
  newer: number;
  /** Sessions older than maxAgeMs. */
  expired: number;
  /** Time to read the bucket and to write the kernel map, ms. */
  readMs: number;
  writeMs: number;
  /** What the bucket held: the replicator seeds its view of KV with it. */
  records: KvRecord[];
  /** The bucket revision the read reached: a watch goes on from the next one. */
  revision: number;
}

/**
 * Loads every session of the bucket into the kernel session map, translating last-seen times from
 * the writers' wall clock to this node's monotonic clock. Runs before the node reports ready.
 */
export async function loadSessions(
  kv: Pick<SessionKv, 'snapshot'>,
  store: SessionStore,
  options: LoadOptions = {},
): Promise<LoadResult> {
  const clock = options.clock ?? new ClockTranslator();
  const logger = options.logger ?? silentLogger();
  const batchSize = options.batchSize ?? 8192;
  const t0 = performance.now();
  const { records, revision } = await kv.snapshot();
  const t1 = performance.now();
  clock.resample();
  const oldestMs = options.maxAgeMs === undefined ? -Infinity : Date.now() - options.maxAgeMs;
  let unreadable = 0;
  let newer = 0;
  let expired = 0;
  let loaded = 0;
  let present = 0;
  let firstProblem: string | undefined;
  let batch: ReplicatedSession[] = [];
  const write = (): void => {
    if (batch.length === 0) return;
    try {
      const r = store.restore(batch);
      loaded += r.written;
      present += r.skipped;
    } catch (err) {
      throw new HaError(
        'ELOAD',
        `load sessions from kv: write ${batch.length} sessions into the kernel map: ${messageOf(err)}`,
        { cause: err },
      );
    }
    batch = [];
  };
  for (const r of records) {
    const decoded = decodeSessionValue(r.value);
    if (!isSessionRecord(decoded)) {
      if (decoded.newer) newer++;
      else unreadable++;
      firstProblem ??= `${r.key}: ${decoded.error}`;
      continue;
    }
    if (decoded.session.lastSeenMs < oldestMs) {
      expired++;
      continue;
    }
    batch.push(fromWire(decoded.session, clock));
    if (batch.length >= batchSize) write();
  }
  write();
  const t2 = performance.now();
  if (unreadable + newer > 0) {
    logger.warn(
      { unreadable, newer, example: firstProblem },
      'load sessions from kv: skipped values this version cannot read',
    );
  }
  const result: LoadResult = {
    loaded,
    present,
    unreadable,
    newer,
    expired,
    readMs: Math.round(t1 - t0),
    writeMs: Math.round(t2 - t1),
    records,
    revision,
  };
  logger.info(
    { loaded, present, expired, unreadable, newer, read_ms: result.readMs, write_ms: result.writeMs },
    'loaded sessions from kv into the kernel',
  );
  return result;
}
