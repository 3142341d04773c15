/**
 * `kafka`: writes flow records to a Kafka topic, as JSON (IPFIX names) or protobuf
 * (src/sinks/flow.proto), one record or a batch of records per message. kafkajs keeps the broker
 * connections; the sink encodes record batches and Produce requests itself (src/sinks/kafka/).
 *
 * Records wait in a bounded queue; a produce request takes up to batch_max_records of them once
 * that many wait, once they fill about batch_max_bytes, or once the oldest has waited linger_ms,
 * and up to max_in_flight requests run at once. A request the transport gives up on (after its own
 * retries; partitions already written are not sent again) is retried by the sink with backoff until delivery_timeout_ms after its oldest record
 * arrived; then its records count as `sink_failed`. While the brokers are away the queue fills up
 * to buffer_max_records and what does not fit counts as `sink_buffer_full`. Nothing escapes into
 * the pipeline: consume() resolves once its input completed and every record is written or counted.
 *
 * With idempotence (the default) every batch carries a producer id and sequence
 * (src/sinks/kafka/idempotence.ts), so a retry after a lost response does not write records twice.
 */
import { asyncScheduler, type Observable, type SchedulerLike, type Subscription } from 'rxjs';
import {
  msOption,
  type ComponentContext,
  type HealthReporter,
  type JsonSchema,
  type Sink,
  type SinkModule,
} from '../component.js';
import type { DropReason, StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import type { FlowBatch, FlowRecord } from '../records.js';
import { consumeBatches } from './consume.js';
import { messageOf } from '../errors.js';
import { SinkError } from './errors.js';
import {
  ProduceError,
  kafkaErrorRetriable,
  kafkajsTransport,
  type KafkaTransport,
  type SaslOptions,
  type TlsOptions,
} from './kafka/client.js';
import type { Compression } from './kafka/compression.js';
import { MAX_IN_FLIGHT_IDEMPOTENT, ProducerSequences, type IdempotenceStatus } from './kafka/idempotence.js';
import {
  RequestEncoder,
  unwritten,
  type EncodedRequest,
  type Encoding,
  type KeyMode,
} from './kafka/encode.js';
import { RecordQueue } from './kafka/queue.js';
import { LossLog } from './loss-log.js';

export interface KafkaSinkConfig {
  /** `host:port` of one or more brokers. */
  bootstrap_servers: string[];
  topic: string;
  client_id?: string;
  encoding?: Encoding;
  records_per_message?: number;
  key?: KeyMode;
  batch_max_records?: number;
  batch_max_bytes?: number;
  linger_ms?: number;
  max_in_flight?: number;
  idempotence?: boolean;
  compression?: Compression;
  acks?: -1 | 0 | 1;
  request_timeout_ms?: number;
  connection_timeout_ms?: number;
  retries?: number;
  retry_initial_ms?: number;
  retry_max_ms?: number;
  delivery_timeout_ms?: number;
  buffer_max_records?: number;
  when_full?: 'drop_newest' | 'drop_oldest';
  shutdown_timeout_ms?: number;
  degraded_after_ms?: number;
  tls?: TlsOptions;
  sasl?: SaslOptions;
}

type Resolved = Required<Omit<KafkaSinkConfig, 'tls' | 'sasl'>> & Pick<KafkaSinkConfig, 'tls' | 'sasl'>;

const DEFAULTS = {
  client_id: 'rxflow',
  encoding: 'json',
  records_per_message: 1,
  key: 'flow',
  batch_max_records: 1000,
  batch_max_bytes: 1_000_000,
  linger_ms: 5,
  max_in_flight: 4,
  idempotence: true,
  compression: 'none',
  acks: -1,
  request_timeout_ms: 30_000,
  connection_timeout_ms: 3000,
  retries: 3,
  retry_initial_ms: 100,
  retry_max_ms: 5000,
  delivery_timeout_ms: 120_000,
  buffer_max_records: 100_000,
  when_full: 'drop_newest',
  shutdown_timeout_ms: 30_000,
  degraded_after_ms: 10_000,
} as const satisfies Partial<KafkaSinkConfig>;

/** Once the deadline of close() has passed, how long disconnecting may still take. */
const DISCONNECT_GRACE_MS = 500;

/** Losses are logged at most this often; the ledger has every count. */
const LOSS_LOG_INTERVAL_MS = 10_000;

/** Starting estimate of encoded bytes per record, refined by every request. */
const FIRST_BYTES_PER_RECORD: Record<Encoding, number> = { json: 500, protobuf: 120 };

const ms = (description: string, defaultValue: number, minimum = 0): JsonSchema =>
  msOption(description, defaultValue, minimum);

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['bootstrap_servers', 'topic'],
  properties: {
    bootstrap_servers: {
      type: 'array',
      minItems: 1,
      items: { type: 'string', pattern: '^\\S+:[0-9]{1,5}$' },
      description: 'Brokers to bootstrap from, as host:port.',
    },
    topic: { type: 'string', minLength: 1, description: 'Topic the records are written to.' },
    client_id: { type: 'string', minLength: 1, default: DEFAULTS.client_id, description: 'Kafka client id.' },
    encoding: {
      enum: ['json', 'protobuf'],
      default: DEFAULTS.encoding,
      description:
        'json: one JSON object per record with IPFIX field names; protobuf: FlowRecord/FlowBatch of src/sinks/flow.proto. Every message carries a content-type header naming it: application/json, or application/x-protobuf; messageType=rxflow.v1.FlowRecord (rxflow.v1.FlowBatch with records_per_message > 1).',
    },
    records_per_message: {
      type: 'integer',
      minimum: 1,
      maximum: 1000000,
      default: DEFAULTS.records_per_message,
      description:
        '1: a message per record; N > 1: up to N records per message, as a JSON array or a protobuf FlowBatch.',
    },
    key: {
      enum: ['flow', 'none'],
      default: DEFAULTS.key,
      description:
        'flow: both directions of a flow go to one partition (with one record per message the key is protocol/low endpoint/high endpoint; batch messages are grouped by partition instead and carry no key); none: no key, round robin.',
    },
    batch_max_records: {
      type: 'integer',
      minimum: 1,
      maximum: 1000000,
      default: DEFAULTS.batch_max_records,
      description: 'Records per produce request at most; a request is sent as soon as this many wait.',
    },
    batch_max_bytes: {
      type: 'integer',
      minimum: 1024,
      maximum: 1073741824,
      default: DEFAULTS.batch_max_bytes,
      description:
        'Encoded bytes per produce request, about (estimated from the records sent before); keep it below the broker message.max.bytes.',
    },
    linger_ms: ms(
      'How long the oldest waiting record waits for more before a smaller request is sent.',
      DEFAULTS.linger_ms,
    ),
    max_in_flight: {
      type: 'integer',
      minimum: 1,
      maximum: 64,
      default: DEFAULTS.max_in_flight,
      description: `Produce requests in flight at once; at most ${MAX_IN_FLIGHT_IDEMPOTENT} with idempotence.`,
    },
    idempotence: {
      type: 'boolean',
      description: `Idempotent produce: every batch carries a producer id (from InitProducerId) and a sequence per partition, so a broker does not write a batch twice when a retry resends it after a lost response, and flows are not counted twice downstream. Needs acks -1 and max_in_flight of ${MAX_IN_FLIGHT_IDEMPOTENT} or less; unset, it is on exactly when those hold. If the brokers refuse a producer id (no IdempotentWrite permission, brokers older than Kafka 0.11) the sink logs a warning and writes without.`,
    },
    compression: {
      enum: ['none', 'gzip', 'lz4', 'zstd'],
      default: DEFAULTS.compression,
      description:
        'Record batch compression, done off the event loop: lz4, zstd (needs brokers that take Produce v7: Kafka 2.1 or newer), gzip, or none. lz4 and zstd use the system liblz4.so.1 and libzstd.so.1 (Debian liblz4-1, libzstd1) and compress several times faster than gzip.',
    },
    acks: {
      enum: [-1, 0, 1],
      default: DEFAULTS.acks,
      description:
        '-1: all in-sync replicas acknowledge; 1: the leader only; 0: no acknowledgement (losses go unseen).',
    },
    request_timeout_ms: ms('Time a broker has to answer a request.', DEFAULTS.request_timeout_ms, 1),
    connection_timeout_ms: ms(
      'Time to establish a connection to a broker.',
      DEFAULTS.connection_timeout_ms,
      1,
    ),
    retries: {
      type: 'integer',
      minimum: 0,
      maximum: 1000,
      default: DEFAULTS.retries,
      description:
        'Retries of a failed produce request (and of connecting or reading metadata, inside kafkajs) before the sink backs off and tries again.',
    },
    retry_initial_ms: ms(
      'First backoff after a failure; it doubles with every further failure.',
      DEFAULTS.retry_initial_ms,
      1,
    ),
    retry_max_ms: ms('Longest backoff between attempts.', DEFAULTS.retry_max_ms, 1),
    delivery_timeout_ms: ms(
      'A record not written within this time of reaching the sink is dropped as sink_failed.',
      DEFAULTS.delivery_timeout_ms,
      1,
    ),
    buffer_max_records: {
      type: 'integer',
      minimum: 1,
      maximum: 16777216,
      default: DEFAULTS.buffer_max_records,
      description:
        'Records held (waiting or in flight) at most; beyond it records are dropped as sink_buffer_full.',
    },
    when_full: {
      enum: ['drop_newest', 'drop_oldest'],
      default: DEFAULTS.when_full,
      description:
        'With a full buffer: drop the arriving records, or the oldest waiting ones (not those in flight).',
    },
    shutdown_timeout_ms: ms(
      'On close, how long to wait for held records to be written; the rest are dropped as shutdown. The pipeline drain deadline (drain_timeout_ms) bounds it too: the sink waits for the shorter of the two.',
      DEFAULTS.shutdown_timeout_ms,
    ),
    degraded_after_ms: ms(
      'How long the brokers may be unreachable (nothing written, attempts failing) before the sink reports itself degraded in rxflow status and the health endpoint; it reports healthy again at the next write.',
      DEFAULTS.degraded_after_ms,
      1,
    ),
    tls: {
      type: 'object',
      additionalProperties: false,
      description: 'Connect with TLS. Files are PEM.',
      properties: {
        ca_file: { type: 'string', description: 'CA certificates to trust instead of the system ones.' },
        cert_file: { type: 'string', description: 'Client certificate, for mutual TLS; needs key_file.' },
        key_file: { type: 'string', description: 'Private key of cert_file.' },
        insecure_skip_verify: {
          type: 'boolean',
          default: false,
          description: 'Accept any broker certificate.',
        },
        server_name: { type: 'string', description: 'Name to verify the broker certificate against (SNI).' },
      },
    },
    sasl: {
      type: 'object',
      additionalProperties: false,
      required: ['mechanism', 'username'],
      // ajv's strict mode wants each required key declared beside it.
      anyOf: [
        { properties: { password: true }, required: ['password'] },
        { properties: { password_file: true }, required: ['password_file'] },
      ],
      description:
        'Authenticate with SASL. The password comes from password, e.g. "${KAFKA_PASSWORD}" from the environment, or from the file password_file names; it is never logged or printed.',
      properties: {
        mechanism: { enum: ['plain', 'scram-sha-256', 'scram-sha-512'] },
        username: { type: 'string' },
        password: { type: 'string', description: 'The password; always text, whatever it looks like.' },
        password_file: {
          type: 'string',
          minLength: 1,
          description: 'A file holding the password (one trailing newline is ignored), instead of password.',
        },
      },
    },
  },
};

