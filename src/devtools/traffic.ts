import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { ExecResult, RunOptions } from './system.js';
import { killSync } from './system.js';
import { DevtoolError, toolPath } from './tools.js';

/** What the senders need of a namespace (src/devtools/netns.ts `TrafficNetns`). */
export interface TrafficNetns {
  readonly name: string;
  exec(file: string, args: string[], opts?: RunOptions): Promise<ExecResult>;
  spawn(file: string, args: string[], opts?: SpawnOptions): ChildProcess;
}

/**
 * Keeps track of a receiver process while it runs, so it is killed even if its owner is
 * interrupted: `release()` once it exited by itself, `run()` kills it now.
 */
export type TrackProcess = (pid: number, label: string) => { run(): void; release(): void };

/** Tracks nothing: the receiver is killed by `stop()` or ends by itself. */
const untracked: TrackProcess = (pid) => ({
  run: () => killSync(pid, 0),
  release: () => undefined,
});

/**
 * Exact traffic between namespaces. Every sender reports what the kernel accepted (each send's
 * return value; TCP_INFO for TCP; ping's own transmit count) and every function rejects unless
 * exactly the requested amount went out, so a test can hold a counter against `sent`.
 *
 * Sizes on the wire, as veth counters count them (Ethernet header, no FCS): see
 * {@link udpFrameBytes} and {@link icmpFrameBytes}. Keep payloads within the MTU (1472 bytes of
 * UDP payload over IPv4 at MTU 1500, 1452 over IPv6), or the kernel fragments and the packet count
 * changes. Pin neighbours (`Veth.pinNeighbours()`) first, or ARP / neighbour discovery adds packets.
 */

const ETH_HEADER = 14;
const UDP_HEADER = 8;
const ICMP_HEADER = 8;

export type IpFamily = 4 | 6;

function ipHeader(family: IpFamily): number {
  return family === 4 ? 20 : 40;
}

/** The family of an address literal. */
export function familyOf(address: string): IpFamily {
  return address.includes(':') ? 6 : 4;
}

/** Bytes of one UDP datagram on the wire: 14 + IP header (20 or 40) + 8 + payload. */
export function udpFrameBytes(family: IpFamily, payloadBytes: number): number {
  return ETH_HEADER + ipHeader(family) + UDP_HEADER + payloadBytes;
}

/** Bytes of one ICMP / ICMPv6 echo on the wire: 14 + IP header + 8 + payload. */
export function icmpFrameBytes(family: IpFamily, payloadBytes: number): number {
  return ETH_HEADER + ipHeader(family) + ICMP_HEADER + payloadBytes;
}

function lastJsonLine<T>(stdout: string, what: string): T {
  const line = stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as T;
  } catch (error) {
    throw new DevtoolError('ETRAFFIC', `${what}: unexpected output '${stdout.trim()}'`, { cause: error });
  }
}

export interface UdpSendOptions {
  /** The sending namespace. */
  from: TrafficNetns;
  /** Destination address (IPv4 or IPv6 literal). */
  to: string;
  port: number;
  /** Datagrams per flow. */
  count: number;
  payloadBytes: number;
  /** Number of flows, each from its own source port `srcPort + i`; default 1. */
  flows?: number;
  /** First source port; needed when `flows > 1`, else an ephemeral port is used. */
  srcPort?: number;
  /** Pause between datagrams, in microseconds; default none. */
  intervalUs?: number;
  timeoutMs?: number;
}

export interface UdpSendResult {
  /** Datagrams the kernel accepted: always `flows * count` (anything else rejects). */
  sent: number;
  payloadBytes: number;
  /** Bytes on the wire per datagram. */
  frameBytes: number;
  /** Sends the kernel refused for lack of buffers and that were made again. */
  retries: number;
  srcPortFirst: number;
  srcPortLast: number;
}

/** Sends exactly `flows * count` UDP datagrams of `payloadBytes` from a namespace. */
export async function sendUdp(opts: UdpSendOptions): Promise<UdpSendResult> {
  const flows = opts.flows ?? 1;
  const args = [
    'udp-send',
    '--dst',
    opts.to,
    '--port',
    String(opts.port),
    '--count',
    String(opts.count),
    '--size',
    String(opts.payloadBytes),
    '--flows',
    String(flows),
  ];
  if (opts.srcPort !== undefined) {
    args.push('--src-port', String(opts.srcPort));
  }
  if (opts.intervalUs !== undefined) {
    args.push('--interval-us', String(opts.intervalUs));
  }
  const { stdout } = await opts.from.exec(toolPath('traffic'), args, { timeoutMs: opts.timeoutMs ?? 60_000 });
  const r = lastJsonLine<Omit<UdpSendResult, 'frameBytes'>>(stdout, 'udp-send');
  const expected = flows * opts.count;
  if (r.sent !== expected) {
    throw new DevtoolError('ETRAFFIC', `udp-send to ${opts.to}: sent ${r.sent} of ${expected} datagrams`);
  }
  return { ...r, frameBytes: udpFrameBytes(familyOf(opts.to), opts.payloadBytes) };
}

