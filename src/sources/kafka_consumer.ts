/**
 * `kafka_consumer`: flow records from a Kafka topic, read by a kafkajs consumer group (the client,
 * its connection options and codecs are src/kafka/'s), as the
 * kafka sink writes them: JSON or protobuf (src/sinks/flow.proto), one record or a batch of records
 * per message. The shape of each message is read from the message itself, so a topic may mix them:
 * JSON is an object (one record) or an array (a batch); protobuf is a FlowBatch when the message
 * starts with field 1 as length-delimited (tag 0x0a), else a FlowRecord (whose field 1, ipVersion,
 * is a varint and never 0, so the sink always writes it first).
 *
 * A message's `content-type` header, when it names JSON (`application/json`) or protobuf
 * (`application/x-protobuf`, `application/protobuf`, `application/vnd.google.protobuf`; the kafka
 * sink writes it on every message), picks its decoder; without one the configured `encoding` does.
 *
 * Each batch kafkajs fetches for a partition becomes one emitted batch. Offsets are committed
 * after the batch is handed downstream (at-least-once up to the hand-off): a restart or rebalance
 * may deliver records again, a drain never loses them; records sinks still hold when the process
 * dies unexpectedly are not read again.
 *
 * A message (or an item of a batch message) that is not a flow record (a required field missing or
 * of the wrong type, or a value out of its range: see flowRecordProblem in src/records/flow.ts) counts
 * as received and dropped as `parse_failed`, logged with its partition, offset and the reason
 * (rate-limited). While the brokers
 * cannot be reached the source keeps retrying with backoff and logs a warning (at most every 30 s);
 * nothing reaches the pipeline as an error. On stop$ the current batch is finished, its offsets are
 * committed, the consumer leaves the group and disconnects, then the source completes.
 *
 * kafkajs reads uncompressed and gzip record batches itself; lz4, zstd and snappy batches are
 * decompressed by codecs registered with kafkajs on the first build (src/kafka/kafkajs-codecs.ts,
 * through the system's liblz4.so.1, libzstd.so.1 and libsnappy.so.1; snappy in either framing
 * producers write: the Java producer's xerial stream or librdkafka's raw block). kafkajs decompresses inside the decoding of a fetch
 * response, so what a codec throws fails the whole fetch, and kafkajs fetches the same offsets
 * again, forever. Hence:
 * - a batch that does not decompress (corrupt, truncated, more than DECOMPRESSED_MAX_BYTES) is
 *   skipped: the codec hands kafkajs one placeholder record per record of the batch, each counted
 *   as received and dropped as `parse_failed` with the reason, and the batch's offsets are
 *   committed like any other (a legacy, pre-0.11 message set has no header to count its records
 *   by: one that does not decompress is retried like a missing library);
 * - a missing library blocks instead: the build logs one warning naming the package, the source
 *   starts anyway, and a fetch holding an lz4, zstd or snappy batch fails with the same hint; the consumer
 *   retries with backoff (warning at most every 30 s) and reads on, skipping nothing, once the
 *   library is installed. Other partitions fetched from the same broker wait with it.
 */
import type { Consumer, EachBatchPayload, IHeaders, Kafka } from 'kafkajs';
import { Observable, asyncScheduler, type SchedulerLike, type Subscriber } from 'rxjs';
import {
  msOption,
  type ComponentContext,
  type JsonSchema,
  type SourceHold,
  type SourceModule,
} from '../component.js';
import { beforeDeadline } from '../delivery/deadline.js';
import { LossLog } from '../delivery/loss-log.js';
import { OutageLog } from '../delivery/outage.js';
import { Sleeper } from '../delivery/sleeper.js';
import { kafkaClient } from '../kafka/client.js';
import {
  CONTENT_TYPE_HEADER,
  JSON_CONTENT_TYPE,
  PROTOBUF_CONTENT_TYPE,
  loadFlowProto,
  type FlowProto,
} from '../kafka/flow-messages.js';
import { decompressionError, registerCodecs, unreadableReason } from '../kafka/kafkajs-codecs.js';
import {
  CONNECTION_DEFAULTS,
  connectionProblem,
  connectionSchema,
  type KafkaConnectionConfig,
} from '../kafka/options.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import { flowRecordProblem, type FlowBatch, type FlowRecord } from '../records/flow.js';
import { messageOf } from '../errors.js';
import { SourceError } from './errors.js';

