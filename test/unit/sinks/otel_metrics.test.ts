import type { Attributes } from '@opentelemetry/api';
import { MetricReader, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { from } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowRecord } from '../../../src/records/flow.js';
import otelMetricsModule, { FlowTally, OtelMetricsSink } from '../../../src/sinks/otel_metrics.js';
import { flowRecord } from '../../fixtures/records.js';

class RecordingCounter {
  readonly calls: [number, Attributes | undefined][] = [];
  add(value: number, attributes?: Attributes): void {
    this.calls.push([value, attributes]);
  }
}

function tallyOf(maxInterfaces: number) {
  const tally = new FlowTally(maxInterfaces);
  const bytes = new RecordingCounter();
  const packets = new RecordingCounter();
  const records = new RecordingCounter();
  const add = (batch: FlowRecord[]): number => tally.add(batch, bytes, packets, records);
  return { add, bytes, packets, records };
}

describe('FlowTally', () => {
  it('adds once per attribute set per batch, with the batch sums, however many records', () => {
    const { add, bytes, packets, records } = tallyOf(8);
    const batch = Array.from({ length: 1000 }, (_, i) =>
      flowRecord({
        interfaceName: 'eth0',
        flowDirection: (i % 2) as 0 | 1,
        octetDeltaCount: i,
        packetDeltaCount: 1,
      }),
    );
    add(batch);
    const ingress = {
      'network.io.direction': 'receive',
      'network.transport': 'tcp',
      'network.type': 'ipv4',
      'network.interface.name': 'eth0',
    };
    const egress = { ...ingress, 'network.io.direction': 'transmit' };
    // Sum of even i below 1000 and of odd i.
    expect(bytes.calls).toEqual([
      [249_500, ingress],
      [250_000, egress],
    ]);
    expect(packets.calls).toEqual([
      [500, ingress],
      [500, egress],
    ]);
    expect(records.calls).toEqual([
      [500, ingress],
      [500, egress],
    ]);
    // The next batch starts from zero.
    add([flowRecord({ interfaceName: 'eth0', octetDeltaCount: 7, packetDeltaCount: 1 })]);
    expect(bytes.calls[2]).toEqual([7, ingress]);
  });

  it('names transports tcp/udp/icmp/icmpv6/other and directions receive/transmit', () => {
    const { add, records } = tallyOf(8);
    add(
      [6, 17, 1, 58, 47, 132].map((p, i) =>
        flowRecord({ protocolIdentifier: p, interfaceName: 'x', flowDirection: (i % 2) as 0 | 1 }),
      ),
    );
    expect(
      records.calls.map(
        ([, a]) => `${String(a!['network.transport'])}/${String(a!['network.io.direction'])}`,
      ),
    ).toEqual([
      'tcp/receive',
      'udp/transmit',
      'icmp/receive',
      'icmpv6/transmit',
      'other/receive',
      'other/transmit',
    ]);
  });

  it('sets network.type ipv4 or ipv6 by ipVersion, and none on layer-2 flows', () => {
    const { add, packets } = tallyOf(8);
    add([
      flowRecord({ interfaceName: 'x', ipVersion: 6, packetDeltaCount: 2 }),
      flowRecord({ interfaceName: 'x', ipVersion: 4, packetDeltaCount: 3 }),
      flowRecord({ interfaceName: 'x', ipVersion: 0, protocolIdentifier: 0, packetDeltaCount: 5 }),
      flowRecord({ interfaceName: 'x', ipVersion: 6, packetDeltaCount: 7 }),
    ]);
    expect(packets.calls).toEqual([
      [
        9,
        {
          'network.io.direction': 'receive',
          'network.transport': 'tcp',
          'network.type': 'ipv6',
          'network.interface.name': 'x',
        },
      ],
      [
        3,
        {
          'network.io.direction': 'receive',
          'network.transport': 'tcp',
          'network.type': 'ipv4',
          'network.interface.name': 'x',
        },
      ],
      [5, { 'network.io.direction': 'receive', 'network.transport': 'other', 'network.interface.name': 'x' }],
    ]);
  });

  it('gives the first max_interfaces interfaces their own series and counts the rest as "other"', () => {
    const { add, records } = tallyOf(2);
    add([
      flowRecord({ interfaceName: 'eth0' }),
      flowRecord({ ingressInterface: 9 }),
      flowRecord({ interfaceName: 'eth1' }),
    ]);
    add([
      flowRecord({ interfaceName: 'eth2' }),
      flowRecord({ ingressInterface: 9 }),
      flowRecord({ interfaceName: 'eth0' }),
    ]);
    expect(records.calls.map(([n, a]) => [n, a!['network.interface.name']])).toEqual([
      [1, 'eth0'],
      [1, '9'],
      [1, 'other'],
      [1, 'other'],
      [1, '9'],
      [1, 'eth0'],
    ]);
  });
});

