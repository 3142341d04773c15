/**
 * One run, four outputs: `rxflow run` counts crafted frames on a veth (IPv4, IPv6, an 802.1Q
 * tagged IPv4 frame, a layer-2 frame) and writes each record to a JSON-lines file and to three
 * ipfix sinks, one over UDP, one over TCP and one over UDP with rxflow's own elements under an
 * enterprise number, each collected by its own nfcapd. nfdump must read back exactly the records
 * of the file: the same flows with the same packets and bytes; tshark must find the namespace the
 * records carry (rxflow's element 11) in the third sink's records.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import type { FlowRecord } from '../../src/records/flow.js';
import { Nfcapd, TsharkCapture, tcpToUdp, type NfdumpFlow } from '../fixtures/ipfix.js';
import { freePort } from '../fixtures/nats.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendFrames } from '../fixtures/traffic.js';
import { flowsSource, useRunSetup } from '../fixtures/run.js';
import { Cli } from './cli-helpers.js';
import { ETH_ARP, ETH_IPV4, ETH_IPV6, ethernet, ipv4, ipv6, udp } from './flow-packets.js';

/** A unicast MAC no interface has: the receiving kernel drops IP frames to it after TC saw them. */
const NOWHERE = '02:00:00:00:ff:02';

const KINDS = [
  {
    name: 'IPv4',
    frame: ethernet(
      { type: ETH_IPV4, src: '02:00:00:00:11:01', dst: NOWHERE },
      ipv4({ src: '198.51.100.1', dst: '198.51.100.2', proto: 17 }, udp(41001, 4001, new Uint8Array(100))),
    ),
    count: 9,
  },
  {
    name: 'IPv6',
    frame: ethernet(
      { type: ETH_IPV6, src: '02:00:00:00:12:01', dst: NOWHERE },
      ipv6({ src: '2001:db8:e::1', dst: '2001:db8:e::2', next: 17 }, udp(41002, 4002, new Uint8Array(300))),
    ),
    count: 7,
  },
  {
    name: 'IPv4 under an 802.1Q tag',
    frame: ethernet(
      { type: ETH_IPV4, src: '02:00:00:00:13:01', dst: NOWHERE, vlans: [{ tpid: 0x8100, vid: 42 }] },
      ipv4({ src: '198.51.100.3', dst: '198.51.100.4', proto: 17 }, udp(41003, 4003, new Uint8Array(60))),
    ),
    count: 5,
  },
  {
    name: 'ARP (layer 2)',
    frame: ethernet(
      { type: ETH_ARP, src: '02:00:00:00:14:01', dst: 'ff:ff:ff:ff:ff:ff' },
      new Uint8Array(46),
    ),
    count: 3,
  },
];

/** What both sides say of a flow record: its MAC, addresses, ports, protocol, packets and bytes. */
function fromRecord(r: FlowRecord): string {
  return [
    r.sourceMacAddress,
    r.sourceIPv4Address ?? r.sourceIPv6Address ?? '',
    r.destinationIPv4Address ?? r.destinationIPv6Address ?? '',
    r.sourceTransportPort,
    r.destinationTransportPort,
    r.protocolIdentifier,
    r.packetDeltaCount,
    r.octetDeltaCount,
  ].join(' ');
}

function fromNfdump(f: NfdumpFlow): string {
  return [
    f.in_src_mac,
    f.src4_addr ?? f.src6_addr ?? '',
    f.dst4_addr ?? f.dst6_addr ?? '',
    f.src_port,
    f.dst_port,
    f.proto,
    f.in_packets,
    f.in_bytes,
  ].join(' ');
}

