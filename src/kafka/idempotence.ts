/**
 * Idempotent produce for the kafka sink (Kafka's KIP-98, without transactions). The brokers hand
 * out a producer id (InitProducerId); every record batch carries it, its epoch and a base
 * sequence: how many records the producer sent to that partition before. A broker appends a batch
 * only if its sequence follows the last one it appended for that producer and partition, answers
 * a resend of one of the last five batches as written without appending it again, and refuses a
 * gap (OUT_OF_ORDER_SEQUENCE_NUMBER). So a retry after a lost response cannot write records twice.
 *
 * Sequences are taken when a request goes out, in the order requests go out, and a retry resends
 * the same bytes. Requests for one partition may be in flight together (up to max_in_flight, at
 * most 5, the batches a broker remembers per producer and partition). One that overtakes an
 * earlier one (whose request is being retried) is refused as out of order; it goes again once the
 * earlier one has settled.
 *
 * A batch counts as written only when the answer to a request that carried it says so. A Kafka
 * broker that took a later batch of the partition must have appended the earlier one, but not
 * every broker checks sequences (librdkafka's mock cluster, the one `rxflow demo` runs, appends
 * whatever comes), so that is never taken as proof: the earlier batch is resent, and a broker that
 * has it answers it as a duplicate. For that answer, the batch must still be among the five the
 * broker remembers: no batch goes out five or more places after its partition's oldest
 * unacknowledged batch. Until a batch of a producer id on a partition is acknowledged, only the
 * partition's oldest unsettled batch goes out (since Kafka 2.5 a broker takes any sequence from a
 * producer it has no state for; one round trip per partition and producer id).
 *
 * A batch that is given up (delivery timeout, an error no retry fixes) leaves a gap no later batch
 * of the same producer id can cross, so new batches take a new producer id. A batch refused as out
 * of order while it is the oldest unsettled one of its partition, with nothing settled since it
 * went out, is behind such a gap for good: the broker did not append it, so it is stamped anew
 * under the new id and cannot be written twice. The same holds for UNKNOWN_PRODUCER_ID and
 * INVALID_PRODUCER_EPOCH. A batch whose fate is unknown (a timeout) is never stamped anew: it is
 * resent as it is until the broker says which it is.
 */
import type { Logger } from '../logger.js';
import { messageOf } from '../errors.js';
import { ProduceError, type ProducerIdentity } from './client.js';
import { KafkaError } from './errors.js';
import type { PartitionBatch } from './produce.js';
import { batchRecordCount, nextSequence, stampBatch } from './record-batch.js';

/** Requests in flight per connection that a broker keeps in order for an idempotent producer. */
export const MAX_IN_FLIGHT_IDEMPOTENT = 5;

/**
 * off: the sink is configured without idempotence; pending: no producer id yet; on: batches carry
 * a producer id; unavailable: the brokers refused one and the sink writes without (see `reason`).
 */
export type IdempotenceState = 'off' | 'pending' | 'on' | 'unavailable';

export interface IdempotenceStatus {
  state: IdempotenceState;
  /** The producer id new batches carry, as decimal text (a 64-bit number). */
  producerId?: string;
  producerEpoch?: number;
  /** Producer ids taken so far: the first, and one after each gap or lost producer state. */
  producerIds: number;
  /** Why the sink writes without idempotence. */
  reason?: string;
}

/** One producer id and the sequences sent under it. */
interface Generation {
  /** -1n: no producer id; batches go without idempotence. */
  producerId: bigint;
  producerEpoch: number;
  /** Per partition, the sequence of the next batch. */
  next: Map<number, number>;
  lanes: Map<number, Lane>;
  /** Why no new batch may take this id (a gap, a lost producer state); undefined while it may. */
  spent: string | undefined;
}

/** The batches of one producer id on one partition. */
interface Lane {
  /**
   * In sequence order, from the oldest batch neither acknowledged nor given up: every batch after
   * it, acknowledged or not.
   */
  stamps: Stamp[];
  /** A batch was acknowledged: the broker knows the producer here and appends only in sequence. */
  known: boolean;
  /** Counts the batches that left `stamps`: tells whether one settled while a batch was out. */
  version: number;
}

interface Stamp {
  batch: PartitionBatch;
  generation: Generation;
  /** The lane's version when the batch last went out. */
  sentAt: number;
  /** Refused as out of order behind an earlier batch: goes again once the lane has moved. */
  behind: boolean;
  /** A broker acknowledged it; it stays in its lane until every earlier batch is settled. */
  acked: boolean;
}

