/**
 * The firewall attached in a namespace, on real traffic: exact allowed and blocked counts, audit
 * mode, an established TCP connection across a policy change, session listing filters, GENEVE
 * hairpin through a veth, and VXLAN through Linux vxlan devices.
 */
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { FirewallCollection, type FirewallCounters } from '../../src/datapath/firewall/index.js';
import { parsePolicy } from '../../src/config/firewall-policy.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import { sendUdp, startUdpSink } from '../fixtures/traffic.js';
import {
  NodeChild,
  TCP_CLIENT,
  TCP_ECHO_SERVER,
  UDP_PEER,
  drainAudit,
  geneveOption,
  quickAcks,
  snmp,
  tcpSegmentsSent,
  udpFrame,
  waitFor,
} from './firewall-helpers.js';
import { ETH_TEB, geneve } from './flow-packets.js';
import { parseSettings } from '../../src/config/firewall-settings.js';

const POLICY = `
networks:
  - {cidr: 192.0.2.0/24, policy: clients}
  - {cidr: "2001:db8:0:1::/64", policy: clients}
  - {cidr: 10.42.0.0/24, policy: overlay}
policies:
  clients:
    default_action: block
    rules:
      - {destination: 192.0.2.2, protocol: udp, port: 7001}
      - {destination: "2001:db8:0:1::2", protocol: udp, port: 7001}
      - {destination: 192.0.2.2, protocol: tcp, port: 7100}
      - {destination: 198.18.0.2, protocol: udp, port: 53}
  overlay:
    default_action: block
    rules:
      - {destination: 10.42.0.2, protocol: udp, port: 7200}
`;

