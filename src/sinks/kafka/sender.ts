import type { SchedulerLike, Subscription } from 'rxjs';
import type { HealthReporter } from '../../component.js';
import { beforeDeadline } from '../../delivery/deadline.js';
import { OutageLog } from '../../delivery/outage.js';
import { SettledWaiters } from '../../delivery/settled.js';
import { Sleeper } from '../../delivery/sleeper.js';
import { kafkaErrorRetriable, type KafkaTransport } from '../../kafka/client.js';
import { ProducerSequences, type IdempotenceStatus } from '../../kafka/idempotence.js';
import { unwritten, type EncodedRequest } from '../../kafka/produce.js';
import type { DropReason, StageCounters } from '../../ledger.js';
import type { Logger } from '../../logger.js';
import type { FlowRecord } from '../../records/flow.js';
import { messageOf } from '../../errors.js';
import { SinkError } from '../errors.js';
import type { Admission } from './admission.js';
import type { RequestBuilder } from './requests.js';

/** Once the deadline of close() has passed, how long disconnecting may still take. */
const DISCONNECT_GRACE_MS = 500;

/** Whether trying again can help: see kafkaErrorRetriable; encoding errors never get better. */
export function retriable(err: unknown): boolean {
  if (err instanceof SinkError) return err.code !== 'EENCODE';
  return kafkaErrorRetriable(err);
}

export interface SenderConfig {
  bootstrap_servers: string[];
  idempotence: boolean;
  linger_ms: number;
  max_in_flight: number;
  retries: number;
  retry_initial_ms: number;
  retry_max_ms: number;
  delivery_timeout_ms: number;
  buffer_max_records: number;
  degraded_after_ms: number;
}

export interface SenderParts {
  transport: KafkaTransport;
  admission: Admission;
  requests: RequestBuilder;
  counters: StageCounters;
  logger: Logger;
  scheduler: SchedulerLike;
  health: HealthReporter | undefined;
  /** Counts and logs records lost for `reason`. */
  drop: (reason: DropReason, n: number, cause?: unknown) => void;
}

interface Request {
  records: number;
  /** Queue position of its first record, for flush(). */
  first: number;
  /** When its oldest record arrived; it fails at deadline = this + delivery_timeout_ms. */
  arrived: number;
  abandoned: boolean;
}

/**
 * The kafka sink's send service: connects (and, with idempotence, gets a producer id first), takes
 * requests from the admission queue when they are due (batch_max_records, linger_ms, a flush),
 * runs up to max_in_flight of them, retries each with backoff until delivery_timeout_ms, keeps
 * batches of a partition in order under idempotence, logs outages and reports health, and on
 * shutdown writes what it can before the deadline and counts the rest.
 */
export class KafkaSender {
  private readonly config: SenderConfig;
  private readonly transport: KafkaTransport;
  private readonly admission: Admission;
  private readonly requests: RequestBuilder;
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly scheduler: SchedulerLike;
  private readonly health: HealthReporter | undefined;
  private readonly drop: SenderParts['drop'];
  /** Producer id and sequences, with idempotence. */
  private readonly producer: ProducerSequences | undefined;
  private readonly inFlight = new Set<Request>();
  private inFlightCount = 0;
  private readonly flushes: SettledWaiters;
  private readonly sleeper: Sleeper;
  private readonly outage: OutageLog;
  private connected = false;
  private connecting: Promise<void> | undefined;
  private pumping = false;
  private timer: Subscription | undefined;
  private timerDue = Infinity;
  /** Fires once the brokers have been unreachable for degraded_after_ms. */
  private degradedTimer: Subscription | undefined;
  private degraded = false;
  private closing = false;
  /** Set when shutdown has stopped waiting: nothing more is sent or retried. */
  private stopped = false;

