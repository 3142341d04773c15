/**
 * The way to the brokers: kafkaClient() makes the kafkajs client of a component's connection
 * options (options.ts), for the kafka sink and the kafka_consumer source alike. For the sink,
 * kafkajsTransport(): kafkajs keeps the connections (bootstrap, metadata, TLS,
 * SASL, reconnects, request timeouts); the sink writes its own Produce requests on them, with
 * record batches it encodes itself (record-batch.ts), because kafkajs's producer spends ~18 us of
 * CPU per message on encoding alone. Behind a small interface so the sink's buffering, retry and
 * accounting can be driven by a fake in unit tests.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import type { ConnectionOptions } from 'node:tls';
import {
  Kafka,
  logLevel,
  type Cluster,
  type KafkaJSProtocolError,
  type LogEntry,
  type SASLOptions,
} from 'kafkajs';
import { messageOf } from '../errors.js';
import type { Logger } from '../logger.js';
import { requireProduceVersion } from './compress.js';
import { KafkaError } from './errors.js';
import type { ResolvedConnection, SaslOptions, TlsOptions } from './options.js';
import { BufferPool } from './record-batch.js';
import {
  PRODUCE_API_KEY,
  PRODUCE_MAX_VERSION,
  PRODUCE_MIN_VERSION,
  decodeProduceResponse,
  encodeProduceBody,
  type EncodedRequest,
  type PartitionBatch,
  type ProduceResponse,
} from './produce.js';

/** What InitProducerId answers: the id and epoch an idempotent producer stamps its batches with. */
export interface ProducerIdentity {
  producerId: bigint;
  producerEpoch: number;
}

export interface KafkaTransport {
  connect(): Promise<void>;
  /**
   * A new producer id for idempotent produce (InitProducerId without a transactional id, from a
   * broker of the topic). Rejects with kafkajs's error when the broker refuses or cannot be reached.
   */
  initProducerId(): Promise<ProducerIdentity>;
  /** The topic's partition count, from metadata kafkajs refreshes as it ages. */
  partitions(): Promise<number>;
  /**
   * Writes the request's batches that are not yet written, marking each one a broker took
   * (`written`); rejects when some are still not written after the transport's own retries.
   */
  send(request: EncodedRequest): Promise<void>;
  disconnect(): Promise<void>;
}

export interface TransportOptions {
  connection: ResolvedConnection;
  topic: string;
  acks: -1 | 0 | 1;
  logger: Logger;
}

function readPem(component: string, what: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new KafkaError(
      'ETLSFILE',
      `${component} tls.${what} ${file}: ${messageOf(err)}; check the path and its permissions`,
      { cause: err },
    );
  }
}

/**
 * tls.connect options from a `tls` block; files are read once, when the component is built.
 * `component` names it in errors ("kafka sink", "kafka consumer").
 */
export function tlsConnectionOptions(tls: TlsOptions, component = 'kafka sink'): ConnectionOptions {
  if ((tls.cert_file === undefined) !== (tls.key_file === undefined)) {
    throw new KafkaError(
      'ETLSCONFIG',
      `${component} tls: cert_file and key_file go together; set both or neither`,
    );
  }
  const options: ConnectionOptions = { rejectUnauthorized: tls.insecure_skip_verify !== true };
  if (tls.ca_file !== undefined) options.ca = [readPem(component, 'ca_file', tls.ca_file)];
  if (tls.cert_file !== undefined) options.cert = readPem(component, 'cert_file', tls.cert_file);
  if (tls.key_file !== undefined) options.key = readPem(component, 'key_file', tls.key_file);
  if (tls.server_name !== undefined) options.servername = tls.server_name;
  return options;
}

/** kafkajs's SASL options of a sink's or consumer's `sasl` block. */
export function saslOptions(sasl: SaslOptions): SASLOptions {
  // kafkajs types each mechanism as its own literal; TypeScript checks the union against each.
  return { mechanism: sasl.mechanism, username: sasl.username, password: sasl.password };
}

/**
 * kafkajs logs every failed attempt at ERROR; during an outage that is a line per retry. The kafka
 * sink and consumer log an outage once themselves, so kafkajs's own lines go to debug.
 */
