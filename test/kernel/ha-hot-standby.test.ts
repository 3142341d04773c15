/**
 * A hot standby: two firewall nodes run side by side on one nats-server, and a TCP connection
 * established through node A appears in node B's kernel session map while both run, through B's
 * watch of the bucket (the full sync runs once an hour here, and B never restarts). B writes
 * nothing back for it. Then A dies and the routes move to B, which was running all along: the
 * connection goes on through B while a new one stays blocked.
 *
 *   client ns ── A ns (firewall, rxflow node A) ── server ns
 *            └── B ns (firewall, rxflow node B) ──┘
 */
import { connect, type KvEntry } from 'nats';
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, expect } from 'vitest';
import {
  FirewallCollection,
  firewallPinDir,
  type FirewallSession,
} from '../../src/datapath/firewall/index.js';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../src/ha/codec.js';
import type { NodeReplicationStatus } from '../../src/ha/replication.js';
import { bpfObjectPath } from '../../src/paths.js';
import { buildChild, startChild, type BuiltChild, type ChildHandle } from '../fixtures/child.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { startNatsServer, type NatsServer } from '../fixtures/nats.js';
import { createNetns, createVeth, type Netns, type Veth } from '../fixtures/netns.js';
import { kernelDescribe, kernelTest } from '../fixtures/privilege.js';
import { NodeChild, TCP_CLIENT, TCP_ECHO_SERVER, waitFor } from './firewall-helpers.js';

const PREFIX = 'rxhw';
const CLIENT = '10.98.0.1';
const SERVER = '10.98.1.1';
const PORT = 7200;
const BUCKET = 'rxhw_standby';

const OPEN_POLICY = `
networks:
  - {cidr: 10.98.0.0/24, policy: clients}
policies:
  clients:
    default_action: block
    rules:
      - {destination: ${SERVER}, protocol: tcp, port: ${PORT}}
      - {destination: ${SERVER}, protocol: udp, port: 53}
`;
/** The same without the tcp rule: no new connection to the server's port. */
const CLOSED_POLICY = OPEN_POLICY.replace(/.*protocol: tcp.*\n/, '');

