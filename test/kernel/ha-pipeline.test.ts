/**
 * pipelines/firewall-ha.yaml as shipped: it validates with no variable set, and two nodes run from
 * it, told apart only by its variables (node id, pin root, ports). A connection through node A
 * lands in the bucket as A's (read with a second NATS client), in B's kernel map through B's
 * watch; A's /status counts it at once, as an independent read of the kernel map and the bucket
 * does, and A serves the replicating sink's counters and its replication status on its Prometheus
 * endpoint.
 *
 *   client ns ── A ns (firewall, rxflow node A) ── server ns
 *            └── B ns (firewall, rxflow node B) ──┘
 */
import { readFileSync } from 'node:fs';
import { connect } from 'nats';
import { expect } from 'vitest';
import {
  FirewallCollection,
  firewallPinDir,
  type FirewallSession,
} from '../../src/datapath/firewall/index.js';
import { decodeSessionValueOrThrow, sessionKvKey } from '../../src/ha/codec.js';
import type { NodeReplicationStatus } from '../../src/ha/replication.js';
import { formatProblem } from '../../src/config/errors.js';
import { checkPipeline } from '../../src/pipeline/load.js';
import { freePort } from '../fixtures/nats.js';
import { kernelDescribe, kernelTest } from '../fixtures/privilege.js';
import { waitFor } from './firewall-helpers.js';
import { haCluster, haPolicies, startEcho, type HaNode, type HaNodeName, type HaSite } from './ha-helpers.js';

const FILE = new URL('../../pipelines/firewall-ha.yaml', import.meta.url).pathname;
const SITE: HaSite = {
  prefix: 'rxhp',
  bucket: 'rxhp_pipeline',
  client: '10.97.0.1',
  clientNet: '10.97.0.0/24',
  server: '10.97.1.1',
  port: 7300,
};
const { prefix: PREFIX, bucket: BUCKET, client: CLIENT, server: SERVER, port: PORT } = SITE;
const { open: OPEN_POLICY, closed: CLOSED_POLICY } = haPolicies(SITE);

