/**
 * Kafka end to end on real traffic: a pipeline written in YAML (parsePipeline + buildPipeline on
 * the default registry) with the ebpf_flows source on the server's end of a veth pair and the
 * kafka sink writing to librdkafka's mock cluster. Exact UDP, TCP and ping traffic crosses the
 * link; stop() drains the kernel map into Kafka; the topic, read back with kcat, must hold one
 * flow per 5-tuple and direction whose packets and bytes are the traffic sent, under the IPFIX
 * names of src/records/flow.ts, in JSON and in protobuf decoded with the committed flow.proto.
 *
 * No decorate stage: it resolves interface indexes in the agent's own namespace, and the
 * interfaces here live in another one.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { KafkaMockCluster } from '../../src/devtools/kafka-mock.js';
import type { LedgerTotals } from '../../src/ledger.js';
import { buildPipeline } from '../../src/pipeline/build.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { readWithKcat, startKafkaMock } from '../fixtures/kafka.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { REQUIRED_FLOW_FIELDS } from '../fixtures/records.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import {
  icmpFrameBytes,
  ping,
  sendTcp,
  sendUdp,
  startUdpSink,
  udpFrameBytes,
  type TcpResult,
} from '../fixtures/traffic.js';
import { testObject } from './datapath-helpers.js';

const PROTO = new URL('../../src/sinks/flow.proto', import.meta.url);
const protoRoot = protobuf.parse(fs.readFileSync(PROTO, 'utf8'), { keepCase: true }).root;
const FlowBatchType = protoRoot.lookupType('rxflow.v1.FlowBatch');

/** Fields every flow of the map carries, IPv4 and IPv6 alike: names of src/records/flow.ts. */
const COMMON = REQUIRED_FLOW_FIELDS;
const V4: (keyof FlowRecord)[] = ['sourceIPv4Address', 'destinationIPv4Address'];
const V6: (keyof FlowRecord)[] = ['sourceIPv6Address', 'destinationIPv6Address'];
const ICMP4: (keyof FlowRecord)[] = ['icmpTypeIPv4', 'icmpCodeIPv4'];
const ICMP6: (keyof FlowRecord)[] = ['icmpTypeIPv6', 'icmpCodeIPv6'];

/** The exact field names a flow of this family and protocol has, sorted. */
function fieldsOf(r: FlowRecord): string[] {
  const v6 = r.ipVersion === 6;
  const icmp = r.protocolIdentifier === (v6 ? 58 : 1) ? (v6 ? ICMP6 : ICMP4) : [];
  // Every map record also has its wire octets, end reason and the interface of its direction; the
  // source attaches in the server's namespace, not the agent's: every record says so.
  const map: (keyof FlowRecord)[] = [
    'layer2OctetDeltaCount',
    'flowEndReason',
    r.flowDirection === 1 ? 'egressInterface' : 'ingressInterface',
    'networkNamespace',
  ];
  return [...COMMON, ...map, ...(v6 ? V6 : V4), ...icmp].sort();
}

/** A flow by its 5-tuple and direction; ICMP flows by type, which the kernel keys them on. */
function flowId(r: FlowRecord): string {
  const src = r.sourceIPv4Address ?? r.sourceIPv6Address;
  const dst = r.destinationIPv4Address ?? r.destinationIPv6Address;
  const icmpType = r.icmpTypeIPv4 ?? r.icmpTypeIPv6;
  const ports =
    icmpType === undefined ? `${r.sourceTransportPort}>${r.destinationTransportPort}` : `type ${icmpType}`;
  return `${r.flowDirection === 0 ? 'in' : 'out'} ${r.protocolIdentifier} ${src} ${dst} ${ports}`;
}

type Totals = Record<string, { packets: number; bytes: number }>;

function totalsOf(records: FlowRecord[]): Totals {
  const out: Totals = {};
  for (const r of records) {
    const t = (out[flowId(r)] ??= { packets: 0, bytes: 0 });
    t.packets += r.packetDeltaCount;
    t.bytes += r.layer2OctetDeltaCount!;
  }
  return out;
}

/**
 * TCP bytes on the wire with offloads off (one counted packet is one segment): Ethernet, IPv4 and
 * a TCP header with the timestamp option (32 bytes) on every segment, plus 8 more option bytes on
 * the SYN or SYN-ACK (MSS, SACK permitted, window scale), plus the payload.
 */
function tcpBytes(segments: number, payload: number): number {
  return segments * (14 + 20 + 32) + 8 + payload;
}

