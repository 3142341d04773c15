import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeTempDir } from '../fixtures/cleanup.js';
import { startKafkaMock } from '../fixtures/kafka.js';
import { describeWith } from '../fixtures/privilege.js';
import {
  byStart,
  freePort,
  goodRecord,
  hostileRecords,
  nonFinite,
  promtool,
  runPipeline,
  samples,
  waitFor,
} from './records-helpers.js';

/**
 * Hostile records on Kafka: a JSON topic written by kcat and a protobuf topic written by kafkajs,
 * each with one record of every kind of invalid value between good ones, read by kafka_consumer in
 * `rxflow run` into a file sink and the otel_metrics sink. Only the good records reach the file
 * (lines read back); every other one is counted parse_failed (scraped from the metrics endpoint)
 * with its reason logged, rate-limited; the scrape passes promtool and every value is finite.
 */

const PROTO = new URL('../../src/sinks/flow.proto', import.meta.url);
const root = protobuf.parse(fs.readFileSync(PROTO, 'utf8'), { keepCase: true }).root;
const FlowRecordType = root.lookupType('rxflow.v1.FlowRecord');

/** Protobuf can carry only some kinds of invalid value: uint fields are never negative nor fractional. */
function hostileProtobuf(): { record: Record<string, unknown>; reason: string }[] {
  const v4 = (i: number): Record<string, unknown> => ({ ...goodRecord(2000 + i * 5) });
  const kinds: [Record<string, unknown>, string][] = [
    [{ ...v4(0), sourceIPv4Address: 'not-an-ip' }, 'sourceIPv4Address is not an IPv4 address: "not-an-ip"'],
    [
      { ...v4(1), packetDeltaCount: 2 ** 53 + 2 },
      'packetDeltaCount is not an integer from 0 to 2^53-1: 9007199254740994',
    ],
    [
      { ...v4(2), octetDeltaCount: 2 ** 60 },
      'octetDeltaCount is not an integer from 0 to 2^53-1: 1152921504606846976',
    ],
    [
      { ...v4(3), destinationTransportPort: 70000 },
      'destinationTransportPort is not an integer from 0 to 65535: 70000',
    ],
    [{ ...v4(4), protocolIdentifier: 300 }, 'protocolIdentifier is not an integer from 0 to 255: 300'],
    [
      { ...v4(5), flowStartMilliseconds: 4e15, flowEndMilliseconds: 4e15 },
      'flowStartMilliseconds is not a time in milliseconds from 2000-01-01 to a day from now: 4000000000000000',
    ],
    [{ ...v4(6), interfaceName: 'eth0\u0000x' }, 'interfaceName holds a control character: "eth0\\u0000x"'],
  ];
  return kinds.map(([record, reason]) => ({ record, reason }));
}