export type KafkaConsumerEncoding = 'json' | 'protobuf';

export interface KafkaConsumerConfig extends KafkaConnectionConfig {
  topic: string;
  group_id: string;
  encoding?: KafkaConsumerEncoding;
  /** Where a group with no committed offset starts: the oldest record (true) or new ones. */
  from_beginning?: boolean;
  session_timeout_ms?: number;
  fetch_max_wait_ms?: number;
  max_bytes_per_partition?: number;
  shutdown_timeout_ms?: number;
}

type Resolved = Required<Omit<KafkaConsumerConfig, 'tls' | 'sasl'>> &
  Pick<KafkaConsumerConfig, 'tls' | 'sasl'>;

const DEFAULTS = {
  ...CONNECTION_DEFAULTS,
  encoding: 'json',
  from_beginning: false,
  session_timeout_ms: 30_000,
  fetch_max_wait_ms: 500,
  max_bytes_per_partition: 1_048_576,
  shutdown_timeout_ms: 30_000,
} as const satisfies Partial<KafkaConsumerConfig>;

const LOSS_LOG_INTERVAL_MS = 10_000;
/** While the brokers stay away, the warning is repeated this often; each attempt logs at debug. */
const OUTAGE_LOG_INTERVAL_MS = 30_000;
/** While a blocking sink downstream is full: how often the held consumer heartbeats its group. */
const HOLD_HEARTBEAT_MS = 1_000;

// --------------------------------------------------------------------------------------------
// Decoding

/** Called once per message, or per item of a batch message, that is not a flow record. */
export type DecodeFailure = (problem: string) => void;

/**
 * Decodes one message value, appending its flow records to `out`; `nowMs` is the wall-clock time
 * flow times are checked against (read once per batch); `type` is the message's `content-type`
 * header, if it has one.
 */
export type MessageDecoder = (
  value: Buffer | null,
  out: FlowRecord[],
  fail: DecodeFailure,
  nowMs?: number,
  type?: Buffer | string,
) => void;

/** A FlowBatch's first byte: field 1, wire type 2 (length-delimited). */
const FLOW_BATCH_TAG = 0x0a;
const TO_OBJECT = { longs: Number, defaults: true } as const;

function keep(value: unknown, out: FlowRecord[], fail: DecodeFailure, nowMs: number, item?: number): void {
  const problem = flowRecordProblem(value, nowMs);
  if (problem === undefined) out.push(value as FlowRecord);
  else fail(item === undefined ? problem : `record ${item}: ${problem}`);
}

function decodeJson(value: Buffer, out: FlowRecord[], fail: DecodeFailure, nowMs: number): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value.toString('utf8'));
  } catch (err) {
    fail(`not JSON: ${messageOf(err)}`);
    return;
  }
  if (Array.isArray(parsed)) {
    for (let i = 0; i < parsed.length; i++) keep(parsed[i], out, fail, nowMs, i);
  } else {
    keep(parsed, out, fail, nowMs);
  }
}

/**
 * A decoded protobuf record as the JSON of the same record: proto3 has no absent repeated field, so
 * an empty observedInterfaces (what every record without it decodes to) is removed.
 */
function fromProtobuf(record: unknown): unknown {
  const r = record as { observedInterfaces?: unknown[] } | null;
  if (r !== null && typeof r === 'object' && r.observedInterfaces?.length === 0) delete r.observedInterfaces;
  return record;
}