/** Every message of a topic as bytes: kcat prefixes each payload with its length (%R). */
function readRawWithKcat(bootstrap: string, topic: string): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    execFile(
      'kcat',
      ['-C', '-b', bootstrap, '-t', topic, '-o', 'beginning', '-e', '-q', '-f', '%R%s'],
      { encoding: 'buffer', timeout: 20_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout) => {
        if (err) {
          reject(new Error(`kcat -C ${topic}: ${err.message}`, { cause: err }));
          return;
        }
        const out: Buffer[] = [];
        for (let o = 0; o < stdout.length;) {
          const n = stdout.readInt32BE(o);
          out.push(stdout.subarray(o + 4, o + 4 + n));
          o += 4 + n;
        }
        resolve(out);
      },
    );
  });
}

/** proto3 has no absent repeated field: a record without observedInterfaces decodes with [], dropped here. */
function withoutEmptyLists(r: Record<string, unknown>): Record<string, unknown> {
  if (Array.isArray(r.observedInterfaces) && r.observedInterfaces.length === 0) delete r.observedInterfaces;
  return r;
}

const decode = (type: protobuf.Type, bytes: Uint8Array): Record<string, unknown> => {
  const o = type.toObject(type.decode(bytes), { longs: Number, defaults: true });
  if (Array.isArray(o.records)) for (const r of o.records as Record<string, unknown>[]) withoutEmptyLists(r);
  return withoutEmptyLists(o);
};

interface Export {
  records: FlowRecord[];
  messages: number;
  totals: LedgerTotals;
  tcp: TcpResult;
}

