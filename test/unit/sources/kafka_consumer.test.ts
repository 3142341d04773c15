import fs from 'node:fs';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import type { ComponentModule } from '../../../src/component.js';
import { formatProblem } from '../../../src/config/errors.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import { checkPipeline } from '../../../src/pipeline/load.js';
import { modules } from '../../../src/pipeline/registry.js';
import type { FlowRecord } from '../../../src/records/flow.js';
import fileReplayModule from '../../../src/sources/file_replay.js';
import kafkaConsumerModule, { messageDecoder } from '../../../src/sources/kafka_consumer.js';
import { allFieldsRecord, flowRecord } from '../../fixtures/records.js';

const PROTO = new URL('../../../src/sinks/flow.proto', import.meta.url);
const root = protobuf.parse(fs.readFileSync(PROTO, 'utf8'), { keepCase: true }).root;
const FlowRecordType = root.lookupType('rxflow.v1.FlowRecord');
const FlowBatchType = root.lookupType('rxflow.v1.FlowBatch');

const encodeRecord = (r: object): Buffer =>
  Buffer.from(FlowRecordType.encode(FlowRecordType.fromObject(r)).finish());
const encodeBatch = (rs: object[]): Buffer =>
  Buffer.from(FlowBatchType.encode(FlowBatchType.fromObject({ records: rs })).finish());

/** Decodes each value; returns the records and the problems, in order. */
function decodeAll(
  encoding: 'json' | 'protobuf',
  values: (Buffer | null)[],
): { records: FlowRecord[]; problems: string[] } {
  const decode = messageDecoder(encoding);
  const records: FlowRecord[] = [];
  const problems: string[] = [];
  for (const v of values) decode(v, records, (p) => problems.push(p));
  return { records, problems };
}

const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));
const a = flowRecord({ flowStartMilliseconds: 1_700_000_000_001 });
const b = flowRecord({ flowStartMilliseconds: 1_700_000_000_002, flowDirection: 1 });
const { ipVersion: _v, ...noVersion } = flowRecord();

describe('kafka_consumer message decoding', () => {
  it('json: an object is a record, an array a batch; what is not a flow record is named', () => {
    const { records, problems } = decodeAll('json', [
      json(a),
      json([b, a]),
      json([]),
      json([a, { x: 1 }, 7]),
      Buffer.from('{"truncated'),
      json(42),
      json(noVersion),
      Buffer.alloc(0),
      null,
    ]);
    expect(records).toEqual([a, b, a, a]);
    expect(problems).toEqual([
      'record 1: ipVersion is not 0, 4 or 6',
      'record 2: not a JSON object',
      expect.stringMatching(/^not JSON: /),
      'not a JSON object',
      'ipVersion is not 0, 4 or 6',
      'empty message',
      'empty message',
    ]);
  });

  it('protobuf: a FlowRecord or a FlowBatch, told apart by the first byte, decode to the exact records', () => {
    const full = allFieldsRecord();
    const v6: FlowRecord = {
      ...flowRecord({ ipVersion: 6 }),
      sourceIPv6Address: '::1',
      destinationIPv6Address: '::2',
    };
    delete v6.sourceIPv4Address;
    delete v6.destinationIPv4Address;
    // A layer-2 flow: ipVersion 0 is proto3's default, so it is absent on the wire.
    const l2: FlowRecord = { ...flowRecord({ ipVersion: 0, ethernetType: 0x0806, protocolIdentifier: 0 }) };
    delete l2.sourceIPv4Address;
    delete l2.destinationIPv4Address;
    // A FlowRecord starts with ipVersion (field 1, varint: 0x08); a FlowBatch with field 1 as bytes (0x0a).
    expect(encodeRecord(a)[0]).toBe(0x08);
    expect(encodeBatch([a])[0]).toBe(0x0a);
    const { records, problems } = decodeAll('protobuf', [
      encodeRecord(a),
      encodeBatch([b, v6, full]),
      encodeRecord(v6),
      encodeBatch([l2]),
    ]);
    expect(problems).toEqual([]);
    expect(records).toEqual([a, b, v6, full, v6, l2]);
  });

  it('protobuf: undecodable bytes, a bad batch item and an empty message are named', () => {
    const { records, problems } = decodeAll('protobuf', [
      Buffer.from([0x08, 0x84]),
      Buffer.from([0x0a, 0x40, 0x08]),
      encodeBatch([a, { ...a, ipVersion: 0 }, b]),
      encodeRecord({ ...a, ipVersion: 5 }),
      json(a),
      Buffer.alloc(0),
    ]);
    expect(records).toEqual([a, b]);
    expect(problems).toEqual([
      expect.stringMatching(/^not a protobuf FlowRecord: /),
      expect.stringMatching(/^not a protobuf FlowBatch: /),
      'record 1: ipVersion is 0 (a layer-2 flow) but sourceIPv4Address is set',
      'ipVersion is not 0, 4 or 6',
      expect.stringMatching(/^not a protobuf FlowRecord: /),
      'empty message',
    ]);
  });
});

describe('kafka_consumer and file_replay configs', () => {
  // Until the registry lists them, the two modules are added to the shipped ones here.
  const mine: ComponentModule[] = [fileReplayModule, kafkaConsumerModule];
  const types = new Set(mine.map((m) => m.type));
  const registry = new ComponentRegistry([...modules.filter((m) => !types.has(m.type)), ...mine]);

  it('the examples validate, and defaults fill what is left out', () => {
    for (const m of mine)
      expect(registry.validate(m, m.example as Record<string, unknown>).errors).toEqual([]);
    const consumer = registry.validate(kafkaConsumerModule, {
      bootstrap_servers: ['k:9092'],
      topic: 'flows',
      group_id: 'g',
    });
    expect(consumer.config).toEqual({
      bootstrap_servers: ['k:9092'],
      topic: 'flows',
      group_id: 'g',
      client_id: 'rxflow',
      encoding: 'json',
      from_beginning: false,
      session_timeout_ms: 30000,
      fetch_max_wait_ms: 500,
      max_bytes_per_partition: 1048576,
      connection_timeout_ms: 3000,
      request_timeout_ms: 30000,
      retries: 3,
      retry_initial_ms: 100,
      retry_max_ms: 5000,
      shutdown_timeout_ms: 30000,
    });
    const replay = registry.validate(fileReplayModule, { paths: ['/x'] });
    expect(replay.config).toEqual({ paths: ['/x'], batch_size: 1000, speed: 0, rate_limit_records_per_s: 0 });
    expect(registry.validate(kafkaConsumerModule as ComponentModule, { topic: 'flows' }).ok).toBe(false);
    expect(registry.validate(fileReplayModule as ComponentModule, { paths: [] }).ok).toBe(false);
  });

  it.each(['replay-to-stdout.yaml', 'kafka-to-metrics.yaml'])(
    'pipelines/%s validates with no variables set',
    (name) => {
      const text = fs.readFileSync(new URL(`../../../pipelines/${name}`, import.meta.url), 'utf8');
      expect(
        checkPipeline(text, `pipelines/${name}`, { env: {}, registry }).problems.map(formatProblem),
      ).toEqual([]);
    },
  );
});
