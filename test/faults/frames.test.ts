/**
 * Every frame the flow program sees ends in a record or a kernel counter the ledger shows. Crafted
 * frames of each kind that once vanished are sent through a real veth by the project's traffic
 * generator (a packet socket), `rxflow run` counts them on the receiving end and writes records to
 * a file; per kind, the frames the generator sent must equal the packets of that kind's records
 * (read back from the file) plus what the ledger reports as dropped for the kernel's counter, and
 * the same counter must show in `rxflow status` and on the metrics endpoint.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { readStatus } from '../../src/cli/status.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { freePort } from '../fixtures/nats.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendFrames } from '../fixtures/traffic.js';
import { flowsSource, useRunSetup } from '../fixtures/run.js';
import { Cli } from '../kernel/cli-helpers.js';
import {
  ETH_ARP,
  ETH_IPV4,
  ETH_IPV6,
  ETH_TEB,
  ethernet,
  geneve,
  ipv4,
  ipv6,
  udp,
  vxlan,
} from '../kernel/flow-packets.js';

/** A unicast MAC no interface has: the receiving kernel drops IP frames to it after TC saw them. */
const NOWHERE = '02:00:00:00:ff:02';
const A4 = { src: '198.51.100.1', dst: '198.51.100.2' };
const A6 = { src: '2001:db8:f::1', dst: '2001:db8:f::2' };

/** An ARP request body (28 bytes) padded to the 60-byte Ethernet minimum. */
const arpBody = (): Uint8Array => {
  const b = new Uint8Array(46);
  b.set([0, 1, 8, 0, 6, 4, 0, 1]);
  return b;
};

interface Kind {
  name: string;
  /** Source MAC of the outermost header: tells this kind's records apart. */
  mac: string;
  frame: Uint8Array;
  count: number;
  /** What its records look like, or 'beyond_parser_limits' for frames the kernel only counts. */
  expect: Partial<FlowRecord> | 'beyond_parser_limits';
}

const dstopts = { type: 60, body: [1, 4, 0, 0, 0, 0] };
const innerArp = ethernet({ type: ETH_ARP, src: '02:00:00:00:0e:01', dst: 'ff:ff:ff:ff:ff:ff' }, arpBody());
/** The inner frame that carried 1,000 unseen payload bytes per packet. */
const innerLocal = ethernet({ type: 0x88b5, src: '02:00:00:00:0e:02' }, new Uint8Array(1000));

const KINDS: Kind[] = [
  {
    name: 'ARP',
    mac: '02:00:00:00:01:01',
    frame: ethernet({ type: ETH_ARP, src: '02:00:00:00:01:01', dst: 'ff:ff:ff:ff:ff:ff' }, arpBody()),
    count: 7,
    expect: { ipVersion: 0, ethernetType: ETH_ARP, destinationMacAddress: 'ff:ff:ff:ff:ff:ff' },
  },
  {
    name: 'ethertype 0x88b5',
    mac: '02:00:00:00:02:01',
    frame: ethernet({ type: 0x88b5, src: '02:00:00:00:02:01', dst: NOWHERE }, new Uint8Array(300)),
    count: 5,
    expect: { ipVersion: 0, ethernetType: 0x88b5, destinationMacAddress: NOWHERE },
  },
  {
    name: 'VXLAN carrying ARP',
    mac: '02:00:00:00:03:01',
    frame: ethernet(
      { type: ETH_IPV4, src: '02:00:00:00:03:01', dst: NOWHERE },
      ipv4({ ...A4, proto: 17 }, udp(40003, 4789, vxlan(42, innerArp))),
    ),
    count: 4,
    expect: {
      ipVersion: 4,
      sourceIPv4Address: A4.src,
      destinationIPv4Address: A4.dst,
      protocolIdentifier: 17,
      sourceTransportPort: 40003,
      destinationTransportPort: 4789,
      ethernetType: ETH_IPV4,
    },
  },
  {
    name: 'VXLAN carrying 1,000 bytes of ethertype 0x88b5',
    mac: '02:00:00:00:04:01',
    frame: ethernet(
      { type: ETH_IPV4, src: '02:00:00:00:04:01', dst: NOWHERE },
      ipv4({ ...A4, proto: 17 }, udp(40004, 4789, vxlan(42, innerLocal))),
    ),
    count: 6,
    expect: {
      ipVersion: 4,
      protocolIdentifier: 17,
      sourceTransportPort: 40004,
      destinationTransportPort: 4789,
    },
  },
  {
    name: 'GENEVE carrying ARP',
    mac: '02:00:00:00:05:01',
    frame: ethernet(
      { type: ETH_IPV6, src: '02:00:00:00:05:01', dst: NOWHERE },
      ipv6({ ...A6, next: 17 }, udp(40005, 6081, geneve(7, ETH_TEB, [0, 1, 2, 3, 4, 5, 6, 7], innerArp))),
    ),
    count: 3,
    expect: {
      ipVersion: 6,
      sourceIPv6Address: A6.src,
      destinationIPv6Address: A6.dst,
      protocolIdentifier: 17,
      sourceTransportPort: 40005,
      destinationTransportPort: 6081,
    },
  },
  {
    // The receiving veth moves the outer tag into the skb's metadata: three stay in the data, one
    // more than the parser walks.
    name: 'IPv4 under four VLAN tags',
    mac: '02:00:00:00:06:01',
    frame: ethernet(
      {
        type: ETH_IPV4,
        src: '02:00:00:00:06:01',
        dst: NOWHERE,
        vlans: [
          { tpid: 0x88a8, vid: 1 },
          { tpid: 0x8100, vid: 2 },
          { tpid: 0x8100, vid: 3 },
          { tpid: 0x8100, vid: 4 },
        ],
      },
      ipv4({ ...A4, proto: 17 }, udp(40006, 53, new Uint8Array(64))),
    ),
    count: 6,
    expect: 'beyond_parser_limits',
  },
  {
    name: 'IPv6 with 7 extension headers',
    mac: '02:00:00:00:07:01',
    frame: ethernet(
      { type: ETH_IPV6, src: '02:00:00:00:07:01', dst: NOWHERE },
      ipv6({ ...A6, next: 17, ext: new Array(7).fill(dstopts) as (typeof dstopts)[] }, udp(40007, 53)),
    ),
    count: 5,
    expect: 'beyond_parser_limits',
  },
];

