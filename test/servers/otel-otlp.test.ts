import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../src/records/flow.js';
import { flowRecord } from '../fixtures/records.js';
import { Cli, assertBuilt } from '../kernel/cli-helpers.js';

/**
 * `rxflow run` of a pipeline that replays a file the test wrote into the otel_metrics sink, pushing
 * over OTLP/HTTP to a collector in the test. The collector decodes the protobuf body with OTLP's
 * own definitions (test/fixtures/otlp) and finds the resource set through the OTEL_* variables, the
 * units, the semantic-convention attribute names, and sums equal to those of the file's lines.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PROTO = join(ROOT, 'test/fixtures/otlp/metrics_service.proto');

interface Received {
  path: string;
  contentType: string;
  body: Buffer;
}

interface KeyValue {
  key: string;
  value: Record<string, unknown>;
}
interface DataPoint {
  attributes?: KeyValue[];
  asDouble?: number;
  asInt?: number;
}
interface Metric {
  name: string;
  unit?: string;
  sum?: { dataPoints?: DataPoint[]; isMonotonic?: boolean };
  gauge?: { dataPoints?: DataPoint[] };
}
interface Export {
  resourceMetrics: {
    resource: { attributes: KeyValue[] };
    scopeMetrics: { metrics: Metric[] }[];
  }[];
}

/** An attribute's value as JSON would carry it: strings, numbers, booleans, arrays of them. */
function valueOf(v: Record<string, unknown>): unknown {
  if ('stringValue' in v) return v.stringValue;
  if ('intValue' in v) return Number(v.intValue);
  if ('doubleValue' in v) return v.doubleValue;
  if ('boolValue' in v) return v.boolValue;
  if ('arrayValue' in v) {
    return ((v.arrayValue as { values?: Record<string, unknown>[] }).values ?? []).map(valueOf);
  }
  throw new Error(`unexpected attribute value ${JSON.stringify(v)}`);
}

function attributes(list: KeyValue[] | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, valueOf(kv.value)]));
}

let Request: protobuf.Type;
let dir: string;
let server: http.Server;
let url: string;
let received: Received[] = [];