  constructor(config: SenderConfig, parts: SenderParts) {
    this.config = config;
    this.transport = parts.transport;
    this.admission = parts.admission;
    this.requests = parts.requests;
    this.counters = parts.counters;
    this.logger = parts.logger;
    this.scheduler = parts.scheduler;
    this.health = parts.health;
    this.drop = parts.drop;
    this.sleeper = new Sleeper(this.scheduler);
    this.flushes = new SettledWaiters((target) => this.settledBelow(target));
    this.outage = new OutageLog({
      logger: this.logger,
      scheduler: this.scheduler,
      recovered: 'kafka sink: writing again',
    });
    this.producer = config.idempotence
      ? new ProducerSequences({
          acquire: () => this.transport.initProducerId(),
          sleep: (ms) => this.sleeper.sleep(ms),
          backoff: (attempt) => this.backoff(attempt),
          stopped: () => this.stopped,
          retries: config.retries,
          logger: this.logger,
          failing: (err) => this.failing(err),
        })
      : undefined;
  }

  /** The time on the sink's scheduler. */
  now(): number {
    return this.scheduler.now();
  }

  /** Records sent and not settled. */
  get inFlightRecords(): number {
    return this.inFlightCount;
  }

  /** Whether batches carry a producer id, which one, and why not if the brokers refused one. */
  idempotence(): IdempotenceStatus {
    return this.producer?.status() ?? { state: 'off', producerIds: 0 };
  }

  /** Resolves when every record admitted when it was called is written or counted as dropped. */
  flush(): Promise<void> {
    const target = this.admission.admitted;
    if (this.settledBelow(target)) return Promise.resolve();
    const done = this.flushes.wait(target);
    this.pump();
    return done;
  }

  start(): void {
    this.connecting ??= (async () => {
      for (let attempt = 1; !this.stopped; attempt++) {
        try {
          await this.transport.connect();
          if (this.stopped) return;
          // Nothing goes out before the producer id: the first batches need it as much as the rest.
          if (this.producer !== undefined) await this.producer.start();
          if (this.stopped) return;
          this.connected = true;
          this.recovered();
          this.logger.debug(
            { brokers: this.config.bootstrap_servers, idempotence: this.idempotence() },
            'kafka sink: connected',
          );
          this.pump();
          return;
        } catch (err) {
          this.failing(err);
          await this.sleeper.sleep(this.backoff(attempt));
        }
      }
    })();
  }

  /** Resolves the flushes whose records have all settled (after records were taken back). */
  settleFlushes(): void {
    this.flushes.check();
  }

  /** True while flush() or shutdown wants queued records out without lingering. */
  private draining(): boolean {
    return this.closing || this.flushes.wants(this.admission.left);
  }