kernelDescribe('every crafted frame ends in a record or a kernel counter the ledger shows', () => {
  const run = useRunSetup('frames');

  it('frames sent = packets in records + kernel counters, per kind; the counter in status, ledger log and metrics', async () => {
    const { topo, pinRoot, runDir } = run;
    const out = join(runDir, 'flows.jsonl');
    const socket = join(runDir, 'frames.sock');
    const port = await freePort();
    const file = join(runDir, 'frames.yaml');
    writeFileSync(
      file,
      `${flowsSource(
        { topo, pinRoot },
        {
          instance: `frames${process.pid}`,
          options: { directions: '[ingress]', eviction_interval_ms: '200ms' },
        },
      )}sinks:
  out: {type: file, inputs: [flows], path: ${out}}
  metrics: {type: otel_metrics, inputs: [flows], prometheus_port: ${port}}
`,
    );
    const cli = new Cli(['run', file, '--status-socket', socket], {
      RXFLOW_RUN_DIR: runDir,
      RXFLOW_LOG_LEVEL: 'info',
    });
    await cli.until((c) => c.logs().some((l) => l.msg === 'ready'), "the 'ready' log");

    const limitDrops = async (): Promise<number> =>
      (await readStatus(socket)).ledger.dropped.beyond_parser_limits ?? 0;
    let counted = 0;
    let sentTotal = 0;
    for (const kind of KINDS) {
      const sent = await sendFrames({
        from: topo.client,
        ifname: topo.link.a.ifname,
        frame: kind.frame,
        count: kind.count,
      });
      expect(sent).toEqual({ sent: kind.count, bytes: kind.count * kind.frame.length });
      sentTotal += sent.sent;
      if (kind.expect !== 'beyond_parser_limits') continue;
      // Kinds that share the counter are sent one after the other, each waited for: per kind.
      counted += kind.count;
      const deadline = Date.now() + 10_000;
      while ((await limitDrops()) < counted && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      expect([kind.name, await limitDrops()]).toEqual([kind.name, counted]);
    }

    const status = new Cli(['status', '--socket', socket]);
    expect(await status.exited).toEqual({ code: 0, signal: null });
    expect(status.stdout).toContain(`beyond_parser_limits ${counted}`);
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(
      new RegExp(`^rxflow_ledger_dropped_total\\{reason="beyond_parser_limits"\\} ${counted}$`, 'm'),
    );

    cli.signal('SIGTERM');
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    const ledger = cli.logs().at(-1)!;
    expect(ledger).toMatchObject({ msg: 'ledger', dropped: { beyond_parser_limits: counted } });
    const kernelCounted = (ledger.dropped as Record<string, number>).beyond_parser_limits!;

    const records = readFileSync(out, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as FlowRecord);
    let inRecords = 0;
    for (const kind of KINDS) {
      const mine = records.filter((r) => r.sourceMacAddress === kind.mac);
      const packets = mine.reduce((n, r) => n + r.packetDeltaCount, 0);
      const bytes = mine.reduce((n, r) => n + r.layer2OctetDeltaCount!, 0);
      inRecords += packets;
      if (kind.expect === 'beyond_parser_limits') {
        // Only the counter: never a flow under a VLAN tag's ethertype or an extension header's number.
        expect([kind.name, mine]).toEqual([kind.name, []]);
        continue;
      }
      expect([kind.name, packets, bytes]).toEqual([kind.name, kind.count, kind.count * kind.frame.length]);
      for (const r of mine) expect(r).toMatchObject({ ...kind.expect, flowDirection: 0 });
      expect(mine.some((r) => r.encapsulationType !== undefined)).toBe(false);
    }
    // Every frame the generator sent, exactly once: in a record of its kind or in the counter.
    expect(inRecords + kernelCounted).toBe(sentTotal);
    expect(records.some((r) => r.protocolIdentifier === 60 || r.ethernetType === 0x8100)).toBe(false);
  });
});