function decodeProtobuf(
  proto: FlowProto,
  value: Buffer,
  out: FlowRecord[],
  fail: DecodeFailure,
  nowMs: number,
): void {
  if (value[0] === FLOW_BATCH_TAG) {
    let records: unknown[];
    try {
      const batch = proto.FlowBatch.toObject(proto.FlowBatch.decode(value), TO_OBJECT) as {
        records?: unknown[];
      };
      records = batch.records ?? [];
    } catch (err) {
      fail(`not a protobuf FlowBatch: ${messageOf(err)}`);
      return;
    }
    for (let i = 0; i < records.length; i++) keep(fromProtobuf(records[i]), out, fail, nowMs, i);
    return;
  }
  let record: unknown;
  try {
    record = proto.FlowRecord.toObject(proto.FlowRecord.decode(value), TO_OBJECT);
  } catch (err) {
    fail(`not a protobuf FlowRecord: ${messageOf(err)}`);
    return;
  }
  keep(fromProtobuf(record), out, fail, nowMs);
}

/** Media types (lower case, parameters cut) a `content-type` header may name, and their encoding. */
const MEDIA_TYPES: ReadonlyMap<string, KafkaConsumerEncoding> = new Map([
  [JSON_CONTENT_TYPE, 'json'],
  [PROTOBUF_CONTENT_TYPE, 'protobuf'],
  ['application/protobuf', 'protobuf'],
  ['application/vnd.google.protobuf', 'protobuf'],
]);

/**
 * The encoding a `content-type` header value names, or undefined for a media type that is neither
 * JSON nor protobuf: `application/json`, `application/x-protobuf` (the kafka sink's, see
 * contentType() in src/sinks/kafka/encode.ts), `application/protobuf` or
 * `application/vnd.google.protobuf`, any parameters (`; messageType=...`) left aside.
 */
export function encodingOfContentType(type: Buffer | string): KafkaConsumerEncoding | undefined {
  const text = typeof type === 'string' ? type : type.toString('latin1');
  const semicolon = text.indexOf(';');
  return MEDIA_TYPES.get((semicolon < 0 ? text : text.slice(0, semicolon)).trim().toLowerCase());
}

/**
 * The decoder of an encoding: JSON objects or arrays, or protobuf FlowRecord or FlowBatch messages,
 * told apart per message (see the module comment). A message whose `content-type` header names
 * JSON or protobuf is decoded as that; one without the header, or with another media type, as
 * `encoding`. An empty message is not a flow record.
 */
export function messageDecoder(encoding: KafkaConsumerEncoding): MessageDecoder {
  let proto = encoding === 'protobuf' ? loadFlowProto() : undefined;
  let lastType: Buffer | string | undefined;
  let lastEncoding: KafkaConsumerEncoding = encoding;
  return (value, out, fail, nowMs = Date.now(), type) => {
    if (value === null || value.length === 0) {
      fail('empty message');
      return;
    }
    let use = encoding;
    if (type !== undefined) {
      // Every message of a producer carries the same header: the last one read is kept.
      if (
        lastType === undefined ||
        (typeof type === 'string' ? type !== lastType : !(Buffer.isBuffer(lastType) && type.equals(lastType)))
      ) {
        lastEncoding = encodingOfContentType(type) ?? encoding;
        // A copy: the header is a view into the whole fetch response.
        lastType = typeof type === 'string' ? type : Buffer.from(type);
      }
      use = lastEncoding;
    }
    if (use === 'json') {
      decodeJson(value, out, fail, nowMs);
      return;
    }
    if (proto === undefined) {
      try {
        proto = loadFlowProto();
      } catch (err) {
        fail(`content-type says protobuf: ${messageOf(err)}`);
        return;
      }
    }
    decodeProtobuf(proto, value, out, fail, nowMs);
  };
}

/** A message's `content-type` header (the first, if there are several), if it has one. */
function contentTypeOf(headers: IHeaders | undefined): Buffer | string | undefined {
  if (headers === undefined) return undefined;
  const h = headers[CONTENT_TYPE_HEADER];
  return Array.isArray(h) ? h[0] : h;
}

// --------------------------------------------------------------------------------------------
// The consumer

