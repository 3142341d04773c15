/**
 * TCP round-trip times on the flows: the handshake RTT the TC programs time, through a path whose
 * delay the test knows. There is no netem here: a forwarder in the middle namespace
 * (test/fixtures/delay_forwarder.py, the kernel's forwarding off) holds every frame from the client
 * side DELAY_MS and reports, for each TCP segment each way, when it took it in and when it sent
 * it on: the test knows the delay each packet really had on a loaded machine.
 */
import { type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { FLOW_FEATURE_RTT } from '../../src/datapath/flow/latency.js';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createRouted, type RoutedTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { ECHO, requestResponse, tcpClientScript, tcpServerScript } from '../fixtures/tcp-scripts.js';
import { buildBpf } from './flow-packets.js';

const FORWARDER = join(fileURLToPath(new URL('.', import.meta.url)), '..', 'fixtures', 'delay_forwarder.py');
const DELAY_MS = 20;
const PORT = 7600;
const SYN = 0x02;
/** Prints the socket c's tcp_info tcpi_rtt (u32 at offset 68): its smoothed RTT in us. */
const TCPI_RTT =
  'print("tcpi_rtt", struct.unpack_from("I", c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 68)[0], flush=True)';
const ACK = 0x10;

/**
 * A TCP segment the forwarder passed on: L from the client side (delayed), R back. Wall-clock
 * microseconds: rxUs when its sender transmitted it, sendUs and sentUs around its hand-over to
 * the receiver.
 */
interface Held {
  dir: 'L' | 'R';
  flags: number;
  seq: number;
  ack: number;
  rxUs: number;
  sendUs: number;
  sentUs: number;
}

kernelDescribe('TCP round-trip times on the flows', () => {
  let topo: RoutedTopology;
  let pinRoot: string;
  let forwarder: ChildProcess;
  const held: Held[] = [];
  const open: FlowDatapath[] = [];

  beforeAll(async () => {
    buildBpf();
    topo = await createRouted({ prefix: 'rxlat' });
    pinRoot = makeBpffsDir('rxlat');
    // The forwarder, not the router's kernel, carries the packets.
    await topo.router.sysctl({ 'net.ipv4.ip_forward': 0, 'net.ipv6.conf.all.forwarding': 0 });
    const { left, right } = topo;
    // Complete checksums: a frame the forwarder resends loses the kernel's offload marks.
    await topo.client.exec('ethtool', ['-K', left.a.ifname, 'tx', 'off']);
    await topo.server.exec('ethtool', ['-K', right.b.ifname, 'tx', 'off']);
    forwarder = topo.router.spawn(
      'python3',
      [
        FORWARDER,
        left.b.ifname,
        right.a.ifname,
        right.a.mac,
        right.b.mac,
        left.b.mac,
        left.a.mac,
        String(DELAY_MS),
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    cleanup.register(`delay forwarder ${forwarder.pid}`, () => forwarder.kill('SIGTERM'));
    const lines = createInterface({ input: forwarder.stdout! });
    const ready = new Promise<void>((resolve, reject) => {
      forwarder.once('exit', (code) => reject(new Error(`delay forwarder exited with ${code}`)));
      lines.on('line', (line) => {
        if (line === 'ready') return resolve();
        const [, flags, seq, ack, rxUs, sendUs, sentUs] = line.split(' ').map(Number);
        held.push({
          dir: line.startsWith('L') ? 'L' : 'R',
          flags: flags!,
          seq: seq!,
          ack: ack!,
          rxUs: rxUs!,
          sendUs: sendUs!,
          sentUs: sentUs!,
        });
      });
    });
    await ready;
  });
  afterEach(() => {
    for (const dp of open.splice(0)) dp.close();
  });
  afterAll(async () => {
    if (forwarder.exitCode === null) {
      forwarder.stdin!.end();
      await once(forwarder, 'exit');
    }
    await cleanup.dispose();
  });

  function attach(side: 'client' | 'server'): FlowDatapath {
    const end = side === 'client' ? topo.left.a : topo.right.b;
    const dp = FlowDatapath.open({
      interfaces: [end.ifname],
      netns: end.ns!.name,
      instance: `latency-rtt-${side}-${process.pid}`,
      pinRoot,
    });
    open.push(dp);
    return dp;
  }

  /**
   * Connects from the client to the server's listener, sends a line and closes. Returns the RTT
   * each end's TCP measured over the handshake (tcp_info tcpi_rtt, us, read before any data could
   * update it): the kernel's own figure for the same packets.
   */
  async function connectOnce(srcPort: number): Promise<{ client: number; server: number }> {
    const { client, server } = await converse(
      srcPort,
      `${TCPI_RTT}\nwhile c.recv(100): pass`,
      `${TCPI_RTT.replace('c.', 's.')}\ns.sendall(b"hello\\n")`,
    );
    const rttOf = (out: string) => Number(/^tcpi_rtt (\d+)$/m.exec(out)![1]);
    return { client: rttOf(client), server: rttOf(server) };
  }

  /** Runs the server (`serve`, with c) and the client (`talk`, with s); their outputs. */
  async function converse(srcPort: number, serve: string, talk: string) {
    const server = topo.server.exec('python3', ['-c', tcpServerScript(topo.right.b.ipv4!, PORT, serve)], {
      timeoutMs: 20_000,
    });
    const client = await topo.client.exec(
      'python3',
      ['-c', tcpClientScript(topo.left.a.ipv4!, srcPort, topo.right.b.ipv4!, PORT, talk)],
      { timeoutMs: 20_000 },
    );
    return { client: client.stdout, server: (await server).stdout };
  }

  it('times the handshake within 1 ms of the delay the path added, on both ends', async () => {
    const client = attach('client');
    const server = attach('server');
    client.setFeatures(FLOW_FEATURE_RTT);
    server.setFeatures(FLOW_FEATURE_RTT);
    const srcPort = 42600;
    const kernel = await connectOnce(srcPort);

    // The handshake that completed: the SYN-ACK the client accepted, the SYN and ACK around it.
    const synAck = held.filter((h) => h.dir === 'R' && h.flags === (SYN | ACK)).pop()!;
    const syn = held.find((h) => h.dir === 'L' && h.flags === SYN && h.seq + 1 === synAck.ack)!;
    const ack = held.find(
      (h) => h.dir === 'L' && (h.flags & (SYN | ACK)) === ACK && h.ack === synAck.seq + 1,
    )!;
    expect(syn).toBeDefined();
    expect(ack).toBeDefined();
    expect(syn.sendUs - syn.rxUs).toBeGreaterThanOrEqual(DELAY_MS * 1000);

    const rtt = (records: FlowRecord[]) =>
      records
        .filter((r) => r.protocolIdentifier === 6)
        .map((r) => ({
          direction: r.flowDirection,
          from: r.sourceTransportPort,
          rtt: r.tcpHandshakeRttMicroseconds,
        }))
        .sort((a, b) => a.direction - b.direction);
    const atClient = rtt(client.evictFlows(0));
    const atServer = rtt(server.evictFlows(0));
    // Only the ingress flow of the packet that completed the handshake carries it.
    const measured = (flows: ReturnType<typeof rtt>) =>
      flows.map((f) => ({ ...f, rtt: f.rtt !== undefined }));
    expect(measured(atClient), JSON.stringify(atClient)).toEqual([
      { direction: 0, from: PORT, rtt: true },
      { direction: 1, from: srcPort, rtt: false },
    ]);
    expect(measured(atServer), JSON.stringify(atServer)).toEqual([
      { direction: 0, from: srcPort, rtt: true },
      { direction: 1, from: PORT, rtt: false },
    ]);
    // Client: SYN out (the forwarder took it in) to SYN-ACK in (handed over to the client);
    // server: SYN-ACK out to ACK in. At least that long; and within 1 ms of what each end's TCP
    // measured for the same handshake. (On a loaded machine a receiving namespace may take the
    // frame in well after the forwarder handed it over, when ksoftirqd gets the CPU: TC and TCP
    // both see that later time, the forwarder cannot.)
    const agrees = (rtt: number, from: number, to: Held, tcp: number) => {
      const path = `rtt ${rtt} us, tcp ${tcp} us, path ${to.sendUs - from}..${to.sentUs - from} us`;
      expect(rtt, path).toBeGreaterThanOrEqual(to.sendUs - from - 1000);
      expect(Math.abs(rtt - tcp), path).toBeLessThanOrEqual(1000);
    };
    agrees(atClient[0]!.rtt!, syn.rxUs, synAck, kernel.client);
    agrees(atServer[0]!.rtt!, synAck.rxUs, ack, kernel.server);
  });

  it("puts the kernel's smoothed RTT on the flow, as ss -ti shows it for the socket", async () => {
    const client = attach('client');
    client.setFeatures(FLOW_FEATURE_RTT);
    client.enableRttProbe();
    const srcPort = 42602;
    // Ten request/response rounds, then the socket's RTT as ss shows it, while it is still open.
    const ss = `subprocess.run(["ss", "-tinH", "src", "${topo.left.a.ipv4!}:${srcPort}"], capture_output=True, text=True)`;
    const { client: stdout } = await converse(srcPort, ECHO, `${requestResponse(10)}\nprint(${ss}.stdout)`);
    const ssRtt = /\brtt:([\d.]+)\//.exec(stdout);
    expect(ssRtt, stdout).not.toBeNull();
    const ssUs = Number(ssRtt![1]) * 1000;

    const back = client
      .evictFlows(0)
      .filter((r) => r.protocolIdentifier === 6 && r.sourceTransportPort === PORT && r.flowDirection === 0);
    expect(back).toHaveLength(1);
    const { tcpSmoothedRttMicroseconds: srtt, tcpSmoothedRttMinMicroseconds: srttMin } = back[0]!;
    expect(srtt).toBeDefined();
    expect(Math.abs(srtt! - ssUs)).toBeLessThanOrEqual(0.2 * ssUs);
    expect(srttMin).toBeLessThanOrEqual(srtt!);
    // The path holds every segment at least DELAY_MS one way.
    expect(srttMin).toBeGreaterThanOrEqual(DELAY_MS * 1000);
    expect(client.rttProbe!.counts().matched).toBeGreaterThanOrEqual(10);
  });

  it('measures nothing with the feature off', async () => {
    const client = attach('client');
    await connectOnce(42601);
    const records = client.evictFlows(0).filter((r) => r.protocolIdentifier === 6);
    expect(records).toHaveLength(2);
    expect(records.map((r) => r.tcpHandshakeRttMicroseconds)).toEqual([undefined, undefined]);
  });
});