export function logCreator(logger: Logger) {
  return () =>
    ({ namespace, log }: LogEntry): void => {
      const { message, timestamp: _timestamp, ...fields } = log;
      logger.debug({ kafkajs: namespace, ...fields }, message);
    };
}

/** A broker answer that means the batch was written before: a resend the broker recognised. */
const DUPLICATE_SEQUENCE_NUMBER = 46;

const require = createRequire(import.meta.url);
// kafkajs's table of Kafka error codes (name, message, whether retrying can help).
const { createErrorFromCode } = require('kafkajs/src/protocol/error.js') as {
  createErrorFromCode: (this: void, code: number) => KafkaJSProtocolError;
};

/** A kafkajs broker: its send is private API, found by its symbol's description. */
type Broker = Awaited<ReturnType<Cluster['findBroker']>>;
type ProtocolRequest = {
  request: {
    apiKey: number;
    apiVersion: number;
    apiName: string;
    expectResponse: () => boolean;
    encode: () => Promise<{ buf: Buffer; buffer: Buffer }>;
  };
  response: {
    decode: (body: Buffer) => Promise<ProduceResponse>;
    parse: (r: ProduceResponse) => Promise<ProduceResponse>;
  };
};
type SendRequest = (this: Broker, request: ProtocolRequest) => Promise<ProduceResponse | undefined>;
/** kafkajs's Broker.initProducerId (not in its typings); producerId comes back as decimal text. */
type InitProducerId = (
  this: Broker,
  request: { transactionalId: string | null; transactionTimeout?: number },
) => Promise<{ producerId: string; producerEpoch: number }>;

function privateMember<T>(target: object, description: string): T {
  for (let o: object | null = target; o !== null; o = Object.getPrototypeOf(o) as object | null) {
    const symbol = Object.getOwnPropertySymbols(o).find((s) => s.description === description);
    if (symbol !== undefined) return (o as Record<symbol, T>)[symbol]!;
  }
  throw new KafkaError(
    'EKAFKAJS',
    `kafka sink: kafkajs has no ${description}; install the kafkajs version package-lock.json names (npm ci)`,
  );
}

/** Errors after which the partition leaders may have moved. */
const STALE_METADATA = new Set([
  'UNKNOWN_TOPIC_OR_PARTITION',
  'LEADER_NOT_AVAILABLE',
  'NOT_LEADER_FOR_PARTITION',
  'NOT_LEADER_OR_FOLLOWER',
  'KafkaJSBrokerNotFound',
  'KafkaJSConnectionError',
  'KafkaJSConnectionClosedError',
  'KafkaJSRequestTimeoutError',
]);

/** A produce failure of some partitions; `retriable` is false if any of them cannot get better. */
export class ProduceError extends KafkaError {
  constructor(
    readonly topic: string,
    readonly failures: { partition: number; error: Error }[],
  ) {
    const first = failures[0]!;
    super(
      'EPRODUCE',
      `kafka sink topic ${topic}: ${failures.length} partition(s) not written, partition ${first.partition}: ${messageOf(first.error)}`,
      { cause: first.error, retriable: failures.every(({ error }) => kafkaErrorRetriable(error)) },
    );
  }
}

/**
 * Whether trying again can help after a Kafka failure. kafkajs wraps a failure in layers (a
 * non-retriable error around "number of retries exceeded" around a connection error), so the
 * chain decides: retries having run out means the failure itself was transient; otherwise the
 * innermost error says (a message too large or a missing authorisation will not get better). A
 * ProduceError is retriable when every partition's failure is.
 */
export function kafkaErrorRetriable(err: unknown): boolean {
  let e = err as { name?: string; retriable?: boolean; cause?: unknown } | undefined;
  for (let depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    if (e.name === 'KafkaJSNumberOfRetriesExceeded') return true;
    // This layer's own verdict: a produce failure of some partitions, a sequence error it
    // resolved, a codec the broker cannot take.
    const verdict = e instanceof KafkaError ? e.retriable : undefined;
    if (verdict !== undefined) return verdict;
    if (e.cause === undefined || e.cause === null || e.cause === e) return e.retriable !== false;
    e = e.cause;
  }
  return true;
}

/** What kafkajs keeps of a broker's ApiVersions answer (not in its typings). */
export interface BrokerVersions {
  versions?: Record<number, { minVersion: number; maxVersion: number }> | null;
}