/** A long-running receiver started by {@link startSink}. */
export interface Sink<T> {
  /** Resolves with the receiver's report once it is done. */
  result: Promise<T>;
  /** Kills the receiver if it is still running. */
  stop(): void;
}

/** Starts a `traffic` receiver in `ns` and resolves once it listens. */
async function startSink<T>(
  ns: TrafficNetns,
  args: string[],
  what: string,
  track: TrackProcess = untracked,
): Promise<Sink<T>> {
  const child = ns.spawn(toolPath('traffic'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const pid = child.pid;
  const registration = pid === undefined ? undefined : track(pid, `${what} ${pid}`);
  const closed = new Promise<number | null>((resolve) =>
    child.once('close', (code) => {
      registration?.release();
      resolve(code);
    }),
  );
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.done === true || first.value !== 'listening') {
    child.kill('SIGKILL');
    await closed;
    throw new DevtoolError(
      'ETRAFFIC',
      `${what} in ${ns.name}: did not start: ${stderr.trim() || 'no output'}`,
    );
  }
  const result = (async (): Promise<T> => {
    let last = '';
    for (let next = await lines.next(); next.done !== true; next = await lines.next()) {
      last = next.value;
    }
    const code = await closed;
    if (code !== 0) {
      throw new DevtoolError('ETRAFFIC', `${what} in ${ns.name}: exit ${code}: ${stderr.trim()}`);
    }
    return lastJsonLine<T>(last, what);
  })();
  // Callers may never await a sink they stop; keep its failure from becoming unhandled.
  result.catch(() => undefined);
  return {
    result,
    stop: () => registration?.run(),
  };
}

export interface UdpSinkResult {
  received: number;
  payloadBytes: number;
}

/**
 * Binds a UDP port in `ns` and counts datagrams until `count` arrived or `timeoutMs` passed.
 * Resolves once the socket is bound.
 */
export function startUdpSink(opts: {
  ns: TrafficNetns;
  port: number;
  family: IpFamily;
  count: number;
  timeoutMs?: number;
  track?: TrackProcess;
}): Promise<Sink<UdpSinkResult>> {
  return startSink<UdpSinkResult>(
    opts.ns,
    [
      'udp-sink',
      '--port',
      String(opts.port),
      '--family',
      String(opts.family),
      '--count',
      String(opts.count),
      '--timeout-ms',
      String(opts.timeoutMs ?? 10_000),
    ],
    'udp-sink',
    opts.track,
  );
}

export interface TcpOptions {
  /** The client's namespace. */
  from: TrafficNetns;
  /** The server's namespace; a one-connection server is started there on `port`. */
  server: TrafficNetns;
  /** The server's address as the client dials it. */
  to: string;
  port: number;
  bytes: number;
  srcPort?: number;
  timeoutMs?: number;
  /** Tracks the server process while it runs. */
  track?: TrackProcess;
}

export interface TcpResult {
  /** Bytes the client sent (always `bytes`) and the server received. */
  sent: number;
  received: number;
  /**
   * Segments the client sent, SYN, ACKs, data and FIN included (TCP_INFO `tcpi_segs_out`, read
   * after the server's FIN was acknowledged, so it covers the whole connection).
   */
  clientSegsOut: number;
  clientSegsIn: number;
  clientDataSegsOut: number;
  clientRetransmits: number;
  /** Segments the server sent, its SYN-ACK included. */
  serverSegsOut: number;
  serverSegsIn: number;
  /** Retransmitted segments of the server (a retransmitted SYN-ACK would make serverSegsOut short). */
  serverRetransmits: number;
  srcPort: number;
}

/**
 * One TCP connection: the client connects, sends `bytes`, shuts down its write side; the server
 * reads to the end and closes; the client waits for that close. So SYN, data, FIN and their ACKs
 * all cross the link, and the returned counters say how many segments each side sent.
 */
export async function sendTcp(opts: TcpOptions): Promise<TcpResult> {
  const timeoutMs = String(opts.timeoutMs ?? 20_000);
  const sink = await startSink<{ received: number; segsOut: number; segsIn: number; retransmits: number }>(
    opts.server,
    [
      'tcp-sink',
      '--port',
      String(opts.port),
      '--family',
      String(familyOf(opts.to)),
      '--timeout-ms',
      timeoutMs,
    ],
    'tcp-sink',
    opts.track,
  );
  try {
    const args = ['tcp-send', '--dst', opts.to, '--port', String(opts.port), '--bytes', String(opts.bytes)];
    if (opts.srcPort !== undefined) {
      args.push('--src-port', String(opts.srcPort));
    }
    args.push('--timeout-ms', timeoutMs);
    const { stdout } = await opts.from.exec(toolPath('traffic'), args, {
      timeoutMs: Number(timeoutMs) + 5000,
    });
    const c = lastJsonLine<{
      sent: number;
      segsOut: number;
      segsIn: number;
      dataSegsOut: number;
      retransmits: number;
      srcPort: number;
    }>(stdout, 'tcp-send');
    const s = await sink.result;
    if (c.sent !== opts.bytes || s.received !== opts.bytes) {
      throw new DevtoolError(
        'ETRAFFIC',
        `tcp to ${opts.to}:${opts.port}: client sent ${c.sent}, server received ${s.received} of ${opts.bytes} bytes`,
      );
    }
    return {
      sent: c.sent,
      received: s.received,
      clientSegsOut: c.segsOut,
      clientSegsIn: c.segsIn,
      clientDataSegsOut: c.dataSegsOut,
      clientRetransmits: c.retransmits,
      serverSegsOut: s.segsOut,
      serverSegsIn: s.segsIn,
      serverRetransmits: s.retransmits,
      srcPort: c.srcPort,
    };
  } finally {
    sink.stop();
  }
}

export interface PingOptions {
  from: TrafficNetns;
  to: string;
  count: number;
  payloadBytes: number;
  /** Seconds between echo requests; default 0.002 (the smallest ping allows). */
  intervalS?: number;
}

export interface PingResult {
  transmitted: number;
  received: number;
  /** Bytes on the wire per echo request (and per reply). */
  frameBytes: number;
}

/** `ping -c count -s payloadBytes`; rejects unless exactly `count` requests went out. */
export async function ping(opts: PingOptions): Promise<PingResult> {
  const family = familyOf(opts.to);
  const waitS = Math.ceil(opts.count * (opts.intervalS ?? 0.002) + 5);
  const { stdout } = await opts.from.exec(
    'ping',
    [
      `-${family}`,
      '-n',
      '-q',
      '-c',
      String(opts.count),
      '-s',
      String(opts.payloadBytes),
      '-i',
      String(opts.intervalS ?? 0.002),
      '-w',
      String(waitS),
      opts.to,
    ],
    { timeoutMs: (waitS + 5) * 1000 },
  );
  const m = /(\d+) packets transmitted, (\d+) received/.exec(stdout);
  if (m?.[1] === undefined || m[2] === undefined) {
    throw new DevtoolError('ETRAFFIC', `ping ${opts.to}: no summary in '${stdout.trim()}'`);
  }
  const transmitted = Number(m[1]);
  if (transmitted !== opts.count) {
    throw new DevtoolError('ETRAFFIC', `ping ${opts.to}: transmitted ${transmitted} of ${opts.count}`);
  }
  return { transmitted, received: Number(m[2]), frameBytes: icmpFrameBytes(family, opts.payloadBytes) };
}

export interface FrameSendOptions {
  /** The sending namespace. */
  from: TrafficNetns;
  /** The interface in `from` the frames leave by. */
  ifname: string;
  /** The whole Ethernet frame as on the wire (no FCS). */
  frame: Uint8Array;
  count: number;
  timeoutMs?: number;
}

export interface FrameSendResult {
  /** Frames the kernel accepted: always `count` (anything else rejects). */
  sent: number;
  /** sent * frame length. */
  bytes: number;
}

/**
 * Sends exactly `count` copies of a crafted Ethernet frame through a packet socket: frames no
 * protocol socket builds (ARP, any ethertype, VLAN stacks, tunnels, IPv6 extension headers). They
 * leave by the interface's egress (TC egress included) and arrive at the veth peer as sent, except
 * that the receiving kernel moves one outer 802.1Q/802.1ad tag into the skb's metadata.
 */
export async function sendFrames(opts: FrameSendOptions): Promise<FrameSendResult> {
  const args = [
    'frame-send',
    '--ifname',
    opts.ifname,
    '--frame',
    Buffer.from(opts.frame).toString('hex'),
    '--count',
    String(opts.count),
  ];
  const { stdout } = await opts.from.exec(toolPath('traffic'), args, { timeoutMs: opts.timeoutMs ?? 60_000 });
  const r = lastJsonLine<FrameSendResult>(stdout, 'frame-send');
  if (r.sent !== opts.count || r.bytes !== opts.count * opts.frame.length) {
    throw new DevtoolError(
      'ETRAFFIC',
      `frame-send on ${opts.ifname}: sent ${r.sent} of ${opts.count} frames (${r.bytes} bytes)`,
    );
  }
  return r;
}
