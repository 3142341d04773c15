/**
 * What a flow message on a topic is, for the kafka sink that writes it and the kafka_consumer
 * source that reads it: the content-type header naming its encoding, and the protobuf schema
 * (src/sinks/flow.proto) of the protobuf encoding.
 */
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { messageOf } from '../errors.js';
import { KafkaError } from './errors.js';

/** The record header that names a message's encoding (as the CloudEvents Kafka binding names it). */
export const CONTENT_TYPE_HEADER = 'content-type';
export const JSON_CONTENT_TYPE = 'application/json';
/** Protobuf's media type as Google APIs, Envoy and Spring write it; `messageType` is the full name. */
export const PROTOBUF_CONTENT_TYPE = 'application/x-protobuf';

export interface FlowProto {
  root: protobuf.Root;
  FlowRecord: protobuf.Type;
  FlowBatch: protobuf.Type;
}

let proto: FlowProto | undefined;

/**
 * src/sinks/flow.proto, found from the sources (tests run them directly) or, from the compiled
 * dist/src/kafka/, in the checkout's src/sinks/ (tsc does not copy it to dist/).
 */
export function flowProtoPath(): string {
  const candidates = [
    new URL('../sinks/flow.proto', import.meta.url),
    new URL('../../../src/sinks/flow.proto', import.meta.url),
  ];
  for (const url of candidates) {
    const file = fileURLToPath(url);
    if (fs.existsSync(file)) return file;
  }
  throw new KafkaError(
    'ENOPROTO',
    `kafka sink: flow.proto not found at ${candidates.map((u) => fileURLToPath(u)).join(' or ')}; reinstall rxflow with its src/sinks/flow.proto`,
  );
}

/** The FlowRecord and FlowBatch types of flow.proto, parsed once, field names as written. */
export function loadFlowProto(): FlowProto {
  if (proto) return proto;
  const file = flowProtoPath();
  try {
    const { root } = protobuf.parse(fs.readFileSync(file, 'utf8'), { keepCase: true });
    proto = {
      root,
      FlowRecord: root.lookupType('rxflow.v1.FlowRecord'),
      FlowBatch: root.lookupType('rxflow.v1.FlowBatch'),
    };
    return proto;
  } catch (err) {
    throw new KafkaError(
      'ENOPROTO',
      `kafka sink: cannot load ${file}: ${messageOf(err)}; restore the committed file`,
      {
        cause: err,
      },
    );
  }
}
