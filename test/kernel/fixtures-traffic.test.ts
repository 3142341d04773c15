import os from 'node:os';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cleanup } from '../fixtures/cleanup.js';
import { createPair, createRouted, statsDelta, type PairTopology, type VethEnd } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { ping, sendTcp, sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';

/** Runs `fn` and returns the counter change it caused on `end`. */
async function delta<T>(end: VethEnd, fn: () => Promise<T>) {
  const before = await end.stats();
  const result = await fn();
  const after = await end.stats();
  return { result, d: statsDelta(before, after) };
}

kernelDescribe(
  'traffic fixtures: the kernel counts exactly what the generator sent',
  () => {
    let topo: PairTopology;
    beforeAll(async () => {
      topo = await createPair();
    });
    afterAll(() => cleanup.dispose());

    it('sends 1000 UDP/IPv4 datagrams of 100 bytes: 1000 frames of 142 bytes reach the server', async () => {
      const sink = await startUdpSink({ ns: topo.server, port: 5001, family: 4, count: 1000 });
      const { result, d } = await delta(topo.link.b, () =>
        sendUdp({ from: topo.client, to: topo.link.b.ipv4!, port: 5001, count: 1000, payloadBytes: 100 }),
      );
      expect(result.sent).toBe(1000);
      expect(result.frameBytes).toBe(142);
      expect(d.rxPackets).toBe(1000);
      expect(d.rxBytes).toBe(1000 * 142);
      expect(d.rxDropped).toBe(0);
      expect(await sink.result).toEqual({ received: 1000, payloadBytes: 100_000 });
    });

    it('sends 500 UDP/IPv6 datagrams of 1200 bytes: 500 frames of 1262 bytes', async () => {
      const { result, d } = await delta(topo.link.b, () =>
        sendUdp({ from: topo.client, to: topo.link.b.ipv6!, port: 5002, count: 500, payloadBytes: 1200 }),
      );
      expect(result.frameBytes).toBe(udpFrameBytes(6, 1200));
      expect(d.rxPackets).toBe(500);
      expect(d.rxBytes).toBe(500 * 1262);
    });

    it('sends 300 flows of 2 datagrams from distinct source ports', async () => {
      const sink = await startUdpSink({ ns: topo.server, port: 5003, family: 4, count: 600 });
      const { result, d } = await delta(topo.link.b, () =>
        sendUdp({
          from: topo.client,
          to: topo.link.b.ipv4!,
          port: 5003,
          count: 2,
          payloadBytes: 10,
          flows: 300,
          srcPort: 30000,
        }),
      );
      expect(result).toMatchObject({ sent: 600, srcPortFirst: 30000, srcPortLast: 30299 });
      expect(d.rxPackets).toBe(600);
      expect(d.rxBytes).toBe(600 * (14 + 20 + 8 + 10));
      expect((await sink.result).received).toBe(600);
    });

    for (const family of [4, 6] as const) {
      it(`runs one TCP/IPv${family} connection: every segment each side sent crosses the link once`, async () => {
        const to = family === 4 ? topo.link.b.ipv4! : topo.link.b.ipv6!;
        const before = { client: await topo.link.a.stats(), server: await topo.link.b.stats() };
        const r = await sendTcp({
          from: topo.client,
          server: topo.server,
          to,
          port: 6000 + family,
          bytes: 100_000,
        });
        const after = { client: await topo.link.a.stats(), server: await topo.link.b.stats() };
        expect(r.sent).toBe(100_000);
        expect(r.received).toBe(100_000);
        expect([r.clientRetransmits, r.serverRetransmits]).toEqual([0, 0]);
        // With GSO off, 100 kB is at least 69 full-size data segments; plus SYN, ACK and FIN.
        expect(r.clientDataSegsOut).toBeGreaterThanOrEqual(69);
        expect(r.clientSegsOut).toBeGreaterThanOrEqual(r.clientDataSegsOut + 2);
        expect(statsDelta(before.server, after.server).rxPackets).toBe(r.clientSegsOut);
        expect(statsDelta(before.server, after.server).txPackets).toBe(r.serverSegsOut);
        expect(statsDelta(before.client, after.client).rxPackets).toBe(r.serverSegsOut);
        expect(r.serverSegsIn).toBe(r.clientSegsOut);
      });
    }

    it('pings 20 times with 56 bytes over IPv4: 20 requests of 98 bytes in, 20 replies out', async () => {
      const { result, d } = await delta(topo.link.b, () =>
        ping({ from: topo.client, to: topo.link.b.ipv4!, count: 20, payloadBytes: 56 }),
      );
      expect(result).toEqual({ transmitted: 20, received: 20, frameBytes: 98 });
      expect(d.rxPackets).toBe(20);
      expect(d.rxBytes).toBe(20 * 98);
      expect(d.txPackets).toBe(20);
    });

    it('pings 10 times with 200 bytes over IPv6: 10 requests of 262 bytes, no neighbour discovery', async () => {
      const { result, d } = await delta(topo.link.b, () =>
        ping({ from: topo.client, to: topo.link.b.ipv6!, count: 10, payloadBytes: 200 }),
      );
      expect(result).toEqual({ transmitted: 10, received: 10, frameBytes: 262 });
      expect(d.rxPackets).toBe(10);
      expect(d.rxBytes).toBe(10 * 262);
      expect(d.txPackets).toBe(10);
    });

    it('rejects a send the kernel refuses, with the reason', async () => {
      await expect(
        sendUdp({ from: topo.client, to: '203.0.113.99', port: 9, count: 1, payloadBytes: 1 }),
      ).rejects.toThrow(/traffic: sendto: Network is unreachable/);
    });

    it('runs synchronous code inside a namespace and returns to the original one', () => {
      const inside = topo.client.enterSync(() => Object.keys(os.networkInterfaces()));
      expect(inside.sort()).toEqual([topo.link.a.ifname, 'lo'].sort());
      expect(Object.keys(os.networkInterfaces())).not.toContain(topo.link.a.ifname);
    });

    it('forwards through the router of a three-namespace topology, hop by hop', async () => {
      const routed = await createRouted();
      try {
        const before = { left: await routed.left.b.stats(), server: await routed.right.b.stats() };
        const r = await sendUdp({
          from: routed.client,
          to: routed.right.b.ipv4!,
          port: 7000,
          count: 200,
          payloadBytes: 64,
        });
        const r6 = await sendUdp({
          from: routed.client,
          to: routed.right.b.ipv6!,
          port: 7000,
          count: 100,
          payloadBytes: 64,
        });
        const after = { left: await routed.left.b.stats(), server: await routed.right.b.stats() };
        const bytes = r.sent * r.frameBytes + r6.sent * r6.frameBytes;
        expect(statsDelta(before.left, after.left)).toMatchObject({ rxPackets: 300, rxBytes: bytes });
        expect(statsDelta(before.server, after.server)).toMatchObject({ rxPackets: 300, rxBytes: bytes });
      } finally {
        routed.dispose();
      }
    });
  },
  ['ping'],
);