function generation(producerId: bigint, producerEpoch: number): Generation {
  return { producerId, producerEpoch, next: new Map(), lanes: new Map(), spent: undefined };
}

/** Drops the acknowledged batches at the head of a lane: nothing before them is outstanding. */
function trim(lane: Lane): void {
  let n = 0;
  while (n < lane.stamps.length && lane.stamps[n]!.acked) n++;
  if (n > 0) lane.stamps.splice(0, n);
}

const NO_PRODUCER = { producerId: -1n, producerEpoch: -1, baseSequence: -1 } as const;

const OUT_OF_ORDER = 'OUT_OF_ORDER_SEQUENCE_NUMBER';
/** Broker answers after which a batch is not written and its producer id cannot write it. */
const LOST_PRODUCER = new Set(['UNKNOWN_PRODUCER_ID', 'INVALID_PRODUCER_EPOCH']);

/**
 * A sequence refusal the sink has handled (KafkaError ESEQUENCE); `retriable` says whether the
 * retry can succeed.
 */
function sequenceError(message: string, retriable: boolean, cause: unknown): KafkaError {
  return new KafkaError('ESEQUENCE', message, { cause, retriable });
}

/** The error in a kafkajs chain that says what the broker answered, if it answered. */
function answer(err: unknown): { name?: string; type?: unknown; retriable?: boolean } | undefined {
  let e = err as { name?: string; type?: unknown; retriable?: boolean; cause?: unknown } | undefined;
  for (let depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    if (
      e.name === 'KafkaJSProtocolError' ||
      e.name === 'KafkaJSServerDoesNotSupportApiKey' ||
      e.name === 'KafkaJSNotImplemented'
    )
      return e;
    e = e.cause as typeof e;
  }
  return undefined;
}

/**
 * How a failed InitProducerId is taken: refused (no retry helps: no permission, a broker without
 * the API), answered (the broker said to try again: coordinator not ready), or unreachable (no
 * answer: the cluster is away, and nothing could be written anyway).
 */
export function producerIdFailure(err: unknown): 'refused' | 'answered' | 'unreachable' {
  const e = answer(err);
  if (e === undefined) return 'unreachable';
  return e.name === 'KafkaJSProtocolError' && e.retriable !== false ? 'answered' : 'refused';
}

/** The broker's name for a refusal, as kafkajs gives it. */
function refusalType(err: unknown): string {
  const e = answer(err);
  if (typeof e?.type === 'string') return e.type;
  return e?.name === 'KafkaJSServerDoesNotSupportApiKey' ? 'UNSUPPORTED_VERSION' : 'unknown';
}

/** What the operator can do about a refusal. */
function remedy(type: string): string {
  switch (type) {
    case 'CLUSTER_AUTHORIZATION_FAILED':
      return "grant the sink's principal IdempotentWrite on the cluster (Kafka before 2.8; later ones need Write on the topic)";
    case 'UNSUPPORTED_VERSION':
      return 'upgrade the brokers to Kafka 0.11 or newer';
    default:
      return 'check the broker logs';
  }
}

export interface ProducerSequencesOptions {
  /** Asks a broker for a new producer id. */
  acquire: () => Promise<ProducerIdentity>;
  /** Waits between attempts; wakes early when the sink closes. */
  sleep: (ms: number) => Promise<void>;
  backoff: (attempt: number) => number;
  /** True once the sink has closed: stop asking. */
  stopped: () => boolean;
  /**
   * Answers that say to try again (e.g. coordinator not available) taken before writing without
   * idempotence; an unreachable cluster is waited for however long it takes.
   */
  retries: number;
  logger: Logger;
  /** Told of each failed attempt to get a producer id while the brokers cannot be reached. */
  failing: (err: unknown) => void;
}

/**
 * The producer id and per-partition sequences of one sink: stamps batches before they go out,
 * learns from each answer which are written, and moves to a new producer id after a gap.
 */
export class ProducerSequences {
  private current: Generation | undefined;
  private renewing: Promise<void> | undefined;
  private readonly stamps = new Map<PartitionBatch, Stamp>();
  private changes: { promise: Promise<void>; resolve: () => void } | undefined;
  private taken = 0;
  private answered = 0;
  private unavailable: string | undefined;