kernelDescribe('ipfix sinks in the same run as a file sink', () => {
  const run = useRunSetup('ipfx');

  it("nfdump reads over UDP, over TCP and beside rxflow's own elements exactly the records the file holds", async () => {
    const { topo, pinRoot, runDir } = run;
    const udpCollector = await Nfcapd.start();
    const tcpCollector = await Nfcapd.start();
    const ownCollector = await Nfcapd.start();
    const capture = await TsharkCapture.start(`udp port ${ownCollector.port}`);
    const tcpPort = await freePort();
    const bridge = await tcpToUdp(tcpCollector.port, tcpPort);
    const out = join(runDir, 'flows.jsonl');
    const file = join(runDir, 'ipfix.yaml');
    writeFileSync(
      file,
      `${flowsSource(
        { topo, pinRoot },
        {
          instance: `ipfx${process.pid}`,
          options: { directions: '[ingress]', eviction_interval_ms: '200ms' },
        },
      )}sinks:
  out: {type: file, inputs: [flows], path: ${out}}
  overudp: {type: ipfix, inputs: [flows], collector: '127.0.0.1:${udpCollector.port}'}
  overtcp: {type: ipfix, inputs: [flows], collector: '127.0.0.1:${tcpPort}', transport: tcp, max_message_bytes: 1400}
  withown: {type: ipfix, inputs: [flows], collector: '127.0.0.1:${ownCollector.port}', enterprise_number: 32473}
`,
    );
    const cli = new Cli(['run', file, '--status-socket', join(runDir, 'ipfx.sock')], {
      RXFLOW_RUN_DIR: runDir,
      RXFLOW_LOG_LEVEL: 'info',
    });
    await cli.until((c) => c.logs().some((l) => l.msg === 'ready'), "the 'ready' log");
    for (const kind of KINDS) {
      const sent = await sendFrames({
        from: topo.client,
        ifname: topo.link.a.ifname,
        frame: kind.frame,
        count: kind.count,
      });
      expect([kind.name, sent.sent]).toEqual([kind.name, kind.count]);
    }
    cli.signal('SIGTERM');
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    await bridge.ended;
    const overUdp = await udpCollector.stop();
    const overTcp = await tcpCollector.stop();
    await capture.stop();
    const withOwn = await ownCollector.stop();
    await bridge.close();
    udpCollector.remove();
    tcpCollector.remove();
    ownCollector.remove();

    const records = readFileSync(out, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as FlowRecord);
    // Each kind's frames are all in the file (the outside count is the generator's).
    for (const kind of KINDS) {
      const src = `02:00:00:00:${(0x11 + KINDS.indexOf(kind)).toString(16)}:01`;
      const packets = records
        .filter((r) => r.sourceMacAddress === src)
        .reduce((n, r) => n + r.packetDeltaCount, 0);
      expect([kind.name, packets]).toEqual([kind.name, kind.count]);
    }
    const expected = records.map(fromRecord).sort();
    expect(overUdp.map(fromNfdump).sort()).toEqual(expected);
    expect(overTcp.map(fromNfdump).sort()).toEqual(expected);
    expect(withOwn.map(fromNfdump).sort()).toEqual(expected);
    expect(udpCollector.output).toContain('Sequence Errors: 0, Bad Packets: 0');
    expect(tcpCollector.output).toContain('Sequence Errors: 0, Bad Packets: 0');
    expect(ownCollector.output).toContain('Sequence Errors: 0, Bad Packets: 0');
    // The flows were counted in the server's namespace: each record says so, under element 11.
    expect(new Set(records.map((r) => r.networkNamespace))).toEqual(new Set([topo.server.name]));
    const own = capture
      .flows(`udp.port==${ownCollector.port},cflow`)
      .map(
        (f) =>
          `${f.fields.get('cflow.srcmac')![0]} ${Buffer.from(f.enterprise.get(11)!.hex, 'hex').toString()}`,
      );
    expect(own.sort()).toEqual(records.map((r) => `${r.sourceMacAddress} ${r.networkNamespace}`).sort());
    // The ledger of each sink says what the collectors and the file hold.
    const n = records.length;
    const sink = (id: string) => ({ id, handed: n, exported: n, dropped: {}, inFlight: 0 });
    expect(cli.logs().at(-1)).toMatchObject({
      msg: 'ledger',
      sinks: [sink('out'), sink('overudp'), sink('overtcp'), sink('withown')],
    });
  });
});