class TestReader extends MetricReader {
  protected onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
  protected onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

function points(metrics: ResourceMetrics, name: string): { value: number; attributes: Attributes }[] {
  const metric = metrics.scopeMetrics.flatMap((s) => s.metrics).find((m) => m.descriptor.name === name);
  return (metric?.dataPoints ?? []).map((p) => ({ value: p.value as number, attributes: p.attributes }));
}

describe('otel_metrics sink', () => {
  it('reads every component of the ledger at collection time', async () => {
    const ledger = new Ledger();
    const source = ledger.stage('src', 'replay', 'source');
    source.addReceived(5);
    const reader = new TestReader();
    const sink = new OtelMetricsSink(
      { prometheus_port: 0 },
      { id: 'm', logger: silentLogger(), ledger, counters: ledger.stage('m', 'otel_metrics', 'sink') },
      { readers: [reader] },
    );
    await sink.consume(
      from([[flowRecord({ interfaceName: 'lo', octetDeltaCount: 10, packetDeltaCount: 1 })]]),
    );
    source.addDropped('sampled_out', 2);
    const { resourceMetrics } = await reader.collect();
    expect(points(resourceMetrics, 'rxflow.component.received')).toEqual([
      { value: 5, attributes: { component: 'src', type: 'replay' } },
      { value: 1, attributes: { component: 'm', type: 'otel_metrics' } },
    ]);
    expect(points(resourceMetrics, 'rxflow.component.dropped')).toEqual([
      { value: 2, attributes: { component: 'src', type: 'replay', reason: 'sampled_out' } },
    ]);
    expect(points(resourceMetrics, 'rxflow.ledger.dropped')).toEqual([
      { value: 2, attributes: { reason: 'sampled_out' } },
    ]);
    expect(points(resourceMetrics, 'rxflow.flow.bytes')).toEqual([
      {
        value: 10,
        attributes: {
          'network.io.direction': 'receive',
          'network.transport': 'tcp',
          'network.type': 'ipv4',
          'network.interface.name': 'lo',
        },
      },
    ]);
    const closing = sink.close();
    expect(sink.close()).toBe(closing);
    await closing;
  });

  it('has a strict schema and refuses a config that exports nowhere', () => {
    const registry = new ComponentRegistry([otelMetricsModule]);
    const ok = registry.validate(otelMetricsModule, {});
    expect(ok).toMatchObject({
      ok: true,
      config: {
        prometheus_port: 9464,
        prometheus_host: '127.0.0.1',
        prometheus_path: '/metrics',
        max_interfaces: 64,
      },
    });
    expect(
      registry.validate(otelMetricsModule, otelMetricsModule.example as unknown as Record<string, unknown>)
        .ok,
    ).toBe(true);
    expect(registry.validate(otelMetricsModule, { port: 1 }).ok).toBe(false);
    const ledger = new Ledger();
    expect(() =>
      otelMetricsModule.build(
        { prometheus_port: 0 },
        { id: 'm', logger: silentLogger(), ledger, counters: ledger.stage('m', 'otel_metrics') },
      ),
    ).toThrow(
      'otel_metrics sink: prometheus_port is 0 and there is no otlp_endpoint, so metrics would go nowhere; set one of them',
    );
  });
});
