/**
 * Shared set-up of the firewall kernel tests: frames for BPF_PROG_TEST_RUN (built from the flow
 * tests' frame blocks), a firewall loaded on `lo` for test runs, and ring-buffer drains.
 */
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { FirewallCollection, type FirewallLoadOptions } from '../../src/datapath/firewall/index.js';
import { parsePolicy } from '../../src/config/firewall-policy.js';
import {
  decodeAuditEvent,
  decodeSessionEvent,
  type AuditEvent,
  type FirewallSessionEvent,
} from '../../src/datapath/firewall/types.js';
import type { RingBufferReader } from '../../src/datapath/index.js';
import { cleanup, killSync, makeBpffsDir } from '../fixtures/cleanup.js';
import type { Netns, PairTopology } from '../fixtures/netns.js';
import {
  ETH_IPV4,
  ETH_IPV6,
  ETH_TEB,
  ethernet,
  geneve,
  icmp,
  ipv4,
  ipv6,
  tcp,
  udp,
  vxlan,
} from './flow-packets.js';

export const MAC_A = '02:00:00:00:00:0a';
export const MAC_B = '02:00:00:00:00:0b';

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_ACK = 0x10;

/** Ethernet + IPv4 or IPv6 (by the address) + UDP with `payload` zero bytes. */
export function udpFrame(src: string, dst: string, sport: number, dport: number, payload = 4): Uint8Array {
  const body = udp(sport, dport, new Uint8Array(payload));
  return src.includes(':')
    ? ethernet({ type: ETH_IPV6, src: MAC_A, dst: MAC_B }, ipv6({ src, dst, next: 17 }, body))
    : ethernet({ type: ETH_IPV4, src: MAC_A, dst: MAC_B }, ipv4({ src, dst, proto: 17 }, body));
}

export function tcpFrame(src: string, dst: string, sport: number, dport: number, flags: number): Uint8Array {
  return ethernet(
    { type: ETH_IPV4, src: MAC_A, dst: MAC_B },
    ipv4({ src, dst, proto: 6 }, tcp(sport, dport, flags)),
  );
}

/** An ICMP echo request (type 8) or reply (0) with identifier 1. */
export function icmpFrame(src: string, dst: string, type: number): Uint8Array {
  return ethernet({ type: ETH_IPV4, src: MAC_A, dst: MAC_B }, ipv4({ src, dst, proto: 1 }, icmp(type, 0)));
}

/** The inner frame without its outer Ethernet header, for tunnels carrying Ethernet. */
export interface OuterOptions {
  outerSrc: string;
  outerDst: string;
  outerSrcMac?: string;
  outerDstMac?: string;
  /** The outer UDP source port. */
  sport: number;
}

function outerUdp(o: OuterOptions, dport: number, payload: Uint8Array): Uint8Array {
  const body = udp(o.sport, dport, payload);
  const src = o.outerSrcMac ?? MAC_A;
  const dst = o.outerDstMac ?? MAC_B;
  return o.outerSrc.includes(':')
    ? ethernet({ type: ETH_IPV6, src, dst }, ipv6({ src: o.outerSrc, dst: o.outerDst, next: 17 }, body))
    : ethernet({ type: ETH_IPV4, src, dst }, ipv4({ src: o.outerSrc, dst: o.outerDst, proto: 17 }, body));
}

/** One GENEVE option: class, type and data (a multiple of 4 bytes). */
export function geneveOption(cls: number, type: number, data: number[]): number[] {
  if (data.length % 4) throw new Error('geneve option data is whole 4-byte words');
  return [cls >> 8, cls & 0xff, type, data.length / 4, ...data];
}

/** A GENEVE frame to UDP 6081 carrying `inner` (an Ethernet frame). */
export function geneveFrame(o: OuterOptions, vni: number, options: number[], inner: Uint8Array): Uint8Array {
  return outerUdp(o, 6081, geneve(vni, ETH_TEB, options, inner));
}

/** A VXLAN frame to UDP 4789 carrying `inner` (an Ethernet frame). */
export function vxlanFrame(o: OuterOptions, vni: number, inner: Uint8Array): Uint8Array {
  return outerUdp(o, 4789, vxlan(vni, inner));
}

