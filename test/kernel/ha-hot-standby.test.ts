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
import { expect } from 'vitest';
import {
  FirewallCollection,
  firewallPinDir,
  type FirewallSession,
} from '../../src/datapath/firewall/index.js';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../src/ha/codec.js';
import type { NodeReplicationStatus } from '../../src/ha/replication.js';
import type { ChildHandle } from '../fixtures/child.js';
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
  prefix: 'rxhw',
  bucket: 'rxhw_standby',
  client: '10.98.0.1',
  clientNet: '10.98.0.0/24',
  server: '10.98.1.1',
  port: 7200,
};
const { prefix: PREFIX, bucket: BUCKET, client: CLIENT, server: SERVER, port: PORT } = SITE;
const { open: OPEN_POLICY, closed: CLOSED_POLICY } = haPolicies(SITE);

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
    const ha = haCluster(SITE);

    /**
     * A node with a full sync once an hour: after the first one at start, only the watch can bring
     * A's sessions to B. Every revision is kept, so the test can read who wrote what.
     */
    function startNode(node: HaNodeName, policy: string): Promise<HaNode> {
      return ha.startNode(node, policy, { history: 64, sync_interval_ms: 3_600_000 });
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
        const { topo, nats } = ha;
        const { server, client } = await startEcho(topo, SITE);
        try {
          // Both nodes up before any connection: B's boot load finds an empty bucket.
          const nodeA = await startNode('a', OPEN_POLICY);
          const nodeB = await startNode('b', CLOSED_POLICY);
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
            await cutOffA(topo);
            await routeThroughB(topo, SITE);

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
