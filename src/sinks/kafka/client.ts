/**
 * The slice of kafkajs the kafka sink uses, behind a small interface so the sink's buffering,
 * retry and accounting can be driven by a fake in unit tests.
 */
import fs from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import {
  CompressionTypes,
  Kafka,
  logLevel,
  type ICustomPartitioner,
  type LogEntry,
  type Message,
  type Producer,
  type SASLOptions,
} from 'kafkajs';
import type { Logger } from '../../logger.js';
import { SinkError, messageOf } from '../errors.js';
import { partitionForKey } from './encode.js';

export interface KafkaTransport {
  connect(): Promise<void>;
  /** The topic's partition count; cached once known. */
  partitions(): Promise<number>;
  /** Writes the messages to the topic; rejects when kafkajs gave up after its own retries. */
  send(messages: Message[]): Promise<void>;
  disconnect(): Promise<void>;
}

export interface TlsOptions {
  ca_file?: string;
  cert_file?: string;
  key_file?: string;
  insecure_skip_verify?: boolean;
  server_name?: string;
}

export type SaslMechanism = 'plain' | 'scram-sha-256' | 'scram-sha-512';

export interface SaslOptions {
  mechanism: SaslMechanism;
  username: string;
  password: string;
}

export interface TransportOptions {
  brokers: string[];
  topic: string;
  clientId: string;
  acks: -1 | 0 | 1;
  compression: 'none' | 'gzip';
  requestTimeoutMs: number;
  connectionTimeoutMs: number;
  retries: number;
  retryInitialMs: number;
  retryMaxMs: number;
  tls?: TlsOptions;
  sasl?: SaslOptions;
  logger: Logger;
}

function readPem(what: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new SinkError(
      'ETLSFILE',
      `kafka sink tls.${what} ${file}: ${messageOf(err)}; check the path and its permissions`,
      {
        cause: err,
      },
    );
  }
}

/** tls.connect options from the sink's `tls` block; files are read once, when the sink is built. */
export function tlsConnectionOptions(tls: TlsOptions): ConnectionOptions {
  if ((tls.cert_file === undefined) !== (tls.key_file === undefined)) {
    throw new SinkError(
      'ETLSCONFIG',
      'kafka sink tls: cert_file and key_file go together; set both or neither',
    );
  }
  const options: ConnectionOptions = { rejectUnauthorized: tls.insecure_skip_verify !== true };
  if (tls.ca_file !== undefined) options.ca = [readPem('ca_file', tls.ca_file)];
  if (tls.cert_file !== undefined) options.cert = readPem('cert_file', tls.cert_file);
  if (tls.key_file !== undefined) options.key = readPem('key_file', tls.key_file);
  if (tls.server_name !== undefined) options.servername = tls.server_name;
  return options;
}

function saslOptions(sasl: SaslOptions): SASLOptions {
  // Spelled out per mechanism: kafkajs types each mechanism as its own literal.
  switch (sasl.mechanism) {
    case 'plain':
      return { mechanism: 'plain', username: sasl.username, password: sasl.password };
    case 'scram-sha-256':
      return { mechanism: 'scram-sha-256', username: sasl.username, password: sasl.password };
    case 'scram-sha-512':
      return { mechanism: 'scram-sha-512', username: sasl.username, password: sasl.password };
  }
}

/**
 * kafkajs logs every failed attempt at ERROR; during an outage that is a line per retry. The sink
 * logs the outage once (and what it lost), so kafkajs's own lines go to debug.
 */
function logCreator(logger: Logger) {
  return () =>
    ({ namespace, log }: LogEntry): void => {
      const { message, timestamp: _timestamp, ...fields } = log;
      logger.debug({ kafkajs: namespace, ...fields }, message);
    };
}

/** The kafkajs client of one sink: one producer, and an admin client only to read a partition count. */
export function kafkajsTransport(options: TransportOptions): KafkaTransport {
  const { topic, logger } = options;
  const retry = {
    retries: options.retries,
    initialRetryTime: options.retryInitialMs,
    maxRetryTime: options.retryMaxMs,
  };
  const kafka = new Kafka({
    clientId: options.clientId,
    brokers: options.brokers,
    connectionTimeout: options.connectionTimeoutMs,
    requestTimeout: options.requestTimeoutMs,
    retry,
    logLevel: logger.isLevelEnabled('debug') ? logLevel.INFO : logLevel.NOTHING,
    logCreator: logCreator(logger),
    ...(options.tls ? { ssl: tlsConnectionOptions(options.tls) } : {}),
    ...(options.sasl ? { sasl: saslOptions(options.sasl) } : {}),
  });
  let knownPartitions = 0;
  let roundRobin = 0;
  // kafkajs's default partitioner hashes keys with a Long per step and filters the partition list
  // per message; this one gives the same partition for a key without allocating, and learns the
  // partition count from the metadata kafkajs passes in.
  const createPartitioner: ICustomPartitioner =
    () =>
    ({ partitionMetadata, message }) => {
      const count = partitionMetadata.length;
      knownPartitions = count;
      if (typeof message.partition === 'number') return message.partition % count;
      if (message.key !== null && message.key !== undefined) return partitionForKey(message.key, count);
      for (let tries = 0; tries < count; tries++) {
        const meta = partitionMetadata[(roundRobin = (roundRobin + 1) % count)]!;
        if (meta.leader >= 0) return meta.partitionId;
      }
      return roundRobin;
    };
  const producer: Producer = kafka.producer({ createPartitioner, retry });
  const compression = options.compression === 'gzip' ? CompressionTypes.GZIP : CompressionTypes.None;

  return {
    connect: () => producer.connect(),
    async partitions() {
      if (knownPartitions > 0) return knownPartitions;
      const admin = kafka.admin({ retry });
      await admin.connect();
      try {
        const meta = await admin.fetchTopicMetadata({ topics: [topic] });
        const count = meta.topics[0]?.partitions.length ?? 0;
        if (count === 0)
          throw new SinkError('ENOTOPIC', `kafka sink topic ${topic}: no partitions; create the topic`);
        knownPartitions ||= count;
        return knownPartitions;
      } finally {
        await admin.disconnect().catch(() => undefined);
      }
    },
    async send(messages) {
      await producer.send({
        topic,
        messages,
        acks: options.acks,
        timeout: options.requestTimeoutMs,
        compression,
      });
    },
    disconnect: () => producer.disconnect(),
  };
}
