/**
 * Failover of established TCP connections between two firewall nodes that share one nats-server.
 *
 *   client ns ── A ns (firewall, rxflow node A) ── server ns
 *            └── B ns (firewall, rxflow node B) ──┘
 *
 * Each node's firewall runs on its client-facing device, ingress and egress, so it sees both
 * directions. The client (10.99.0.1) reaches the server (10.99.1.1) through A. A carries established
 * connections under a policy that blocks new ones like them; A's process is SIGKILLed and A is cut
 * off; B boots with the same policy, loads the sessions from KV, reports ready, and the routes move
 * to B: the established connections go on through B while a new connection stays blocked.
 */
import { Command } from 'commander';
import { connect, type KvEntry } from 'nats';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import type { CliIo } from '../../src/cli/io.js';
import { registerReplicationCommands } from '../../src/cli/replication.js';
import { FirewallCollection, firewallPinDir } from '../../src/datapath/firewall/index.js';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../src/ha/codec.js';
import { bpfObjectPath } from '../../src/paths.js';
import { buildChild, startChild, type BuiltChild, type ChildHandle } from '../fixtures/child.js';
import { cleanup, makeBpffsDir, makeTempDir } from '../fixtures/cleanup.js';
import { freePort, startNatsServer, type NatsServer } from '../fixtures/nats.js';
import { createNetns, createVeth, type Netns, type Veth } from '../fixtures/netns.js';
import { kernelDescribe, kernelTest } from '../fixtures/privilege.js';
import { NodeChild, TCP_CLIENT, TCP_ECHO_SERVER, waitFor } from './firewall-helpers.js';

const PREFIX = 'rxha';
const CLIENT = '10.99.0.1';
const SERVER = '10.99.1.1';
const PORT = 7100;
const BUCKET = 'rxha_failover';

const OPEN_POLICY = `
networks:
  - {cidr: 10.99.0.0/24, policy: clients}
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

function pipelineYaml(o: {
  natsUrl: string;
  nodeId: string;
  pinRoot: string;
  netns: string;
  readyFile: string;
  readyPort: number;
}): string {
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
    node_id: ${o.nodeId}
    instance: ${PREFIX}
    pin_root: ${o.pinRoot}
    netns: ${o.netns}
    sync_interval_ms: 2000
    reconnect_wait_ms: 100
    ready_file: ${o.readyFile}
    ready_listen: 127.0.0.1:${o.readyPort}
`;
}

/** `rxflow firewall replication status <args>`, in this process; its JSON output parsed. */
async function replicationStatus(args: string[]): Promise<Record<string, unknown>> {
  let out = '';
  const io = { out: (t: string) => (out += t), err: () => undefined, env: {} } as unknown as CliIo;
  const program = new Command('rxflow').exitOverride();
  registerReplicationCommands(program.command('firewall'), io);
  await program.parseAsync(['firewall', 'replication', 'status', ...args], { from: 'user' });
  return JSON.parse(out) as Record<string, unknown>;
}

async function kvSessions(url: string): Promise<Map<string, KvEntry>> {
  const nc = await connect({ servers: url });
  try {
    const kv = await nc.jetstream().views.kv(BUCKET);
    const keys: string[] = [];
    for await (const k of await kv.keys()) keys.push(k);
    const out = new Map<string, KvEntry>();
    for (const k of keys) {
      const e = await kv.get(k);
      if (e?.operation === 'PUT') out.set(k, e);
    }
    return out;
  } finally {
    await nc.close();
  }
}

