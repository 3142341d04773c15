/**
 * `ebpf_flows` with `rtt: true` in a pipeline from YAML: the handshake RTT and the kernel's
 * smoothed RTT on the flows, and a tracepoint the kernel does not have gives one warning while
 * the handshake RTT and the flows run on.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { ECHO, requestResponse, tcpClientScript, tcpServerScript } from '../fixtures/tcp-scripts.js';
import { startEbpfPipeline, WARN } from './ebpf-pipeline.js';
import { buildBpf } from './flow-packets.js';

const PORT = 7650;

kernelDescribe('ebpf_flows with rtt in a pipeline', () => {
  let pair: PairTopology;
  let pinRoot: string;

  beforeAll(async () => {
    buildBpf();
    pair = await createPair({ prefix: 'rxlrp' });
    pinRoot = makeBpffsDir('rxlrp');
  });
  afterAll(() => cleanup.dispose());

  const start = (name: string, options: string) =>
    startEbpfPipeline({
      name: `latency-${name}`,
      iface: pair.link.b.ifname,
      netns: pair.server.name,
      pinRoot,
      options,
    });

  /** One connection from the client to the server: ten request/response rounds. */
  async function exchange(srcPort: number): Promise<void> {
    const server = pair.server.exec('python3', ['-c', tcpServerScript(pair.link.b.ipv4!, PORT, ECHO)], {
      timeoutMs: 20_000,
    });
    await pair.client.exec(
      'python3',
      ['-c', tcpClientScript(pair.link.a.ipv4!, srcPort, pair.link.b.ipv4!, PORT, requestResponse(10))],
      { timeoutMs: 20_000 },
    );
    await server;
  }

  /** The server's ingress flow of the connection: the one both RTTs land on. */
  const inbound = (records: FlowRecord[], srcPort: number) =>
    records
      .filter((r) => r.sourceTransportPort === srcPort && r.flowDirection === 0)
      .map((r) => ({
        handshake: r.tcpHandshakeRttMicroseconds !== undefined && r.tcpHandshakeRttMicroseconds > 0,
        smoothed: r.tcpSmoothedRttMicroseconds !== undefined && r.tcpSmoothedRttMicroseconds > 0,
      }));

  it('puts the handshake and the smoothed RTT on the flow, with no warning', async () => {
    const { pipeline, collected, logs } = await start('rtt-on', '    rtt: true');
    await exchange(43650);
    await pipeline.stop();
    expect(logs.filter((l) => l.level >= WARN)).toEqual([]);
    expect(inbound(collected(), 43650)).toEqual([{ handshake: true, smoothed: true }]);
  });

  it('with a tracepoint the kernel does not have: one warning naming it, the handshake RTT on', async () => {
    const { pipeline, collected, logs } = await start(
      'rtt-nohook',
      '    rtt: true\n    rtt_hook: rxflow_no_such_tracepoint',
    );
    await exchange(43651);
    await pipeline.stop();
    const warnings = logs.filter((l) => l.level >= WARN);
    expect(warnings.map((l) => l.hook)).toEqual(['tp_btf/rxflow_no_such_tracepoint']);
    expect(warnings[0]!.msg).toMatch(
      /^smoothed rtt off: the rtt program cannot run on tp_btf\/rxflow_no_such_tracepoint/,
    );
    expect(inbound(collected(), 43651)).toEqual([{ handshake: true, smoothed: false }]);
  });
});