function resolveConfig(config: KafkaSinkConfig): Resolved {
  const resolved = { ...DEFAULTS, ...config } as Resolved;
  // Unset, idempotence follows the other settings, as in Kafka's own clients: on unless acks or
  // max_in_flight rule it out. Set to true, a conflict is an error below.
  if (config.idempotence === undefined) {
    resolved.idempotence = resolved.acks === -1 && resolved.max_in_flight <= MAX_IN_FLIGHT_IDEMPOTENT;
  }
  if (resolved.bootstrap_servers.length === 0) {
    throw new SinkError('EBADCONFIG', 'kafka sink: bootstrap_servers is empty; list at least one host:port');
  }
  if (resolved.idempotence && resolved.max_in_flight > MAX_IN_FLIGHT_IDEMPOTENT) {
    throw new SinkError(
      'EBADCONFIG',
      `kafka sink: max_in_flight (${resolved.max_in_flight}) is above ${MAX_IN_FLIGHT_IDEMPOTENT}, the most requests a broker keeps in order for an idempotent producer; lower it or set idempotence to false`,
    );
  }
  if (resolved.idempotence && resolved.acks !== -1) {
    throw new SinkError(
      'EBADCONFIG',
      `kafka sink: idempotence needs acks -1 (every in-sync replica), not ${resolved.acks}; set acks to -1 or idempotence to false`,
    );
  }
  if (resolved.retry_max_ms < resolved.retry_initial_ms) {
    throw new SinkError(
      'EBADCONFIG',
      `kafka sink: retry_max_ms (${resolved.retry_max_ms}) is below retry_initial_ms (${resolved.retry_initial_ms}); raise it`,
    );
  }
  return resolved;
}

