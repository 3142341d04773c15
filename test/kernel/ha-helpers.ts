/**
 * Shared set-up of the HA kernel tests (ha-failover, ha-hot-standby): two firewall nodes on one
 * nats-server, each an rxflow process (ha-node-child.ts) the test can SIGKILL.
 *
 *   client ns ── A ns (firewall, rxflow node A) ── server ns
 *            └── B ns (firewall, rxflow node B) ──┘
 *
 * The client (on its lo) reaches the server (on its lo) through A until the routes move to B.
 */
import { readFileSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, expect } from 'vitest';
import { bpfObjectPath } from '../../src/paths.js';
import { buildChild, startChild, type BuiltChild, type ChildHandle } from '../fixtures/child.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { startNatsServer, type NatsServer } from '../fixtures/nats.js';
import { createNetns, createVeth, type Netns, type Veth } from '../fixtures/netns.js';
import { NodeChild, TCP_CLIENT, TCP_ECHO_SERVER, waitFor } from './firewall-helpers.js';

/** What tells one HA test's resources and addresses from another's, so the tests run in parallel. */
export interface HaSite {
  /** Prefix of every namespace, veth and bpffs path, and the firewall instance name. */
  prefix: string;
  bucket: string;
  /** The client's address, and the /24 the policies treat as clients. */
  client: string;
  clientNet: string;
  server: string;
  /** The server's TCP port. */
  port: number;
}

/**
 * The nodes' policies: `open` allows new TCP connections to the server's port, `closed` is the
 * same without that rule, so no new connection passes while established ones may.
 */
export function haPolicies(site: HaSite): { open: string; closed: string } {
  const open = `
networks:
  - {cidr: ${site.clientNet}, policy: clients}
policies:
  clients:
    default_action: block
    rules:
      - {destination: ${site.server}, protocol: tcp, port: ${site.port}}
      - {destination: ${site.server}, protocol: udp, port: 53}
`;
  return { open, closed: open.replace(/.*protocol: tcp.*\n/, '') };
}

export interface HaTopology {
  client: Netns;
  a: Netns;
  b: Netns;
  server: Netns;
  /** client-A, A-server, client-B, B-server; `a` ends are on the client / router side. */
  ca: Veth;
  as: Veth;
  cb: Veth;
  bs: Veth;
}

export async function createHaTopology(site: HaSite): Promise<HaTopology> {
  const { prefix, client: clientAddr, server: serverAddr } = site;
  const client = await createNetns({ prefix });
  const a = await createNetns({ prefix });
  const b = await createNetns({ prefix });
  const server = await createNetns({ prefix });
  for (const ns of [client, a, b, server]) {
    await ns.sysctl({ 'net.ipv4.conf.all.rp_filter': 0, 'net.ipv4.conf.default.rp_filter': 0 });
  }
  await a.sysctl({ 'net.ipv4.ip_forward': 1 });
  await b.sysctl({ 'net.ipv4.ip_forward': 1 });
  const opts = { prefix };
  const ca = await createVeth(
    { ns: client, ipv4: '198.51.100.2/24' },
    { ns: a, ipv4: '198.51.100.1/24' },
    opts,
  );
  const as = await createVeth(
    { ns: a, ipv4: '203.0.113.1/24' },
    { ns: server, ipv4: '203.0.113.2/24' },
    opts,
  );
  const cb = await createVeth(
    { ns: client, ipv4: '198.51.101.2/24' },
    { ns: b, ipv4: '198.51.101.1/24' },
    opts,
  );
  const bs = await createVeth(
    { ns: b, ipv4: '203.0.114.1/24' },
    { ns: server, ipv4: '203.0.114.2/24' },
    opts,
  );
  for (const v of [ca, as, cb, bs]) await v.pinNeighbours();
  await client.ip(['addr', 'add', `${clientAddr}/32`, 'dev', 'lo']);
  await server.ip(['addr', 'add', `${serverAddr}/32`, 'dev', 'lo']);
  await a.ip(['route', 'add', `${clientAddr}/32`, 'via', '198.51.100.2']);
  await a.ip(['route', 'add', `${serverAddr}/32`, 'via', '203.0.113.2']);
  await b.ip(['route', 'add', `${clientAddr}/32`, 'via', '198.51.101.2']);
  await b.ip(['route', 'add', `${serverAddr}/32`, 'via', '203.0.114.2']);
  await client.ip(['route', 'add', `${serverAddr}/32`, 'via', '198.51.100.1', 'src', clientAddr]);
  await server.ip(['route', 'add', `${clientAddr}/32`, 'via', '203.0.113.1', 'src', serverAddr]);
  return { client, a, b, server, ca, as, cb, bs };
}

/** A's links go down: nothing can pass through A any more. */
export async function cutOffA(topo: HaTopology): Promise<void> {
  await topo.a.ip(['link', 'set', 'dev', topo.ca.b.ifname, 'down']);
  await topo.a.ip(['link', 'set', 'dev', topo.as.a.ifname, 'down']);
}

/** The client's and the server's routes to each other move to B, as a load balancer's would. */
export async function routeThroughB(topo: HaTopology, site: HaSite): Promise<void> {
  await topo.client.ip(['route', 'replace', `${site.server}/32`, 'via', '198.51.101.1', 'src', site.client]);
  await topo.server.ip(['route', 'replace', `${site.client}/32`, 'via', '203.0.114.1', 'src', site.server]);
}

