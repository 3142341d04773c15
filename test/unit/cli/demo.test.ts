import { describe, expect, it } from 'vitest';
import { demoFrame, finalSummary, type DemoView } from '../../../src/cli/demo.js';

const VIEW: DemoView = {
  uptimeMs: 12_000,
  startupMs: 640,
  kafkaBootstrap: '127.0.0.1:39092',
  logs: ['warn: kafka sink: cannot write to the brokers'],
  status: {
    pipeline: 'demo',
    file: 'pipelines/demo.yaml',
    pid: 1,
    state: 'running',
    ready: true,
    startedAt: '2026-01-01T00:00:00.000Z',
    uptimeMs: 12_000,
    startupMs: 640,
    ledger: {
      seen: 40,
      merged: 0,
      dropped: {},
      droppedTotal: 0,
      inFlight: 0,
      delivered: 40,
      sinks: [
        {
          id: 'kafka',
          type: 'kafka',
          handed: 40,
          exported: 35,
          dropped: { sink_failed: 2 },
          droppedTotal: 2,
          inFlight: 3,
        },
        { id: 'top', type: 'top', handed: 40, exported: 40, dropped: {}, droppedTotal: 0, inFlight: 0 },
      ],
    },
    health: { status: 'healthy', degraded: [] },
    components: [
      {
        id: 'flows',
        type: 'ebpf_flows',
        kind: 'source',
        received: 40,
        sent: 40,
        dropped: {},
        droppedTotal: 0,
        merged: 0,
        inFlight: 0,
      },
      {
        id: 'kafka',
        type: 'kafka',
        kind: 'sink',
        received: 40,
        sent: 35,
        dropped: { sink_failed: 2 },
        droppedTotal: 2,
        merged: 0,
        inFlight: 3,
      },
      {
        id: 'top',
        type: 'top',
        kind: 'sink',
        received: 40,
        sent: 40,
        dropped: {},
        droppedTotal: 0,
        merged: 0,
        inFlight: 0,
      },
    ],
  },
  top: {
    windowMs: 10_000,
    windowFlows: 1,
    windowPackets: 2_000,
    windowBytes: 2_400_000,
    totalRecords: 40,
    totalPackets: 9_000,
    totalBytes: 10_800_000,
    flows: [
      {
        ipVersion: 4,
        source: '192.0.2.1',
        destination: '192.0.2.2',
        sourcePort: 40001,
        destinationPort: 9001,
        protocol: 17,
        direction: 0,
        interface: 'rxdemo-s',
        packets: 2_000,
        bytes: 2_400_000,
        bytesPerSecond: 240_000,
      },
    ],
  },
};

describe('demo table', () => {
  it('shows the network, Kafka, the top flows and the loss ledger with every component', () => {
    expect(demoFrame(VIEW, true)).toEqual([
      'rxflow demo, up 12s  (Ctrl-C stops it and removes everything)',
      'network   rxdemo-cli 192.0.2.1 2001:db8:d::1  <->  rxdemo-srv 192.0.2.2 2001:db8:d::2',
      'pipeline  pipelines/demo.yaml: flows counted on rxdemo-s in rxdemo-srv, ready in 640 ms',
      'kafka     35 records written to topic flows at 127.0.0.1:39092',
      '',
      'top flows by bytes (sink top), last 10s: 1 flow, 2,000 packets, 2.40 MB',
      'SOURCE     SPORT  DESTINATION  DPORT  PROTO  DIR      IFACE     PACKETS    BYTES         RATE',
      '192.0.2.1  40001  192.0.2.2     9001  udp    ingress  rxdemo-s    2,000  2.40 MB  1.92 Mbit/s',
      '',
      'loss ledger  seen 40  written to kafka 35  dropped 2 (sink_failed 2)  merged 0  in flight 3',
      'COMPONENT  TYPE        KIND    RECEIVED  SENT  DROPPED  MERGED  IN FLIGHT',
      'flows      ebpf_flows  source        40    40        0       0          0',
      'kafka      kafka       sink          40    35        2       0          3',
      'top        top         sink          40    40        0       0          0',
      '',
      'log: warn: kafka sink: cannot write to the brokers',
    ]);
  });

  it('says when no flow arrived yet, and leaves the Ctrl-C hint out of plain output', () => {
    const frame = demoFrame({ ...VIEW, logs: [], top: { ...VIEW.top!, flows: [] } }, false);
    expect(frame[0]).toBe('rxflow demo, up 12s');
    expect(frame.slice(5, 8)).toEqual([
      'top flows by bytes (sink top), last 10s: 1 flow, 2,000 packets, 2.40 MB',
      'SOURCE  SPORT  DESTINATION  DPORT  PROTO  DIR  IFACE  PACKETS  BYTES  RATE',
      '(no flows yet: the kernel map is read every second)',
    ]);
  });

  it('sums up the run: records, packets and bytes counted, Kafka, the ledger and the last top table', () => {
    expect(finalSummary(VIEW, 30_000).split('\n').slice(0, 6)).toEqual([
      '',
      'rxflow demo ran 30s; the pipeline drained (kernel map read a last time, sinks flushed)',
      'counted   40 flow records: 9,000 packets, 10.8 MB',
      'kafka     35 records written to topic flows',
      'ledger    seen 40  written to kafka 35  dropped 2 (sink_failed 2)  in flight 3',
      '',
    ]);
  });
});