function resolveConfig(config: KafkaConsumerConfig): Resolved {
  const resolved = { ...DEFAULTS, ...config } as Resolved;
  const problem = connectionProblem(resolved);
  if (problem !== undefined) throw new SourceError('EBADCONFIG', `kafka consumer: ${problem}`);
  return resolved;
}

class KafkaConsumerSource {
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly scheduler: SchedulerLike;
  readonly losses: LossLog;
  private stopping = false;
  private stopped!: () => void;
  private readonly stoppedSignal = new Promise<void>((resolve) => (this.stopped = resolve));
  private readonly sleeper: Sleeper;
  private loop: Promise<void> | undefined;
  private readonly outage: OutageLog;
  private readonly hold: SourceHold | undefined;
  // Where onBatch is, for `fail`: one function for every message, not a closure per message.
  private failed = 0;
  private partition = 0;
  private offset = '';
  private readonly fail: DecodeFailure = (problem) => {
    this.failed++;
    this.losses.add('parse_failed', 1, `partition ${this.partition} offset ${this.offset}: ${problem}`);
  };

  constructor(
    private readonly config: Resolved,
    context: ComponentContext,
    private readonly kafka: Kafka,
    private readonly decode: MessageDecoder,
    private readonly subscriber: Subscriber<FlowBatch>,
  ) {
    this.counters = context.counters;
    this.logger = context.logger;
    this.scheduler = context.scheduler ?? asyncScheduler;
    this.sleeper = new Sleeper(this.scheduler);
    this.hold = context.hold;
    this.outage = new OutageLog({
      logger: this.logger,
      scheduler: this.scheduler,
      recovered: 'kafka consumer: consuming again',
      repeatMs: OUTAGE_LOG_INTERVAL_MS,
      stillFailing: 'kafka consumer: still failing',
    });
    this.losses = new LossLog(
      this.logger,
      `kafka consumer ${config.topic}: undecodable records dropped`,
      LOSS_LOG_INTERVAL_MS,
      this.scheduler,
    );
  }

  start(): void {
    // run() handles Kafka's failures itself; anything else escaping it is a bug, and fails the source.
    this.loop ??= this.run().catch((err: unknown) => {
      this.losses.close();
      this.subscriber.error(
        new SourceError('ECONSUME', `kafka consumer ${this.config.topic}: ${messageOf(err)}`, {
          cause: err,
        }),
      );
    });
  }

  /**
   * Finishes the batch in hand, commits, leaves the group and disconnects; resolves when that is
   * done or shutdown_timeout_ms has passed. Never rejects.
   */
  async drain(): Promise<void> {
    this.halt();
    const outcome = await beforeDeadline(
      this.loop ?? Promise.resolve(),
      this.config.shutdown_timeout_ms,
      this.scheduler,
    );
    if (outcome === 'late') {
      this.logger.warn(
        { shutdown_timeout_ms: this.config.shutdown_timeout_ms },
        'kafka consumer: not disconnected within shutdown_timeout_ms; the last offsets may be read again',
      );
    }
    this.losses.close();
  }

  /** Stops consuming without waiting: the subscriber left. Nothing more is emitted or committed. */
  abort(): void {
    this.halt();
    this.losses.close();
  }

  private halt(): void {
    this.stopping = true;
    this.stopped();
    this.sleeper.wake();
  }

