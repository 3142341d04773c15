/**
 * DNS latency, transaction id and response code on the flows: a responder in the server namespace
 * (test/fixtures/dns_responder.py) answers each query after the delay and with the response code
 * its name asks for, and reports how long it really held it; a client in the other namespace sends
 * hand-built queries with known ids over UDP and TCP and measures each round trip itself. The
 * flow programs run on both ends of the link.
 */
import { type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { FLOW_FEATURE_DNS } from '../../src/datapath/flow/dns.js';
import { FLOW_FEATURE_DNS_NAME } from '../../src/datapath/flow/dns-names.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { FlowDatapath } from '../../src/datapath/flow/datapath.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { startEbpfPipeline, WARN } from './ebpf-pipeline.js';
import { buildBpf } from './flow-packets.js';

const RESPONDER = join(fileURLToPath(new URL('.', import.meta.url)), '..', 'fixtures', 'dns_responder.py');
/** The default DNS port, and one a pipeline would have to configure. */
const PORT = 53;
const OTHER_PORT = 5300;
const NOERROR = 0;
const SERVFAIL = 2;
const NXDOMAIN = 3;

interface Query {
  /** tcp-pair: this query and a second with id + 1 written in one segment on one connection. */
  proto: 'udp' | 'tcp' | 'tcp-pair';
  srcPort: number;
  id: number;
  rcode: number;
  delayMs: number;
  port?: number;
  /** The question's labels after the first (which tells the responder what to answer): `test`. */
  labels?: string[];
  /** Another first label than r<rcode>-d<delay>: `bad` asks for a response whose question is no name. */
  first?: string;
}

/** The wire form (RFC 1035 3.1) of a query's name, as hex: its labels' octets are latin1. */
function qname(q: Query): string {
  const labels = [q.first ?? `r${q.rcode}-d${q.delayMs}`, ...(q.labels ?? ['test'])];
  const parts = labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')]));
  return Buffer.concat([...parts, Buffer.from([0])]).toString('hex');
}

/**
 * What the client saw of a query: the response's id and rcode, and the round trip it measured:
 * from before the send to the kernel's receive timestamp of the response (SO_TIMESTAMPNS, taken
 * before TC ingress runs), so a late wake-up of the client does not count.
 */
interface Answered {
  proto: string;
  id: number;
  rcode: number;
  us: number;
}

/** Sends the queries one after the other, each from its own source port (TCP: a connection each). */
function clientScript(src: string, dst: string, queries: Query[]): string {
  const list = queries
    .map((q) => `("${q.proto}", ${q.srcPort}, ${q.id}, "${qname(q)}", ${q.port ?? PORT})`)
    .join(', ');
  return `import socket, struct, time
SO_TIMESTAMPNS = 35
FAMILY = socket.AF_INET6 if ":" in "${dst}" else socket.AF_INET
def received(s):
    data, anc, _, _ = s.recvmsg(4096, 256)
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", value[:16])
            return data, sec * 10**9 + nsec
    raise SystemExit("no receive timestamp")
def query(qid, name):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return q + bytes.fromhex(name) + struct.pack("!HH", 1, 1)
for proto, sport, qid, name, port in [${list}]:
    m = query(qid, name)
    if proto == "udp":
        s = socket.socket(FAMILY, socket.SOCK_DGRAM)
        s.bind(("${src}", sport))
        s.settimeout(10)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        t0 = time.time_ns()
        s.sendto(m, ("${dst}", port))
        r, t1 = received(s)
    else:
        s = socket.socket(FAMILY)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("${src}", sport))
        s.settimeout(10)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.connect(("${dst}", port))
        out = struct.pack("!H", len(m)) + m
        if proto == "tcp-pair":
            m2 = query(qid + 1, name)
            out += struct.pack("!H", len(m2)) + m2
        t0 = time.time_ns()
        s.sendall(out)
        r, t1 = received(s)
        if proto == "tcp-pair":
            while len(r) < 4 + 2 * len(m): r += s.recv(4096)
            # The second answer, whose id the flow keeps (the latest answered).
            r = r[2 + struct.unpack_from("!H", r)[0]:]
        r = r[2:]
    us = round((t1 - t0) / 1000)
    rid, flags = struct.unpack_from("!HH", r)
    print(proto, rid, flags & 15, us, flush=True)
    s.close()
`;
}

kernelDescribe('DNS latency, id and response code on the flows', () => {
  let pair: PairTopology;
  let pinRoot: string;
  const responders: ChildProcess[] = [];
  /** What the responders held, by protocol and id: microseconds from query in to response out. */
  const held = new Map<string, number>();
  const open: FlowDatapath[] = [];

  async function startResponder(port: number, address = pair.link.b.ipv4!): Promise<void> {
    const r = pair.server.spawn('python3', [RESPONDER, address, String(port)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    responders.push(r);
    cleanup.register(`dns responder ${r.pid}`, () => r.kill('SIGTERM'));
    const lines = createInterface({ input: r.stdout! });
    await new Promise<void>((resolve, reject) => {
      r.once('exit', (code) => reject(new Error(`dns responder exited with ${code}`)));
      lines.on('line', (line) => {
        if (line === 'ready') return resolve();
        const [proto, id, us] = line.split(' ');
        held.set(`${proto} ${id}`, Number(us));
      });
    });
  }

  beforeAll(async () => {
    buildBpf();
    pair = await createPair({ prefix: 'rxdns' });
    pinRoot = makeBpffsDir('dns');
    await startResponder(PORT);
    await startResponder(OTHER_PORT);
    await startResponder(PORT, pair.link.b.ipv6);
  });
  afterEach(() => {
    for (const dp of open.splice(0)) dp.close();
  });
  afterAll(async () => {
    for (const r of responders) {
      if (r.exitCode === null) {
        r.stdin!.end();
        await once(r, 'exit');
      }
    }
    await cleanup.dispose();
  });

  function attach(side: 'client' | 'server', dnsQueryNames?: number): FlowDatapath {
    const end = side === 'client' ? pair.link.a : pair.link.b;
    const dp = FlowDatapath.open({
      interfaces: [end.ifname],
      netns: end.ns!.name,
      instance: `dns-${side}-${process.pid}`,
      pinRoot,
      ...(dnsQueryNames === undefined ? {} : { dnsQueryNames }),
    });
    open.push(dp);
    return dp;
  }

  /** A datapath on one end with DNS latency and query names on, room for `names` names. */
  function attachNames(side: 'client' | 'server', names = 16): FlowDatapath {
    const dp = attach(side, names);
    dp.setFeatures(FLOW_FEATURE_DNS | FLOW_FEATURE_DNS_NAME);
    return dp;
  }

  async function ask(queries: Query[], family: 4 | 6 = 4): Promise<Answered[]> {
    const [src, dst] =
      family === 4 ? [pair.link.a.ipv4!, pair.link.b.ipv4!] : [pair.link.a.ipv6!, pair.link.b.ipv6!];
    const { stdout } = await pair.client.exec('python3', ['-c', clientScript(src, dst, queries)], {
      timeoutMs: 20_000,
    });
    return stdout
      .trim()
      .split('\n')
      .map((line) => {
        const [proto, id, rcode, us] = line.split(' ');
        return { proto: proto!, id: Number(id), rcode: Number(rcode), us: Number(us) };
      });
  }

  /** The flow of `proto` from `from` to `to` in `direction`, exactly one. */
  function flowOf(records: FlowRecord[], proto: string, from: number, to: number, direction: number) {
    const flows = records.filter(
      (r) =>
        r.protocolIdentifier === (proto === 'udp' ? 17 : 6) &&
        r.sourceTransportPort === from &&
        r.destinationTransportPort === to &&
        r.flowDirection === direction,
    );
    expect(flows, `${proto} ${from} -> ${to} direction ${direction}`).toHaveLength(1);
    return flows[0]!;
  }

  /** The DNS fields of the flow of `proto` from `from` to `to` in `direction`, exactly one. */
  function dnsOf(records: FlowRecord[], proto: string, from: number, to: number, direction: number) {
    const flow = flowOf(records, proto, from, to, direction);
    const { dnsLatencyMicroseconds: latency, dnsTransactionId: id, dnsResponseCode: rcode } = flow;
    return { latency, id, rcode };
  }

  const noDns = { latency: undefined, id: undefined, rcode: undefined };

  it('pairs queries and responses over UDP and TCP: latency within 1 ms, ids and codes exact', async () => {
    const client = attach('client');
    const server = attach('server');
    client.setFeatures(FLOW_FEATURE_DNS);
    server.setFeatures(FLOW_FEATURE_DNS);
    const queries: Query[] = [
      { proto: 'udp', srcPort: 40001, id: 0x1234, rcode: NOERROR, delayMs: 20 },
      { proto: 'udp', srcPort: 40002, id: 0xbeef, rcode: NXDOMAIN, delayMs: 5 },
      { proto: 'udp', srcPort: 40003, id: 7, rcode: SERVFAIL, delayMs: 30 },
      { proto: 'tcp', srcPort: 40011, id: 0x4321, rcode: NOERROR, delayMs: 20 },
      { proto: 'tcp', srcPort: 40012, id: 0xfffe, rcode: NXDOMAIN, delayMs: 5 },
      { proto: 'tcp', srcPort: 40013, id: 0, rcode: SERVFAIL, delayMs: 30 },
    ];
    const answered = await ask(queries);
    expect(answered.map((a) => [a.proto, a.id, a.rcode])).toEqual(
      queries.map((q) => [q.proto, q.id, q.rcode]),
    );
    const atClient = client.evictFlows(0);
    const atServer = server.evictFlows(0);
    for (const [i, q] of queries.entries()) {
      const what = `${q.proto} query ${q.id}`;
      // The client's response flow (ingress) and the server's (egress) carry it; the queries' flows do not.
      const c = dnsOf(atClient, q.proto, PORT, q.srcPort, 0);
      const s = dnsOf(atServer, q.proto, PORT, q.srcPort, 1);
      expect(dnsOf(atClient, q.proto, q.srcPort, PORT, 1), what).toEqual(noDns);
      expect(dnsOf(atServer, q.proto, q.srcPort, PORT, 0), what).toEqual(noDns);
      expect([c.id, c.rcode, s.id, s.rcode], what).toEqual([q.id, q.rcode, q.id, q.rcode]);
      // At least the delay; the client's within 1 ms of the round trip the client measured (query
      // sent to response received, from the kernel's receive timestamps). The server's flow sees a
      // part of that round trip on the same clock, and no more than the responder held the query
      // (from its receive timestamp to after its send returned, which load can stretch).
      const clientUs = answered[i]!.us;
      const heldUs = held.get(`${q.proto} ${q.id}`)!;
      const figures = `${what}: client flow ${c.latency} us, client ${clientUs} us; server flow ${s.latency} us, responder ${heldUs} us`;
      expect(c.latency!, figures).toBeGreaterThanOrEqual(q.delayMs * 1000);
      expect(s.latency!, figures).toBeGreaterThanOrEqual(q.delayMs * 1000);
      expect(Math.abs(c.latency! - clientUs), figures).toBeLessThanOrEqual(1000);
      expect(s.latency!, figures).toBeLessThanOrEqual(c.latency!);
      expect(s.latency!, figures).toBeLessThanOrEqual(heldUs + 1000);
    }
  });

  it('keeps the latest answered query of a flow, and watches the configured port only', async () => {
    const client = attach('client');
    client.setFeatures(FLOW_FEATURE_DNS, OTHER_PORT);
    const queries: Query[] = [
      { proto: 'udp', srcPort: 40021, id: 100, rcode: NOERROR, delayMs: 1, port: OTHER_PORT },
      { proto: 'udp', srcPort: 40021, id: 101, rcode: NXDOMAIN, delayMs: 2, port: OTHER_PORT },
      { proto: 'udp', srcPort: 40022, id: 102, rcode: NOERROR, delayMs: 1 },
    ];
    await ask(queries);
    const records = client.evictFlows(0);
    const latest = dnsOf(records, 'udp', OTHER_PORT, 40021, 0);
    expect([latest.id, latest.rcode]).toEqual([101, NXDOMAIN]);
    expect(latest.latency).toBeGreaterThanOrEqual(2000);
    expect(dnsOf(records, 'udp', PORT, 40022, 0)).toEqual(noDns);
  });

  it('measures nothing with the feature off', async () => {
    const client = attach('client');
    await ask([
      { proto: 'udp', srcPort: 40031, id: 200, rcode: NOERROR, delayMs: 1 },
      { proto: 'tcp', srcPort: 40032, id: 201, rcode: NXDOMAIN, delayMs: 1 },
    ]);
    const records = client.evictFlows(0);
    expect(dnsOf(records, 'udp', PORT, 40031, 0)).toEqual(noDns);
    expect(dnsOf(records, 'tcp', PORT, 40032, 0)).toEqual(noDns);
    expect(records.filter((r) => r.dnsLatencyMicroseconds !== undefined)).toEqual([]);
  });

  /**
   * The records of an ebpf_flows pipeline with `options` on the server's end while the client asks
   * `queries`; the pipeline logged no warning.
   */
  async function serverPipeline(name: string, options: string, queries: Query[]): Promise<FlowRecord[]> {
    const { pipeline, collected, logs } = await startEbpfPipeline({
      name,
      iface: pair.link.b.ifname,
      netns: pair.server.name,
      pinRoot,
      options,
    });
    await ask(queries);
    await pipeline.stop();
    expect(logs.filter((l) => l.level >= WARN)).toEqual([]);
    return collected();
  }

  it('ebpf_flows with dns: true and dns_port in a pipeline: the server side response flows', async () => {
    const records = await serverPipeline('dns-pipeline', `    dns: true\n    dns_port: ${OTHER_PORT}`, [
      { proto: 'udp', srcPort: 40041, id: 300, rcode: SERVFAIL, delayMs: 1, port: OTHER_PORT },
      { proto: 'tcp', srcPort: 40042, id: 301, rcode: NXDOMAIN, delayMs: 1, port: OTHER_PORT },
    ]);
    const udp = dnsOf(records, 'udp', OTHER_PORT, 40041, 1);
    const tcp = dnsOf(records, 'tcp', OTHER_PORT, 40042, 1);
    expect([udp.id, udp.rcode, tcp.id, tcp.rcode]).toEqual([300, SERVFAIL, 301, NXDOMAIN]);
    expect(Math.min(udp.latency!, tcp.latency!)).toBeGreaterThanOrEqual(1000);
    expect(records.filter((r) => r.dnsQueryName !== undefined)).toEqual([]);
  });

  // The longest name there is: 255 octets on the wire (r0-d1, three labels of 63, one of 55).
  const LONGEST = ['x'.repeat(63), 'y'.repeat(63), 'z'.repeat(63), 'w'.repeat(55)];
  const named: [Query, string][] = [
    [
      {
        proto: 'udp',
        srcPort: 40051,
        id: 0x5151,
        rcode: NOERROR,
        delayMs: 1,
        labels: ['Mixed-CASE', 'example'],
      },
      'r0-d1.Mixed-CASE.example',
    ],
    [
      {
        proto: 'udp',
        srcPort: 40052,
        id: 0x5252,
        rcode: NXDOMAIN,
        delayMs: 1,
        labels: ['a.b', 'sp ace\\', '\x01\xff'],
      },
      'r3-d1.a\\.b.sp\\032ace\\\\.\\001\\255',
    ],
    [
      { proto: 'tcp', srcPort: 40053, id: 0x5353, rcode: NOERROR, delayMs: 1, labels: LONGEST },
      `r0-d1.${LONGEST.join('.')}`,
    ],
    [{ proto: 'tcp', srcPort: 40054, id: 0x5454, rcode: SERVFAIL, delayMs: 1 }, 'r2-d1.test'],
  ];

  it('query names on both ends, over UDP and TCP, in presentation form up to the longest name', async () => {
    const client = attachNames('client', 64);
    const server = attachNames('server', 64);
    const answered = await ask(named.map(([q]) => q));
    expect(answered.map((a) => a.id)).toEqual(named.map(([q]) => q.id));
    const atClient = client.evictFlows(0);
    const atServer = server.evictFlows(0);
    for (const [q, name] of named) {
      const c = flowOf(atClient, q.proto, PORT, q.srcPort, 0);
      const s = flowOf(atServer, q.proto, PORT, q.srcPort, 1);
      expect([c.dnsTransactionId, c.dnsQueryName, s.dnsTransactionId, s.dnsQueryName]).toEqual([
        q.id,
        name,
        q.id,
        name,
      ]);
      // The query's flow carries no answer, so no name.
      expect(flowOf(atClient, q.proto, q.srcPort, PORT, 1).dnsQueryName).toBeUndefined();
    }
    const none = { missed: 0, unreadable: 0 };
    expect([client.dnsNames!.missDelta(), server.dnsNames!.missDelta()]).toEqual([none, none]);
    expect(LONGEST.reduce((n, l) => n + 1 + l.length, 1 + 5 + 1)).toBe(255);
  });

  it('over IPv6 as over IPv4: latency within 1 ms of the round trip, ids, codes and names exact', async () => {
    const client = attachNames('client');
    const queries: Query[] = [
      { proto: 'udp', srcPort: 40071, id: 0x6161, rcode: NXDOMAIN, delayMs: 10, labels: ['v6', 'example'] },
      { proto: 'tcp', srcPort: 40072, id: 0x6262, rcode: NOERROR, delayMs: 10, labels: ['v6', 'example'] },
    ];
    const answered = await ask(queries, 6);
    const records = client.evictFlows(0);
    for (const [i, q] of queries.entries()) {
      const c = flowOf(records, q.proto, PORT, q.srcPort, 0);
      expect([c.ipVersion, c.sourceIPv6Address, c.destinationIPv6Address]).toEqual([
        6,
        pair.link.b.ipv6,
        pair.link.a.ipv6,
      ]);
      expect([c.dnsTransactionId, c.dnsResponseCode, c.dnsQueryName]).toEqual([
        q.id,
        q.rcode,
        `r${q.rcode}-d10.v6.example`,
      ]);
      const figures = `${q.proto}: flow ${c.dnsLatencyMicroseconds} us, client ${answered[i]!.us} us`;
      expect(c.dnsLatencyMicroseconds!, figures).toBeGreaterThanOrEqual(10_000);
      expect(Math.abs(c.dnsLatencyMicroseconds! - answered[i]!.us), figures).toBeLessThanOrEqual(1000);
    }
  });

  it('over TCP, every message of a segment: two queries written together and their two answers', async () => {
    const client = attachNames('client');
    const server = attachNames('server');
    const q: Query = {
      proto: 'tcp-pair',
      srcPort: 40081,
      id: 0x7070,
      rcode: NXDOMAIN,
      delayMs: 5,
      labels: ['pair', 'test'],
    };
    const [answer] = await ask([q]);
    expect([answer!.id, answer!.rcode]).toEqual([0x7071, NXDOMAIN]);
    // Both queries were answered; the flows keep the latest answer, the second message of the
    // responses' segment, which pairs with the second message of the queries' segment.
    expect([held.has(`tcp ${0x7070}`), held.has(`tcp ${0x7071}`)]).toEqual([true, true]);
    const c = flowOf(client.evictFlows(0), 'tcp', PORT, q.srcPort, 0);
    const s = flowOf(server.evictFlows(0), 'tcp', PORT, q.srcPort, 1);
    for (const f of [c, s]) {
      expect([f.dnsTransactionId, f.dnsResponseCode, f.dnsQueryName]).toEqual([
        0x7071,
        NXDOMAIN,
        'r3-d5.pair.test',
      ]);
      expect(f.dnsLatencyMicroseconds).toBeGreaterThanOrEqual(5000);
    }
    expect(Math.abs(c.dnsLatencyMicroseconds! - answer!.us)).toBeLessThanOrEqual(1000);
  });

  it('a response whose question is no name: its answer is recorded without a name, the others keep theirs', async () => {
    const client = attachNames('client');
    const good: Query = {
      proto: 'udp',
      srcPort: 40091,
      id: 0x9191,
      rcode: NOERROR,
      delayMs: 0,
      labels: ['ok'],
    };
    const bad: Query = { proto: 'udp', srcPort: 40092, id: 0x9292, rcode: NOERROR, delayMs: 0, first: 'bad' };
    expect((await ask([good, bad])).map((a) => a.id)).toEqual([good.id, bad.id]);
    const records = client.evictFlows(0);
    const g = flowOf(records, 'udp', PORT, good.srcPort, 0);
    const b = flowOf(records, 'udp', PORT, bad.srcPort, 0);
    expect([g.dnsTransactionId, g.dnsQueryName, b.dnsTransactionId, b.dnsQueryName]).toEqual([
      good.id,
      'r0-d0.ok',
      bad.id,
      undefined,
    ]);
    expect(client.dnsNames!.missDelta()).toEqual({ missed: 0, unreadable: 1 });
  });

  it('a name map smaller than the answers between two evictions: every answer has its name or is a miss', async () => {
    const client = attachNames('client', 4);
    const queries: Query[] = Array.from({ length: 12 }, (_, i) => ({
      proto: 'udp',
      srcPort: 40061 + i,
      id: 600 + i,
      rcode: NOERROR,
      delayMs: 0,
      labels: [`n${i}`, 'test'],
    }));
    const answered = await ask(queries);
    expect(answered).toHaveLength(12);
    const records = client.evictFlows(0);
    const withName = queries.filter(
      (q) => flowOf(records, 'udp', PORT, q.srcPort, 0).dnsQueryName !== undefined,
    );
    for (const q of withName) {
      expect(flowOf(records, 'udp', PORT, q.srcPort, 0).dnsQueryName).toBe(`r0-d0.n${q.id - 600}.test`);
    }
    // The LRU map keeps the latest names it has room for; the rest are counted, not lost silently.
    expect(withName.length).toBeGreaterThan(0);
    expect(withName.length).toBeLessThanOrEqual(4);
    const { missed, unreadable } = client.dnsNames!.missDelta();
    expect([withName.length + missed, unreadable]).toEqual([12, 0]);
  });

  it('ebpf_flows with dns_query_name: true in a pipeline: names on the response flows', async () => {
    const records = await serverPipeline(
      'dns-name-pipeline',
      '    dns_query_name: true\n    dns_query_name_max_flows: 16',
      named.map(([q]) => q),
    );
    for (const [q, name] of named) {
      const s = flowOf(records, q.proto, PORT, q.srcPort, 1);
      expect([s.dnsTransactionId, s.dnsResponseCode, s.dnsQueryName]).toEqual([q.id, q.rcode, name]);
    }
  });
});