interface Topology {
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

async function createTopology(): Promise<Topology> {
  const client = await createNetns({ prefix: PREFIX });
  const a = await createNetns({ prefix: PREFIX });
  const b = await createNetns({ prefix: PREFIX });
  const server = await createNetns({ prefix: PREFIX });
  for (const ns of [client, a, b, server]) {
    await ns.sysctl({ 'net.ipv4.conf.all.rp_filter': 0, 'net.ipv4.conf.default.rp_filter': 0 });
  }
  await a.sysctl({ 'net.ipv4.ip_forward': 1 });
  await b.sysctl({ 'net.ipv4.ip_forward': 1 });
  const opts = { prefix: PREFIX };
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
  await client.ip(['addr', 'add', `${CLIENT}/32`, 'dev', 'lo']);
  await server.ip(['addr', 'add', `${SERVER}/32`, 'dev', 'lo']);
  await a.ip(['route', 'add', `${CLIENT}/32`, 'via', '198.51.100.2']);
  await a.ip(['route', 'add', `${SERVER}/32`, 'via', '203.0.113.2']);
  await b.ip(['route', 'add', `${CLIENT}/32`, 'via', '198.51.101.2']);
  await b.ip(['route', 'add', `${SERVER}/32`, 'via', '203.0.114.2']);
  await client.ip(['route', 'add', `${SERVER}/32`, 'via', '198.51.100.1', 'src', CLIENT]);
  await server.ip(['route', 'add', `${CLIENT}/32`, 'via', '203.0.113.1', 'src', SERVER]);
  return { client, a, b, server, ca, as, cb, bs };
}

function pipelineYaml(o: { natsUrl: string; nodeId: string; pinRoot: string; netns: string }): string {
  // A full sync once an hour: after the first one at start, only the watch can bring A's
  // sessions to B. Every revision is kept, so the test can read who wrote what.
  return `
sources:
  sessions:
    type: firewall_sessions
    instance: ${PREFIX}
    pin_root: ${o.pinRoot}
    drain_interval_ms: 50
sinks:
  ha:
    type: nats_sessions
    inputs: [sessions]
    servers: ['${o.natsUrl}']
    bucket: ${BUCKET}
    history: 64
    node_id: ${o.nodeId}
    instance: ${PREFIX}
    pin_root: ${o.pinRoot}
    netns: ${o.netns}
    sync_interval_ms: 3600000
    reconnect_wait_ms: 100
`;
}

/** Every revision of `key` in the bucket, read over a fresh connection. */
async function revisions(url: string, key: string): Promise<KvEntry[]> {
  const nc = await connect({ servers: url });
  try {
    const kv = await nc.jetstream().views.kv(BUCKET, { bindOnly: true });
    const out: KvEntry[] = [];
    for await (const e of await kv.history({ key })) out.push(e);
    return out;
  } finally {
    await nc.close();
  }
}

kernelDescribe(
  'HA hot standby: a running standby holds the active node’s new sessions without a sync or a restart',
  () => {
    let topo: Topology;
    let nats: NatsServer;
    let child: BuiltChild;
    const nodes: ChildHandle[] = [];

    beforeAll(async () => {
      topo = await createTopology();
      nats = await startNatsServer({ prefix: PREFIX });
      child = buildChild('test/kernel/ha-node-child.ts');
      const dir = child.dir;
      cleanup.register(`child dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    });
    afterAll(async () => {
      for (const n of nodes) await n.kill();
      await cleanup.dispose();
    });

    async function startNode(o: {
      ns: Netns;
      device: string;
      nodeId: string;
      policy: string;
    }): Promise<{ handle: ChildHandle; pinRoot: string }> {
      const pinRoot = makeBpffsDir(PREFIX);
      const args = {
        pinRoot,
        instance: PREFIX,
        netns: o.ns.name,
        ingress: o.device,
        egress: o.device,
        policy: o.policy,
        objectPath: bpfObjectPath('firewall'),
        pipeline: pipelineYaml({ natsUrl: nats.url, nodeId: o.nodeId, pinRoot, netns: o.ns.name }),
      };
      const handle = startChild(process.execPath, [child.entry, JSON.stringify(args)], { prefix: PREFIX });
      nodes.push(handle);
      expect(await handle.next()).toStrictEqual({ ok: true, started: true });
      return { handle, pinRoot };
    }

    async function statusOf(handle: ChildHandle): Promise<NodeReplicationStatus> {
      handle.send('status');
      const r = await handle.next<{ ok: boolean; status: NodeReplicationStatus }>();
      expect(r.ok).toBe(true);
      return r.status;
    }

    kernelTest(
      'a connection through A appears in B’s session map while both run, B writes nothing for it, and passes through B once A dies',
      async () => {
        const server = new NodeChild(topo.server, TCP_ECHO_SERVER, [SERVER, String(PORT)]);
        const client = new NodeChild(topo.client, TCP_CLIENT, []);
        try {
          await waitFor('server listening', () => server.notes.some((n) => n.note === 'listening'));
          // Both nodes up before any connection: B's boot load finds an empty bucket.
          const nodeA = await startNode({
            ns: topo.a,
            device: topo.ca.b.ifname,
            nodeId: 'node-a',
            policy: OPEN_POLICY,
          });
          const nodeB = await startNode({
            ns: topo.b,
            device: topo.cb.b.ifname,
            nodeId: 'node-b',
            policy: CLOSED_POLICY,
          });
          expect(await statusOf(nodeB.handle)).toMatchObject({
            ready: true,
            load: { loaded: 0, revision: 0 },
            watch: { active: true, revision: 0 },
          });
          // The one full sync B makes at start, before there is any session.
          let syncedAt: number | undefined;
          await waitFor('B’s first full sync', async () => {
            syncedAt = (await statusOf(nodeB.handle)).lastSync?.atMs;
            return syncedAt !== undefined;
          });

          const fwB = FirewallCollection.open(firewallPinDir(PREFIX, nodeB.pinRoot));
          try {
            expect(fwB.sessions()).toStrictEqual([]);
            const r = await client.request(`connect c1 ${SERVER} ${PORT} 5000`);
            expect(r.connected).toBe(true);
            const srcPort = r.srcPort as number;
            expect(await client.request('send c1 1000')).toStrictEqual({ echoed: 1000 });

            // B's kernel gets the session, established, from A's writes alone.
            let copy: FirewallSession | undefined;
            await waitFor(
              'the session established in B’s kernel map',
              () => {
                copy = fwB.sessions().find((s) => s.srcPort === srcPort);
                return copy?.tcpState === 'established';
              },
              10_000,
            );
            expect(copy).toMatchObject({
              protocol: 6,
              srcAddr: CLIENT,
              dstAddr: SERVER,
              dstPort: PORT,
              action: 'allow',
              origin: 'restored',
              packetsForward: 0,
            });

            // B wrote nothing: no write of its replicator, every revision of the key by A, and
            // no sync since boot that could have brought it.
            const key = sessionKvKey({
              protocol: 6,
              srcAddr: CLIENT,
              srcPort,
              dstAddr: SERVER,
              dstPort: PORT,
              vni: 0,
            });
            const history = await revisions(nats.url, key);
            expect(history.length).toBeGreaterThanOrEqual(1);
            expect(
              history.map((e) => [e.operation, decodeSessionValueOrThrow(key, e.value).node]),
            ).toStrictEqual(history.map(() => ['PUT', 'node-a']));
            const b = await statusOf(nodeB.handle);
            expect(b).toMatchObject({ puts: 0, deletes: 0, pending: 0, failedWrites: 0 });
            expect(b.lastSync?.atMs).toBe(syncedAt);
            expect(b.watch).toMatchObject({ active: true, failed: 0, ignored: 0 });
            expect(b.watch!.applied).toBeGreaterThanOrEqual(1);

            // A dies without a word and its links go down; the routes move to B, which never
            // restarted.
            await nodeA.handle.kill();
            await topo.a.ip(['link', 'set', 'dev', topo.ca.b.ifname, 'down']);
            await topo.a.ip(['link', 'set', 'dev', topo.as.a.ifname, 'down']);
            await topo.client.ip(['route', 'replace', `${SERVER}/32`, 'via', '198.51.101.1', 'src', CLIENT]);
            await topo.server.ip(['route', 'replace', `${CLIENT}/32`, 'via', '203.0.114.1', 'src', SERVER]);

            const before = fwB.counters();
            for (let i = 0; i < 3; i++) {
              expect(await client.request('send c1 1000')).toStrictEqual({ echoed: 1000 });
            }
            const after = fwB.counters();
            expect(after.blocked).toBe(before.blocked);
            expect(after.session_hits - before.session_hits).toBeGreaterThanOrEqual(3);
            expect(after.session_hits - before.session_hits).toBe(after.packets - before.packets);
            // A new connection like it is blocked by B.
            expect(await client.request(`connect y ${SERVER} ${PORT} 1500`)).toStrictEqual({
              error: 'timeout',
            });
            await waitFor('the new connection blocked by B', () => fwB.counter('blocked') > after.blocked);
            expect(await client.request('send c1 1')).toStrictEqual({ echoed: 1 });
            expect(await server.request('count')).toStrictEqual({ count: 1 });

            // Its traffic now goes through B, so B owns the session in KV.
            await waitFor(
              'node-b owning the session in KV',
              async () => {
                const h = await revisions(nats.url, key);
                return decodeSessionValueOrThrow(key, h.at(-1)!.value).node === 'node-b';
              },
              15_000,
            );
          } finally {
            fwB.close({ keepAttached: true });
          }
          nodeB.handle.send('stop');
          expect(await nodeB.handle.next()).toStrictEqual({ ok: true, stopped: true });
        } finally {
          client.stop();
          server.stop();
        }
      },
      120_000,
    );
  },
  ['nats-server'],
);