beforeAll(async () => {
  assertBuilt();
  Request = protobuf
    .loadSync(PROTO)
    .lookupType('opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest');
  dir = mkdtempSync(join(tmpdir(), 'rxflow-otlp-'));
  server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({
        path: req.url ?? '',
        contentType: req.headers['content-type'] ?? '',
        body: Buffer.concat(chunks),
      });
      // An empty ExportMetricsServiceResponse: no partial success to report.
      const json = req.headers['content-type'] === 'application/json';
      res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
      res.end(json ? '{}' : Buffer.alloc(0));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/v1/metrics`;
});

afterAll(async () => {
  await new Promise<void>((r) => server?.close(() => r()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** 61 records over three interfaces, five protocols, both directions, IPv4, IPv6 and layer 2. */
function records(): FlowRecord[] {
  const out: FlowRecord[] = [];
  for (let i = 0; i < 61; i++) {
    const base = {
      interfaceName: ['eth0', 'eth1', 'veth-a'][i % 3]!,
      protocolIdentifier: [6, 17, 1, 58, 47][i % 5]!,
      flowDirection: ((i >> 1) % 2) as 0 | 1,
      octetDeltaCount: 40 + i * 13,
      packetDeltaCount: 1 + (i % 4),
    };
    if (i % 10 === 9) {
      const r = flowRecord({ ...base, ipVersion: 0, protocolIdentifier: 0, ethernetType: 0x88cc });
      delete r.sourceIPv4Address;
      delete r.destinationIPv4Address;
      out.push(r);
    } else if (i % 7 === 0) {
      const r = flowRecord({
        ...base,
        ipVersion: 6,
        sourceIPv6Address: '2001:db8::1',
        destinationIPv6Address: '2001:db8::2',
      });
      delete r.sourceIPv4Address;
      delete r.destinationIPv4Address;
      out.push(r);
    } else {
      out.push(flowRecord(base));
    }
  }
  return out;
}

/** Sums by attribute set of the JSON lines in `file`, named as semantic conventions name them. */
function expectedSums(file: string): Map<string, { bytes: number; packets: number; records: number }> {
  const transports: Record<number, string> = { 6: 'tcp', 17: 'udp', 1: 'icmp', 58: 'icmpv6' };
  const sums = new Map<string, { bytes: number; packets: number; records: number }>();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    const r = JSON.parse(line) as FlowRecord;
    const key = JSON.stringify(
      Object.fromEntries(
        Object.entries({
          'network.interface.name': r.interfaceName,
          'network.io.direction': r.flowDirection === 0 ? 'receive' : 'transmit',
          'network.transport': transports[r.protocolIdentifier] ?? 'other',
          'network.type': r.ipVersion === 4 ? 'ipv4' : r.ipVersion === 6 ? 'ipv6' : undefined,
        })
          .filter(([, v]) => v !== undefined)
          .sort(([a], [b]) => a.localeCompare(b)),
      ),
    );
    const s = sums.get(key) ?? { bytes: 0, packets: 0, records: 0 };
    s.bytes += r.octetDeltaCount;
    s.packets += r.packetDeltaCount;
    s.records += 1;
    sums.set(key, s);
  }
  return sums;
}

/** The flow counters of an export as attribute set -> value, keys sorted like expectedSums'. */
function flowPoints(metrics: Metric[], name: string): Map<string, number> {
  const metric = metrics.find((m) => m.name === name);
  if (!metric?.sum) throw new Error(`no sum ${name} in the export`);
  return new Map(
    (metric.sum.dataPoints ?? []).map((p) => {
      const a = attributes(p.attributes);
      const key = JSON.stringify(
        Object.fromEntries(Object.entries(a).sort(([x], [y]) => x.localeCompare(y))),
      );
      return [key, Number(p.asDouble ?? p.asInt)];
    }),
  );
}

/** A pipeline `name` replaying `data`; without `endpoint`, the sink has no otlp_endpoint. */
function pipeline(name: string, data: string, endpoint = true): string {
  const sub = join(dir, endpoint ? '.' : 'env');
  mkdirSync(sub, { recursive: true });
  const file = join(sub, `${name}.yaml`);
  const otlp = endpoint ? `, otlp_endpoint: '${url}'` : '';
  writeFileSync(
    file,
    `sources:
  flows: {type: file_replay, paths: ['${data}'], batch_size: 7}
sinks:
  metrics: {type: otel_metrics, inputs: [flows], prometheus_port: 0${otlp}, otlp_interval_ms: 60000}
`,
  );
  return file;
}

/** Runs `rxflow run file` to its end (the file replayed, the sink's last push done). */
async function run(file: string, env: NodeJS.ProcessEnv): Promise<Cli> {
  const cli = new Cli(['run', file, '--no-status-socket', '--log-level', 'error'], {
    OTEL_EXPORTER_OTLP_PROTOCOL: '',
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: '',
    OTEL_EXPORTER_OTLP_ENDPOINT: '',
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: '',
    OTEL_SERVICE_NAME: '',
    OTEL_RESOURCE_ATTRIBUTES: '',
    ...env,
  });
  const exit = await cli.exited;
  expect({ exit, stderr: cli.stderr }).toEqual({ exit: { code: 0, signal: null }, stderr: '' });
  return cli;
}

const RESOURCE_ENV = {
  OTEL_SERVICE_NAME: 'edge-metrics',
  // service.name here loses to OTEL_SERVICE_NAME; ',' and '=' in a value are percent-encoded.
  OTEL_RESOURCE_ATTRIBUTES:
    'service.name=not-this,deployment.environment.name=fleet-test, service.namespace = net ,rack=r%2C12%3Dwest%20%C3%A9',
};

describe('otel_metrics sink, OTLP export as the standard variables select', () => {
  it('pushes http/protobuf by default: the resource from OTEL_*, units, semconv names, the file sums', async () => {
    const data = join(dir, 'flows.jsonl');
    // One line that is not a record: dropped by the source, so the dropped counters have a point.
    const lines = records().map((r) => JSON.stringify(r));
    lines.splice(30, 0, 'not a flow record');
    writeFileSync(data, lines.map((l) => `${l}\n`).join(''));
    const file = pipeline('edge', data);
    received = [];
    const cli = await run(file, RESOURCE_ENV);

    expect(received.length).toBeGreaterThan(0);
    const last = received[received.length - 1]!;
    expect({ path: last.path, contentType: last.contentType }).toEqual({
      path: '/v1/metrics',
      contentType: 'application/x-protobuf',
    });
    const decoded = Request.toObject(Request.decode(last.body), { longs: Number }) as Export;
    expect(decoded.resourceMetrics).toHaveLength(1);
    const rm = decoded.resourceMetrics[0]!;

    const resource = attributes(rm.resource.attributes);
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string })
      .version;
    expect(resource).toMatchObject({
      'service.name': 'edge-metrics',
      'service.version': version,
      'service.namespace': 'net',
      'deployment.environment.name': 'fleet-test',
      rack: 'r,12=west é',
      'host.name': hostname(),
      'os.type': 'linux',
      'process.pid': cli.pid,
      'process.runtime.name': 'nodejs',
      'process.runtime.version': process.versions.node,
      'telemetry.sdk.language': 'nodejs',
    });
    expect(resource['service.instance.id']).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );

    const metrics = rm.scopeMetrics.flatMap((s) => s.metrics);
    expect(
      Object.fromEntries(metrics.map((m) => [m.name, m.unit]).sort(([a], [b]) => a!.localeCompare(b!))),
    ).toEqual({
      'rxflow.component.dropped': '{record}',
      'rxflow.component.in_flight': '{record}',
      'rxflow.component.merged': '{record}',
      'rxflow.component.received': '{record}',
      'rxflow.component.sent': '{record}',
      'rxflow.flow.bytes': 'By',
      'rxflow.flow.packets': '{packet}',
      'rxflow.flow.records': '{record}',
      'rxflow.ledger.delivered': '{record}',
      'rxflow.ledger.dropped': '{record}',
      'rxflow.ledger.in_flight': '{record}',
      'rxflow.ledger.merged': '{record}',
      'rxflow.ledger.seen': '{record}',
      'rxflow.sink.exported': '{record}',
      'rxflow.sink.handed': '{record}',
      'rxflow.sink.in_flight': '{record}',
    });

    const expected = expectedSums(data);
    // 3 interfaces x 5 transports x 2 directions over IPv4, IPv6 and layer 2: enough distinct sets.
    expect(expected.size).toBeGreaterThan(20);
    const want = (field: 'bytes' | 'packets' | 'records') =>
      new Map([...expected].map(([k, s]) => [k, s[field]]));
    expect(flowPoints(metrics, 'rxflow.flow.bytes')).toEqual(want('bytes'));
    expect(flowPoints(metrics, 'rxflow.flow.packets')).toEqual(want('packets'));
    expect(flowPoints(metrics, 'rxflow.flow.records')).toEqual(want('records'));
    const only = (name: string) =>
      metrics
        .find((m) => m.name === name)!
        .sum!.dataPoints!.map((p) => ({
          attributes: attributes(p.attributes),
          value: Number(p.asDouble ?? p.asInt),
        }));
    // Every line of the file is seen; the records reach the sink, which exports them, and the other line is dropped.
    expect(only('rxflow.ledger.seen')).toEqual([{ attributes: {}, value: lines.length }]);
    const recordLines = lines.filter((l) => l.startsWith('{')).length;
    expect(only('rxflow.ledger.delivered')).toEqual([{ attributes: {}, value: recordLines }]);
    const sink = { sink: 'metrics', type: 'otel_metrics' };
    expect(only('rxflow.sink.handed')).toEqual([{ attributes: sink, value: recordLines }]);
    expect(only('rxflow.sink.exported')).toEqual([{ attributes: sink, value: recordLines }]);
    expect(only('rxflow.ledger.dropped')).toEqual([{ attributes: { reason: 'parse_failed' }, value: 1 }]);
    expect(only('rxflow.component.dropped')).toEqual([
      { attributes: { component: 'flows', type: 'file_replay', reason: 'parse_failed' }, value: 1 },
    ]);
  }, 60_000);

  it('pushes http/json when OTEL_EXPORTER_OTLP_METRICS_PROTOCOL says so, to OTEL_EXPORTER_OTLP_ENDPOINT, with one instance id', async () => {
    const data = join(dir, 'few.jsonl');
    const few = [
      flowRecord({ interfaceName: 'eth0', octetDeltaCount: 1500, packetDeltaCount: 3 }),
      flowRecord({ interfaceName: 'eth0', octetDeltaCount: 500, packetDeltaCount: 2, flowDirection: 1 }),
    ];
    writeFileSync(data, few.map((r) => `${JSON.stringify(r)}\n`).join(''));
    const ids: string[] = [];
    const runs: { file: string; env: NodeJS.ProcessEnv }[] = [
      { file: pipeline('edge', data), env: RESOURCE_ENV },
      // The metrics-specific variable wins over the general one, which asks for what rxflow lacks.
      {
        file: pipeline('edge', data),
        env: {
          ...RESOURCE_ENV,
          OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
          OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json',
        },
      },
      // No otlp_endpoint in the file: the standard variable names the collector (the SDK adds the path).
      {
        file: pipeline('edge', data, false),
        env: { ...RESOURCE_ENV, OTEL_EXPORTER_OTLP_ENDPOINT: new URL(url).origin },
      },
    ];
    for (const { file, env } of runs) {
      received = [];
      await run(file, env);
      const last = received[received.length - 1]!;
      expect(last.path).toBe('/v1/metrics');
      const json = env.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL === 'http/json';
      expect(last.contentType).toBe(json ? 'application/json' : 'application/x-protobuf');
      const decoded = (
        json
          ? JSON.parse(last.body.toString('utf8'))
          : Request.toObject(Request.decode(last.body), { longs: Number })
      ) as Export;
      const rm = decoded.resourceMetrics[0]!;
      ids.push(String(attributes(rm.resource.attributes)['service.instance.id']));
      const metrics = rm.scopeMetrics.flatMap((s) => s.metrics);
      expect(metrics.find((m) => m.name === 'rxflow.flow.bytes')?.unit).toBe('By');
      expect([...flowPoints(metrics, 'rxflow.flow.bytes')].sort()).toEqual([
        [
          '{"network.interface.name":"eth0","network.io.direction":"receive","network.transport":"tcp","network.type":"ipv4"}',
          1500,
        ],
        [
          '{"network.interface.name":"eth0","network.io.direction":"transmit","network.transport":"tcp","network.type":"ipv4"}',
          500,
        ],
      ]);
    }
    // The same agent (pipeline, host) restarted keeps its service.instance.id.
    expect(new Set(ids).size).toBe(1);
  }, 60_000);

  it('refuses to start when the variables ask for a protocol it does not speak', async () => {
    const data = join(dir, 'one.jsonl');
    writeFileSync(data, `${JSON.stringify(flowRecord({ interfaceName: 'eth0' }))}\n`);
    const cli = new Cli(['run', pipeline('grpc', data), '--no-status-socket', '--log-level', 'error'], {
      OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: '',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
    });
    expect(await cli.exited).toEqual({ code: 1, signal: null });
    expect(cli.stderr).toBe(
      "build sinks.metrics (otel_metrics): otel_metrics sink: OTEL_EXPORTER_OTLP_PROTOCOL is 'grpc', which rxflow cannot push; set it to http/protobuf or http/json\n",
    );
  }, 30_000);
});