/** Whether trying again can help: see kafkaErrorRetriable; encoding errors never get better. */
export function retriable(err: unknown): boolean {
  if (err instanceof SinkError && !(err instanceof ProduceError)) return err.code !== 'EENCODE';
  return kafkaErrorRetriable(err);
}

interface Request {
  records: number;
  /** Queue position of its first record, for flush(). */
  first: number;
  /** When its oldest record arrived; it fails at deadline = this + delivery_timeout_ms. */
  arrived: number;
  abandoned: boolean;
}

interface FlushWaiter {
  /** Every record at a queue position below this must have settled. */
  target: number;
  resolve: () => void;
}

export class KafkaSink implements Sink {
  private readonly config: Resolved;
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly scheduler: SchedulerLike;
  private readonly encoder: RequestEncoder;
  /** Producer id and sequences, with idempotence. */
  private readonly producer: ProducerSequences | undefined;
  private readonly losses: LossLog;
  private readonly queue = new RecordQueue();
  private readonly inFlight = new Set<Request>();
  private inFlightRecords = 0;
  /** Records ever put in the queue, and records ever gone from it: queue positions. */
  private admitted = 0;
  private left = 0;
  private flushWaiters: FlushWaiter[] = [];
  private bytesPerRecord: number;
  private connected = false;
  private connecting: Promise<void> | undefined;
  private pumping = false;
  private timer: Subscription | undefined;
  private timerDue = Infinity;
  private readonly sleepers = new Set<() => void>();
  private failingSince: number | undefined;
  private readonly health: HealthReporter | undefined;
  /** Fires once the brokers have been unreachable for degraded_after_ms. */
  private degradedTimer: Subscription | undefined;
  private degraded = false;
  private subscription: Subscription | undefined;
  private endConsume: (() => void) | undefined;
  private closing = false;
  /** Set when close() has stopped waiting: nothing more is sent or retried. */
  private stopped = false;
  private closed: Promise<void> | undefined;