/**
 * A firewall loaded (not attached) with its programs for test runs, pinned in a fresh bpffs
 * directory that the cleanup registry removes. `policy` is policy YAML.
 */
export function loadForTestRun(policy: string, opts: Partial<FirewallLoadOptions> = {}): FirewallCollection {
  const fw = FirewallCollection.load({ pinDir: makeBpffsDir('rxfw'), ingress: 'lo', ...opts });
  cleanup.register(`firewall ${fw.pinDir}`, () => fw.close({ unpin: true }));
  fw.applyPolicy(parsePolicy(policy, 'policy.yaml', {}));
  return fw;
}

export function drainAudit(reader: RingBufferReader): AuditEvent[] {
  const out: AuditEvent[] = [];
  reader.drain((view, offset, length) => out.push(decodeAuditEvent(view, offset, length)));
  return out;
}

export function drainSessionEvents(reader: RingBufferReader): FirewallSessionEvent[] {
  const out: FirewallSessionEvent[] = [];
  reader.drain((view, offset, length) => out.push(decodeSessionEvent(view, offset, length)));
  return out;
}

/** A policy: clients 198.51.100.0/24 may reach 203.0.113.2 on tcp/80 and udp/53; everything else is blocked. */
export const CLIENT_POLICY = `
networks:
  - cidr: 198.51.100.0/24
    policy: clients
  - cidr: 2001:db8:a::/48
    policy: clients
policies:
  clients:
    id: 7
    default_action: block
    rules:
      - destination: 203.0.113.2
        protocol: tcp
        port: 80
      - destination: 203.0.113.2/32
        protocol: udp
        port: 53
      - destination: 2001:db8:b::/64
        protocol: udp
        port: 53
`;

/** Polls `check` until it returns true; rejects with `what` after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * A node process inside a namespace that answers one JSON line per command line, in order; lines
 * it prints unasked (a server's "accepted") are kept in `notes`.
 */
export class NodeChild {
  readonly notes: Record<string, unknown>[] = [];
  readonly #child: ChildProcess;
  readonly #waiting: ((v: Record<string, unknown>) => void)[] = [];
  readonly #registration: { run(): void; release(): void };
  #stderr = '';

  constructor(ns: Netns, script: string, args: string[]) {
    this.#child = ns.spawn('node', ['--input-type=module', '-e', script, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const pid = this.#child.pid!;
    this.#registration = cleanup.register(`node child ${pid}`, () => killSync(pid, 0));
    this.#child.once('close', () => this.#registration.release());
    this.#child.stderr!.on('data', (c: Buffer) => (this.#stderr += c.toString()));
    createInterface({ input: this.#child.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as Record<string, unknown>;
      if (msg.note !== undefined) this.notes.push(msg);
      else this.#waiting.shift()?.(msg);
    });
  }

  /** Sends a command line and resolves with its answer. */
  request(line: string, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`node child: no answer to '${line}' in ${timeoutMs} ms: ${this.#stderr}`)),
        timeoutMs,
      );
      this.#waiting.push((v) => {
        clearTimeout(t);
        resolve(v);
      });
      this.#child.stdin!.write(`${line}\n`);
    });
  }

  stop(): void {
    this.#registration.run();
  }
}

/** Echoes every byte back on each accepted connection; notes {note:'accepted', count}. Args: host port. */
export const TCP_ECHO_SERVER = `
import net from 'node:net';
import { createInterface } from 'node:readline';
const [host, port] = process.argv.slice(1);
let count = 0;
const server = net.createServer((s) => {
  count++;
  console.log(JSON.stringify({ note: 'accepted', count }));
  s.on('data', (d) => s.write(d));
  s.on('error', () => {});
});
createInterface({ input: process.stdin }).on('line', () => console.log(JSON.stringify({ count })));
server.listen(Number(port), host, () => console.log(JSON.stringify({ note: 'listening' })));
`;

