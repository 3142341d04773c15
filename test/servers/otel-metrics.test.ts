import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { Subject } from 'rxjs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ComponentContext } from '../../src/component.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import type { FlowBatch } from '../../src/records/flow.js';
import { SinkError } from '../../src/sinks/errors.js';
import otelMetricsModule from '../../src/sinks/otel_metrics.js';
import { describeWith } from '../fixtures/privilege.js';
import { flowRecord } from '../fixtures/records.js';

/**
 * The otel_metrics sink's Prometheus endpoint, scraped over HTTP and checked with promtool, and
 * its OTLP/HTTP push, received by a small local server.
 */

/** Known batches: eth0 tcp both ways, eth1 udp, icmp and icmpv6 and GRE (other), and a third interface. */
const BATCHES: FlowBatch[] = [
  [
    flowRecord({ interfaceName: 'eth0', octetDeltaCount: 1500, packetDeltaCount: 3 }),
    flowRecord({ interfaceName: 'eth0', octetDeltaCount: 500, packetDeltaCount: 2, flowDirection: 1 }),
    flowRecord({ interfaceName: 'eth0', octetDeltaCount: 100, packetDeltaCount: 1 }),
  ],
  [
    flowRecord({ interfaceName: 'eth1', protocolIdentifier: 17, octetDeltaCount: 64, packetDeltaCount: 1 }),
    flowRecord({
      interfaceName: 'eth1',
      protocolIdentifier: 1,
      octetDeltaCount: 84,
      packetDeltaCount: 1,
      flowDirection: 1,
    }),
    flowRecord({ interfaceName: 'eth0', protocolIdentifier: 58, octetDeltaCount: 104, packetDeltaCount: 1 }),
    flowRecord({
      interfaceName: 'eth0',
      protocolIdentifier: 47,
      octetDeltaCount: 1000,
      packetDeltaCount: 10,
    }),
  ],
  // max_interfaces is 2 below: eth2 and the unnamed ifindex 7 count as "other".
  [
    flowRecord({ interfaceName: 'eth2', octetDeltaCount: 40, packetDeltaCount: 1 }),
    flowRecord({ ingressInterface: 7, octetDeltaCount: 60, packetDeltaCount: 1 }),
    flowRecord({ interfaceName: 'eth0', octetDeltaCount: 900, packetDeltaCount: 6 }),
  ],
];

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function promtool(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
    child.stdin.end(text);
  });
}

/** Samples of a Prometheus text exposition: `name{a="x",b="y"}` -> value. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels = [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
      .map(([, k, v]) => `${k}=${v}`)
      .sort()
      .join(',');
    out.set(`${m[1]}{${labels}}`, Number(m[3]));
  }
  return out;
}

function contextWith(ledger: Ledger): ComponentContext {
  return {
    id: 'metrics',
    logger: silentLogger(),
    ledger,
    counters: ledger.stage('metrics', 'otel_metrics', 'sink'),
  };
}

const closers: (() => Promise<void>)[] = [];

/** A sink with only the Prometheus endpoint, on a free port, reading `input`. */
async function prometheusSink(): Promise<{ port: number; input: Subject<FlowBatch> }> {
  const port = await freePort();
  const sink = otelMetricsModule.build(
    { prometheus_port: port, prometheus_host: '127.0.0.1' },
    contextWith(new Ledger()),
  );
  closers.push(() => sink.close());
  const input = new Subject<FlowBatch>();
  void sink.consume(input);
  await waitFor('the sink to subscribe', () => Promise.resolve(input.observed ? true : undefined));
  return { port, input };
}
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
  vi.unstubAllEnvs();
});

