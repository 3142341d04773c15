/**
 * `kafka`: writes flow records to a Kafka topic, as JSON (IPFIX names) or protobuf
 * (src/sinks/flow.proto), one record or a batch of records per message. kafkajs keeps the broker
 * connections; the sink encodes record batches and Produce requests itself, with the client of
 * src/kafka/. Admission (the bounded buffer), request building and the send service are in
 * src/sinks/kafka/.
 *
 * Records wait in a bounded queue; a produce request takes up to batch_max_records of them once
 * that many wait, once they fill about batch_max_bytes, or once the oldest has waited linger_ms,
 * and up to max_in_flight requests run at once. A request the transport gives up on (after its own
 * retries; partitions already written are not sent again) is retried by the sink with backoff until delivery_timeout_ms after its oldest record
 * arrived; then its records count as `sink_failed`. While the brokers are away the queue fills up
 * to buffer_max_records and the pipeline's buffer in front of the sink applies when_full to what
 * does not fit (src/sinks/buffer.ts; drop_oldest takes waiting records back with evictOldest).
 * Nothing escapes into the pipeline: consume() resolves once its input completed and every record is written or counted.
 *
 * With idempotence (the default) every batch carries a producer id and sequence
 * (src/kafka/idempotence.ts), so a retry after a lost response does not write records twice.
 */
import { asyncScheduler, type Observable } from 'rxjs';
import {
  msOption,
  type ComponentContext,
  type JsonSchema,
  type Sink,
  type SinkModule,
  type WhenFull,
} from '../component.js';
import { LossLog } from '../delivery/loss-log.js';
import { kafkajsTransport, type KafkaTransport } from '../kafka/client.js';
import type { Compression } from '../kafka/compress.js';
import { MAX_IN_FLIGHT_IDEMPOTENT, type IdempotenceStatus } from '../kafka/idempotence.js';
import {
  CONNECTION_DEFAULTS,
  connectionProblem,
  connectionSchema,
  type KafkaConnectionConfig,
} from '../kafka/options.js';
import type { DropReason, StageCounters } from '../ledger.js';
import type { FlowBatch } from '../records/flow.js';
import { messageOf } from '../errors.js';
import { bufferOptions, bufferSettings, type BufferSettings } from './buffer.js';
import { SinkInput, throughBuffer } from './consume.js';
import { SinkError } from './errors.js';
import { Admission } from './kafka/admission.js';
import type { Encoding, KeyMode } from './kafka/encode.js';
import { RequestBuilder } from './kafka/requests.js';
import { KafkaSender } from './kafka/sender.js';

export interface KafkaSinkConfig extends KafkaConnectionConfig {
  topic: string;
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
  delivery_timeout_ms?: number;
  buffer_max_records?: number;
  when_full?: WhenFull;
  shutdown_timeout_ms?: number;
  degraded_after_ms?: number;
}

type Resolved = Required<Omit<KafkaSinkConfig, 'tls' | 'sasl'>> & Pick<KafkaSinkConfig, 'tls' | 'sasl'>;

const DEFAULTS = {
  ...CONNECTION_DEFAULTS,
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
  delivery_timeout_ms: 120_000,
  buffer_max_records: 100_000,
  when_full: 'drop_newest',
  shutdown_timeout_ms: 30_000,
  degraded_after_ms: 10_000,
} as const satisfies Partial<KafkaSinkConfig>;

/** Losses are logged at most this often; the ledger has every count. */
const LOSS_LOG_INTERVAL_MS = 10_000;

const ms = (description: string, defaultValue: number, minimum = 0): JsonSchema =>
  msOption(description, defaultValue, minimum);

const connection = connectionSchema({
  ms,
  retries:
    'Retries of a failed produce request (and of connecting or reading metadata, inside kafkajs) before the sink backs off and tries again.',
});

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['bootstrap_servers', 'topic'],
  properties: {
    bootstrap_servers: connection.bootstrap_servers,
    topic: { type: 'string', minLength: 1, description: 'Topic the records are written to.' },
    client_id: connection.client_id,
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
    request_timeout_ms: connection.request_timeout_ms,
    connection_timeout_ms: connection.connection_timeout_ms,
    retries: connection.retries,
    retry_initial_ms: connection.retry_initial_ms,
    retry_max_ms: connection.retry_max_ms,
    delivery_timeout_ms: ms(
      'A record not written within this time of reaching the sink is dropped as sink_failed.',
      DEFAULTS.delivery_timeout_ms,
      1,
    ),
    ...bufferOptions({
      maxRecords: DEFAULTS.buffer_max_records,
      maximum: 16777216,
      choices: ['drop_newest', 'drop_oldest', 'block'],
      held: 'waiting or in flight',
    }),
    shutdown_timeout_ms: ms(
      'On close, how long to wait for held records to be written; the rest are dropped as shutdown. The pipeline drain deadline (drain_timeout_ms) bounds it too: the sink waits for the shorter of the two.',
      DEFAULTS.shutdown_timeout_ms,
    ),
    degraded_after_ms: ms(
      'How long the brokers may be unreachable (nothing written, attempts failing) before the sink reports itself degraded in rxflow status and the health endpoint; it reports healthy again at the next write.',
      DEFAULTS.degraded_after_ms,
      1,
    ),
    tls: connection.tls,
    sasl: connection.sasl,
  },
};