  constructor(private readonly options: ProducerSequencesOptions) {}

  status(): IdempotenceStatus {
    const gen = this.current;
    if (this.unavailable !== undefined) {
      return { state: 'unavailable', producerIds: this.taken, reason: this.unavailable };
    }
    if (gen === undefined) return { state: 'pending', producerIds: this.taken };
    return {
      state: 'on',
      producerId: gen.producerId.toString(),
      producerEpoch: gen.producerEpoch,
      producerIds: this.taken,
    };
  }

  /** Gets the first producer id; resolves with one, after falling back to none, or once stopped. */
  start(): Promise<void> {
    return this.renew();
  }

  /**
   * Stamps the batches that have no stamp (not sent yet, or refused for good under an old producer
   * id) with the current producer id and each partition's next sequence. Synchronous while there is
   * a usable producer id, so requests take sequences in the order they go out; otherwise returns
   * the wait for a new one, after which call it again.
   */
  stamp(batches: readonly PartitionBatch[]): Promise<void> | undefined {
    let gen: Generation | undefined;
    for (const b of batches) {
      if (b.written || this.stamps.has(b)) continue;
      if (gen === undefined) {
        gen = this.current;
        if (gen === undefined || (gen.spent !== undefined && gen.producerId >= 0n)) return this.renew();
      }
      this.assign(gen, b);
    }
    return undefined;
  }

  /**
   * The stamped, unwritten batches that may go out now, noted as gone out: those of a partition
   * whose broker knows the producer that are fewer than MAX_IN_FLIGHT_IDEMPOTENT places after its
   * oldest unacknowledged batch, only the oldest of one that does not know it yet, and none refused
   * as out of order until an earlier batch of its partition has settled. Empty while the rest
   * wait; see changed().
   */
  sendable(batches: readonly PartitionBatch[]): PartitionBatch[] {
    const out: PartitionBatch[] = [];
    for (const b of batches) {
      if (b.written) continue;
      const s = this.stamps.get(b);
      if (s === undefined) continue;
      const lane = s.generation.lanes.get(b.partition);
      if (lane !== undefined) {
        if (s.behind && lane.version === s.sentAt) continue;
        if (!lane.known && lane.stamps[0] !== s) continue;
        if (lane.stamps.indexOf(s) >= MAX_IN_FLIGHT_IDEMPOTENT) continue;
        s.sentAt = lane.version;
        s.behind = false;
      }
      out.push(b);
    }
    return out;
  }