describeWith({ commands: ['kcat', 'promtool'] }, 'kafka_consumer with hostile records', () => {
  let cluster: KafkaMockCluster;

  beforeAll(async () => {
    cluster = await startKafkaMock();
  });
  afterAll(async () => {
    await cluster?.stop();
    await cleanup.dispose();
  });

  it('passes only valid records to the sinks, counts each invalid one parse_failed with its reason, and metrics stay finite', async () => {
    await cluster.createTopic('hostile-json', 1);
    await cluster.createTopic('hostile-pb', 1);
    const dir = makeTempDir('rxrec');

    // JSON: good and hostile records alternate, one message each, written by kcat.
    const hostileJson = hostileRecords();
    const goodJson = Array.from({ length: hostileJson.length + 1 }, (_, i) => goodRecord(i));
    const jsonLines: string[] = [];
    goodJson.forEach((g, i) => {
      jsonLines.push(JSON.stringify(g));
      if (i < hostileJson.length) jsonLines.push(JSON.stringify(hostileJson[i]!.record));
    });
    const jsonFile = path.join(dir, 'hostile.jsonl');
    fs.writeFileSync(jsonFile, `${jsonLines.join('\n')}\n`);
    execFileSync('kcat', ['-P', '-b', cluster.bootstrap, '-t', 'hostile-json', '-l', jsonFile], {
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 30_000,
    });

    // Protobuf FlowRecord messages, the same way round, written by kafkajs.
    const hostilePb = hostileProtobuf();
    const goodPb = Array.from({ length: hostilePb.length + 1 }, (_, i) => goodRecord(100 + i));
    const encode = (r: Record<string, unknown>): Buffer =>
      Buffer.from(FlowRecordType.encode(FlowRecordType.fromObject(r)).finish());
    const pbValues: Buffer[] = [];
    goodPb.forEach((g, i) => {
      pbValues.push(encode(g as unknown as Record<string, unknown>));
      if (i < hostilePb.length) pbValues.push(encode(hostilePb[i]!.record));
    });
    const kafka = new Kafka({
      clientId: 'rxflow-test',
      brokers: cluster.brokers,
      logLevel: logLevel.NOTHING,
    });
    const producer = kafka.producer();
    await producer.connect();
    try {
      await producer.send({ topic: 'hostile-pb', messages: pbValues.map((value) => ({ value })) });
    } finally {
      await producer.disconnect();
    }

    const out = path.join(dir, 'out.jsonl');
    const port = await freePort();
    const yaml = path.join(dir, 'hostile.yaml');
    const consumer = (topic: string, encoding: string): string =>
      `{type: kafka_consumer, bootstrap_servers: ['${cluster.bootstrap}'], topic: ${topic}, encoding: ${encoding}, ` +
      `group_id: ${topic}-${process.pid}, from_beginning: true, fetch_max_wait_ms: 100}`;
    fs.writeFileSync(
      yaml,
      `sources:\n  json: ${consumer('hostile-json', 'json')}\n  pb: ${consumer('hostile-pb', 'protobuf')}\n` +
        `sinks:\n  out: {type: file, inputs: [json, pb], path: '${out}'}\n` +
        `  metrics: {type: otel_metrics, inputs: [json, pb], prometheus_port: ${port}}\n`,
    );
    const run = runPipeline(yaml);
    const url = `http://127.0.0.1:${port}/metrics`;
    const dropped = (source: string, all: Map<string, string>): number =>
      Number(
        all.get(
          `rxflow_component_dropped_total{component=${source},reason=parse_failed,type=kafka_consumer}`,
        ),
      );
    const received = (source: string, all: Map<string, string>): number =>
      Number(all.get(`rxflow_component_received_total{component=${source},type=kafka_consumer}`));
    let text = '';
    await waitFor('every message consumed', async () => {
      text = await fetch(url)
        .then((res) => (res.ok ? res.text() : ''))
        .catch(() => '');
      const all = samples(text);
      return received('json', all) === jsonLines.length && received('pb', all) === pbValues.length;
    });
    const lines = (): string[] =>
      fs.existsSync(out) ? fs.readFileSync(out, 'utf8').split('\n').filter(Boolean) : [];
    await waitFor('the good records in the file', () => lines().length >= goodJson.length + goodPb.length);
    text = await (await fetch(url)).text();
    run.stop();
    expect(await run.code).toBe(0);
    expect(run.err).toEqual([]);

    // The file holds exactly the good records.
    const written = lines().map((l) => JSON.parse(l) as FlowRecord);
    expect(byStart(written)).toEqual(byStart([...goodJson, ...goodPb]));

    // Each hostile record is counted parse_failed, and nothing of it reached the flow counters.
    const scraped = samples(text);
    expect(await promtool(text)).toEqual({ code: 0, output: '' });
    expect(nonFinite(scraped)).toEqual([]);
    expect(dropped('json', scraped)).toBe(hostileJson.length);
    expect(dropped('pb', scraped)).toBe(hostilePb.length);
    const sum = (prefix: string): number =>
      [...scraped].filter(([k]) => k.startsWith(prefix)).reduce((n, [, v]) => n + Number(v), 0);
    const good = [...goodJson, ...goodPb];
    expect(sum('rxflow_flow_records_total{')).toBe(good.length);
    expect(sum('rxflow_flow_bytes_total{')).toBe(good.reduce((n, r) => n + r.octetDeltaCount, 0));
    expect(sum('rxflow_flow_packets_total{')).toBe(good.reduce((n, r) => n + r.packetDeltaCount, 0));
    const interfaces = new Set(
      [...scraped.keys()]
        .filter((k) => k.startsWith('rxflow_flow_'))
        .map((k) => /network_interface_name=([^,}]*)/.exec(k)![1]),
    );
    expect([...interfaces].sort()).toEqual(['eth0', 'eth1', 'eth2']);

    // The reason of each is logged, rate-limited: the first at once with its offset, the rest summed.
    for (const [source, hostile] of [
      ['json', hostileJson],
      ['pb', hostilePb],
    ] as const) {
      const warnings = run.logs.filter(
        (l) => l.msg === `kafka consumer hostile-${source}: undecodable records dropped`,
      );
      expect(warnings[0]!.cause).toBe(`partition 0 offset 1: ${hostile[0]!.reason}`);
      expect(warnings.reduce((n, w) => n + (w.dropped as { parse_failed: number }).parse_failed, 0)).toBe(
        hostile.length,
      );
      expect(warnings.length).toBeLessThan(hostile.length);
    }
  });
});