function resolveConfig(config: KafkaSinkConfig): Resolved {
  const resolved = { ...DEFAULTS, ...config } as Resolved;
  // Unset, idempotence follows the other settings, as in Kafka's own clients: on unless acks or
  // max_in_flight rule it out. Set to true, a conflict is an error below.
  if (config.idempotence === undefined) {
    resolved.idempotence = resolved.acks === -1 && resolved.max_in_flight <= MAX_IN_FLIGHT_IDEMPOTENT;
  }
  const problem = connectionProblem(resolved);
  if (problem !== undefined) throw new SinkError('EBADCONFIG', `kafka sink: ${problem}`);
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
  return resolved;
}

/**
 * The kafka sink: admission (the bounded buffer) in front, request building, and the send service
 * (src/sinks/kafka/), on the Kafka client of src/kafka/.
 */
export class KafkaSink implements Sink {
  private readonly config: Resolved;
  private readonly counters: StageCounters;
  private readonly losses: LossLog;
  private readonly admission: Admission;
  private readonly sender: KafkaSender;
  private readonly input = new SinkInput();
  private closing = false;
  private closed: Promise<void> | undefined;
  private readonly context: ComponentContext;
  private readonly buffer: BufferSettings;

  constructor(config: KafkaSinkConfig, context: ComponentContext, transport: KafkaTransport) {
    this.config = resolveConfig(config);
    this.context = context;
    this.buffer = bufferSettings(this.config);
    this.counters = context.counters;
    const scheduler = context.scheduler ?? asyncScheduler;
    this.losses = new LossLog(
      context.logger,
      `kafka sink ${context.id}: records dropped`,
      LOSS_LOG_INTERVAL_MS,
      scheduler,
    );
    this.admission = new Admission();
    const requests = new RequestBuilder({
      encoding: this.config.encoding,
      recordsPerMessage: this.config.records_per_message,
      key: this.config.key,
      compression: this.config.compression,
      stamped: this.config.idempotence,
      batchMaxRecords: this.config.batch_max_records,
      batchMaxBytes: this.config.batch_max_bytes,
    });
    this.sender = new KafkaSender(this.config, {
      transport,
      admission: this.admission,
      requests,
      counters: this.counters,
      logger: context.logger,
      scheduler,
      health: context.health,
      drop: (reason, n, cause) => this.drop(reason, n, cause),
    });
  }

  consume(input: Observable<FlowBatch>): Promise<void> {
    const refused = this.input.claim('kafka sink', this.closing);
    if (refused) return Promise.reject(refused);
    this.sender.start();
    return this.input.start(
      throughBuffer(input, this.context, this.buffer, this),
      (batch) => this.accept(batch),
      () => this.flush(),
    );
  }

  /** Resolves when every record held when it was called is written or counted as dropped. */
  flush(): Promise<void> {
    return this.sender.flush();
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
    return this.sender.idempotence();
  }

  /** Drops up to `n` of the oldest waiting records (not those in flight); the buffer counts them. */
  evictOldest(n: number): number {
    const old = this.admission.evictOldest(n);
    this.sender.settleFlushes();
    return old;
  }

  private accept(batch: FlowBatch): void {
    if (batch.length === 0) return;
    this.admission.admit(batch, this.sender.now());
    this.sender.pump();
  }

  private drop(reason: DropReason, n: number, cause?: unknown): void {
    if (n <= 0) return;
    this.counters.addDropped(reason, n);
    this.losses.add(reason, n, cause === undefined ? undefined : messageOf(cause));
  }

  private async shutdown(waitMs: number): Promise<void> {
    this.closing = true;
    this.input.stop();
    await this.sender.shutdown(waitMs);
    this.losses.close();
    this.input.end();
  }
}

const kafkaModule: SinkModule<KafkaSinkConfig> = {
  type: 'kafka',
  kind: 'sink',
  buffered: true,
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
      connection: resolved,
      topic: resolved.topic,
      acks: resolved.acks,
      logger: context.logger,
    });
    return new KafkaSink(resolved, context, transport);
  },
};

export default kafkaModule;