/**
 * Commands: 'connect ID HOST PORT TIMEOUT_MS' -> {connected, srcPort} or {error};
 * 'send ID BYTES' -> {echoed} once BYTES came back on connection ID.
 */
export const TCP_CLIENT = `
import net from 'node:net';
import { createInterface } from 'node:readline';
const socks = new Map();
const out = (v) => console.log(JSON.stringify(v));
createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, id, ...a] = line.split(' ');
  if (cmd === 'connect') {
    const [host, port, timeoutMs] = a;
    const s = net.connect({ host, port: Number(port) });
    const timer = setTimeout(() => { s.destroy(); out({ error: 'timeout' }); }, Number(timeoutMs));
    s.once('connect', () => { clearTimeout(timer); socks.set(id, s); out({ connected: true, srcPort: s.localPort }); });
    s.once('error', (e) => { clearTimeout(timer); out({ error: e.code }); });
  } else if (cmd === 'send') {
    const s = socks.get(id);
    const n = Number(a[0]);
    let got = 0;
    const onData = (d) => {
      got += d.length;
      if (got >= n) { s.off('data', onData); out({ echoed: got }); }
    };
    s.on('data', onData);
    s.write(Buffer.alloc(n, 0x61));
  }
});
`;

/** 'send HOST PORT HEX' sends a datagram from HOST:PORT bound by args; 'recv TIMEOUT_MS' -> {from, port, hex} or {timeout}. */
export const UDP_PEER = `
import dgram from 'node:dgram';
import { createInterface } from 'node:readline';
const [host, port] = process.argv.slice(1);
const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
const queue = [];
let waiter;
sock.on('message', (msg, rinfo) => {
  const m = { from: rinfo.address, port: rinfo.port, hex: msg.toString('hex') };
  if (waiter) { const w = waiter; waiter = undefined; w(m); } else queue.push(m);
});
const out = (v) => console.log(JSON.stringify(v));
sock.bind(Number(port), host, () => out({ note: 'bound' }));
createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, a, b, c] = line.split(' ');
  if (cmd === 'send') sock.send(Buffer.from(c, 'hex'), Number(b), a, (err) => out(err ? { error: err.code } : { sent: true }));
  else if (cmd === 'recv') {
    if (queue.length) return out(queue.shift());
    const t = setTimeout(() => { waiter = undefined; out({ timeout: true }); }, Number(a));
    waiter = (m) => { clearTimeout(t); out(m); };
  }
});
`;

/**
 * Turns delayed ACKs off on both ends of a pair (route option quickack): every segment a stack
 * sends for a request then goes out while the request is answered, not up to 40 ms later, after
 * a test compared the firewall's counts with the stack's (snmp).
 */
export async function quickAcks(topo: PairTopology): Promise<void> {
  for (const [ns, end] of [
    [topo.client, topo.link.a],
    [topo.server, topo.link.b],
  ] as const) {
    await ns.exec('ip', ['route', 'replace', '192.0.2.0/24', 'dev', end.ifname, 'quickack', '1']);
  }
}

/**
 * TCP segments a stack put on the wire between two snmp() reads: Tcp.OutSegs leaves out
 * retransmissions (a SYN sent again after its timeout, data sent again under load), which
 * Tcp.RetransSegs counts; a firewall sees both.
 */
export function tcpSegmentsSent(after: Record<string, number>, before: Record<string, number>): number {
  return (
    after['Tcp.OutSegs']! - before['Tcp.OutSegs']! + after['Tcp.RetransSegs']! - before['Tcp.RetransSegs']!
  );
}

/** Counters of /proc/net/snmp in a namespace, as 'Tcp.OutSegs', 'Ip.InReceives', ... */
export async function snmp(ns: Netns): Promise<Record<string, number>> {
  const { stdout } = await ns.exec('cat', ['/proc/net/snmp']);
  const lines = stdout.trim().split('\n');
  const out: Record<string, number> = {};
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const [proto, ...names] = lines[i]!.split(/\s+/);
    const values = lines[i + 1]!.split(/\s+/).slice(1);
    names.forEach((n, j) => (out[`${proto!.replace(':', '')}.${n}`] = Number(values[j])));
  }
  return out;
}