kernelDescribe('firewall on real traffic between namespaces', () => {
  let topo: PairTopology;
  const open: FirewallCollection[] = [];

  /** The firewall on the server's veth end, ingress and egress. */
  function attach(extra: Partial<Parameters<typeof FirewallCollection.load>[0]> = {}): FirewallCollection {
    const fw = FirewallCollection.load({
      pinDir: makeBpffsDir('rxfw'),
      ingress: topo.link.b.ifname,
      netns: topo.server.name,
      ...extra,
    });
    open.push(fw);
    fw.applyPolicy(parsePolicy(POLICY, 'policy.yaml', {}));
    fw.attach();
    return fw;
  }

  function delta(fw: FirewallCollection, before: FirewallCounters): Partial<FirewallCounters> {
    const now = fw.counters();
    return Object.fromEntries(
      Object.entries(now).flatMap(([k, v]) =>
        v !== before[k as keyof FirewallCounters] ? [[k, v - before[k as keyof FirewallCounters]]] : [],
      ),
    );
  }

  /** Datagrams from the client's `srcPort` (and the `flows - 1` ports after it) to `to`:`port`. */
  interface UdpSend {
    to: string;
    port: number;
    count: number;
    payloadBytes: number;
    srcPort: number;
    flows?: number;
  }

  function udpFromClient(send: UdpSend): Promise<unknown> {
    return sendUdp({ from: topo.client, ...send });
  }

  /** Sends to a sink on the server waiting for every datagram; resolves to how many it received. */
  async function udpToServer(send: UdpSend): Promise<number> {
    const sink = await startUdpSink({
      ns: topo.server,
      port: send.port,
      family: send.to.includes(':') ? 6 : 4,
      count: send.count * (send.flows ?? 1),
    });
    await udpFromClient(send);
    return (await sink.result).received;
  }

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxfw' });
    await quickAcks(topo);
  });
  afterEach(() => {
    for (const fw of open.splice(0)) fw.close({ unpin: true });
  });
  afterAll(() => cleanup.dispose());

  it('counts allowed and blocked UDP exactly; blocked packets never reach the server stack', async () => {
    const fw = attach();
    const audit = fw.auditReader();
    const before = fw.counters();
    expect(
      await udpToServer({ to: '192.0.2.2', port: 7001, count: 1000, payloadBytes: 100, srcPort: 30000 }),
    ).toBe(1000);
    await waitFor('1000 packets', () => fw.counter('packets') - before.packets === 1000);
    expect(delta(fw, before)).toStrictEqual({ packets: 1000, allowed: 1000, session_hits: 999 });

    const stack = await snmp(topo.server);
    const mid = fw.counters();
    await udpFromClient({ to: '192.0.2.2', port: 7002, count: 300, payloadBytes: 100, srcPort: 30001 });
    await waitFor('300 blocked', () => fw.counter('blocked') - mid.blocked === 300);
    expect(delta(fw, mid)).toStrictEqual({ packets: 300, blocked: 300 });
    expect((await snmp(topo.server))['Ip.InReceives']).toBe(stack['Ip.InReceives']);
    const events = drainAudit(audit);
    expect(events).toHaveLength(300);
    expect(
      events.every(
        (e) =>
          e.srcAddr === '192.0.2.1' &&
          e.srcPort === 30001 &&
          e.dstPort === 7002 &&
          e.action === 'block' &&
          e.enforced,
      ),
    ).toBe(true);
    expect(fw.sessions().map((s) => [s.srcPort, s.dstPort, s.packetsForward, s.bytesForward])).toStrictEqual([
      [30000, 7001, 1000, 1000 * 142],
    ]);
  });

  it('audit mode passes blocked traffic and reports each packet', async () => {
    const fw = attach({ settings: parseSettings({ enforcement: 'off' }) });
    const audit = fw.auditReader();
    const before = fw.counters();
    expect(
      await udpToServer({ to: '192.0.2.2', port: 7002, count: 200, payloadBytes: 10, srcPort: 30100 }),
    ).toBe(200);
    await waitFor('200 packets', () => fw.counter('packets') - before.packets === 200);
    expect(delta(fw, before)).toStrictEqual({ packets: 200, audit_passed: 200 });
    const events = drainAudit(audit);
    expect(events).toHaveLength(200);
    expect(events.every((e) => e.action === 'block' && !e.enforced && e.srcPort === 30100)).toBe(true);
    // Kept as a session of the initiator, marked as the block it would be.
    expect(
      fw.sessions().map((s) => [s.srcAddr, s.srcPort, s.dstPort, s.action, s.packetsForward]),
    ).toStrictEqual([['192.0.2.1', 30100, 7002, 'block', 200]]);
  });

  it('an established TCP connection survives a policy change that blocks new connections like it', async () => {
    const fw = attach();
    const audit = fw.auditReader();
    const server = new NodeChild(topo.server, TCP_ECHO_SERVER, ['192.0.2.2', '7100']);
    const client = new NodeChild(topo.client, TCP_CLIENT, []);
    try {
      await waitFor('server listening', () => server.notes.some((n) => n.note === 'listening'));
      const c = await client.request('connect a 192.0.2.2 7100 5000');
      expect(c.connected).toBe(true);
      for (let i = 0; i < 5; i++) expect(await client.request('send a 1000')).toStrictEqual({ echoed: 1000 });

      // New policy: clients may no longer reach tcp/7100.
      const result = fw.applyPolicy(parsePolicy(POLICY.replace(/.*port: 7100.*\n/, ''), 'policy.yaml', {}));
      expect(result.removed).toBe(1);

      const key = {
        protocol: 6,
        srcAddr: '192.0.2.1',
        srcPort: c.srcPort as number,
        dstAddr: '192.0.2.2',
        dstPort: 7100,
        vni: 0,
      };
      const session = fw.session(key)!;
      expect(session.tcpState).toBe('established');
      const tcpBefore = await snmp(topo.client);
      const before = fw.counters();
      for (let i = 0; i < 5; i++) expect(await client.request('send a 1000')).toStrictEqual({ echoed: 1000 });
      // Every segment of the established connection passed by its session, none was judged.
      await waitFor('client acks counted', async () => {
        const t = await snmp(topo.client);
        const s = fw.session(key)!;
        return s.packetsForward - session.packetsForward === tcpSegmentsSent(t, tcpBefore);
      });
      const tcpAfter = await snmp(topo.client);
      const after = fw.session(key)!;
      expect(after.packetsForward - session.packetsForward).toBe(tcpSegmentsSent(tcpAfter, tcpBefore));
      expect(after.packetsReverse - session.packetsReverse).toBe(
        tcpAfter['Tcp.InSegs']! - tcpBefore['Tcp.InSegs']!,
      );
      const d = delta(fw, before);
      expect(d.blocked).toBeUndefined();
      expect(d.session_hits).toBe(d.packets);

      // A new connection like it is blocked: every SYN it sends is dropped and audited.
      const synBefore = await snmp(topo.client);
      const blockedBefore = fw.counter('blocked');
      expect(await client.request('connect b 192.0.2.2 7100 1500')).toStrictEqual({ error: 'timeout' });
      // A SYN retransmitted while the stack is read is sent and blocked after it: read again until both agree.
      let syns = 0;
      await waitFor('syns blocked', async () => {
        const synAfter = await snmp(topo.client);
        syns = tcpSegmentsSent(synAfter, synBefore);
        return syns >= 1 && fw.counter('blocked') - blockedBefore === syns;
      });
      const events = drainAudit(audit);
      expect(events).toHaveLength(syns);
      expect(new Set(events.map((e) => `${e.dstPort}/${e.action}/${e.reason}`))).toStrictEqual(
        new Set(['7100/block/policy_default']),
      );
      expect(await server.request('count')).toStrictEqual({ count: 1 });
      // And the old connection still works after the failed attempt.
      expect(await client.request('send a 1')).toStrictEqual({ echoed: 1 });
    } finally {
      client.stop();
      server.stop();
    }
  });

  it('session listing filters return exactly the matching sessions', async () => {
    const fw = attach();
    await udpToServer({ to: '192.0.2.2', port: 7001, count: 1, payloadBytes: 10, flows: 3, srcPort: 31000 });
    await udpToServer({
      to: '2001:db8:0:1::2',
      port: 7001,
      count: 2,
      payloadBytes: 10,
      flows: 2,
      srcPort: 32000,
    });
    await waitFor('5 sessions', () => fw.sessions().length === 5);
    const ids = (f: Parameters<FirewallCollection['sessions']>[0]) =>
      fw
        .listSessions(f)
        .map((s) => `${s.srcAddr}:${s.srcPort}>${s.dstAddr}:${s.dstPort}`)
        .sort();
    const v4 = [
      '192.0.2.1:31000>192.0.2.2:7001',
      '192.0.2.1:31001>192.0.2.2:7001',
      '192.0.2.1:31002>192.0.2.2:7001',
    ];
    const v6 = ['2001:db8:0:1::1:32000>2001:db8:0:1::2:7001', '2001:db8:0:1::1:32001>2001:db8:0:1::2:7001'];
    expect(ids({})).toStrictEqual([...v4, ...v6]);
    expect(ids({ src: '192.0.2.1' })).toStrictEqual(v4);
    expect(ids({ src: '192.0.2.0/24', port: 31002 })).toStrictEqual([v4[2]]);
    expect(ids({ dst: '2001:db8:0:1::/64' })).toStrictEqual(v6);
    expect(ids({ dst: '2001:db8:0:1::2', port: 32001 })).toStrictEqual([v6[1]]);
    expect(ids({ port: 7001 })).toStrictEqual([...v4, ...v6]);
    expect(ids({ port: 31001 })).toStrictEqual([v4[1]]);
    expect(ids({ dst: '192.0.2.1' })).toStrictEqual([]);
    const listed = fw.listSessions({ port: 32000 })[0]!;
    expect(listed).toMatchObject({
      protocol: 17,
      tunnel: 'none',
      vni: 0,
      packetsForward: 2,
      bytesForward: 2 * (14 + 40 + 8 + 10),
      packetsReverse: 0,
      bytesReverse: 0,
    });
    expect(listed.ageMs).toBeGreaterThanOrEqual(listed.idleMs);
  });

  it('GENEVE through a veth: the allowed inner packet comes back hairpinned, a blocked one does not', async () => {
    const fw = attach({ tunnelMode: 'geneve', address: '192.0.2.2' });
    const audit = fw.auditReader();
    const peer = new NodeChild(topo.client, UDP_PEER, ['192.0.2.1', '40000']);
    try {
      await waitFor('peer bound', () => peer.notes.length === 1);
      const options = geneveOption(0x0108, 1, [0xca, 0xfe, 0, 0, 0, 0, 0, 0x2a]);
      // The load balancer's side of a flow: 192.0.2.50 -> 198.18.0.2 udp/53, VNI 777.
      const payload = (dport: number) =>
        Buffer.from(
          geneve(777, ETH_TEB, options, udpFrame('192.0.2.50', '198.18.0.2', 5353, dport)),
        ).toString('hex');
      const before = fw.counters();
      expect(await peer.request(`send 192.0.2.2 6081 ${payload(53)}`)).toStrictEqual({ sent: true });
      expect(await peer.request('recv 5000')).toStrictEqual({
        from: '192.0.2.2',
        port: 6081,
        hex: payload(53),
      });
      await waitFor('own hairpin seen on egress', () => fw.counter('own_hairpin') - before.own_hairpin === 1);
      expect(delta(fw, before)).toStrictEqual({ packets: 2, redirected: 1, own_hairpin: 1 });
      expect(fw.sessions()).toStrictEqual([
        expect.objectContaining({
          srcAddr: '192.0.2.50',
          dstAddr: '198.18.0.2',
          srcPort: 5353,
          dstPort: 53,
          vni: 777,
          tunnel: 'geneve',
          cookie: 'cafe00000000002a',
          outerSrcAddr: '192.0.2.1',
          outerDstAddr: '192.0.2.2',
          outerSrcPort: 40000,
          outerDstPort: 6081,
          outerSrcMac: topo.link.a.mac,
          outerDstMac: topo.link.b.mac,
          ingressIfindex: topo.link.b.ifindex,
        }),
      ]);

      const mid = fw.counters();
      expect(await peer.request(`send 192.0.2.2 6081 ${payload(54)}`)).toStrictEqual({ sent: true });
      await waitFor('blocked', () => fw.counter('blocked') - mid.blocked === 1);
      // Dropped on ingress: nothing can come back any more.
      expect(await peer.request('recv 1')).toStrictEqual({ timeout: true });
      expect(drainAudit(audit).map((e) => [e.vni, e.tunnel, e.dstPort, e.action])).toStrictEqual([
        [777, 'geneve', 54, 'block'],
      ]);
    } finally {
      peer.stop();
    }
  });

  it('VXLAN through Linux vxlan devices: the inner packet is judged and its session carries the VNI', async () => {
    const vx = async (ns: typeof topo.client, dev: string, local: string, remote: string, addr: string) => {
      await ns.ip([
        'link',
        'add',
        'rxfwvx0',
        'type',
        'vxlan',
        'id',
        '42',
        'local',
        local,
        'remote',
        remote,
        'dstport',
        '4789',
        'dev',
        dev,
      ]);
      await ns.ip(['addr', 'add', addr, 'dev', 'rxfwvx0']);
      await ns.ip(['link', 'set', 'rxfwvx0', 'addrgenmode', 'none']);
      await ns.ip(['link', 'set', 'rxfwvx0', 'up']);
    };
    await vx(topo.client, topo.link.a.ifname, '192.0.2.1', '192.0.2.2', '10.42.0.1/24');
    await vx(topo.server, topo.link.b.ifname, '192.0.2.2', '192.0.2.1', '10.42.0.2/24');
    try {
      const macOf = async (ns: typeof topo.client) =>
        (JSON.parse(await ns.ip(['-j', 'link', 'show', 'rxfwvx0'])) as { address: string }[])[0]!.address;
      await topo.client.ip([
        'neigh',
        'replace',
        '10.42.0.2',
        'lladdr',
        await macOf(topo.server),
        'dev',
        'rxfwvx0',
        'nud',
        'permanent',
      ]);
      await topo.server.ip([
        'neigh',
        'replace',
        '10.42.0.1',
        'lladdr',
        await macOf(topo.client),
        'dev',
        'rxfwvx0',
        'nud',
        'permanent',
      ]);
      const fw = attach({ tunnelMode: 'vxlan', address: '192.0.2.2' });
      const before = fw.counters();
      expect(
        await udpToServer({ to: '10.42.0.2', port: 7200, count: 50, payloadBytes: 100, srcPort: 33000 }),
      ).toBe(50);
      const mid = fw.counters();
      await udpFromClient({ to: '10.42.0.2', port: 7201, count: 20, payloadBytes: 100, srcPort: 33001 });
      await waitFor('20 blocked', () => fw.counter('blocked') - mid.blocked === 20);
      expect(delta(fw, before)).toStrictEqual({ packets: 70, allowed: 50, session_hits: 49, blocked: 20 });
      const [s] = fw.sessions();
      expect(s).toMatchObject({
        srcAddr: '10.42.0.1',
        dstAddr: '10.42.0.2',
        srcPort: 33000,
        dstPort: 7200,
        vni: 42,
        tunnel: 'vxlan',
        outerSrcAddr: '192.0.2.1',
        outerDstAddr: '192.0.2.2',
        outerDstPort: 4789,
        packetsForward: 50,
        cookie: '0000000000000000',
      });
      expect(fw.sessions()).toHaveLength(1);
    } finally {
      await topo.client.ip(['link', 'del', 'rxfwvx0']);
      await topo.server.ip(['link', 'del', 'rxfwvx0']);
    }
  });
});
