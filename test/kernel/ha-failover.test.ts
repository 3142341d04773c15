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
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import type { CliIo } from '../../src/cli/io.js';
import { registerReplicationCommands } from '../../src/cli/replication.js';
import { FirewallCollection, firewallPinDir } from '../../src/datapath/firewall/index.js';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../src/ha/codec.js';
import { cleanup, makeTempDir } from '../fixtures/cleanup.js';
import { freePort } from '../fixtures/nats.js';
import { kernelDescribe, kernelTest } from '../fixtures/privilege.js';
import { waitFor } from './firewall-helpers.js';
import {
  cutOffA,
  haCluster,
  haPolicies,
  routeThroughB,
  startEcho,
  type HaNode,
  type HaNodeName,
  type HaSite,
} from './ha-helpers.js';

const SITE: HaSite = {
  prefix: 'rxha',
  bucket: 'rxha_failover',
  client: '10.99.0.1',
  clientNet: '10.99.0.0/24',
  server: '10.99.1.1',
  port: 7100,
};
const { prefix: PREFIX, bucket: BUCKET, client: CLIENT, server: SERVER, port: PORT } = SITE;
const { open: OPEN_POLICY, closed: CLOSED_POLICY } = haPolicies(SITE);

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
    const ha = haCluster(SITE);

    /** A node with a readiness file and endpoint, and a full sync every 2 s. */
    async function startNode(
      node: HaNodeName,
      policy: string,
    ): Promise<HaNode & { readyFile: string; readyPort: number }> {
      const readyFile = join(makeTempDir(PREFIX, cleanup), 'ready');
      const readyPort = await freePort();
      const started = await ha.startNode(node, policy, {
        sync_interval_ms: 2000,
        ready_file: readyFile,
        ready_listen: `127.0.0.1:${readyPort}`,
      });
      return { ...started, readyFile, readyPort };
    }

    kernelTest(
      'node B loads the sessions of killed node A and passes their packets while new connections stay blocked',
      async () => {
        const { topo, nats } = ha;
        const { server, client } = await startEcho(topo, SITE);
        try {
          const nodeA = await startNode('a', OPEN_POLICY);
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
          await cutOffA(topo);

          const nodeB = await startNode('b', CLOSED_POLICY);
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
            await routeThroughB(topo, SITE);

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
