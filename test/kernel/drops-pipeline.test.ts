/**
 * `ebpf_flows` with `drops: true` in a pipeline from YAML: records of flows dropped by an nftables
 * rule carry the drops with the kernel's reason, drops on no flow are logged by reason, and a hook
 * the kernel does not have gives one warning while the flows run on.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp } from '../fixtures/traffic.js';
import { startEbpfPipeline, WARN } from './ebpf-pipeline.js';
import { buildBpf } from './flow-packets.js';

kernelDescribe('ebpf_flows with drops in a pipeline', () => {
  let pair: PairTopology;
  let pinRoot: string;
  const table = `dropspl${process.pid}`;

  beforeAll(async () => {
    buildBpf();
    pair = await createPair({ prefix: 'rxdp' });
    pinRoot = makeBpffsDir('rxdp');
    const rules = join(tmpdir(), `rxflow-drops-pl-${process.pid}.nft`);
    writeFileSync(
      rules,
      [
        `add table inet ${table}`,
        `add counter inet ${table} dropped`,
        `add chain inet ${table} input { type filter hook input priority 0; policy accept; }`,
        `add rule inet ${table} input udp dport 7301 counter name dropped drop`,
        `add rule inet ${table} input udp dport 7302 counter name dropped drop`,
      ].join('\n') + '\n',
    );
    try {
      await pair.server.exec('nft', ['-f', rules]);
    } finally {
      rmSync(rules, { force: true });
    }
  });
  afterAll(() => cleanup.dispose());

  async function nftDropped(): Promise<number> {
    const { stdout } = await pair.server.exec('nft', ['-j', 'list', 'counter', 'inet', table, 'dropped']);
    const doc = JSON.parse(stdout) as { nftables: { counter?: { packets: number } }[] };
    return doc.nftables.find((e) => e.counter !== undefined)!.counter!.packets;
  }

  const start = (name: string, options: string) =>
    startEbpfPipeline({
      name,
      iface: pair.link.b.ifname,
      netns: pair.server.name,
      pinRoot,
      options,
      directions: ['ingress'],
    });

  it('puts N packets dropped by nftables on their flow with reason NETFILTER_DROP, exactly', async () => {
    const { pipeline, collected, logs } = await start('drops-on', '    drops: true');
    const before = await nftDropped();
    const N = 50;
    const sent = await sendUdp({
      from: pair.client,
      to: pair.link.b.ipv4!,
      port: 7301,
      count: N,
      payloadBytes: 80,
      srcPort: 43001,
    });
    expect([sent.sent, (await nftDropped()) - before]).toEqual([N, N]);
    await pipeline.stop();
    const flows = collected().filter((r) => r.destinationTransportPort === 7301);
    // Dropped octets are IP octets, as octetDeltaCount: IPv4 header, UDP header, payload.
    expect(
      flows.map((r) => ({
        packets: r.packetDeltaCount,
        dropped: r.droppedPacketDeltaCount,
        droppedBytes: r.droppedOctetDeltaCount,
        reason: r.dropReason,
      })),
    ).toEqual([{ packets: N, dropped: N, droppedBytes: N * (20 + 8 + 80), reason: 'NETFILTER_DROP' }]);
    expect(logs.filter((l) => l.level >= WARN)).toEqual([]);
  });

  it('with a hook the kernel does not have: one warning naming it, and the flows are counted', async () => {
    const { pipeline, collected, logs } = await start(
      'drops-nohook',
      '    drops: true\n    drops_hook: rxflow_no_such_tracepoint',
    );
    const N = 20;
    await sendUdp({
      from: pair.client,
      to: pair.link.b.ipv4!,
      port: 7302,
      count: N,
      payloadBytes: 80,
      srcPort: 43002,
    });
    await pipeline.stop();
    const warnings = logs.filter((l) => l.level >= WARN);
    expect(warnings.map((l) => l.hook)).toEqual(['tp_btf/rxflow_no_such_tracepoint']);
    expect(warnings[0]!.msg).toMatch(
      /^drops off: the drop program cannot run on tp_btf\/rxflow_no_such_tracepoint/,
    );
    const flows = collected().filter((r) => r.destinationTransportPort === 7302);
    expect(flows.map((r) => [r.packetDeltaCount, r.droppedPacketDeltaCount])).toEqual([[N, undefined]]);
  });
});