/** The value of the first sample of `metric` whose labels include every one of `labels`. */
function sample(text: string, metric: string, labels: string[]): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${metric}{`)) continue;
    const close = line.indexOf('}');
    const set = line.slice(metric.length + 1, close).split(',');
    if (labels.every((l) => set.includes(l))) return Number(line.slice(close + 1).trim());
  }
  return undefined;
}

kernelDescribe(
  'pipelines/firewall-ha.yaml: two nodes of an HA pair started from the shipped file',
  () => {
    const ha = haCluster(SITE);
    const ports = new Map<HaNodeName, { ready: number; metrics: number }>();

    async function startNode(node: HaNodeName, policy: string): Promise<HaNode> {
      const p = { ready: await freePort(), metrics: await freePort() };
      ports.set(node, p);
      return ha.startNode(node, policy, {
        file: FILE,
        env: (o) => ({
          RXFLOW_NODE_ID: o.nodeId,
          RXFLOW_NATS_URL: o.natsUrl,
          RXFLOW_HA_BUCKET: BUCKET,
          RXFLOW_FIREWALL_INSTANCE: PREFIX,
          RXFLOW_PIN_ROOT: o.pinRoot,
          RXFLOW_FIREWALL_NETNS: o.netns,
          RXFLOW_HA_READY_LISTEN: `127.0.0.1:${p.ready}`,
          RXFLOW_METRICS_PORT: String(p.metrics),
          RXFLOW_FIREWALL_METRICS_INTERVAL: '200ms',
        }),
      });
    }

    kernelTest('validates with no variable set', () => {
      const problems = checkPipeline(readFileSync(FILE, 'utf8'), 'pipelines/firewall-ha.yaml', {
        env: {},
      }).problems.map(formatProblem);
      expect(problems).toStrictEqual([]);
    });

    kernelTest(
      'A replicates a connection to the bucket, B holds it in its kernel map, A serves its metrics',
      async () => {
        const { topo, nats } = ha;
        const { server, client } = await startEcho(topo, SITE);
        try {
          const nodeA = await startNode('a', OPEN_POLICY);
          const nodeB = await startNode('b', CLOSED_POLICY);
          for (const node of ['a', 'b'] as const) {
            const ready = await fetch(`http://127.0.0.1:${ports.get(node)!.ready}/ready`);
            expect(ready.status).toBe(200);
          }

          const r = await client.request(`connect c1 ${SERVER} ${PORT} 5000`);
          expect(r.connected).toBe(true);
          const srcPort = r.srcPort as number;
          expect(await client.request('send c1 100')).toStrictEqual({ echoed: 100 });

          // In the bucket, written by node-a, read by a client of the test's own.
          const key = sessionKvKey({
            protocol: 6,
            srcAddr: CLIENT,
            srcPort,
            dstAddr: SERVER,
            dstPort: PORT,
            vni: 0,
          });
          const nc = await connect({ servers: nats.url });
          try {
            const kv = await nc.jetstream().views.kv(BUCKET, { bindOnly: true });
            await waitFor('the session in the bucket', async () => (await kv.get(key))?.operation === 'PUT');
            const entry = await kv.get(key);
            expect(decodeSessionValueOrThrow(key, entry!.value).node).toBe('node-a');
          } finally {
            await nc.close();
          }

          // In B's kernel map, through B's watch.
          const fwB = FirewallCollection.open(firewallPinDir(PREFIX, nodeB.pinRoot));
          try {
            let copy: FirewallSession | undefined;
            await waitFor('the session in B’s kernel map', () => {
              copy = fwB.sessions().find((s) => s.srcPort === srcPort);
              return copy !== undefined;
            });
            expect(copy).toMatchObject({
              srcAddr: CLIENT,
              dstAddr: SERVER,
              dstPort: PORT,
              origin: 'restored',
            });
          } finally {
            fwB.close({ keepAttached: true });
          }

          // A's status compares its kernel map with the bucket when asked: the connection is
          // counted although the only full sync ran at start (the file syncs every 30 s), and the
          // counts equal what the test reads from the kernel map and, over its own connection,
          // from the bucket.
          const fwA = FirewallCollection.open(firewallPinDir(PREFIX, nodeA.pinRoot));
          let inBoth = -1;
          try {
            const local = new Set(
              fwA
                .sessions()
                .filter((s) => s.tcpState !== 'closed')
                .map((s) => sessionKvKey(s)),
            );
            const nc2 = await connect({ servers: nats.url });
            let inKv: Set<string>;
            try {
              const kv = await nc2.jetstream().views.kv(BUCKET, { bindOnly: true });
              inKv = new Set<string>();
              for await (const k of await kv.keys()) inKv.add(k);
            } finally {
              await nc2.close();
            }
            const res = await fetch(`http://127.0.0.1:${ports.get('a')!.ready}/status`);
            const status = (await res.json()) as NodeReplicationStatus;
            const both = [...local].filter((k) => inKv.has(k)).length;
            inBoth = both;
            expect(status.counts).toMatchObject({
              local: local.size,
              kv: inKv.size,
              both,
              onlyLocal: local.size - both,
              onlyKv: inKv.size - both,
            });
            expect(status.counts!.local).toBeGreaterThanOrEqual(1);
            expect(status.lastSync!.counts.local).toBe(0);
            expect(status.comparedAtMs).toBeGreaterThan(status.lastSync!.atMs);
            expect(status.lagMs).toBe(0);
            expect(status.compareSource).toBe('watch');
          } finally {
            fwA.close({ keepAttached: true });
          }

          // A's metrics: the replicating sink was handed the session's events.
          let handed: number | undefined;
          await waitFor('the ha sink’s counters on A’s Prometheus endpoint', async () => {
            const text = await (await fetch(`http://127.0.0.1:${ports.get('a')!.metrics}/metrics`)).text();
            handed = sample(text, 'rxflow_sink_handed_total', ['sink="ha"', 'type="nats_sessions"']);
            return handed !== undefined && handed >= 1;
          });
          // And its replication status, from firewall_metrics: the comparison /status made.
          const instance = `rxflow_firewall_instance="${PREFIX}"`;
          await waitFor('A’s replication status on its Prometheus endpoint', async () => {
            const text = await (await fetch(`http://127.0.0.1:${ports.get('a')!.metrics}/metrics`)).text();
            return (
              sample(text, 'rxflow_firewall_replication_ready', [instance]) === 1 &&
              sample(text, 'rxflow_firewall_replication_connected', [instance]) === 1 &&
              sample(text, 'rxflow_firewall_replication_sessions', [
                instance,
                'rxflow_replication_presence="both"',
              ]) === inBoth
            );
          });

          for (const node of [nodeA, nodeB]) {
            node.handle.send('stop');
            expect(await node.handle.next()).toStrictEqual({ ok: true, stopped: true });
          }
        } finally {
          client.stop();
          server.stop();
        }
      },
      90_000,
    );
  },
  ['nats-server'],
);
