/**
 * TCP round-trip times on the flows: the handshake RTT the TC programs time, through a path whose
 * delay the test knows. There is no netem here: a forwarder in the middle namespace
 * (test/fixtures/delay_forwarder.py, the kernel's forwarding off) holds every frame from the client
 * side DELAY_MS and reports how long it really held each TCP segment, each way.
 */
import { type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { FLOW_FEATURE_RTT } from '../../src/datapath/flow-latency.js';
import { FlowDatapath } from '../../src/sources/flow-datapath.js';
import type { FlowRecord } from '../../src/records.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createRouted, type RoutedTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { buildBpf } from './flow-packets.js';

const FORWARDER = join(fileURLToPath(new URL('.', import.meta.url)), '..', 'fixtures', 'delay_forwarder.py');
const DELAY_MS = 20;
const PORT = 7600;
const SYN = 0x02;
const ACK = 0x10;

/** A TCP segment the forwarder passed on: L from the client side (delayed), R back. */
interface Held {
  dir: 'L' | 'R';
  flags: number;
  seq: number;
  ack: number;
  heldUs: number;
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
        const [dir, flags, seq, ack, heldUs] = line.split(' ');
        held.push({ dir: dir as 'L' | 'R', flags: +flags!, seq: +seq!, ack: +ack!, heldUs: +heldUs! });
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

  /** Connects from the client to the server's listener, sends a line and closes. */
  async function connectOnce(srcPort: number): Promise<void> {
    const server = topo.server.exec(
      'python3',
      [
        '-c',
        [
          'import socket',
          'l = socket.socket()',
          'l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
          `l.bind(("${topo.right.b.ipv4!}", ${PORT}))`,
          'l.listen(1)',
          'l.settimeout(10)',
          'print("listening", flush=True)',
          'c, _ = l.accept()',
          'c.settimeout(10)',
          'while c.recv(100): pass',
        ].join('\n'),
      ],
      { timeoutMs: 20_000 },
    );
    await topo.client.exec(
      'python3',
      [
        '-c',
        [
          'import socket, time',
          'for _ in range(200):',
          '    s = socket.socket()',
          '    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
          `    s.bind(("${topo.left.a.ipv4!}", ${srcPort}))`,
          '    try:',
          `        s.connect(("${topo.right.b.ipv4!}", ${PORT}))`,
          '        break',
          '    except ConnectionRefusedError:',
          '        s.close()',
          '        time.sleep(0.05)',
          's.sendall(b"hello\\n")',
          's.close()',
        ].join('\n'),
      ],
      { timeoutMs: 20_000 },
    );
    await server;
  }

  it('times the handshake within 1 ms of the delay the path added, on both ends', async () => {
    const client = attach('client');
    const server = attach('server');
    client.setFeatures(FLOW_FEATURE_RTT);
    server.setFeatures(FLOW_FEATURE_RTT);
    const srcPort = 42600;
    await connectOnce(srcPort);

    // The handshake that completed: the SYN-ACK the client accepted, the SYN and ACK around it.
    const synAck = held.filter((h) => h.dir === 'R' && h.flags === (SYN | ACK)).pop()!;
    const syn = held.find((h) => h.dir === 'L' && h.flags === SYN && h.seq + 1 === synAck.ack)!;
    const ack = held.find(
      (h) => h.dir === 'L' && (h.flags & (SYN | ACK)) === ACK && h.ack === synAck.seq + 1,
    )!;
    expect(syn).toBeDefined();
    expect(ack).toBeDefined();
    expect(syn.heldUs).toBeGreaterThanOrEqual(DELAY_MS * 1000);

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
    expect(measured(atClient)).toEqual([
      { direction: 0, from: PORT, rtt: true },
      { direction: 1, from: srcPort, rtt: false },
    ]);
    expect(measured(atServer)).toEqual([
      { direction: 0, from: srcPort, rtt: true },
      { direction: 1, from: PORT, rtt: false },
    ]);
    // Client: SYN out, held on the way there, SYN-ACK back; server: SYN-ACK out, ACK back held.
    const clientPath = syn.heldUs + synAck.heldUs;
    const serverPath = synAck.heldUs + ack.heldUs;
    expect(Math.abs(atClient[0]!.rtt! - clientPath)).toBeLessThanOrEqual(1000);
    expect(Math.abs(atServer[0]!.rtt! - serverPath)).toBeLessThanOrEqual(1000);
  });

  it('measures nothing with the feature off', async () => {
    const client = attach('client');
    await connectOnce(42601);
    const records = client.evictFlows(0).filter((r) => r.protocolIdentifier === 6);
    expect(records).toHaveLength(2);
    expect(records.map((r) => r.tcpHandshakeRttMicroseconds)).toEqual([undefined, undefined]);
  });
});
