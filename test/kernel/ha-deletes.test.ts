/**
 * Deletes replicated at once: a TCP connection through node A closed with FIN both ways, one reset
 * with a RST, and sessions A's full LRU session map pushed out are each gone from the bucket (read
 * with a second NATS client) within 1 s, the coalescing window (500 ms) plus margin, and from B's
 * kernel map, which B's watch filled with them first. The full sync runs once an hour here, and
 * the idle timeout is the default 300 s, so only the session-end path can remove them in time.
 *
 *   client ns ── A ns (firewall, rxflow node A) ── server ns
 *            └── B ns (firewall, rxflow node B) ──┘
 */
import { connect, type KV, type NatsConnection } from 'nats';
import { afterAll, beforeAll, expect } from 'vitest';
import {
  FirewallCollection,
  firewallPinDir,
  type FirewallSession,
} from '../../src/datapath/firewall/index.js';
import { sessionKvKey } from '../../src/ha/codec.js';
import { kernelDescribe, kernelTest } from '../fixtures/privilege.js';
import { NodeChild, TCP_ECHO_SERVER, waitFor } from './firewall-helpers.js';
import { haCluster, haPolicies, type HaNode, type HaSite } from './ha-helpers.js';

const SITE: HaSite = {
  prefix: 'rxhd',
  bucket: 'rxhd_deletes',
  client: '10.96.0.1',
  clientNet: '10.96.0.0/24',
  server: '10.96.1.1',
  port: 7400,
};
const { prefix: PREFIX, bucket: BUCKET, client: CLIENT, server: SERVER, port: PORT } = SITE;
const { open: OPEN_POLICY, closed: CLOSED_POLICY } = haPolicies(SITE);
/** A's session map: small enough that a few dozen connections overflow it. */
const A_MAX_SESSIONS = 16;
const OVERFLOW_CONNECTIONS = 48;
/** The bound: the coalescing window plus margin. */
const DELETE_WITHIN_MS = 1000;

/**
 * A TCP client with ways to end a connection: 'connect ID HOST PORT TIMEOUT_MS' -> {connected,
 * srcPort} or {error}; 'send ID BYTES' -> {echoed}; 'fin ID' -> {closed} once both FINs passed
 * (the socket closed); 'rst ID' -> {reset} once the RST was sent.
 */
const CLIENT_SCRIPT = `
import net from 'node:net';
import { createInterface } from 'node:readline';
const socks = new Map();
const out = (v) => console.log(JSON.stringify(v));
createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, id, ...a] = line.split(' ');
  const s = socks.get(id);
  if (cmd === 'connect') {
    const [host, port, timeoutMs] = a;
    const c = net.connect({ host, port: Number(port) });
    const timer = setTimeout(() => { c.destroy(); out({ error: 'timeout' }); }, Number(timeoutMs));
    c.once('connect', () => { clearTimeout(timer); socks.set(id, c); out({ connected: true, srcPort: c.localPort }); });
    c.once('error', (e) => { clearTimeout(timer); out({ error: e.code }); });
  } else if (cmd === 'send') {
    const n = Number(a[0]);
    let got = 0;
    const onData = (d) => { got += d.length; if (got >= n) { s.off('data', onData); out({ echoed: got }); } };
    s.on('data', onData);
    s.write(Buffer.alloc(n, 0x61));
  } else if (cmd === 'fin') {
    s.once('close', () => out({ closed: true }));
    s.resume();
    s.end();
  } else if (cmd === 'rst') {
    s.once('close', () => out({ reset: true }));
    s.resetAndDestroy();
  }
});
`;

const keyOf = (srcPort: number): string =>
  sessionKvKey({ protocol: 6, srcAddr: CLIENT, srcPort, dstAddr: SERVER, dstPort: PORT, vni: 0 });