  /** Resolves at the next batch that settles, is given up or loses its stamp. */
  changed(): Promise<void> {
    if (this.changes === undefined) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.changes = { promise, resolve };
    }
    return this.changes.promise;
  }

  /** After an attempt: each batch the broker acknowledged settles; no other batch does. */
  settle(batches: readonly PartitionBatch[]): void {
    for (const b of batches) {
      if (!b.written) continue;
      const s = this.stamps.get(b);
      if (s !== undefined) this.written(s);
    }
  }

  /**
   * After a failed attempt: settles what was written and handles the sequence refusals. A batch
   * refused as out of order while an earlier batch of its partition was unsettled (when it went
   * out: that one may have arrived just after it) is no failure: it goes again once that one has
   * settled. Returns the error that is left, retriable where a retry can succeed, or undefined when
   * nothing failed but such waits.
   */
  failed(batches: readonly PartitionBatch[], err: unknown): unknown {
    this.settle(batches);
    if (!(err instanceof ProduceError)) return err;
    const left: { partition: number; error: Error }[] = [];
    for (const f of err.failures) {
      const b = batches.find((x) => x.partition === f.partition);
      if (b?.written === true) continue;
      const s = b === undefined ? undefined : this.stamps.get(b);
      const type = (f.error as { type?: unknown }).type;
      if (
        s === undefined ||
        s.generation.producerId < 0n ||
        typeof type !== 'string' ||
        (type !== OUT_OF_ORDER && !LOST_PRODUCER.has(type))
      ) {
        left.push(f);
        continue;
      }
      const where = `kafka sink partition ${f.partition}, producer id ${s.generation.producerId}`;
      if (type === OUT_OF_ORDER && !this.gapBefore(s)) {
        s.behind = true;
        continue;
      }
      // The broker has a gap before this batch (one given up) or no state for the producer: it
      // was not written, and cannot be under this producer id. It takes a new stamp.
      this.unstamp(s, type);
      left.push({
        partition: f.partition,
        error: sequenceError(`${where}: ${type}; resending under a new producer id`, true, f.error),
      });
    }
    if (left.length === 0) return undefined;
    if (left.length === err.failures.length && left.every((f, i) => f === err.failures[i])) return err;
    return new ProduceError(err.topic, left);
  }

  /**
   * The request is given up: its unwritten batches leave a gap in their partitions' sequences (or
   * may: a timed-out batch may have been written), so new batches need a new producer id.
   */
  givenUp(batches: readonly PartitionBatch[]): void {
    for (const b of batches) {
      if (b.written) continue;
      const s = this.stamps.get(b);
      if (s !== undefined) this.unstamp(s, 'a batch was given up');
    }
  }

  private assign(gen: Generation, b: PartitionBatch): void {
    const s: Stamp = { batch: b, generation: gen, sentAt: -1, behind: false, acked: false };
    this.stamps.set(b, s);
    if (gen.producerId < 0n) {
      stampBatch(b.data, NO_PRODUCER);
      return;
    }
    const baseSequence = gen.next.get(b.partition) ?? 0;
    stampBatch(b.data, { producerId: gen.producerId, producerEpoch: gen.producerEpoch, baseSequence });
    gen.next.set(b.partition, nextSequence(baseSequence, batchRecordCount(b.data)));
    let lane = gen.lanes.get(b.partition);
    if (lane === undefined) gen.lanes.set(b.partition, (lane = { stamps: [], known: false, version: 0 }));
    lane.stamps.push(s);
  }

  /**
   * Whether an out-of-order refusal of `s` is for good: it was the oldest unsettled batch of its
   * partition when it went out, and still is. Otherwise an earlier batch may yet fill the gap.
   */
  private gapBefore(s: Stamp): boolean {
    const lane = s.generation.lanes.get(s.batch.partition);
    return lane !== undefined && lane.stamps[0] === s && lane.version === s.sentAt;
  }

  private written(s: Stamp): void {
    this.stamps.delete(s.batch);
    s.acked = true;
    const lane = s.generation.lanes.get(s.batch.partition);
    if (lane === undefined) return;
    lane.known = true;
    trim(lane);
    lane.version++;
    this.notify();
  }

  private unstamp(s: Stamp, why: string): void {
    this.stamps.delete(s.batch);
    const lane = s.generation.lanes.get(s.batch.partition);
    const at = lane === undefined ? -1 : lane.stamps.indexOf(s);
    if (at >= 0) {
      lane!.stamps.splice(at, 1);
      trim(lane!);
      lane!.version++;
    }
    s.generation.spent ??= why;
    this.notify();
  }

  private notify(): void {
    const changes = this.changes;
    this.changes = undefined;
    changes?.resolve();
  }

  private renew(): Promise<void> {
    this.renewing ??= this.acquire().finally(() => {
      this.renewing = undefined;
    });
    return this.renewing;
  }

  private async acquire(): Promise<void> {
    const before = this.current;
    for (let attempt = 1; !this.options.stopped(); attempt++) {
      try {
        const id = await this.options.acquire();
        this.current = generation(id.producerId, id.producerEpoch);
        this.taken++;
        this.answered = 0;
        const fields = { producerId: id.producerId.toString(), producerEpoch: id.producerEpoch };
        if (before === undefined) this.options.logger.debug(fields, 'kafka sink: idempotent produce');
        else this.options.logger.info({ ...fields, reason: before.spent }, 'kafka sink: new producer id');
        return;
      } catch (err) {
        const kind = producerIdFailure(err);
        if (kind === 'refused' || (kind === 'answered' && ++this.answered > this.options.retries)) {
          this.fallBack(err);
          return;
        }
        this.options.failing(err);
        await this.options.sleep(this.options.backoff(attempt));
      }
    }
  }

  /** Writes without idempotence from now on: exporting flows matters more than deduplicating them. */
  private fallBack(err: unknown): void {
    const type = refusalType(err);
    this.current = generation(-1n, -1);
    this.unavailable = `the brokers refused a producer id (${type}: ${messageOf(err)})`;
    this.options.logger.warn(
      { err, refusal: type },
      `kafka sink: the brokers refused a producer id (${type}); writing without idempotence, so a retry after a lost response may write records twice; ${remedy(type)}, or set idempotence to false`,
    );
  }
}
