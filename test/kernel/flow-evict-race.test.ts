/**
 * Eviction racing the flow program: userspace evicts the kernel flow map in a tight loop while
 * several UDP flows of many packets cross the link. Every packet the program counted must come
 * out of exactly one eviction: an increment that lands in an entry the eviction already copied
 * and deleted would be lost without any counter saying so.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { decodeFlowEvent } from '../../src/datapath/flow/types.js';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';

const ROUNDS = 5;
const FLOWS = 4;
const PACKETS_PER_FLOW = 100_000;
const PAYLOAD = 18;
/** Evictions during the send that must take packets of the round: the loop overlapped the traffic. */
const MIN_BUSY_EVICTIONS = 5;

interface Tally {
  packets: number;
  bytes: number;
}

kernelDescribe('flow eviction racing the flow program', () => {
  let topo: PairTopology;
  let client: FlowDatapath;
  let server: FlowDatapath;

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxfe' });
    const pinRoot = makeBpffsDir('rxfe');
    client = FlowDatapath.open({
      interfaces: [topo.link.a.ifname],
      netns: topo.client.name,
      directions: ['egress'],
      instance: `client-${process.pid}`,
      pinRoot,
    });
    server = FlowDatapath.open({
      interfaces: [topo.link.b.ifname],
      netns: topo.server.name,
      directions: ['ingress'],
      instance: `server-${process.pid}`,
      pinRoot,
    });
  });
  afterAll(async () => {
    try {
      client?.close();
      server?.close();
    } finally {
      await cleanup.dispose();
    }
  });

  async function waitFor(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Adds the UDP flows to `port` of one eviction (map and ring buffer) to the tally; returns their packets. */
  function collect(dp: FlowDatapath, port: number, tally: Map<string, Tally>): number {
    let packets = 0;
    const records: FlowRecord[] = dp.evictFlows(0);
    dp.events.drain((view, offset, length) => records.push(decodeFlowEvent(view, offset, length, 0)));
    for (const r of records) {
      if (r.protocolIdentifier !== 17 || r.destinationTransportPort !== port) continue;
      const key = `${r.flowDirection}:${r.sourceTransportPort}`;
      const t = tally.get(key) ?? { packets: 0, bytes: 0 };
      t.packets += r.packetDeltaCount;
      t.bytes += r.layer2OctetDeltaCount!;
      tally.set(key, t);
      packets += r.packetDeltaCount;
    }
    return packets;
  }

  it.each(Array.from({ length: ROUNDS }, (_, i) => i + 1))(
    `round %i: ${FLOWS} flows x ${PACKETS_PER_FLOW} packets, evicted in a tight loop, add up exactly`,
    async (round) => {
      const port = 7000 + round;
      const srcPort = 43000 + round * 10;
      const tally = new Map<string, Tally>();

      const sink = await startUdpSink({
        ns: topo.server,
        port,
        family: 4,
        count: FLOWS * PACKETS_PER_FLOW,
        timeoutMs: 30_000,
      });
      const serverSeenBefore = server.counters().PACKETS;
      let sending = true;
      let busyEvictions = 0;
      const evictor = (async () => {
        while (sending) {
          if (collect(client, port, tally) + collect(server, port, tally) > 0) busyEvictions++;
          // Lets the sender's exit be noticed; no timer, so evictions follow each other at once.
          await yieldToLoop();
        }
      })();
      try {
        await sendUdp({
          from: topo.client,
          to: topo.link.b.ipv4!,
          port,
          count: PACKETS_PER_FLOW,
          flows: FLOWS,
          payloadBytes: PAYLOAD,
          srcPort,
        });
        // Done once the server's ingress hook has seen every datagram. Its kernel counter, not the
        // sink, says so: on a loaded machine the sink's socket buffer may overflow, which happens
        // after TC and is no concern of this test (the sink only keeps ICMP errors off the link).
        await waitFor(
          () => server.counters().PACKETS - serverSeenBefore >= FLOWS * PACKETS_PER_FLOW,
          30_000,
          'the server hook to see every datagram',
        );
      } finally {
        sending = false;
        await evictor;
        sink.stop();
      }
      collect(client, port, tally);
      collect(server, port, tally);

      const frame = udpFrameBytes(4, PAYLOAD);
      const want = new Map<string, Tally>();
      for (const dir of [0, 1]) {
        for (let f = 0; f < FLOWS; f++) {
          want.set(`${dir}:${srcPort + f}`, { packets: PACKETS_PER_FLOW, bytes: PACKETS_PER_FLOW * frame });
        }
      }
      const sorted = (m: Map<string, Tally>) => [...m.entries()].sort(([a], [b]) => a.localeCompare(b));
      expect(sorted(tally)).toStrictEqual(sorted(want));
      expect(busyEvictions).toBeGreaterThanOrEqual(MIN_BUSY_EVICTIONS);
      for (const dp of [client, server]) {
        const c = dp.counters();
        expect([c.MAP_FULL, c.MAP_UPDATE_FAILED, c.RB_RESERVE_FAILED]).toStrictEqual([0, 0, 0]);
      }
    },
    120_000,
  );
});
