/**
 * The flow pipeline end to end on real traffic: pipelines written in YAML, checked by
 * parsePipeline and wired by buildPipeline, with the ebpf_flows source on real interfaces and a
 * `collect` sink that keeps what reaches it. stop() must drain the kernel map and the ring
 * buffer, and the ledger must account for every record.
 *
 * decorate resolves ifindex -> name in the agent's own network namespace (/sys/class/net and
 * `ip monitor link`); it has no namespace option. So the router test runs the agent where a real
 * one runs: in the namespace of the interfaces it watches (a child under `ip netns exec`, which
 * mounts that namespace's sysfs; it mounts its own bpffs, which goes away with it).
 */
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { DropReason, LedgerTotals } from '../../src/ledger.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { buildChild, startChild, type BuiltChild } from '../fixtures/child.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import {
  ROUTED,
  createPair,
  createRouted,
  type PairTopology,
  type RoutedTopology,
} from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';
import { testObject } from './datapath-helpers.js';
import { startEbpfPipeline } from './ebpf-pipeline.js';

const addr = (cidr: string): string => cidr.split('/')[0]!;

/** Per source port: packets and bytes summed over the records of that port. */
function totalsByPort(records: FlowRecord[]): Map<number, { packets: number; bytes: number }> {
  const out = new Map<number, { packets: number; bytes: number }>();
  for (const r of records) {
    const t = out.get(r.sourceTransportPort) ?? { packets: 0, bytes: 0 };
    t.packets += r.packetDeltaCount;
    t.bytes += r.layer2OctetDeltaCount!;
    out.set(r.sourceTransportPort, t);
  }
  return out;
}

/**
 * The ledger's balance, term by term, for a pipeline with one sink: seen = merged + dropped +
 * in flight + delivered before the sink, and the sink's handed = exported + dropped + in flight.
 * Drops and holdings are those of the whole pipeline, sink included.
 */
function balance(t: LedgerTotals) {
  expect(t.sinks).toHaveLength(1);
  const sink = t.sinks[0]!;
  const dropped = { ...t.dropped };
  for (const [reason, n] of Object.entries(sink.dropped) as [DropReason, number][]) {
    dropped[reason] = (dropped[reason] ?? 0) + n;
  }
  return {
    seen: t.seen,
    exported: sink.exported,
    dropped,
    merged: t.merged,
    inFlight: t.inFlight + sink.inFlight,
    balanced:
      t.seen === t.delivered + t.droppedTotal + t.merged + t.inFlight &&
      sink.handed === t.delivered &&
      sink.handed === sink.exported + sink.droppedTotal + sink.inFlight,
  };
}