describeWith({ commands: ['promtool'] }, 'otel_metrics sink, Prometheus endpoint', () => {
  it('serves exact flow counters and ledger counts, and promtool finds nothing wrong', async () => {
    // A resource attribute with what Prometheus label values must escape: quotes and a backslash.
    vi.stubEnv('OTEL_SERVICE_NAME', '');
    vi.stubEnv('OTEL_RESOURCE_ATTRIBUTES', 'deployment.environment.name=lab,rack=r%2C%3D%22q%22%5C');
    const port = await freePort();
    const ledger = new Ledger();
    // Stages upstream of the sink, as a pipeline would have them.
    const source = ledger.stage('flows', 'map_tracer', 'source');
    source.addReceived(20);
    source.addSent(10);
    source.addDropped('kernel_map_full', 4);
    const limiter = ledger.stage('limit', 'limit_capacity');
    limiter.addReceived(10);
    limiter.addSent(10);
    limiter.addDropped('limiter_dropped', 0);
    // What the limiter hands the sink, as the pipeline counts it.
    ledger.addDelivered(10);
    const sink = otelMetricsModule.build(
      { prometheus_port: port, prometheus_host: '127.0.0.1', max_interfaces: 2 },
      contextWith(ledger),
    );
    closers.push(() => sink.close());
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    // The sink reads its input once its endpoint is up, as the pipeline waits for it to.
    await waitFor('the sink to subscribe', () => Promise.resolve(input.observed ? true : undefined));
    for (const b of BATCHES) input.next(b);

    const url = `http://127.0.0.1:${port}/metrics`;
    const text = await waitFor('the metrics endpoint', async () => {
      const res = await fetch(url);
      return res.ok ? res.text() : undefined;
    });
    const check = await promtool(text);
    expect(check).toEqual({ code: 0, output: '' });

    // Units ride along on the # UNIT lines; the resource is target_info's labels.
    expect(text).toMatch(/^# UNIT rxflow_flow_bytes_total By$/m);
    expect(text).toMatch(/^# UNIT rxflow_flow_packets_total \{packet\}$/m);
    expect(text).toMatch(/^# UNIT rxflow_component_received_total \{record\}$/m);
    expect(text).toMatch(/^target_info\{.*service_name="rxflow",.*\} 1$/m);
    expect(text).toMatch(/^target_info\{.*deployment_environment_name="lab",.*\} 1$/m);
    expect(text).toContain('rack="r,=\\"q\\"\\\\"');
    expect(text).toMatch(/^target_info\{.*service_instance_id="[0-9a-f-]{36}".*\} 1$/m);

    const got = samples(text);
    const flowSeries = [...got]
      .filter(([k]) => k.startsWith('rxflow_flow_'))
      .sort(([a], [b]) => a.localeCompare(b));
    expect(Object.fromEntries(flowSeries)).toEqual({
      'rxflow_flow_bytes_total{network_interface_name=eth0,network_io_direction=transmit,network_transport=tcp,network_type=ipv4}': 500,
      'rxflow_flow_bytes_total{network_interface_name=eth1,network_io_direction=transmit,network_transport=icmp,network_type=ipv4}': 84,
      'rxflow_flow_bytes_total{network_interface_name=eth0,network_io_direction=receive,network_transport=icmpv6,network_type=ipv4}': 104,
      'rxflow_flow_bytes_total{network_interface_name=eth0,network_io_direction=receive,network_transport=other,network_type=ipv4}': 1000,
      'rxflow_flow_bytes_total{network_interface_name=eth0,network_io_direction=receive,network_transport=tcp,network_type=ipv4}': 2500,
      'rxflow_flow_bytes_total{network_interface_name=eth1,network_io_direction=receive,network_transport=udp,network_type=ipv4}': 64,
      'rxflow_flow_bytes_total{network_interface_name=other,network_io_direction=receive,network_transport=tcp,network_type=ipv4}': 100,
      'rxflow_flow_packets_total{network_interface_name=eth0,network_io_direction=transmit,network_transport=tcp,network_type=ipv4}': 2,
      'rxflow_flow_packets_total{network_interface_name=eth1,network_io_direction=transmit,network_transport=icmp,network_type=ipv4}': 1,
      'rxflow_flow_packets_total{network_interface_name=eth0,network_io_direction=receive,network_transport=icmpv6,network_type=ipv4}': 1,
      'rxflow_flow_packets_total{network_interface_name=eth0,network_io_direction=receive,network_transport=other,network_type=ipv4}': 10,
      'rxflow_flow_packets_total{network_interface_name=eth0,network_io_direction=receive,network_transport=tcp,network_type=ipv4}': 10,
      'rxflow_flow_packets_total{network_interface_name=eth1,network_io_direction=receive,network_transport=udp,network_type=ipv4}': 1,
      'rxflow_flow_packets_total{network_interface_name=other,network_io_direction=receive,network_transport=tcp,network_type=ipv4}': 2,
      'rxflow_flow_records_total{network_interface_name=eth0,network_io_direction=transmit,network_transport=tcp,network_type=ipv4}': 1,
      'rxflow_flow_records_total{network_interface_name=eth1,network_io_direction=transmit,network_transport=icmp,network_type=ipv4}': 1,
      'rxflow_flow_records_total{network_interface_name=eth0,network_io_direction=receive,network_transport=icmpv6,network_type=ipv4}': 1,
      'rxflow_flow_records_total{network_interface_name=eth0,network_io_direction=receive,network_transport=other,network_type=ipv4}': 1,
      'rxflow_flow_records_total{network_interface_name=eth0,network_io_direction=receive,network_transport=tcp,network_type=ipv4}': 3,
      'rxflow_flow_records_total{network_interface_name=eth1,network_io_direction=receive,network_transport=udp,network_type=ipv4}': 1,
      'rxflow_flow_records_total{network_interface_name=other,network_io_direction=receive,network_transport=tcp,network_type=ipv4}': 2,
    });

    // Every stage's counts equal the ledger's, read at scrape time.
    const totals = ledger.totals();
    for (const s of totals.stages) {
      const labels = `component=${s.id},type=${s.type}`;
      expect(got.get(`rxflow_component_received_total{${labels}}`)).toBe(s.received);
      expect(got.get(`rxflow_component_sent_total{${labels}}`)).toBe(s.sent);
      expect(got.get(`rxflow_component_in_flight{${labels}}`)).toBe(s.inFlight);
      for (const [reason, n] of Object.entries(s.dropped)) {
        expect(
          got.get(`rxflow_component_dropped_total{component=${s.id},reason=${reason},type=${s.type}}`),
        ).toBe(n);
      }
    }
    expect(got.get('rxflow_component_received_total{component=metrics,type=otel_metrics}')).toBe(10);
    expect(got.get('rxflow_component_sent_total{component=metrics,type=otel_metrics}')).toBe(10);
    expect(
      got.get('rxflow_component_dropped_total{component=flows,reason=kernel_map_full,type=map_tracer}'),
    ).toBe(4);
    expect({
      seen: got.get('rxflow_ledger_seen_total{}'),
      delivered: got.get('rxflow_ledger_delivered_total{}'),
      dropped: got.get('rxflow_ledger_dropped_total{reason=kernel_map_full}'),
      inFlight: got.get('rxflow_ledger_in_flight{}'),
      handed: got.get('rxflow_sink_handed_total{sink=metrics,type=otel_metrics}'),
      exported: got.get('rxflow_sink_exported_total{sink=metrics,type=otel_metrics}'),
      sinkInFlight: got.get('rxflow_sink_in_flight{sink=metrics,type=otel_metrics}'),
    }).toEqual({
      seen: 20,
      delivered: 10,
      dropped: 4,
      inFlight: totals.inFlight,
      handed: 10,
      exported: 10,
      sinkInFlight: 0,
    });
    expect(got.has('rxflow_ledger_exported_total{}')).toBe(false);
    expect(totals).toMatchObject({
      seen: 20,
      delivered: 10,
      dropped: { kernel_map_full: 4 },
      sinks: [{ id: 'metrics', handed: 10, exported: 10, droppedTotal: 0, inFlight: 0 }],
    });

    // Counters read the ledger at collection time: a later drop shows in the next scrape.
    limiter.addDropped('limiter_dropped', 3);
    const again = samples(await (await fetch(url)).text());
    expect(
      again.get('rxflow_component_dropped_total{component=limit,reason=limiter_dropped,type=limit_capacity}'),
    ).toBe(3);
    expect(again.get('rxflow_ledger_dropped_total{reason=limiter_dropped}')).toBe(3);

    input.complete();
    await consumed;
    await sink.close();
    await expect(fetch(url)).rejects.toThrow();
  });

  it('fails consume() before reading its input when its port is taken', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => blocker.close(() => r())));
    const port = (blocker.address() as net.AddressInfo).port;
    const ledger = new Ledger();
    const context = contextWith(ledger);
    const sink = otelMetricsModule.build({ prometheus_port: port, prometheus_host: '127.0.0.1' }, context);
    const input = new Subject<FlowBatch>();
    const failure = await sink.consume(input).then(
      () => undefined,
      (err: unknown) => err as SinkError,
    );
    expect(failure).toBeInstanceOf(SinkError);
    expect(failure).toMatchObject({
      code: 'ELISTEN',
      message: `otel_metrics sink: cannot listen on 127.0.0.1:${port}: listen EADDRINUSE: address already in use 127.0.0.1:${port}; pick another prometheus_port or prometheus_host, or stop what holds it`,
    });
    expect(input.observed).toBe(false);
    await sink.close();
  });

  it('counts dropped packets and bytes by the kernel reason of the records, one series per reason', async () => {
    const { port, input } = await prometheusSink();
    const dropped = (packets: number, bytes: number, reason: string) =>
      flowRecord({ droppedPacketDeltaCount: packets, droppedOctetDeltaCount: bytes, dropReason: reason });
    input.next([
      dropped(40, 5680, 'NO_SOCKET'),
      flowRecord({ packetDeltaCount: 9 }),
      dropped(30, 4260, 'NETFILTER_DROP'),
    ]);
    input.next([dropped(5, 370, 'NO_SOCKET')]);
    const url = `http://127.0.0.1:${port}/metrics`;
    const text = await waitFor('the drop counters', async () => {
      const t = await (await fetch(url)).text();
      return t.includes('rxflow_flow_dropped_packets_total{') ? t : undefined;
    });
    expect(await promtool(text)).toEqual({ code: 0, output: '' });
    const got = samples(text);
    expect(Object.fromEntries([...got].filter(([k]) => k.startsWith('rxflow_flow_dropped_')))).toEqual({
      'rxflow_flow_dropped_packets_total{rxflow_drop_reason=NO_SOCKET}': 45,
      'rxflow_flow_dropped_packets_total{rxflow_drop_reason=NETFILTER_DROP}': 30,
      'rxflow_flow_dropped_bytes_total{rxflow_drop_reason=NO_SOCKET}': 6050,
      'rxflow_flow_dropped_bytes_total{rxflow_drop_reason=NETFILTER_DROP}': 4260,
    });
  });

  it('puts the handshake and smoothed RTTs of the records in one histogram, by kind', async () => {
    const { port, input } = await prometheusSink();
    input.next([
      flowRecord({ tcpHandshakeRttMicroseconds: 20_400 }),
      flowRecord({ tcpHandshakeRttMicroseconds: 300, tcpSmoothedRttMicroseconds: 21_000 }),
      flowRecord({ packetDeltaCount: 9 }),
    ]);
    input.next([flowRecord({ tcpSmoothedRttMicroseconds: 2_000_000 })]);
    const url = `http://127.0.0.1:${port}/metrics`;
    const text = await waitFor('the rtt histogram', async () => {
      const t = await (await fetch(url)).text();
      return t.includes('rxflow_flow_tcp_rtt_count{') ? t : undefined;
    });
    expect(await promtool(text)).toEqual({ code: 0, output: '' });
    const got = samples(text);
    const rtt = (name: string) =>
      Object.fromEntries([...got].filter(([k]) => k.startsWith(`rxflow_flow_tcp_rtt_${name}`)));
    expect(rtt('count')).toEqual({
      'rxflow_flow_tcp_rtt_count{rxflow_rtt_kind=handshake}': 2,
      'rxflow_flow_tcp_rtt_count{rxflow_rtt_kind=smoothed}': 2,
    });
    expect(rtt('sum')['rxflow_flow_tcp_rtt_sum{rxflow_rtt_kind=handshake}']).toBeCloseTo(0.0207, 9);
    expect(rtt('sum')['rxflow_flow_tcp_rtt_sum{rxflow_rtt_kind=smoothed}']).toBeCloseTo(2.021, 9);
    const buckets = rtt('bucket');
    expect(buckets['rxflow_flow_tcp_rtt_bucket{le=0.00025,rxflow_rtt_kind=handshake}']).toBe(0);
    expect(buckets['rxflow_flow_tcp_rtt_bucket{le=0.0005,rxflow_rtt_kind=handshake}']).toBe(1);
    expect(buckets['rxflow_flow_tcp_rtt_bucket{le=0.025,rxflow_rtt_kind=handshake}']).toBe(2);
    expect(buckets['rxflow_flow_tcp_rtt_bucket{le=1,rxflow_rtt_kind=smoothed}']).toBe(1);
    expect(buckets['rxflow_flow_tcp_rtt_bucket{le=2.5,rxflow_rtt_kind=smoothed}']).toBe(2);
  });

  it('puts the DNS latencies of the records in a histogram, by response code name', async () => {
    const { port, input } = await prometheusSink();
    input.next([
      flowRecord({ dnsLatencyMicroseconds: 20_400, dnsTransactionId: 1, dnsResponseCode: 0 }),
      flowRecord({ dnsLatencyMicroseconds: 300, dnsTransactionId: 2, dnsResponseCode: 3 }),
      flowRecord({ packetDeltaCount: 9 }),
    ]);
    input.next([flowRecord({ dnsLatencyMicroseconds: 2_000_000, dnsTransactionId: 3, dnsResponseCode: 3 })]);
    input.next([flowRecord({ dnsLatencyMicroseconds: 5_000, dnsTransactionId: 4, dnsResponseCode: 2 })]);
    const url = `http://127.0.0.1:${port}/metrics`;
    const text = await waitFor('the dns histogram', async () => {
      const t = await (await fetch(url)).text();
      return samples(t).has('rxflow_flow_dns_latency_count{rxflow_dns_rcode=SERVFAIL}') ? t : undefined;
    });
    expect(await promtool(text)).toEqual({ code: 0, output: '' });
    const got = samples(text);
    const dns = (name: string) =>
      Object.fromEntries([...got].filter(([k]) => k.startsWith(`rxflow_flow_dns_latency_${name}`)));
    expect(dns('count')).toEqual({
      'rxflow_flow_dns_latency_count{rxflow_dns_rcode=NOERROR}': 1,
      'rxflow_flow_dns_latency_count{rxflow_dns_rcode=NXDOMAIN}': 2,
      'rxflow_flow_dns_latency_count{rxflow_dns_rcode=SERVFAIL}': 1,
    });
    expect(dns('sum')['rxflow_flow_dns_latency_sum{rxflow_dns_rcode=NXDOMAIN}']).toBeCloseTo(2.0003, 9);
    const buckets = dns('bucket');
    expect(buckets['rxflow_flow_dns_latency_bucket{le=0.0005,rxflow_dns_rcode=NXDOMAIN}']).toBe(1);
    expect(buckets['rxflow_flow_dns_latency_bucket{le=2.5,rxflow_dns_rcode=NXDOMAIN}']).toBe(2);
    expect(buckets['rxflow_flow_dns_latency_bucket{le=0.025,rxflow_dns_rcode=NOERROR}']).toBe(1);
  });
});