  constructor(
    config: KafkaSinkConfig,
    context: ComponentContext,
    private readonly transport: KafkaTransport,
  ) {
    this.config = resolveConfig(config);
    this.counters = context.counters;
    this.logger = context.logger;
    this.scheduler = context.scheduler ?? asyncScheduler;
    this.health = context.health;
    this.encoder = new RequestEncoder({
      encoding: this.config.encoding,
      recordsPerMessage: this.config.records_per_message,
      key: this.config.key,
      compression: this.config.compression,
      stamped: this.config.idempotence,
    });
    this.producer = this.config.idempotence
      ? new ProducerSequences({
          acquire: () => this.transport.initProducerId(),
          sleep: (ms) => this.sleep(ms),
          backoff: (attempt) => this.backoff(attempt),
          stopped: () => this.stopped,
          retries: this.config.retries,
          logger: this.logger,
          failing: (err) => this.failing(err),
        })
      : undefined;
    this.bytesPerRecord = FIRST_BYTES_PER_RECORD[this.config.encoding];
    this.losses = new LossLog(
      this.logger,
      `kafka sink ${context.id}: records dropped`,
      LOSS_LOG_INTERVAL_MS,
      this.scheduler,
    );
  }

  consume(input: Observable<FlowBatch>): Promise<void> {
    if (this.subscription !== undefined || this.closing) {
      return Promise.reject(
        new SinkError('ECONSUME', 'kafka sink: consume() was already called or the sink is closed'),
      );
    }
    this.startConnecting();
    const consumption = consumeBatches(
      input,
      (batch) => this.accept(batch),
      () => this.flush(),
    );
    this.subscription = consumption.subscription;
    this.endConsume = consumption.end;
    return consumption.done;
  }