kernelDescribe(
  'HA deletes: a session that ends on the active node leaves the bucket and the standby at once',
  () => {
    const ha = haCluster(SITE);
    let nodeA: HaNode;
    let nodeB: HaNode;
    let fwA: FirewallCollection;
    let fwB: FirewallCollection;
    let server: NodeChild;
    let client: NodeChild;
    let nc: NatsConnection;
    let kv: KV;

    beforeAll(async () => {
      server = new NodeChild(ha.topo.server, TCP_ECHO_SERVER, [SERVER, String(PORT)]);
      client = new NodeChild(ha.topo.client, CLIENT_SCRIPT, []);
      await waitFor('server listening', () => server.notes.some((n) => n.note === 'listening'));
      const sink = { sync_interval_ms: 3_600_000 };
      nodeA = await ha.startNode('a', OPEN_POLICY, sink, {
        maxSessions: A_MAX_SESSIONS,
        source: { expire_interval_ms: 200 },
      });
      nodeB = await ha.startNode('b', CLOSED_POLICY, sink);
      fwA = FirewallCollection.open(firewallPinDir(PREFIX, nodeA.pinRoot));
      fwB = FirewallCollection.open(firewallPinDir(PREFIX, nodeB.pinRoot));
      nc = await connect({ servers: ha.nats.url });
      kv = await nc.jetstream().views.kv(BUCKET, { bindOnly: true });
    }, 60_000);

    afterAll(async () => {
      await nc?.close();
      fwA?.close({ keepAttached: true });
      fwB?.close({ keepAttached: true });
      client?.stop();
      server?.stop();
    });

    const inBucket = async (key: string): Promise<boolean> => (await kv.get(key))?.operation === 'PUT';
    const inB = (srcPort: number): boolean =>
      fwB.sessions().some((s: FirewallSession) => s.srcPort === srcPort && s.dstPort === PORT);

    /** A connection through A, established in the bucket and in B's kernel map. */
    async function replicatedConnection(id: string): Promise<number> {
      const r = await client.request(`connect ${id} ${SERVER} ${PORT} 5000`);
      expect(r.connected).toBe(true);
      const srcPort = r.srcPort as number;
      expect(await client.request(`send ${id} 100`)).toStrictEqual({ echoed: 100 });
      await waitFor(`${id} in the bucket`, () => inBucket(keyOf(srcPort)));
      await waitFor(`${id} in B’s kernel map`, () => inB(srcPort));
      return srcPort;
    }

    /**
     * Resolves once `key` is gone from the bucket: a delete was written over the session's put
     * (a key never written would read as absent too, and prove nothing). Fails when that takes
     * over the bound.
     */
    function goneFromBucket(what: string, key: string): Promise<void> {
      return waitFor(
        `${what} deleted from the bucket`,
        async () => {
          const op = (await kv.get(key))?.operation;
          return op === 'DEL' || op === 'PURGE';
        },
        DELETE_WITHIN_MS,
      );
    }

    kernelTest(
      'a connection closed with FIN both ways leaves the bucket within 1 s and B’s map',
      async () => {
        const srcPort = await replicatedConnection('f1');
        expect(await client.request('fin f1')).toStrictEqual({ closed: true });
        await goneFromBucket('the FIN-closed session', keyOf(srcPort));
        await waitFor('the FIN-closed session gone from B’s map', () => !inB(srcPort));
        // A keeps it, closed, for the last packets until session_closed_timeout_s.
        expect(fwA.sessions().find((s) => s.srcPort === srcPort)?.tcpState).toBe('closed');
      },
      30_000,
    );

    kernelTest(
      'a connection reset with a RST leaves the bucket within 1 s and B’s map',
      async () => {
        const srcPort = await replicatedConnection('r1');
        expect(await client.request('rst r1')).toStrictEqual({ reset: true });
        await goneFromBucket('the reset session', keyOf(srcPort));
        await waitFor('the reset session gone from B’s map', () => !inB(srcPort));
      },
      30_000,
    );

    kernelTest(
      'sessions pushed out of A’s full LRU map leave the bucket within 1 s and B’s map',
      async () => {
        const ports: number[] = [];
        for (let i = 0; i < OVERFLOW_CONNECTIONS; i++) {
          const r = await client.request(`connect l${i} ${SERVER} ${PORT} 5000`);
          expect(r.connected).toBe(true);
          ports.push(r.srcPort as number);
        }
        // What A's kernel map holds now (read here, not through rxflow): the rest were evicted.
        // Every connection's session was written to the bucket (and maybe deleted since).
        await waitFor('every connection written to the bucket', async () => {
          for (const p of ports) if ((await kv.get(keyOf(p))) === null) return false;
          return true;
        });
        const held = new Set(fwA.sessions().map((s) => s.srcPort));
        const evicted = ports.filter((p) => !held.has(p));
        const kept = ports.filter((p) => held.has(p));
        expect(evicted.length).toBeGreaterThanOrEqual(OVERFLOW_CONNECTIONS - A_MAX_SESSIONS);
        for (const p of evicted) await goneFromBucket(`evicted session ${p}`, keyOf(p));
        await waitFor('the evicted sessions gone from B’s map', () => evicted.every((p) => !inB(p)));
        // What A still holds stays replicated.
        for (const p of kept) {
          if (fwA.sessions().some((s) => s.srcPort === p)) expect(await inBucket(keyOf(p))).toBe(true);
        }
      },
      60_000,
    );
  },
  ['nats-server'],
);