kernelDescribe(
  'kafka export end to end on real traffic',
  () => {
    let pair: PairTopology;
    let cluster: KafkaMockCluster;
    let pinRoot: string;

    beforeAll(async () => {
      pair = await createPair({ prefix: 'rxke' });
      pinRoot = makeBpffsDir('rxke');
      cluster = await startKafkaMock({ prefix: 'rxke' });
    });
    afterAll(async () => {
      await cluster?.stop();
      await cleanup.dispose();
    });

    /**
     * Runs the pipeline with the given kafka sink options over the same traffic (ports offset by
     * `base`), stops it, and returns what the topic holds, decoded by `read`.
     */
    async function exportTraffic(
      name: string,
      base: number,
      sinkOptions: string,
      read: (topic: string) => Promise<{ records: FlowRecord[]; messages: number }>,
    ): Promise<Export> {
      const topic = `${name}-flows`;
      await cluster.createTopic(topic, 2);
      const yaml = `
sources:
  kernel:
    type: ebpf_flows
    interfaces: ['\${IFACE}']
    netns: \${NETNS}
    instance: \${INSTANCE}
    pin_root: \${PIN_ROOT}
    object_path: \${OBJECT}
    # Only stop() brings the flows out: it must drain the kernel map into Kafka.
    eviction_interval_ms: 1h
    ringbuf_drain_interval_ms: 20ms
sinks:
  kafka:
    type: kafka
    inputs: [kernel]
    bootstrap_servers: ['\${BOOTSTRAP}']
    topic: \${TOPIC}
    linger_ms: 2
${sinkOptions}
`;
      const config = parsePipeline(yaml, `${name}.yaml`, {
        env: {
          IFACE: pair.link.b.ifname,
          NETNS: pair.server.name,
          INSTANCE: `${name}-${process.pid}`,
          PIN_ROOT: pinRoot,
          OBJECT: testObject('flow'),
          BOOTSTRAP: cluster.bootstrap,
          TOPIC: topic,
        },
      });
      const pipeline = await buildPipeline(config);
      await pipeline.start();
      let tcp: TcpResult;
      try {
        const sink = await startUdpSink({ ns: pair.server, port: base, family: 4, count: 3 * 5 });
        await sendUdp({
          from: pair.client,
          to: pair.link.b.ipv4!,
          port: base,
          count: 5,
          flows: 3,
          srcPort: base + 100,
          payloadBytes: 100,
        });
        expect((await sink.result).received).toBe(15);
        tcp = await sendTcp({
          from: pair.client,
          server: pair.server,
          to: pair.link.b.ipv4!,
          port: base + 1,
          bytes: 50_000,
        });
        await ping({ from: pair.client, to: pair.link.b.ipv4!, count: 4, payloadBytes: 56 });
        await ping({ from: pair.client, to: pair.link.b.ipv6!, count: 3, payloadBytes: 200 });
      } finally {
        await pipeline.stop();
      }
      return { ...(await read(topic)), totals: pipeline.totals(), tcp };
    }

    /** The flows the traffic of exportTraffic(base) makes on the server's end, with their totals. */
    function expected(base: number, tcp: TcpResult): Totals {
      const client = pair.link.a;
      const server = pair.link.b;
      const out: Totals = {};
      for (let i = 0; i < 3; i++) {
        out[`in 17 ${client.ipv4} ${server.ipv4} ${base + 100 + i}>${base}`] = {
          packets: 5,
          bytes: 5 * udpFrameBytes(4, 100),
        };
      }
      out[`in 6 ${client.ipv4} ${server.ipv4} ${tcp.srcPort}>${base + 1}`] = {
        packets: tcp.clientSegsOut,
        bytes: tcpBytes(tcp.clientSegsOut, 50_000),
      };
      out[`out 6 ${server.ipv4} ${client.ipv4} ${base + 1}>${tcp.srcPort}`] = {
        packets: tcp.serverSegsOut,
        bytes: tcpBytes(tcp.serverSegsOut, 0),
      };
      out[`in 1 ${client.ipv4} ${server.ipv4} type 8`] = { packets: 4, bytes: 4 * icmpFrameBytes(4, 56) };
      out[`out 1 ${server.ipv4} ${client.ipv4} type 0`] = { packets: 4, bytes: 4 * icmpFrameBytes(4, 56) };
      out[`in 58 ${client.ipv6} ${server.ipv6} type 128`] = { packets: 3, bytes: 3 * icmpFrameBytes(6, 200) };
      out[`out 58 ${server.ipv6} ${client.ipv6} type 129`] = {
        packets: 3,
        bytes: 3 * icmpFrameBytes(6, 200),
      };
      return out;
    }

    function check(base: number, out: Export): void {
      const { records, totals, tcp } = out;
      // Retransmissions would resend payload and break the byte count of the TCP flows.
      expect({ client: tcp.clientRetransmits, server: tcp.serverRetransmits }).toEqual({
        client: 0,
        server: 0,
      });
      expect(totalsOf(records)).toEqual(expected(base, tcp));
      const server = pair.link.b;
      const client = pair.link.a;
      for (const r of records) {
        expect({ flow: flowId(r), fields: Object.keys(r).sort() }).toEqual({
          flow: flowId(r),
          fields: fieldsOf(r),
        });
        const inbound = r.flowDirection === 0;
        expect({
          flow: flowId(r),
          ingressInterface: r.ingressInterface,
          egressInterface: r.egressInterface,
          sourceMacAddress: r.sourceMacAddress,
          destinationMacAddress: r.destinationMacAddress,
          ethernetType: r.ethernetType,
          networkNamespace: r.networkNamespace,
          ordered: r.flowStartMilliseconds <= r.flowEndMilliseconds,
        }).toEqual({
          flow: flowId(r),
          ingressInterface: inbound ? server.ifindex : undefined,
          egressInterface: inbound ? undefined : server.ifindex,
          sourceMacAddress: inbound ? client.mac : server.mac,
          destinationMacAddress: inbound ? server.mac : client.mac,
          ethernetType: r.ipVersion === 6 ? 0x86dd : 0x0800,
          networkNamespace: pair.server.name,
          ordered: true,
        });
      }
      // Every flow the source saw is in Kafka: seen = delivered = exported, nothing dropped, merged or held.
      expect({
        seen: totals.seen,
        delivered: totals.delivered,
        exported: totals.sinks.map((k) => k.exported),
        inKafka: records.length,
        dropped: totals.dropped,
        merged: totals.merged,
        inFlight: totals.inFlight,
      }).toEqual({
        seen: records.length,
        delivered: records.length,
        exported: [records.length],
        inKafka: records.length,
        dropped: {},
        merged: 0,
        inFlight: 0,
      });
    }

    it('JSON, one record per message: per-flow packets and bytes equal the traffic, IPFIX names, nothing lost', async () => {
      const out = await exportTraffic('rxke-json', 7310, '    encoding: json', async (topic) => {
        const read = await readWithKcat(cluster.bootstrap, topic);
        return { records: read.map((m) => JSON.parse(m.value!) as FlowRecord), messages: read.length };
      });
      expect(out.messages).toBe(out.records.length);
      check(7310, out);
    });

    it('protobuf, batched: FlowBatch messages decode with flow.proto to the traffic, nothing lost', async () => {
      const out = await exportTraffic(
        'rxke-pb',
        7320,
        '    encoding: protobuf\n    records_per_message: 50',
        async (topic) => {
          const messages = await readRawWithKcat(cluster.bootstrap, topic);
          const records = messages.flatMap(
            (m) => (decode(FlowBatchType, m) as { records: FlowRecord[] }).records,
          );
          return { records, messages: messages.length };
        },
      );
      // 11 flows, 50 to a message at most, grouped by partition: one message per partition used.
      expect(out.messages).toBeGreaterThanOrEqual(1);
      expect(out.messages).toBeLessThanOrEqual(2);
      check(7320, out);
    });
  },
  ['kcat'],
);