  /** Resolves when every record held when it was called is written or counted as dropped. */
  flush(): Promise<void> {
    const target = this.admitted;
    if (this.settledBelow(target)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.flushWaiters.push({ target, resolve });
      this.pump();
    });
  }

  /**
   * Writes what it holds for at most `timeoutMs` (default and upper bound shutdown_timeout_ms),
   * counts what is still unwritten then as `shutdown`, and disconnects.
   */
  close(timeoutMs?: number): Promise<void> {
    const wait = Math.min(this.config.shutdown_timeout_ms, Math.max(0, timeoutMs ?? Infinity));
    this.closed ??= this.shutdown(wait);
    return this.closed;
  }

  /** Whether batches carry a producer id, which one, and why not if the brokers refused one. */
  idempotence(): IdempotenceStatus {
    return this.producer?.status() ?? { state: 'off', producerIds: 0 };
  }

  // ------------------------------------------------------------------------------------------
  // Admission

  private accept(batch: FlowBatch): void {
    const n = batch.length;
    if (n === 0) return;
    this.counters.addReceived(n);
    const room = this.config.buffer_max_records - this.queue.length - this.inFlightRecords;
    const now = this.scheduler.now();
    if (n <= room) {
      this.enqueue(batch, now);
    } else if (this.config.when_full === 'drop_newest') {
      if (room > 0) this.enqueue(batch.slice(0, room), now);
      this.drop('sink_buffer_full', n - Math.max(0, room));
    } else {
      const excess = n - room;
      const old = this.queue.drop(Math.min(excess, this.queue.length));
      this.left += old;
      // Records in flight cannot be taken back; what still does not fit is the oldest arriving.
      const rest = excess - old;
      this.drop('sink_buffer_full', old + rest);
      this.enqueue(rest > 0 ? batch.slice(rest) : batch, now);
    }
    this.pump();
  }

  private enqueue(records: FlowBatch, now: number): void {
    this.queue.push(records, now);
    this.admitted += records.length;
  }

  private drop(reason: DropReason, n: number, cause?: unknown): void {
    if (n <= 0) return;
    this.counters.addDropped(reason, n);
    this.losses.add(reason, n, cause === undefined ? undefined : messageOf(cause));
  }

  // ------------------------------------------------------------------------------------------
  // Sending

  private recordsPerRequest(): number {
    const byBytes = Math.max(1, Math.floor(this.config.batch_max_bytes / this.bytesPerRecord));
    return Math.min(this.config.batch_max_records, byBytes);
  }

  /** True while flush() or close() wants queued records out without lingering. */
  private draining(): boolean {
    if (this.closing) return true;
    for (const w of this.flushWaiters) if (w.target > this.left) return true;
    return false;
  }

  /** Expires what waited too long, starts every request that is due, and sets the next timer. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      const now = this.scheduler.now();
      const expired = this.queue.dropArrivedBy(now - this.config.delivery_timeout_ms);
      if (expired > 0) {
        this.left += expired;
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
        this.queue.length > 0
      ) {
        const size = this.recordsPerRequest();
        const due =
          this.queue.length >= size ||
          now - this.queue.headArrival() >= this.config.linger_ms ||
          this.draining();
        if (!due) break;
        const arrived = this.queue.headArrival();
        const records = this.queue.take(size);
        const request: Request = { records: records.length, first: this.left, arrived, abandoned: false };
        this.left += records.length;
        this.inFlight.add(request);
        this.inFlightRecords += records.length;
        void this.deliver(request, records);
      }
      this.setTimer(now);
    } finally {
      this.pumping = false;
    }
    this.settleFlushes();
  }

  /** Wakes the pump when the oldest record's linger or delivery timeout is reached. */
  private setTimer(now: number): void {
    if (this.queue.length === 0 || this.stopped) {
      this.clearTimer();
      return;
    }
    const head = this.queue.headArrival();
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
            encoded = await this.encode(records, await this.transport.partitions());
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
          await this.sleep(wait);
          if (request.abandoned) return;
        }
      }
    } catch (err) {
      if (request.abandoned) return;
      fail(err);
    }
    if (encoded !== undefined) this.encoder.release(encoded);
    this.inFlight.delete(request);
    this.inFlightRecords -= request.records;
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
      const settled = left > 0 && (await this.within(renewal ?? producer.changed(), left));
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

  /** Resolves true when `done` settles within `ms`, false when not (or when the sink closes). */
  private within(done: Promise<void>, ms: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const finish = (settled: boolean): void => {
        this.sleepers.delete(wake);
        task.unsubscribe();
        resolve(settled);
      };
      const wake = (): void => finish(false);
      const task = this.scheduler.schedule(wake, ms);
      this.sleepers.add(wake);
      done.then(
        () => finish(true),
        () => finish(true),
      );
    });
  }

  private async encode(records: FlowRecord[], partitions: number): Promise<EncodedRequest> {
    let encoded: EncodedRequest;
    try {
      encoded = await this.encoder.encode(records, partitions, this.bytesPerRecord, Date.now());
    } catch (err) {
      throw new SinkError(
        'EENCODE',
        `kafka sink: cannot encode records as ${this.config.encoding}: ${messageOf(err)}`,
        {
          cause: err,
        },
      );
    }
    if (records.length > 0 && encoded.bytes > 0) this.bytesPerRecord = encoded.bytes / records.length;
    return encoded;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        this.sleepers.delete(wake);
        task.unsubscribe();
        resolve();
      };
      const task = this.scheduler.schedule(wake, ms);
      this.sleepers.add(wake);
    });
  }

  private failing(err: unknown): void {
    if (this.failingSince !== undefined) return;
    this.failingSince = this.scheduler.now();
    this.logger.warn({ err }, 'kafka sink: cannot write to the brokers; holding records and retrying');
    if (this.health === undefined || this.stopped) return;
    const reason = `kafka sink: the brokers (${this.config.bootstrap_servers.join(', ')}) have not been reachable for ${this.config.degraded_after_ms} ms; records are held up to buffer_max_records (${this.config.buffer_max_records}) and delivery_timeout_ms (${this.config.delivery_timeout_ms}); check the brokers and the network (last error: ${messageOf(err)})`;
    this.degradedTimer = this.scheduler.schedule(() => {
      this.degradedTimer = undefined;
      if (this.failingSince === undefined || this.stopped) return;
      this.degraded = true;
      this.health?.degraded(reason);
    }, this.config.degraded_after_ms);
  }

  private recovered(): void {
    if (this.failingSince === undefined) return;
    this.logger.info({ outage_ms: this.scheduler.now() - this.failingSince }, 'kafka sink: writing again');
    this.failingSince = undefined;
    this.degradedTimer?.unsubscribe();
    this.degradedTimer = undefined;
    if (this.degraded) {
      this.degraded = false;
      this.health?.healthy();
    }
  }

  private startConnecting(): void {
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
          await this.sleep(this.backoff(attempt));
        }
      }
    })();
  }

  // ------------------------------------------------------------------------------------------
  // Flush and close

  private settledBelow(target: number): boolean {
    if (this.left < target) return false;
    for (const r of this.inFlight) if (r.first < target) return false;
    return true;
  }

  private settleFlushes(): void {
    if (this.flushWaiters.length === 0) return;
    const waiting: FlushWaiter[] = [];
    for (const w of this.flushWaiters) {
      if (this.settledBelow(w.target)) w.resolve();
      else waiting.push(w);
    }
    this.flushWaiters = waiting;
  }

  private async shutdown(waitMs: number): Promise<void> {
    this.closing = true;
    this.subscription?.unsubscribe();
    let deadline: Subscription | undefined;
    const late = new Promise<'late'>((resolve) => {
      deadline = this.scheduler.schedule(() => resolve('late'), waitMs);
    });
    const outcome = await Promise.race([this.flush(), late]);
    deadline?.unsubscribe();
    this.stopped = true;
    this.clearTimer();
    if (outcome === 'late') {
      const queued = this.queue.clear();
      this.left += queued;
      let abandoned = queued;
      for (const r of this.inFlight) {
        r.abandoned = true;
        abandoned += r.records;
      }
      this.inFlight.clear();
      this.inFlightRecords = 0;
      this.drop('shutdown', abandoned, `not written by the close deadline (waited ${waitMs} ms)`);
      this.logger.warn({ dropped: abandoned }, 'kafka sink: closed with records unwritten');
    }
    for (const wake of [...this.sleepers]) wake();
    this.settleFlushes();
    for (const w of this.flushWaiters) w.resolve();
    this.flushWaiters = [];
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
    if (!(await this.within(disconnected, DISCONNECT_GRACE_MS))) {
      this.logger.debug({ grace_ms: DISCONNECT_GRACE_MS }, 'kafka sink: closed before the connections were');
    }
    this.losses.close();
    this.endConsume?.();
  }
}