  /** Expires what waited too long, starts every request that is due, and sets the next timer. */
  pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      const now = this.scheduler.now();
      const expired = this.admission.expire(now - this.config.delivery_timeout_ms);
      if (expired > 0) {
        this.drop(
          'sink_failed',
          expired,
          `not written within delivery_timeout_ms (${this.config.delivery_timeout_ms})`,
        );
      }
      while (
        this.connected &&
        !this.stopped &&
        this.inFlight.size < this.config.max_in_flight &&
        this.admission.length > 0
      ) {
        const size = this.requests.recordsPerRequest();
        const due =
          this.admission.length >= size ||
          now - this.admission.headArrival() >= this.config.linger_ms ||
          this.draining();
        if (!due) break;
        const arrived = this.admission.headArrival();
        const first = this.admission.left;
        const records = this.admission.take(size);
        const request: Request = { records: records.length, first, arrived, abandoned: false };
        this.inFlight.add(request);
        this.inFlightCount += records.length;
        void this.deliver(request, records);
      }
      this.setTimer(now);
    } finally {
      this.pumping = false;
    }
    this.flushes.check();
  }

  /** Wakes the pump when the oldest record's linger or delivery timeout is reached. */
  private setTimer(now: number): void {
    if (this.admission.length === 0 || this.stopped) {
      this.clearTimer();
      return;
    }
    const head = this.admission.headArrival();
    let due = head + this.config.delivery_timeout_ms;
    if (this.connected && this.inFlight.size < this.config.max_in_flight)
      due = Math.min(due, head + this.config.linger_ms);
    if (this.timer !== undefined && this.timerDue <= due) return;
    this.clearTimer();
    this.timerDue = due;
    this.timer = this.scheduler.schedule(
      () => {
        this.timer = undefined;
        this.timerDue = Infinity;
        this.pump();
      },
      Math.max(0, due - now),
    );
  }

  private clearTimer(): void {
    this.timer?.unsubscribe();
    this.timer = undefined;
    this.timerDue = Infinity;
  }

  private backoff(attempt: number): number {
    return Math.min(this.config.retry_max_ms, this.config.retry_initial_ms * 2 ** Math.min(attempt - 1, 30));
  }

  /** Writes one request, retrying until it is written, fails for good or times out. Never rejects. */
  private async deliver(request: Request, records: FlowRecord[]): Promise<void> {
    const deadline = request.arrived + this.config.delivery_timeout_ms;
    let encoded: EncodedRequest | undefined;
    // Records of the request no broker has taken: all of them until it is encoded and sent.
    const unsent = (): number => (encoded === undefined ? request.records : unwritten(encoded));
    const fail = (err: unknown): void => {
      const lost = unsent();
      this.counters.addSent(request.records - lost);
      this.drop('sink_failed', lost, err);
      if (encoded !== undefined) this.producer?.givenUp(encoded.batches);
    };
    const producer = this.producer;
    try {
      for (let failures = 0; ;) {
        try {
          if (encoded === undefined) {
            encoded = await this.requests.encode(records, await this.transport.partitions());
            records = [];
          }
          const ready = producer === undefined ? encoded : this.ready(producer, encoded, deadline);
          const going = ready instanceof Promise ? await ready : ready;
          if (request.abandoned) return;
          await this.transport.send(going);
          if (request.abandoned) return;
          producer?.settle(going.batches);
          // Batches that waited behind an earlier batch of their partition go next.
          if (unwritten(encoded) > 0) continue;
          this.counters.addSent(request.records);
          this.recovered();
          break;
        } catch (caught) {
          if (request.abandoned) return;
          const err =
            producer !== undefined && encoded !== undefined
              ? producer.failed(encoded.batches, caught)
              : caught;
          if (err === undefined) {
            // Nothing failed for good: what failed waits behind an earlier batch of its
            // partition, and goes again once that one has settled.
            if (unwritten(encoded!) > 0) continue;
            this.counters.addSent(request.records);
            this.recovered();
            break;
          }
          failures++;
          const wait = this.backoff(failures);
          if (!retriable(err) || this.scheduler.now() + wait >= deadline || this.stopped) {
            fail(err);
            break;
          }
          this.failing(err);
          await this.sleeper.sleep(wait);
          if (request.abandoned) return;
        }
      }
    } catch (err) {
      if (request.abandoned) return;
      fail(err);
    }
    if (encoded !== undefined) this.requests.release(encoded);
    this.inFlight.delete(request);
    this.inFlightCount -= request.records;
    this.pump();
  }

  /**
   * The request's batches that may go out now, with idempotence: stamped with the producer id and
   * their partitions' next sequences, and not behind an earlier batch of a partition whose broker
   * does not know the producer yet. Synchronous when nothing has to wait, so that requests take
   * their sequences in the order they go out; otherwise waits, at most until the deadline.
   */
  private ready(
    producer: ProducerSequences,
    encoded: EncodedRequest,
    deadline: number,
  ): EncodedRequest | Promise<EncodedRequest> {
    const renewal = producer.stamp(encoded.batches);
    if (renewal === undefined) {
      const going = this.going(producer, encoded);
      if (going !== undefined) return going;
    }
    return this.readyLater(producer, encoded, deadline, renewal);
  }

  private async readyLater(
    producer: ProducerSequences,
    encoded: EncodedRequest,
    deadline: number,
    renewal: Promise<void> | undefined,
  ): Promise<EncodedRequest> {
    for (;;) {
      const left = deadline - this.scheduler.now();
      const settled = left > 0 && (await this.sleeper.within(renewal ?? producer.changed(), left));
      if (!settled || this.stopped) {
        throw new SinkError(
          renewal === undefined ? 'EORDER' : 'ENOPRODUCERID',
          renewal === undefined
            ? `kafka sink: an earlier batch of the same partition was not settled within delivery_timeout_ms (${this.config.delivery_timeout_ms})`
            : `kafka sink: no producer id from the brokers within delivery_timeout_ms (${this.config.delivery_timeout_ms}); see the warnings before`,
        );
      }
      renewal = producer.stamp(encoded.batches);
      if (renewal !== undefined) continue;
      const going = this.going(producer, encoded);
      if (going !== undefined) return going;
    }
  }

  /** The request, or the part of it that may go now; undefined when all of it has to wait. */
  private going(producer: ProducerSequences, encoded: EncodedRequest): EncodedRequest | undefined {
    const sendable = producer.sendable(encoded.batches);
    let waiting = 0;
    for (const b of encoded.batches) if (!b.written) waiting++;
    if (sendable.length === waiting) return encoded;
    return sendable.length > 0 ? { ...encoded, batches: sendable } : undefined;
  }

  private failing(err: unknown): void {
    const began = this.outage.failing(
      { err },
      'kafka sink: cannot write to the brokers; holding records and retrying',
    );
    if (!began || this.health === undefined || this.stopped) return;
    const reason = `kafka sink: the brokers (${this.config.bootstrap_servers.join(', ')}) have not been reachable for ${this.config.degraded_after_ms} ms; records are held up to buffer_max_records (${this.config.buffer_max_records}) and delivery_timeout_ms (${this.config.delivery_timeout_ms}); check the brokers and the network (last error: ${messageOf(err)})`;
    this.degradedTimer = this.scheduler.schedule(() => {
      this.degradedTimer = undefined;
      if (this.outage.since === undefined || this.stopped) return;
      this.degraded = true;
      this.health?.degraded(reason);
    }, this.config.degraded_after_ms);
  }

  private recovered(): void {
    if (this.outage.recovered() === undefined) return;
    this.degradedTimer?.unsubscribe();
    this.degradedTimer = undefined;
    if (this.degraded) {
      this.degraded = false;
      this.health?.healthy();
    }
  }

  // ------------------------------------------------------------------------------------------
  // Flush and shutdown

  private settledBelow(target: number): boolean {
    if (this.admission.left < target) return false;
    for (const r of this.inFlight) if (r.first < target) return false;
    return true;
  }

  /**
   * Writes what is held for at most `waitMs`, counts what is still unwritten then as `shutdown`,
   * and disconnects.
   */
  async shutdown(waitMs: number): Promise<void> {
    this.closing = true;
    const outcome = await beforeDeadline(this.flush(), waitMs, this.scheduler);
    this.stopped = true;
    this.clearTimer();
    if (outcome === 'late') {
      let abandoned = this.admission.clear();
      for (const r of this.inFlight) {
        r.abandoned = true;
        abandoned += r.records;
      }
      this.inFlight.clear();
      this.inFlightCount = 0;
      this.drop('shutdown', abandoned, `not written by the close deadline (waited ${waitMs} ms)`);
      this.logger.warn({ dropped: abandoned }, 'kafka sink: closed with records unwritten');
    }
    this.sleeper.wake();
    this.flushes.check();
    this.flushes.releaseAll();
    this.degradedTimer?.unsubscribe();
    this.degradedTimer = undefined;
    // A connection attempt to brokers that are away may take connection_timeout_ms and more; the
    // deadline is not held up by it.
    const disconnected = (async () => {
      await this.connecting;
      try {
        await this.transport.disconnect();
      } catch (err) {
        this.logger.debug({ err }, 'kafka sink: disconnect failed');
      }
    })();
    if (!(await this.sleeper.within(disconnected, DISCONNECT_GRACE_MS))) {
      this.logger.debug({ grace_ms: DISCONNECT_GRACE_MS }, 'kafka sink: closed before the connections were');
    }
  }
}