  private async run(): Promise<void> {
    for (let attempt = 1; !this.stopping; attempt++) {
      const consumer = this.kafka.consumer({
        groupId: this.config.group_id,
        sessionTimeout: this.config.session_timeout_ms,
        maxWaitTimeInMs: this.config.fetch_max_wait_ms,
        maxBytesPerPartition: this.config.max_bytes_per_partition,
        allowAutoTopicCreation: false,
        retry: {
          retries: this.config.retries,
          initialRetryTime: this.config.retry_initial_ms,
          maxRetryTime: this.config.retry_max_ms,
          // Transient failures restart inside kafkajs; the others come back here (CRASH, restart false).
          restartOnFailure: () => Promise.resolve(true),
        },
      });
      let crashed!: (err: Error) => void;
      const crash = new Promise<Error>((resolve) => (crashed = resolve));
      consumer.on(consumer.events.CRASH, ({ payload }) => {
        if (payload.restart) this.failing(payload.error);
        else crashed(payload.error);
      });
      consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
        attempt = 0;
        this.joined(payload.memberAssignment);
      });
      try {
        await consumer.connect();
        if (!this.stopping)
          await consumer.subscribe({ topic: this.config.topic, fromBeginning: this.config.from_beginning });
        if (!this.stopping) {
          await consumer.run({
            autoCommit: true,
            eachBatchAutoResolve: false,
            eachBatch: (payload) => this.onBatch(payload),
          });
          const err = await Promise.race([crash, this.stoppedSignal]);
          if (err !== undefined) this.failing(err);
        }
      } catch (err) {
        if (!this.stopping) this.failing(err);
      }
      await this.disconnect(consumer);
      if (!this.stopping) await this.sleeper.sleep(this.backoff(attempt));
    }
  }

  private async onBatch(payload: EachBatchPayload): Promise<void> {
    this.handOver(payload);
    // A sink downstream with when_full: block is full: the next fetch of this partition waits
    // (kafkajs fetches it once eachBatch returns), with heartbeats so the group keeps the member.
    for (let held = this.hold?.ready(); held !== undefined && !this.stopping; held = this.hold?.ready()) {
      await this.sleeper.within(held, HOLD_HEARTBEAT_MS);
      if (!this.stopping) await payload.heartbeat();
    }
  }

  /** Decodes the batch and hands its records downstream; kafkajs commits the batch after that. */
  private handOver(payload: EachBatchPayload): void {
    const { batch } = payload;
    // After the subscriber left, nothing is resolved, so nothing unsent is committed.
    if (this.subscriber.closed) return;
    const out: FlowRecord[] = [];
    this.failed = 0;
    this.partition = batch.partition;
    const nowMs = Date.now();
    for (const message of batch.messages) {
      this.offset = message.offset;
      const unreadable = unreadableReason(message.value);
      if (unreadable === undefined)
        this.decode(message.value, out, this.fail, nowMs, contentTypeOf(message.headers));
      else this.fail(unreadable);
    }
    const failed = this.failed;
    this.counters.addReceived(out.length + failed);
    this.counters.addDropped('parse_failed', failed);
    if (out.length > 0) {
      this.counters.addSent(out.length);
      this.subscriber.next(out);
    }
    // Handed downstream: kafkajs commits it when this returns.
    payload.resolveOffset(batch.lastOffset());
  }

  private async disconnect(consumer: Consumer): Promise<void> {
    try {
      await consumer.disconnect();
    } catch (err) {
      this.logger.debug({ err }, 'kafka consumer: disconnect failed');
    }
  }

  private backoff(attempt: number): number {
    const { retry_initial_ms: initial, retry_max_ms: max } = this.config;
    return Math.min(max, initial * 2 ** Math.min(Math.max(attempt, 1) - 1, 30));
  }

  private failing(err: unknown): void {
    const fields = { err, topic: this.config.topic, brokers: this.config.bootstrap_servers };
    const name = (err as { name?: string } | undefined)?.name;
    const decompression = decompressionError(err);
    if (decompression !== undefined) {
      this.outage.failing(
        { ...fields, err: decompression },
        'kafka consumer: cannot decompress the fetched record batches; retrying',
      );
      return;
    }
    this.outage.failing(
      fields,
      name === 'KafkaJSNotImplemented'
        ? 'kafka consumer: the topic holds record batches compressed with a codec kafkajs cannot read; write it uncompressed or with gzip, snappy, lz4 or zstd'
        : 'kafka consumer: cannot consume from the brokers; retrying',
    );
  }

  private joined(assignment: Record<string, number[]>): void {
    const partitions = assignment[this.config.topic] ?? [];
    const fields = { topic: this.config.topic, group_id: this.config.group_id, partitions };
    if (this.outage.recovered(fields) === undefined)
      this.logger.info(fields, 'kafka consumer: joined the group');
  }
}