/**
 * The Produce version to use with a broker: the newest both sides know, from the ApiVersions
 * answer kafkajs keeps per broker.
 */
export function produceVersion(broker: {
  versions?: Record<number, { minVersion: number; maxVersion: number }> | null;
}): number {
  const range = broker.versions?.[PRODUCE_API_KEY];
  if (range === undefined) return PRODUCE_MIN_VERSION;
  const version = Math.min(PRODUCE_MAX_VERSION, range.maxVersion);
  if (version < PRODUCE_MIN_VERSION || version < range.minVersion) {
    throw new KafkaError(
      'EBROKERVERSION',
      `kafka sink: the broker speaks Produce v${range.minVersion}-v${range.maxVersion}, the sink v${PRODUCE_MIN_VERSION}-v${PRODUCE_MAX_VERSION} (record batches v2); use Kafka 0.11 or newer`,
      { retriable: false },
    );
  }
  return version;
}

/**
 * The kafkajs client of a component's connection options. TLS files are read now, so a bad path
 * fails when the component is built; `component` names it in errors.
 */
export function kafkaClient(connection: ResolvedConnection, logger: Logger, component: string): Kafka {
  return new Kafka({
    clientId: connection.client_id,
    brokers: connection.bootstrap_servers,
    connectionTimeout: connection.connection_timeout_ms,
    requestTimeout: connection.request_timeout_ms,
    retry: {
      retries: connection.retries,
      initialRetryTime: connection.retry_initial_ms,
      maxRetryTime: connection.retry_max_ms,
    },
    logLevel: logger.isLevelEnabled('debug') ? logLevel.INFO : logLevel.NOTHING,
    logCreator: logCreator(logger),
    ...(connection.tls ? { ssl: tlsConnectionOptions(connection.tls, component) } : {}),
    ...(connection.sasl ? { sasl: saslOptions(connection.sasl) } : {}),
  });
}

