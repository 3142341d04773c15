/**
 * The ring-buffer path keeps apart what the kernel's flow key keeps apart: with the flow map full
 * (cache_max_flows: 16, filled first), every packet of the test's flows reaches userspace as a
 * single-packet record, and the source's `account` stage puts them back together. One UDP 5-tuple
 * is sent as crafted frames (the generator's count is the outside count) from the peers of two
 * fresh namespaces, whose veth ends are both ifindex 2 (`netns: all` tells them apart by
 * `networkNamespace`), untagged and on VLANs 10, 20 and QinQ 10.30 (the receiving veth takes the
 * outer tag into the skb's metadata; the flow program reads it there). The records are read back
 * from the file sink line by line: one per (namespace, VLAN ids), with exactly the packets sent
 * there.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parsePipeline } from '../../src/pipeline/load.js';
import { defaultRegistry } from '../../src/pipeline/registry.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createNetns, createVeth, waitQuiet, type Netns, type Veth } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendFrames, sendUdp } from '../fixtures/traffic.js';
import { startLogged } from './ebpf-pipeline.js';
import { ETH_IPV4, ethernet, ipv4, udp } from './flow-packets.js';

/** A unicast MAC no interface has: the receiving kernel drops the frames after TC saw them. */
const NOWHERE = '02:00:00:00:ff:02';
const SPORT = 40123;
const DPORT = 7301;
/** The addresses of the test's 5-tuple, in both namespaces alike. */
const FLOW = { src: '198.18.7.1', dst: '198.18.7.2' };

kernelDescribe('account on the ring-buffer path keeps VLANs and namespaces apart', () => {
  let links: Veth[];
  let peers: Netns[];
  let inner: Netns[];
  let pinRoot: string;
  let dir: string;

  beforeAll(async () => {
    peers = [await createNetns({ prefix: 'rxak' }), await createNetns({ prefix: 'rxak' })];
    inner = [await createNetns({ prefix: 'rxak' }), await createNetns({ prefix: 'rxak' })];
    links = [];
    for (let i = 0; i < 2; i++) {
      links.push(
        await createVeth(
          { ns: peers[i]!, ipv4: `198.18.${10 + i}.1/24` },
          { ns: inner[i]!, ipv4: `198.18.${10 + i}.2/24` },
          { prefix: 'rxak' },
        ),
      );
      await links[i]!.pinNeighbours();
    }
    await waitQuiet(links.flatMap((l) => [l.a, l.b]));
    pinRoot = makeBpffsDir('acctk');
    dir = mkdtempSync(join(tmpdir(), 'acctkey-'));
    cleanup.register(`dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  });
  afterAll(() => cleanup.dispose());

  it('one 5-tuple in two namespaces with the same ifindex and on three VLANs: one record each, exact packets', async () => {
    // A fresh namespace numbers its first link after lo 2: only the namespace tells them apart.
    expect(links.map((l) => l.b.ifindex)).toEqual([2, 2]);
    const out = join(dir, 'flows.jsonl');
    const yaml = `
sources:
  flows:
    type: ebpf_flows
    interfaces: ['${links[0]!.b.ifname}', '${links[1]!.b.ifname}']
    netns: all
    directions: [ingress]
    instance: acctkey-${process.pid}
    pin_root: ${pinRoot}
    eviction_interval_ms: 1h
    cache_max_flows: 16
    flush_on_map_full: false
    ringbuf_size_bytes: 1048576
    ringbuf_drain_interval_ms: 20ms
    account_evict_timeout_ms: 1h
sinks:
  out:
    type: file
    inputs: [flows]
    path: ${out}
`;
    const logs: { msg: string; ifname?: string }[] = [];
    const pipeline = await startLogged(
      parsePipeline(yaml, 'account-key.yaml', { registry: defaultRegistry() }),
      logs,
    );
    let stopped = false;
    try {
      const attached = () =>
        links.every((l) => logs.some((g) => g.msg === 'interface attached' && g.ifname === l.b.ifname));
      for (const deadline = Date.now() + 10_000; !attached();) {
        if (Date.now() > deadline) throw new Error('both links attached: not within 10 s');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      // 16 flows fill the map: every later packet of a new flow goes through the ring buffer.
      await sendUdp({
        from: peers[0]!,
        to: links[0]!.b.ipv4!,
        port: 9,
        count: 1,
        flows: 16,
        srcPort: 41000,
        payloadBytes: 16,
      });

      const ip = ipv4({ ...FLOW, proto: 17 }, udp(SPORT, DPORT, new Uint8Array(32)));
      const sends = [
        { side: 0, vlans: [], count: 3 },
        { side: 1, vlans: [], count: 4 },
        { side: 0, vlans: [{ tpid: 0x8100, vid: 10 }], count: 5 },
        { side: 0, vlans: [{ tpid: 0x8100, vid: 20 }], count: 6 },
        {
          side: 0,
          vlans: [
            { tpid: 0x88a8, vid: 10 },
            { tpid: 0x8100, vid: 30 },
          ],
          count: 2,
        },
      ];
      for (const s of sends) {
        const frame = ethernet(
          { type: ETH_IPV4, dst: NOWHERE, src: '02:00:00:00:7e:01', vlans: s.vlans },
          ip,
        );
        const sent = await sendFrames({
          from: peers[s.side]!,
          ifname: links[s.side]!.a.ifname,
          frame,
          count: s.count,
        });
        expect(sent.sent).toBe(s.count);
      }
      await pipeline.stop();
      stopped = true;

      const records = readFileSync(out, 'utf8')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as FlowRecord);
      const ours = records
        .filter((r) => r.sourceIPv4Address === FLOW.src && r.destinationTransportPort === DPORT)
        .map((r) => ({
          netns: r.networkNamespace,
          ifindex: r.ingressInterface,
          vlan: r.dot1qVlanId,
          customerVlan: r.dot1qCustomerVlanId,
          packets: r.packetDeltaCount,
          // 5: the packets came through the ring buffer, so account is what aggregated them.
          endReason: r.flowEndReason,
        }));
      const key = (r: { netns?: string; vlan?: number; customerVlan?: number }) =>
        `${r.netns} ${r.vlan ?? 0}.${r.customerVlan ?? 0}`;
      ours.sort((a, b) => key(a).localeCompare(key(b)));
      const want = sends
        .map((s) => ({
          netns: inner[s.side]!.name,
          ifindex: 2,
          vlan: s.vlans[0]?.vid,
          customerVlan: s.vlans[1]?.vid,
          packets: s.count,
          endReason: 5,
        }))
        .sort((a, b) => key(a).localeCompare(key(b)));
      expect(ours).toEqual(want);
      // The filler took the map, one record each.
      expect(records.filter((r) => r.destinationTransportPort === 9 && r.flowEndReason !== 5)).toHaveLength(
        16,
      );
    } finally {
      if (!stopped) await pipeline.stop();
    }
  });
});