/**
 * Flow records from a Kafka topic (see the module comment). The client and decoder are made now,
 * so a bad TLS file fails when the pipeline is built; brokers are contacted when subscribed.
 */
export function kafkaConsumer(config: KafkaConsumerConfig, context: ComponentContext): Observable<FlowBatch> {
  const resolved = resolveConfig(config);
  registerCodecs(context.logger);
  const kafka = kafkaClient(resolved, context.logger, 'kafka consumer');
  const decode = messageDecoder(resolved.encoding);
  return new Observable<FlowBatch>((subscriber) => {
    const source = new KafkaConsumerSource(resolved, context, kafka, decode, subscriber);
    const stopping = context.stop$?.subscribe(() => {
      void source.drain().then(() => subscriber.complete());
    });
    source.start();
    return () => {
      stopping?.unsubscribe();
      source.abort();
    };
  });
}

const ms = (description: string, defaultValue: number, minimum = 1): JsonSchema =>
  msOption(description, defaultValue, minimum);

const connection = connectionSchema({
  ms,
  retries: 'Retries of a failed request inside kafkajs before the consumer restarts, with backoff.',
});

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['bootstrap_servers', 'topic', 'group_id'],
  properties: {
    bootstrap_servers: connection.bootstrap_servers,
    topic: { type: 'string', minLength: 1, description: 'Topic the records are read from.' },
    group_id: {
      type: 'string',
      minLength: 1,
      description:
        'Consumer group: its members share the partitions, and its committed offsets say where to resume.',
    },
    client_id: connection.client_id,
    encoding: {
      enum: ['json', 'protobuf'],
      default: DEFAULTS.encoding,
      description:
        'json: a JSON object (one record) or array (a batch) per message; protobuf: a FlowRecord or FlowBatch of src/sinks/flow.proto per message. The shape is read from each message. A message whose content-type header names JSON or protobuf (the kafka sink writes it) is decoded as that; this encoding applies to messages without one.',
    },
    from_beginning: {
      type: 'boolean',
      default: DEFAULTS.from_beginning,
      description:
        'Where a group without committed offsets starts: the oldest records (true) or those written from now on.',
    },
    session_timeout_ms: ms(
      'A member not heard from for this long is dropped from the group and its partitions reassigned.',
      DEFAULTS.session_timeout_ms,
      6000,
    ),
    fetch_max_wait_ms: ms(
      'How long a broker holds a fetch while it has no new records.',
      DEFAULTS.fetch_max_wait_ms,
      10,
    ),
    max_bytes_per_partition: {
      type: 'integer',
      minimum: 1024,
      maximum: 1073741824,
      default: DEFAULTS.max_bytes_per_partition,
      description:
        'Bytes fetched per partition and request at most: the size of the batches the source emits.',
    },
    connection_timeout_ms: connection.connection_timeout_ms,
    request_timeout_ms: connection.request_timeout_ms,
    retries: connection.retries,
    retry_initial_ms: connection.retry_initial_ms,
    retry_max_ms: connection.retry_max_ms,
    shutdown_timeout_ms: ms(
      'On drain, how long to wait for the batch in hand, the offset commit and leaving the group.',
      DEFAULTS.shutdown_timeout_ms,
    ),
    tls: connection.tls,
    sasl: connection.sasl,
  },
};

const kafkaConsumerModule: SourceModule<KafkaConsumerConfig> = {
  type: 'kafka_consumer',
  kind: 'source',
  description:
    'Reads flow records from a Kafka topic in a consumer group, as JSON or protobuf, one record or a batch per message.',
  drainsOnStop: true,
  schema,
  example: {
    bootstrap_servers: ['kafka-1:9092', 'kafka-2:9092'],
    topic: 'flows',
    group_id: 'rxflow-metrics',
    encoding: 'json',
    from_beginning: false,
  },
  build: kafkaConsumer,
};

export default kafkaConsumerModule;