kernelDescribe(
  'HA failover: established TCP connections survive the loss of their firewall node',
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
      ingress: string;
      egress: string;
      nodeId: string;
      policy: string;
    }): Promise<{ handle: ChildHandle; pinRoot: string; readyFile: string; readyPort: number }> {
      const pinRoot = makeBpffsDir(PREFIX);
      const readyFile = join(makeTempDir(PREFIX, cleanup), 'ready');
      const readyPort = await freePort();
      const args = {
        pinRoot,
        instance: PREFIX,
        netns: o.ns.name,
        ingress: o.ingress,
        egress: o.egress,
        policy: o.policy,
        objectPath: bpfObjectPath('firewall'),
        pipeline: pipelineYaml({
          natsUrl: nats.url,
          nodeId: o.nodeId,
          pinRoot,
          netns: o.ns.name,
          readyFile,
          readyPort,
        }),
      };
      const handle = startChild(process.execPath, [child.entry, JSON.stringify(args)], { prefix: PREFIX });
      nodes.push(handle);
      const started = await handle.next();
      expect(started).toStrictEqual({ ok: true, started: true });
      return { handle, pinRoot, readyFile, readyPort };
    }

    kernelTest(
      'node B loads the sessions of killed node A and passes their packets while new connections stay blocked',
      async () => {
        const server = new NodeChild(topo.server, TCP_ECHO_SERVER, [SERVER, String(PORT)]);
        const client = new NodeChild(topo.client, TCP_CLIENT, []);
        try {
          await waitFor('server listening', () => server.notes.some((n) => n.note === 'listening'));
          const nodeA = await startNode({
            ns: topo.a,
            ingress: topo.ca.b.ifname,
            egress: topo.ca.b.ifname,
            nodeId: 'node-a',
            policy: OPEN_POLICY,
          });
          expect(existsSync(nodeA.readyFile)).toBe(true);

          // Three connections through A, then A's policy stops new ones.
          const ids = ['c1', 'c2', 'c3'];
          const ports: number[] = [];
          for (const id of ids) {
            const r = await client.request(`connect ${id} ${SERVER} ${PORT} 5000`);
            expect(r.connected).toBe(true);
            ports.push(r.srcPort as number);
            expect(await client.request(`send ${id} 1000`)).toStrictEqual({ echoed: 1000 });
          }
          nodeA.handle.send(`policy ${JSON.stringify(CLOSED_POLICY)}`);
          expect(await nodeA.handle.next()).toStrictEqual({ ok: true, removed: 1 });
          for (const id of ids) expect(await client.request(`send ${id} 500`)).toStrictEqual({ echoed: 500 });
          expect(await client.request(`connect x ${SERVER} ${PORT} 1000`)).toStrictEqual({
            error: 'timeout',
          });

          // A replicated the three sessions, established, as node-a.
          const keys = ports.map((p) =>
            sessionKvKey({
              protocol: 6,
              srcAddr: CLIENT,
              srcPort: p,
              dstAddr: SERVER,
              dstPort: PORT,
              vni: 0,
            }),
          );
          await waitFor(
            'the three sessions established in KV',
            async () => {
              const entries = await kvSessions(nats.url);
              return keys.every((k) => {
                const e = entries.get(k);
                if (e === undefined) return false;
                const rec = decodeSessionValueOrThrow(k, e.value);
                return rec.node === 'node-a' && rec.session.tcpState === 'established';
              });
            },
            15_000,
          );
          // The blocked attempt never made a session, so it was never replicated.
          expect((await kvSessions(nats.url)).size).toBe(3);

          // A dies without a word, and its links go down: nothing can pass through A any more.
          await nodeA.handle.kill();
          await topo.a.ip(['link', 'set', 'dev', topo.ca.b.ifname, 'down']);
          await topo.a.ip(['link', 'set', 'dev', topo.as.a.ifname, 'down']);

          const nodeB = await startNode({
            ns: topo.b,
            ingress: topo.cb.b.ifname,
            egress: topo.cb.b.ifname,
            nodeId: 'node-b',
            policy: CLOSED_POLICY,
          });
          expect(existsSync(nodeB.readyFile)).toBe(true);
          const ready = await fetch(`http://127.0.0.1:${nodeB.readyPort}/ready`);
          expect(ready.status).toBe(200);
          const fwB = FirewallCollection.open(firewallPinDir(PREFIX, nodeB.pinRoot));
          try {
            const restored = fwB.sessions();
            expect(restored.map((s) => [s.srcPort, s.dstPort, s.tcpState, s.origin]).sort()).toStrictEqual(
              ports.map((p) => [p, PORT, 'established', 'restored']).sort(),
            );

            // The CLI, from outside the node, sees the kernel map and the bucket agree.
            const cli = await replicationStatus([
              '--nats',
              nats.url,
              '--bucket',
              BUCKET,
              '--node-id',
              'node-b',
              '--instance',
              PREFIX,
              '--pin-root',
              nodeB.pinRoot,
              '--json',
            ]);
            expect(cli).toMatchObject({
              nodeId: 'node-b',
              counts: { local: 3, kv: 3, both: 3, onlyLocal: 0, onlyKv: 0, onlyKvOtherNodes: 0 },
              wouldPut: 0,
              wouldDelete: 0,
            });
            expect(
              await replicationStatus(['--url', `http://127.0.0.1:${nodeB.readyPort}`, '--json']),
            ).toMatchObject({ nodeId: 'node-b', ready: true, connected: true, load: { loaded: 3 } });

            // The routes move to B, as a load balancer would after A failed its health check.
            await topo.client.ip(['route', 'replace', `${SERVER}/32`, 'via', '198.51.101.1', 'src', CLIENT]);
            await topo.server.ip(['route', 'replace', `${CLIENT}/32`, 'via', '203.0.114.1', 'src', SERVER]);

            const before = fwB.counters();
            for (const id of ids) {
              for (let i = 0; i < 3; i++)
                expect(await client.request(`send ${id} 1000`)).toStrictEqual({ echoed: 1000 });
            }
            const mid = fwB.counters();
            expect(mid.blocked).toBe(before.blocked);
            expect(mid.session_hits - before.session_hits).toBeGreaterThanOrEqual(9);
            expect(mid.session_hits - before.session_hits).toBe(mid.packets - before.packets);
            for (const s of fwB.sessions()) expect(s.packetsForward).toBeGreaterThan(0);

            // A new connection like them is blocked by B.
            expect(await client.request(`connect y ${SERVER} ${PORT} 1500`)).toStrictEqual({
              error: 'timeout',
            });
            await waitFor('the new connection blocked by B', () => fwB.counter('blocked') > mid.blocked);
            expect(await server.request('count')).toStrictEqual({ count: 3 });
            // And the old connections still work after the failed attempt.
            for (const id of ids) expect(await client.request(`send ${id} 1`)).toStrictEqual({ echoed: 1 });

            // B took the sessions over in KV once their traffic went through it.
            await waitFor(
              'node-b owning the sessions in KV',
              async () => {
                const entries = await kvSessions(nats.url);
                return keys.every(
                  (k) => decodeSessionValueOrThrow(k, entries.get(k)!.value).node === 'node-b',
                );
              },
              15_000,
            );
          } finally {
            fwB.close({ keepAttached: true });
          }
          nodeB.handle.send('stop');
          expect(await nodeB.handle.next()).toStrictEqual({ ok: true, stopped: true });
          expect(existsSync(nodeB.readyFile)).toBe(false);
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