/** The kafkajs connections of one sink, and Produce requests written on them. */
export function kafkajsTransport(options: TransportOptions): KafkaTransport {
  const { topic, connection } = options;
  const kafka = kafkaClient(connection, options.logger, 'kafka sink');
  const createCluster = privateMember<(o: object) => Cluster>(kafka, 'private:Kafka:createCluster');
  const cluster = createCluster({ metadataMaxAge: 300_000, allowAutoTopicCreation: true });
  let sendRequest: SendRequest | undefined;

  // Request bodies: kafkajs copies a body behind its header when it sends, so each is free again
  // once its request settled.
  const bodies = new BufferPool(32 << 20);
  const produceRequest = (batches: PartitionBatch[], used: Buffer[], version: number): ProtocolRequest => ({
    request: {
      apiKey: PRODUCE_API_KEY,
      apiVersion: version,
      apiName: 'Produce',
      expectResponse: () => options.acks !== 0,
      encode: () => {
        // kafkajs copies the body behind its request header; it wants an Encoder-like object.
        const body = encodeProduceBody(topic, options.acks, connection.request_timeout_ms, batches, (n) => {
          const buf = bodies.acquire(n);
          used.push(buf);
          return buf;
        });
        return Promise.resolve({ buf: body, buffer: body });
      },
    },
    response: {
      decode: (body) => Promise.resolve(decodeProduceResponse(body, version)),
      parse: (r) => Promise.resolve(r),
    },
  });

  /** One request to the leader of `batches`; marks what it took, returns what failed. */
  const sendTo = async (
    nodeId: number,
    batches: PartitionBatch[],
  ): Promise<{ partition: number; error: Error }[]> => {
    const used: Buffer[] = [];
    try {
      const broker = await cluster.findBroker({ nodeId: String(nodeId) });
      sendRequest ??= privateMember<SendRequest>(broker, 'private:Broker:sendRequest');
      const version = produceVersion(broker as unknown as BrokerVersions);
      requireProduceVersion(batches, version);
      const response = await sendRequest.call(broker, produceRequest(batches, used, version));
      if (response === undefined) {
        for (const b of batches) b.written = true; // acks 0: nothing comes back
        return [];
      }
      const failures: { partition: number; error: Error }[] = [];
      const results = new Map<number, number>();
      for (const t of response.topics) for (const p of t.partitions) results.set(p.partition, p.errorCode);
      for (const b of batches) {
        const code = results.get(b.partition);
        if (code === 0 || code === DUPLICATE_SEQUENCE_NUMBER) b.written = true;
        else if (code === undefined)
          failures.push({ partition: b.partition, error: new Error('the broker did not answer for it') });
        else failures.push({ partition: b.partition, error: createErrorFromCode(code) });
      }
      return failures;
    } catch (error) {
      return batches.map((b) => ({ partition: b.partition, error: error as Error }));
    } finally {
      for (const buf of used) bodies.release(buf);
    }
  };

  const attempt = async (request: EncodedRequest): Promise<void> => {
    await cluster.addTargetTopic(topic);
    await cluster.refreshMetadataIfNecessary();
    const leaders = new Map<number, number>();
    for (const m of cluster.findTopicPartitionMetadata(topic)) leaders.set(m.partitionId, m.leader);
    const byLeader = new Map<number, PartitionBatch[]>();
    const failures: { partition: number; error: Error }[] = [];
    for (const b of request.batches) {
      if (b.written) continue;
      const leader = leaders.get(b.partition);
      if (leader === undefined || leader < 0) {
        failures.push({ partition: b.partition, error: createErrorFromCode(5) }); // LEADER_NOT_AVAILABLE
        continue;
      }
      let list = byLeader.get(leader);
      if (list === undefined) byLeader.set(leader, (list = []));
      list.push(b);
    }
    const results = await Promise.all([...byLeader].map(([nodeId, batches]) => sendTo(nodeId, batches)));
    for (const r of results) failures.push(...r);
    if (failures.length > 0) throw new ProduceError(topic, failures);
  };

  const stale = (err: unknown): boolean => {
    if (!(err instanceof ProduceError)) return true;
    return err.failures.some(({ error }) => {
      const e = error as Partial<KafkaJSProtocolError>;
      return STALE_METADATA.has(e.type ?? '') || STALE_METADATA.has(e.name ?? '');
    });
  };

  let idTurn = 0;
  // Set by disconnect(): a send still retrying gives up instead of holding the process open.
  let disconnected = false;
  const wakeRetries = new Set<() => void>();
  return {
    connect: () => cluster.connect(),
    async initProducerId() {
      await cluster.addTargetTopic(topic);
      await cluster.refreshMetadataIfNecessary();
      // Any broker hands out producer ids; a leader of the topic is one the sink talks to anyway,
      // and each call asks the next one, so a broker that keeps failing is not asked again at once.
      const leaders = [...new Set(cluster.findTopicPartitionMetadata(topic).map((m) => m.leader))].filter(
        (id) => id >= 0,
      );
      const broker =
        leaders.length > 0
          ? await cluster.findBroker({ nodeId: String(leaders[idTurn++ % leaders.length]) })
          : await cluster.findControllerBroker();
      const init = (broker as unknown as { initProducerId: InitProducerId }).initProducerId;
      const answer = await init.call(broker, { transactionalId: null });
      return { producerId: BigInt(answer.producerId), producerEpoch: answer.producerEpoch };
    },
    async partitions() {
      await cluster.addTargetTopic(topic);
      await cluster.refreshMetadataIfNecessary();
      const count = cluster.findTopicPartitionMetadata(topic).length;
      if (count === 0)
        throw new KafkaError('ENOTOPIC', `kafka sink topic ${topic}: no partitions; create the topic`);
      return count;
    },
    async send(request) {
      for (let retry = 0; ; retry++) {
        try {
          await attempt(request);
          return;
        } catch (err) {
          if (retry >= connection.retries || !kafkaErrorRetriable(err) || disconnected) throw err;
          if (stale(err)) await cluster.refreshMetadata().catch(() => undefined);
          const wait = Math.min(connection.retry_max_ms, connection.retry_initial_ms * 2 ** retry);
          await new Promise<void>((resolve) => {
            const wake = (): void => {
              clearTimeout(timer);
              wakeRetries.delete(wake);
              resolve();
            };
            const timer = setTimeout(wake, wait);
            wakeRetries.add(wake);
          });
          if (disconnected) throw err;
        }
      }
    },
    disconnect: () => {
      disconnected = true;
      for (const wake of [...wakeRetries]) wake();
      return cluster.disconnect();
    },
  };
}