describe('otel_metrics sink, OTLP/HTTP push', () => {
  it('pushes the flow and ledger metrics to the collector URL, as JSON when the variables ask for it', async () => {
    vi.stubEnv('OTEL_EXPORTER_OTLP_METRICS_PROTOCOL', 'http/json');
    const bodies: { path: string; contentType: string; body: Buffer }[] = [];
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        bodies.push({
          path: req.url ?? '',
          contentType: req.headers['content-type'] ?? '',
          body: Buffer.concat(chunks),
        });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => server.close(() => r())));
    const port = (server.address() as net.AddressInfo).port;

    const ledger = new Ledger();
    const sink = otelMetricsModule.build(
      { prometheus_port: 0, otlp_endpoint: `http://127.0.0.1:${port}/v1/metrics`, otlp_interval_ms: 200 },
      contextWith(ledger),
    );
    closers.push(() => sink.close());
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    // The sink reads its input once its endpoint is up, as the pipeline waits for it to.
    await waitFor('the sink to subscribe', () => Promise.resolve(input.observed ? true : undefined));
    input.next(BATCHES[0]!);

    const first = await waitFor('an OTLP export', () => Promise.resolve(bodies[0]));
    expect(first.path).toBe('/v1/metrics');
    expect(first.contentType).toBe('application/json');
    const names = (body: Buffer): string[] => {
      const json = JSON.parse(body.toString('utf8')) as {
        resourceMetrics: { scopeMetrics: { metrics: { name: string }[] }[] }[];
      };
      return json.resourceMetrics
        .flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics.map((m) => m.name)))
        .sort();
    };
    expect(names(first.body)).toEqual(
      expect.arrayContaining([
        'rxflow.flow.bytes',
        'rxflow.flow.packets',
        'rxflow.component.received',
        'rxflow.ledger.seen',
      ]),
    );

    // The last push on completion carries the exact sums.
    input.complete();
    await consumed;
    await sink.close();
    const last = JSON.parse(bodies[bodies.length - 1]!.body.toString('utf8')) as {
      resourceMetrics: {
        scopeMetrics: {
          metrics: {
            name: string;
            sum?: {
              dataPoints: {
                asInt?: string;
                asDouble?: number;
                attributes: { key: string; value: { stringValue: string } }[];
              }[];
            };
          }[];
        }[];
      }[];
    };
    const bytes = last.resourceMetrics
      .flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics))
      .find((m) => m.name === 'rxflow.flow.bytes')!;
    const points = bytes.sum!.dataPoints.map((p) => ({
      value: Number(p.asDouble ?? p.asInt),
      attributes: Object.fromEntries(p.attributes.map((a) => [a.key, a.value.stringValue])),
    }));
    expect(points.sort((a, b) => a.value - b.value)).toEqual([
      {
        value: 500,
        attributes: {
          'network.io.direction': 'transmit',
          'network.transport': 'tcp',
          'network.type': 'ipv4',
          'network.interface.name': 'eth0',
        },
      },
      {
        value: 1600,
        attributes: {
          'network.io.direction': 'receive',
          'network.transport': 'tcp',
          'network.type': 'ipv4',
          'network.interface.name': 'eth0',
        },
      },
    ]);
  });
});
