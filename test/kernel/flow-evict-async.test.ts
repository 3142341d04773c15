/**
 * Eviction with the swap of the flow maps on a worker thread (FlowDatapath.evictFlowsAsync): the
 * event loop keeps turning while the kernel waits out the RCU grace period of the map-in-map
 * update, a second eviction meanwhile is refused, close() during a swap defers closing the maps,
 * and the ebpf_flows source, evicting this way under traffic and once more on stop, delivers
 * exact packet counts.
 */
import { existsSync } from 'node:fs';
import { Subject } from 'rxjs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { ComponentContext } from '../../src/component.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import type { FlowBatch } from '../../src/records/flow.js';
import ebpfFlowsModule, { type EbpfFlowsConfig } from '../../src/sources/ebpf_flows.js';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink, udpFrameBytes } from '../fixtures/traffic.js';

const FLOWS = 4;
const PACKETS_PER_FLOW = 50_000;
const PAYLOAD = 18;
/** Batches before stop that held packets of the test: evictions overlapped the traffic. */
const MIN_BUSY_BATCHES = 5;

interface Tally {
  packets: number;
  bytes: number;
}

async function waitFor(what: string, done: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Counts turns of the event loop (its check phase) until stopped. */
function loopTurns(): { turns: () => number; stop: () => void } {
  let turns = 0;
  let on = true;
  const tick = () => {
    turns++;
    if (on) setImmediate(tick);
  };
  setImmediate(tick);
  return { turns: () => turns, stop: () => (on = false) };
}

kernelDescribe('asynchronous flow eviction', () => {
  let topo: PairTopology;
  let pinRoot: string;

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxas' });
    pinRoot = makeBpffsDir('rxas');
  });
  afterAll(() => cleanup.dispose());

  function open(instance: string): FlowDatapath {
    const dp = FlowDatapath.open({
      interfaces: [topo.link.b.ifname],
      netns: topo.server.name,
      directions: ['ingress'],
      instance: `${instance}-${process.pid}`,
      pinRoot,
    });
    cleanup.register(`flow datapath ${dp.pinDir}`, () => dp.close());
    return dp;
  }

  it('the event loop turns while each swap is in flight, and a second eviction meanwhile is refused', async () => {
    const dp = open('loop');
    const loop = loopTurns();
    const turnsDuring: number[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        const before = loop.turns();
        const eviction = dp.evictFlowsAsync(0);
        expect(() => dp.evictFlows(0)).toThrow(
          'evict flows: an asynchronous eviction is still running; wait for it to settle first',
        );
        await expect(dp.evictFlowsAsync(0)).rejects.toMatchObject({ code: 'EBUSY' });
        expect(() => dp.flowMaps.swap()).toThrow(
          'swap flow_maps: an asynchronous swap is still running; wait for it to settle first',
        );
        await eviction;
        turnsDuring.push(loop.turns() - before);
      }
    } finally {
      loop.stop();
    }
    // Not one eviction held the loop for its whole length.
    expect(turnsDuring.filter((n) => n === 0)).toEqual([]);
    // Sync and async swaps alternate the same slot: the sync path still works afterwards.
    const active = dp.flowMaps.active.name;
    expect(dp.evictFlows(0)).toEqual([]);
    expect(dp.flowMaps.active.name).not.toBe(active);
    dp.close();
  });

  it('close() during a swap detaches at once, closes the maps when it settles, and leaves its flows to the next agent', async () => {
    const port = 7303;
    const srcPort = 44500;
    const dp = open('close');
    // First eviction drains both maps; the flows below then sit in the active one alone.
    await dp.evictFlowsAsync(0);
    const sink = await startUdpSink({ ns: topo.server, port, family: 4, count: 10 });
    await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port,
      count: 10,
      payloadBytes: PAYLOAD,
      srcPort,
    });
    await sink.result;

    const eviction = dp.evictFlowsAsync(0);
    dp.close({ keepPins: true });
    expect(dp.links).toEqual([]);
    // The worker thread may still be about to use the fds.
    expect(dp.flowMaps.maps.map((m) => m.closed)).toEqual([false, false]);
    await expect(eviction).resolves.toEqual([]);
    expect(dp.flowMaps.maps.map((m) => m.closed)).toEqual([true, true]);
    await expect(dp.evictFlowsAsync(0)).rejects.toThrow(
      'evict flows: the flow datapath was closed; open it again',
    );

    // The same instance again: its first eviction drains both maps and finds what the swap left.
    const next = open('close');
    const flows = next
      .evictFlows(0)
      .filter((r) => r.protocolIdentifier === 17 && r.destinationTransportPort === port)
      .map((r) => ({
        sport: r.sourceTransportPort,
        packets: r.packetDeltaCount,
        bytes: r.layer2OctetDeltaCount!,
      }));
    expect(flows).toEqual([{ sport: srcPort, packets: 10, bytes: 10 * udpFrameBytes(4, PAYLOAD) }]);
    next.close();
    expect(existsSync(next.pinDir)).toBe(false);
  });

  /**
   * Runs the ebpf_flows source on both ends (client egress, server ingress) while `flows` UDP
   * flows of `packets` datagrams cross the link, fires stop$ once the server hook has seen them
   * all, and waits for both sources to complete. Returns per direction and source port what the
   * sources emitted for that traffic, and how many batches with such packets came before stop.
   */
  async function sourcesUnderTraffic(o: {
    evictionIntervalMs: number;
    port: number;
    srcPort: number;
    flows: number;
    packets: number;
  }): Promise<{ tally: Map<string, Tally>; busyBatches: number; ledger: Ledger }> {
    const stop$ = new Subject<void>();
    const ledger = new Ledger();
    const context = (id: string): ComponentContext => ({
      id,
      logger: silentLogger(),
      ledger,
      counters: ledger.stage(id, 'ebpf_flows', 'source'),
      stop$,
    });
    const config = (side: 'client' | 'server'): EbpfFlowsConfig => ({
      ...ebpfFlowsModule.example,
      interfaces: [side === 'client' ? topo.link.a.ifname : topo.link.b.ifname],
      netns: (side === 'client' ? topo.client : topo.server).name,
      directions: [side === 'client' ? 'egress' : 'ingress'],
      instance: `src-${side}-${process.pid}`,
      pin_root: pinRoot,
      eviction_interval_ms: o.evictionIntervalMs,
      ringbuf_drain_interval_ms: 10,
    });

    const tally = new Map<string, Tally>();
    let sending = true;
    let busyBatches = 0;
    const add = (batch: FlowBatch) => {
      let packets = 0;
      for (const r of batch) {
        if (r.protocolIdentifier !== 17 || r.destinationTransportPort !== o.port) continue;
        const key = `${r.flowDirection}:${r.sourceTransportPort}`;
        const t = tally.get(key) ?? { packets: 0, bytes: 0 };
        t.packets += r.packetDeltaCount;
        t.bytes += r.layer2OctetDeltaCount!;
        tally.set(key, t);
        packets += r.packetDeltaCount;
      }
      if (sending && packets > 0) busyBatches++;
    };
    let completed = 0;
    let failure: Error | undefined;
    const subs = (['client', 'server'] as const).map((side) =>
      ebpfFlowsModule.build(config(side), context(side)).subscribe({
        next: add,
        error: (err: unknown) => (failure ??= err instanceof Error ? err : new Error(String(err))),
        complete: () => completed++,
      }),
    );
    // The sources' datapaths are private; a second one on the server hook counts what it saw.
    const watch = open(`watch-${o.port}`);
    try {
      const seenBefore = watch.counters().PACKETS;
      const total = o.flows * o.packets;
      const sink = await startUdpSink({
        ns: topo.server,
        port: o.port,
        family: 4,
        count: total,
        timeoutMs: 30_000,
      });
      try {
        await sendUdp({
          from: topo.client,
          to: topo.link.b.ipv4!,
          port: o.port,
          count: o.packets,
          flows: o.flows,
          payloadBytes: PAYLOAD,
          srcPort: o.srcPort,
        });
        await waitFor(
          'the server hook to see every datagram',
          () => watch.counters().PACKETS - seenBefore >= total,
          30_000,
        );
      } finally {
        sink.stop();
      }
      sending = false;
      stop$.next();
      await waitFor(
        'both sources to complete after stop',
        () => completed === 2 || failure !== undefined,
        10_000,
      );
      if (failure !== undefined) throw failure;
    } finally {
      for (const s of subs) s.unsubscribe();
      watch.close();
    }
    return { tally, busyBatches, ledger };
  }

  function expected(srcPort: number, flows: number, packets: number): Map<string, Tally> {
    const frame = udpFrameBytes(4, PAYLOAD);
    const want = new Map<string, Tally>();
    for (const dir of [0, 1]) {
      for (let f = 0; f < flows; f++) want.set(`${dir}:${srcPort + f}`, { packets, bytes: packets * frame });
    }
    return want;
  }

  const sorted = (m: Map<string, Tally>) => [...m.entries()].sort(([a], [b]) => a.localeCompare(b));

  it(`ebpf_flows evicting every 2 ms under ${FLOWS} x ${PACKETS_PER_FLOW} packets, then on stop, delivers every packet exactly`, async () => {
    const out = await sourcesUnderTraffic({
      evictionIntervalMs: 2,
      port: 7301,
      srcPort: 44300,
      flows: FLOWS,
      packets: PACKETS_PER_FLOW,
    });
    expect(sorted(out.tally)).toStrictEqual(sorted(expected(44300, FLOWS, PACKETS_PER_FLOW)));
    expect(out.busyBatches).toBeGreaterThanOrEqual(MIN_BUSY_BATCHES);
    // Nothing went through the ring buffer or was lost in the kernel.
    expect(out.ledger.totals().dropped).toEqual({});
  }, 120_000);

  it('ebpf_flows whose interval never fires delivers every packet from the final eviction on stop', async () => {
    const out = await sourcesUnderTraffic({
      evictionIntervalMs: 3_600_000,
      port: 7302,
      srcPort: 44400,
      flows: 3,
      packets: 1000,
    });
    expect(sorted(out.tally)).toStrictEqual(sorted(expected(44400, 3, 1000)));
    expect(out.busyBatches).toBe(0);
    expect(out.ledger.totals().dropped).toEqual({});
  }, 60_000);
});
