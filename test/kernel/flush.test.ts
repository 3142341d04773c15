/**
 * `rxflow flush` (or SIGUSR1) on a running pipeline: the kernel flow map is read and emptied at once, long
 * before its eviction interval, and the flows reach the file sink with the generator's exact counts.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cleanup, makeBpffsDir, makeTempDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink } from '../fixtures/traffic.js';
import { Cli, assertBuilt } from './cli-helpers.js';

interface Line {
  sourceTransportPort: number;
  destinationTransportPort: number;
  flowDirection: number;
  packetDeltaCount: number;
  octetDeltaCount: number;
}

kernelDescribe('rxflow flush', () => {
  let topo: PairTopology;
  let pinRoot: string;
  let dir: string;

  beforeAll(async () => {
    assertBuilt();
    topo = await createPair({ prefix: 'fwflu' });
    pinRoot = makeBpffsDir('fwflu');
    dir = makeTempDir('fwflu');
  });
  afterAll(() => cleanup.dispose());

  it('reads and empties the kernel map at once: the flows are in the file long before the 10 min eviction', async () => {
    const out = join(dir, 'flows.jsonl');
    const file = join(dir, 'fwflush.yaml');
    writeFileSync(
      file,
      `sources:
  flows:
    type: ebpf_flows
    netns: ${topo.server.name}
    interfaces: [${topo.link.b.ifname}]
    instance: fwmetricsflush
    pin_root: ${pinRoot}
    eviction_interval_ms: 10m
sinks:
  out: {type: file, inputs: [flows], path: ${out}}
`,
    );
    const socket = join(dir, 'fwflush.sock');
    const run = new Cli(['run', file, '--status-socket', socket]);
    await run.until((c) => c.logs().some((l) => l.msg === 'ready'), "the 'ready' log");

    const sink = await startUdpSink({ ns: topo.server, port: 6201, family: 4, count: 30 });
    const sent = await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 6201,
      count: 30,
      payloadBytes: 100,
      srcPort: 42001,
    });
    expect((await sink.result).received).toBe(30);
    const lines = (): Line[] =>
      existsSync(out)
        ? readFileSync(out, 'utf8')
            .split('\n')
            .filter((l) => l !== '')
            .map((l) => JSON.parse(l) as Line)
        : [];
    const flow = () =>
      lines().filter((l) => l.sourceTransportPort === 42001 && l.destinationTransportPort === 6201);
    expect(flow()).toEqual([]);

    const flush = new Cli(['flush', '--socket', socket]);
    expect(await flush.exited).toEqual({ code: 0, signal: null });
    expect(flush.stdout).toBe(`flush: pipeline fwflush (pid ${run.pid}): flows reading the kernel now\n`);
    await run.until(() => flow().length > 0, 'the flushed flow in the file', 10_000);
    // UDP 100 bytes + 8 + IPv4 20: IP octets as octetDeltaCount counts them.
    expect(flow()).toEqual([
      expect.objectContaining({
        flowDirection: 0,
        packetDeltaCount: sent.sent,
        octetDeltaCount: sent.sent * 128,
      }),
    ]);

    // SIGUSR1 flushes as well; the first flush removed what it read, so this record holds only
    // the datagrams sent since.
    const again = await startUdpSink({ ns: topo.server, port: 6201, family: 4, count: 20 });
    await sendUdp({
      from: topo.client,
      to: topo.link.b.ipv4!,
      port: 6201,
      count: 20,
      payloadBytes: 100,
      srcPort: 42001,
    });
    expect((await again.result).received).toBe(20);
    run.signal('SIGUSR1');
    await run.until(() => flow().length > 1, 'the flow flushed by SIGUSR1', 10_000);
    expect(flow().map((l) => l.packetDeltaCount)).toEqual([30, 20]);

    // The drain's final eviction finds nothing more of the flow.
    run.signal('SIGTERM');
    expect(await run.exited).toEqual({ code: 0, signal: null });
    expect(flow().map((l) => l.packetDeltaCount)).toEqual([30, 20]);
  });
});