/**
 * The TCP echo server (on the server's address and port) and the client that talks to it, once
 * the server listens. If it never does, both are stopped before the error is thrown.
 */
export async function startEcho(
  topo: HaTopology,
  site: HaSite,
): Promise<{ server: NodeChild; client: NodeChild }> {
  const server = new NodeChild(topo.server, TCP_ECHO_SERVER, [site.server, String(site.port)]);
  const client = new NodeChild(topo.client, TCP_CLIENT, []);
  try {
    await waitFor('server listening', () => server.notes.some((n) => n.note === 'listening'));
  } catch (err) {
    client.stop();
    server.stop();
    throw err;
  }
  return { server, client };
}

export interface HaNode {
  handle: ChildHandle;
  pinRoot: string;
}

/** Node A runs in namespace `a`, node B in `b`; their ids are node-a and node-b. */
export type HaNodeName = 'a' | 'b';

/** nats_sessions options beyond those every node has (servers, bucket, node_id, instance, ...). */
export type HaSinkOptions = Record<string, string | number>;

/**
 * A pipeline file to run instead of the helpers' own one, with the environment it is interpolated
 * from on top of the child's (so the file's variables say where the node's firewall, bucket and
 * ports are).
 */
export interface HaPipelineFile {
  file: string;
  env: (o: { natsUrl: string; nodeId: string; pinRoot: string; netns: string }) => Record<string, string>;
}

/** How a node differs beyond its sink: the size of its session map, firewall_sessions options. */
export interface HaNodeOptions {
  maxSessions?: number;
  source?: HaSinkOptions;
}

export interface HaCluster {
  /** The namespaces; set by the time the tests run. */
  readonly topo: HaTopology;
  readonly nats: NatsServer;
  /**
   * Starts node A or B: loads its firewall with `policy` and attaches it to the node's
   * client-facing device, ingress and egress (so it sees both directions), then runs a
   * firewall_sessions source into a nats_sessions sink; resolves once the node reports the
   * pipeline started.
   */
  startNode(
    node: HaNodeName,
    policy: string,
    sink: HaSinkOptions | HaPipelineFile,
    opts?: HaNodeOptions,
  ): Promise<HaNode>;
}

function pipelineYaml(
  site: HaSite,
  o: {
    natsUrl: string;
    nodeId: string;
    pinRoot: string;
    netns: string;
    sink: HaSinkOptions;
    source?: HaSinkOptions;
  },
): string {
  const lines = (options: HaSinkOptions | undefined): string =>
    Object.entries(options ?? {})
      .map(([k, v]) => `    ${k}: ${v}\n`)
      .join('');
  const extra = lines(o.sink);
  return `
sources:
  sessions:
    type: firewall_sessions
    instance: ${site.prefix}
    pin_root: ${o.pinRoot}
    drain_interval_ms: 50
${lines(o.source)}sinks:
  ha:
    type: nats_sessions
    inputs: [sessions]
    servers: ['${o.natsUrl}']
    bucket: ${site.bucket}
    node_id: ${o.nodeId}
    instance: ${site.prefix}
    pin_root: ${o.pinRoot}
    netns: ${o.netns}
    reconnect_wait_ms: 100
${extra}`;
}

/**
 * The topology, a nats-server and the built node child, set up before the tests of the enclosing
 * describe block and torn down after them (every node started is killed). Call it in the block.
 */
export function haCluster(site: HaSite): HaCluster {
  let topo: HaTopology | undefined;
  let nats: NatsServer | undefined;
  let child: BuiltChild | undefined;
  const nodes: ChildHandle[] = [];

  beforeAll(async () => {
    topo = await createHaTopology(site);
    nats = await startNatsServer({ prefix: site.prefix });
    child = buildChild('test/kernel/ha-node-child.ts');
    const dir = child.dir;
    cleanup.register(`child dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  });
  afterAll(async () => {
    for (const n of nodes) await n.kill();
    await cleanup.dispose();
  });

  return {
    get topo() {
      return topo!;
    },
    get nats() {
      return nats!;
    },
    async startNode(node, policy, sink, opts = {}) {
      const ns = node === 'a' ? topo!.a : topo!.b;
      const device = (node === 'a' ? topo!.ca : topo!.cb).b.ifname;
      const nodeId = `node-${node}`;
      const pinRoot = makeBpffsDir(site.prefix);
      const where = { natsUrl: nats!.url, nodeId, pinRoot, netns: ns.name };
      const fromFile = typeof sink.file === 'string' ? (sink as HaPipelineFile) : undefined;
      const args = {
        pinRoot,
        instance: site.prefix,
        netns: ns.name,
        ingress: device,
        egress: device,
        policy,
        objectPath: bpfObjectPath('firewall'),
        pipeline:
          fromFile !== undefined
            ? readFileSync(fromFile.file, 'utf8')
            : pipelineYaml(site, {
                ...where,
                sink: sink as HaSinkOptions,
                ...(opts.source ? { source: opts.source } : {}),
              }),
        env: fromFile?.env(where) ?? {},
        ...(opts.maxSessions !== undefined ? { maxSessions: opts.maxSessions } : {}),
      };
      const handle = startChild(process.execPath, [child!.entry, JSON.stringify(args)], {
        prefix: site.prefix,
      });
      nodes.push(handle);
      expect(await handle.next()).toStrictEqual({ ok: true, started: true });
      return { handle, pinRoot };
    },
  };
}