async function waitFor(what: string, ready: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

interface PipelineReport {
  ok: boolean;
  message?: string;
  beforeStop: number;
  records: FlowRecord[];
  totals: LedgerTotals;
}

kernelDescribe('flow pipeline from YAML on real traffic', () => {
  let routed: RoutedTopology;
  let pair: PairTopology;
  let child: BuiltChild;
  let pinRoot: string;

  beforeAll(async () => {
    routed = await createRouted({ prefix: 'rxfp' });
    pair = await createPair({ prefix: 'rxfp' });
    pinRoot = makeBpffsDir('rxfp');
    child = buildChild('test/kernel/flow-child.ts');
    const dir = child.dir;
    cleanup.register(`child dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  });
  afterAll(() => cleanup.dispose());

  it('K flows through a router: exactly K after dedupe first_come, with totals, interface name and agent IP; stop() drains the map', async () => {
    const K = 24;
    const N = 5;
    const S = 120;
    const left = routed.left.b;
    const right = routed.right.a;
    const yaml = `
sources:
  router:
    type: ebpf_flows
    interfaces: ['\${LEFT}', '\${RIGHT}']
    netns: \${ROUTER}
    instance: rxfp-pipeline
    object_path: \${OBJECT}
    # Only stop() can bring the flows out: it must drain the kernel map.
    eviction_interval_ms: 1h
transforms:
  first:
    type: dedupe
    inputs: [router]
    mode: first_come
  names:
    type: decorate
    inputs: [first]
    agent_ip_interface: \${LEFT}
sinks:
  out:
    type: collect
    inputs: [names]
`;
    const agent = startChild(
      'ip',
      [
        'netns',
        'exec',
        routed.router.name,
        'sh',
        '-c',
        'mount -t bpf bpf /sys/fs/bpf && exec "$0" "$@"',
        process.execPath,
        child.entry,
        'pipeline',
        yaml,
      ],
      {
        prefix: 'rxfp',
        env: {
          ...process.env,
          LEFT: left.ifname,
          RIGHT: right.ifname,
          ROUTER: routed.router.name,
          OBJECT: testObject('flow'),
        },
      },
    );
    expect(await agent.next()).toEqual({ ok: true, started: true });

    const server = addr(ROUTED.server.ipv4);
    const sink = await startUdpSink({ ns: routed.server, port: 7201, family: 4, count: K * N });
    const sent = await sendUdp({
      from: routed.client,
      to: server,
      port: 7201,
      count: N,
      flows: K,
      srcPort: 46000,
      payloadBytes: S,
    });
    expect((await sink.result).received).toBe(K * N);
    agent.send('stop');
    const out = await agent.next<PipelineReport>();
    expect(await agent.exited).toBe(0);
    expect(out.ok).toBe(true);
    expect(out.beforeStop).toBe(0);

    // Each flow crossed the router twice (left ingress, right egress): first_come keeps one copy,
    // from whichever interface the kernel map listed first.
    const copies = [
      { ingressInterface: left.ifindex, interfaceName: left.ifname, flowDirection: 0 },
      { egressInterface: right.ifindex, interfaceName: right.ifname, flowDirection: 1 },
    ];
    const records = [...out.records].sort((a, b) => a.sourceTransportPort - b.sourceTransportPort);
    expect(records.map((r) => r.sourceTransportPort)).toEqual(
      Array.from({ length: K }, (_, i) => sent.srcPortFirst + i),
    );
    for (const r of records) {
      expect({
        src: r.sourceIPv4Address,
        dst: r.destinationIPv4Address,
        dport: r.destinationTransportPort,
        protocol: r.protocolIdentifier,
        packets: r.packetDeltaCount,
        bytes: r.layer2OctetDeltaCount!,
        exporterIPv4Address: r.exporterIPv4Address,
      }).toEqual({
        src: addr(ROUTED.client.ipv4),
        dst: server,
        dport: 7201,
        protocol: 17,
        packets: N,
        bytes: N * udpFrameBytes(4, S),
        exporterIPv4Address: addr(ROUTED.routerLeft.ipv4),
      });
      expect(copies).toContainEqual({
        ingressInterface: r.ingressInterface,
        egressInterface: r.egressInterface,
        interfaceName: r.interfaceName,
        flowDirection: r.flowDirection,
      });
    }
    expect(balance(out.totals)).toEqual({
      seen: 2 * K,
      exported: K,
      dropped: { dedupe_duplicate: K },
      merged: 0,
      inFlight: 0,
      balanced: true,
    });
  });

  /** ebpf_flows on the server's end of the pair, ingress, into a collect sink; the rest as given. */
  function startPairPipeline(name: string, options: string) {
    return startEbpfPipeline({
      name,
      iface: pair.link.b.ifname,
      netns: pair.server.name,
      pinRoot,
      directions: ['ingress'],
      options: [
        '    cache_max_flows: 16',
        '    ringbuf_size_bytes: 1048576',
        '    ringbuf_drain_interval_ms: 20ms',
        '    account_evict_timeout_ms: 1h',
        options,
      ].join('\n'),
    });
  }

  /** Records of the map tracer (ended by timeout); ring-buffer flows (aggregated by account) keep flowEndReason 5. */
  const fromMap = (records: FlowRecord[]) => records.filter((r) => r.flowEndReason !== 5);
  const fromRing = (records: FlowRecord[]) => records.filter((r) => r.flowEndReason === 5);

  it('16-entry map, 200 flows of 3 packets: map flows plus accounted ring-buffer flows are the traffic, and the ledger balances', async () => {
    const { pipeline, collected } = await startPairPipeline('rxfp-pl-full', '    flush_on_map_full: false');
    const sink = await startUdpSink({ ns: pair.server, port: 7202, family: 4, count: 600 });
    const sent = await sendUdp({
      from: pair.client,
      to: pair.link.b.ipv4!,
      port: 7202,
      count: 3,
      flows: 200,
      srcPort: 47000,
      payloadBytes: 40,
    });
    expect((await sink.result).received).toBe(600);
    await pipeline.stop();

    const records = collected();
    // The first 16 flows took the map; every packet of the other 184 spilled, one record each,
    // and account put each flow's 3 records back together.
    expect([fromMap(records).length, fromRing(records).length, records.length]).toEqual([16, 184, 200]);
    const perPort = totalsByPort(records);
    expect(perPort.size).toBe(200);
    for (let port = sent.srcPortFirst; port <= sent.srcPortLast; port++) {
      expect(perPort.get(port)).toEqual({ packets: 3, bytes: 3 * udpFrameBytes(4, 40) });
    }
    expect(balance(pipeline.totals())).toEqual({
      seen: 16 + 184 * 3,
      exported: 200,
      dropped: {},
      merged: 184 * 2,
      inFlight: 0,
      balanced: true,
    });
  });

  it('map pressure reported by the ring buffer evicts the map early; every flow is still counted once', async () => {
    const { pipeline, collected } = await startPairPipeline(
      'rxfp-pl-flush',
      '    flush_on_map_full: true\n    min_flush_interval_ms: 20ms',
    );
    // One packet per flow: a packet never updates a map entry, so an eviction racing the traffic
    // cannot lose one (an update in place racing a batch delete can; see the report of this test).
    const sink = await startUdpSink({ ns: pair.server, port: 7203, family: 4, count: 200 });
    const sent = await sendUdp({
      from: pair.client,
      to: pair.link.b.ipv4!,
      port: 7203,
      count: 1,
      flows: 200,
      srcPort: 48000,
      payloadBytes: 40,
    });
    expect((await sink.result).received).toBe(200);
    // The eviction interval is an hour: map flows before stop() come from a pressure flush.
    await waitFor('a map eviction on pressure', () => fromMap(collected()).length >= 16);
    await pipeline.stop();

    const records = collected();
    expect(records.length).toBe(200);
    const perPort = totalsByPort(records);
    for (let port = sent.srcPortFirst; port <= sent.srcPortLast; port++) {
      expect(perPort.get(port)).toEqual({ packets: 1, bytes: udpFrameBytes(4, 40) });
    }
    expect(fromMap(records).length + fromRing(records).length).toBe(200);
    expect(balance(pipeline.totals())).toEqual({
      seen: 200,
      exported: 200,
      dropped: {},
      merged: 0,
      inFlight: 0,
      balanced: true,
    });
  });
});