const kafkaModule: SinkModule<KafkaSinkConfig> = {
  type: 'kafka',
  kind: 'sink',
  description:
    'Writes flow records to a Kafka topic as JSON or protobuf, batched, with bounded buffering through outages.',
  schema,
  example: {
    bootstrap_servers: ['kafka-1:9092', 'kafka-2:9092'],
    topic: 'flows',
    encoding: 'json',
    records_per_message: 1,
    key: 'flow',
    batch_max_records: 1000,
    linger_ms: 5,
    compression: 'gzip',
    acks: -1,
    buffer_max_records: 100000,
    when_full: 'drop_newest',
  },
  build(config: KafkaSinkConfig, context: ComponentContext): Sink {
    const resolved = resolveConfig(config);
    const transport = kafkajsTransport({
      brokers: resolved.bootstrap_servers,
      topic: resolved.topic,
      clientId: resolved.client_id,
      acks: resolved.acks,
      requestTimeoutMs: resolved.request_timeout_ms,
      connectionTimeoutMs: resolved.connection_timeout_ms,
      retries: resolved.retries,
      retryInitialMs: resolved.retry_initial_ms,
      retryMaxMs: resolved.retry_max_ms,
      tls: resolved.tls,
      sasl: resolved.sasl,
      logger: context.logger,
    });
    return new KafkaSink(resolved, context, transport);
  },
};

export default kafkaModule;
