/**
 * The firewall programs' verdicts, counters, audit events, sessions and tunnel handling, frame by
 * frame through BPF_PROG_TEST_RUN (the retval is the TC verdict, dataOut the packet as the program
 * left it). Real traffic is in firewall-traffic.test.ts.
 */
import { afterAll, expect, it } from 'vitest';
import type { FirewallCounters } from '../../src/datapath/firewall/index.js';
import { TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC } from '../../src/datapath/firewall/types.js';
import { cleanup } from '../fixtures/cleanup.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import {
  CLIENT_POLICY,
  MAC_A,
  MAC_B,
  TCP_ACK,
  TCP_FIN,
  TCP_RST,
  TCP_SYN,
  drainAudit,
  drainSessionEvents,
  geneveFrame,
  geneveOption,
  icmpFrame,
  loadForTestRun,
  tcpFrame,
  udpFrame,
  vxlanFrame,
} from './firewall-helpers.js';
import { ETH_ARP, ethernet } from './flow-packets.js';
import { parseSetting, parseSettings } from '../../src/config/firewall-settings.js';

const CLIENT = '198.51.100.7';
const SERVER = '203.0.113.2';
const OTHER = '203.0.113.9';

const ZERO: FirewallCounters = {
  packets: 0,
  allowed: 0,
  blocked: 0,
  redirected: 0,
  audit_passed: 0,
  session_hits: 0,
  non_ip: 0,
  parse_failed: 0,
  own_hairpin: 0,
  session_create_failed: 0,
  audit_lost: 0,
  session_events_lost: 0,
};

kernelDescribe('firewall verdicts (BPF_PROG_TEST_RUN)', () => {
  afterAll(() => cleanup.dispose());

  it('allows what a rule allows, blocks the rest, and counts each packet once', () => {
    const fw = loadForTestRun(CLIENT_POLICY);
    const ingress = fw.program('ingress');
    const audit = fw.auditReader();
    expect(ingress.testRun(udpFrame(CLIENT, SERVER, 40000, 53)).retval).toBe(TC_ACT_OK);
    expect(ingress.testRun(tcpFrame(CLIENT, SERVER, 40001, 80, TCP_SYN)).retval).toBe(TC_ACT_OK);
    for (let i = 0; i < 3; i++)
      expect(ingress.testRun(udpFrame(CLIENT, SERVER, 40002, 54)).retval).toBe(TC_ACT_SHOT);
    expect(ingress.testRun(tcpFrame(CLIENT, OTHER, 40003, 80, TCP_SYN)).retval).toBe(TC_ACT_SHOT);
    // Not in any network: the default_action setting (allow).
    expect(ingress.testRun(udpFrame('192.0.2.1', SERVER, 40004, 9)).retval).toBe(TC_ACT_OK);
    // No opinion on ARP: later programs decide.
    const arp = ethernet({ type: ETH_ARP, src: MAC_A, dst: MAC_B }, new Uint8Array(28));
    expect(ingress.testRun(arp).retval).toBe(TC_ACT_UNSPEC);
    expect(fw.counters()).toStrictEqual({ ...ZERO, packets: 8, allowed: 3, blocked: 4, non_ip: 1 });

    const events = drainAudit(audit);
    expect(
      events.map((e) => [e.srcPort, e.dstAddr, e.dstPort, e.action, e.reason, e.policyId, e.enforced]),
    ).toStrictEqual([
      [40002, SERVER, 54, 'block', 'policy_default', 7, true],
      [40002, SERVER, 54, 'block', 'policy_default', 7, true],
      [40002, SERVER, 54, 'block', 'policy_default', 7, true],
      [40003, OTHER, 80, 'block', 'policy_default', 7, true],
    ]);
    expect(events[0]).toMatchObject({
      srcAddr: CLIENT,
      protocol: 17,
      direction: 'ingress',
      tunnel: 'none',
      ruleId: 0,
      vni: 0,
      packetLength: 46,
    });
  });

  it('passes return traffic and later packets by session, without a policy lookup', () => {
    const fw = loadForTestRun(CLIENT_POLICY);
    const ingress = fw.program('ingress');
    const egress = fw.program('egress');
    expect(ingress.testRun(udpFrame(CLIENT, SERVER, 41000, 53, 10)).retval).toBe(TC_ACT_OK);
    // The reply goes from the server (in no network) to the client: the session passes it.
    for (let i = 0; i < 2; i++)
      expect(egress.testRun(udpFrame(SERVER, CLIENT, 53, 41000, 100)).retval).toBe(TC_ACT_OK);
    expect(fw.counters()).toMatchObject({ packets: 3, allowed: 3, session_hits: 2, blocked: 0 });
    const [s] = fw.sessions();
    expect(s).toMatchObject({
      protocol: 17,
      srcAddr: CLIENT,
      srcPort: 41000,
      dstAddr: SERVER,
      dstPort: 53,
      vni: 0,
      packetsForward: 1,
      bytesForward: 52,
      packetsReverse: 2,
      bytesReverse: 2 * 142,
      tunnel: 'none',
      policyId: 7,
      ruleId: 2,
      action: 'allow',
      direction: 'ingress',
      origin: 'kernel',
      reason: 'rule',
      outerSrcMac: MAC_A,
      outerDstMac: MAC_B,
      outerSrcAddr: '',
    });
    expect(fw.sessions()).toHaveLength(1);
  });

  it("audit mode passes blocked packets, reports every one, and keeps the connection as its initiator's session", () => {
    const fw = loadForTestRun(CLIENT_POLICY, { settings: parseSettings({ enforcement: 'off' }) });
    const ingress = fw.program('ingress');
    const audit = fw.auditReader();
    for (let i = 0; i < 5; i++)
      expect(ingress.testRun(udpFrame(CLIENT, OTHER, 42000, 9)).retval).toBe(TC_ACT_OK);
    expect(fw.counters()).toMatchObject({ packets: 5, audit_passed: 5, blocked: 0, allowed: 0 });
    const events = drainAudit(audit);
    expect(events).toHaveLength(5);
    expect(events.every((e) => e.action === 'block' && !e.enforced && e.srcPort === 42000)).toBe(true);
    // The connection is kept as a session of its initiator, marked as the block it would be.
    const key = { protocol: 17, srcAddr: CLIENT, srcPort: 42000, dstAddr: OTHER, dstPort: 9, vni: 0 };
    expect(fw.sessions()).toMatchObject([
      {
        ...key,
        action: 'block',
        reason: 'policy_default',
        policyId: 7,
        packetsForward: 5,
        packetsReverse: 0,
      },
    ]);
    // A reply (its source is in no network: default_action allow) finds that session instead of
    // opening one keyed by the responder; replies are not reported.
    expect(ingress.testRun(udpFrame(OTHER, CLIENT, 9, 42000)).retval).toBe(TC_ACT_OK);
    expect(fw.sessions()).toMatchObject([{ ...key, packetsForward: 5, packetsReverse: 1 }]);
    expect(fw.counters()).toMatchObject({ packets: 6, audit_passed: 6, allowed: 0, session_hits: 0 });
    expect(drainAudit(audit)).toStrictEqual([]);

    // With enforcement on, the session passes nothing more, either way; forward packets are reported.
    fw.setSetting(parseSetting('enforcement', 'on'));
    expect(ingress.testRun(udpFrame(CLIENT, OTHER, 42000, 9)).retval).toBe(TC_ACT_SHOT);
    expect(ingress.testRun(udpFrame(OTHER, CLIENT, 9, 42000)).retval).toBe(TC_ACT_SHOT);
    expect(fw.counters()).toMatchObject({ packets: 8, audit_passed: 6, blocked: 2, allowed: 0 });
    expect(drainAudit(audit).map((e) => [e.srcAddr, e.action, e.reason, e.enforced])).toStrictEqual([
      [CLIENT, 'block', 'policy_default', true],
    ]);
    expect(fw.sessions()).toHaveLength(1);
  });

  it('audit_sampling reports 1 in N; audit_allowed reports the verdicts that opened sessions', () => {
    const fw = loadForTestRun(CLIENT_POLICY, { settings: parseSettings({ audit_allowed: 'on' }) });
    const ingress = fw.program('ingress');
    const audit = fw.auditReader();
    ingress.testRun(udpFrame(CLIENT, SERVER, 43000, 53));
    ingress.testRun(udpFrame(CLIENT, SERVER, 43000, 53));
    expect(drainAudit(audit).map((e) => [e.action, e.reason, e.ruleId])).toStrictEqual([
      ['allow', 'rule', 2],
    ]);
    fw.setSetting(parseSetting('audit_sampling', 1000000));
    let blocked = 0;
    for (let i = 0; i < 200; i++)
      if (ingress.testRun(udpFrame(CLIENT, OTHER, 43001, 9)).retval === TC_ACT_SHOT) blocked++;
    expect(blocked).toBe(200);
    // 1 in a million over 200 packets: none reported with overwhelming likelihood, yet all blocked.
    expect(drainAudit(audit).length).toBeLessThan(3);
  });

  it('the most specific rule wins: longest destination prefix, then protocol and port', () => {
    const fw = loadForTestRun(`
networks:
  - {cidr: 10.0.0.0/8, policy: p}
  - {cidr: 10.1.0.0/16, policy: q}
policies:
  p:
    default_action: allow
    rules:
      - {destination: 172.16.0.0/12, action: block}
      - {destination: 172.16.5.0/24, protocol: tcp, port: 22, action: allow}
      - {destination: 172.16.5.0/24, protocol: tcp, action: block}
      - {destination: 172.16.5.9, action: allow}
  q:
    default_action: block
`);
    const run = (src: string, dst: string, frame: 'tcp' | 'udp', port: number) =>
      fw
        .program('ingress')
        .testRun(
          frame === 'tcp'
            ? tcpFrame(src, dst, 1000 + port, port, TCP_SYN)
            : udpFrame(src, dst, 1000 + port, port),
        ).retval;
    expect(run('10.2.0.1', '172.16.9.9', 'udp', 53)).toBe(TC_ACT_SHOT); // /12 block
    expect(run('10.2.0.1', '172.16.5.1', 'tcp', 22)).toBe(TC_ACT_OK); // /24 tcp/22 allow beats /24 tcp block
    expect(run('10.2.0.1', '172.16.5.1', 'tcp', 23)).toBe(TC_ACT_SHOT); // /24 tcp block
    expect(run('10.2.0.1', '172.16.5.1', 'udp', 23)).toBe(TC_ACT_SHOT); // /24 is tcp only: /12 block
    expect(run('10.2.0.1', '172.16.5.9', 'tcp', 23)).toBe(TC_ACT_OK); // /32 any beats /24 tcp
    expect(run('10.2.0.1', '192.0.2.1', 'udp', 9)).toBe(TC_ACT_OK); // policy default allow
    expect(run('10.1.0.1', '192.0.2.1', 'udp', 9)).toBe(TC_ACT_SHOT); // longest network: q, default block
  });

  it('redirects to the policy interface or the egress device, and keeps redirecting the session', () => {
    const fw = loadForTestRun(`
networks: [{cidr: 198.51.100.0/24, policy: r}]
policies:
  r:
    default_action: redirect
`);
    const ingress = fw.program('ingress');
    expect(ingress.testRun(udpFrame(CLIENT, SERVER, 44000, 9)).retval).toBe(TC_ACT_REDIRECT);
    expect(ingress.testRun(udpFrame(CLIENT, SERVER, 44000, 9)).retval).toBe(TC_ACT_REDIRECT);
    // Replies of a redirected session pass.
    expect(fw.program('egress').testRun(udpFrame(SERVER, CLIENT, 9, 44000)).retval).toBe(TC_ACT_OK);
    expect(fw.counters()).toMatchObject({ packets: 3, redirected: 2, allowed: 1, session_hits: 2 });
    expect(fw.sessions()[0]).toMatchObject({
      action: 'redirect',
      redirectIfindex: 1,
      reason: 'policy_default',
    });
  });

  it('tracks TCP state and sends created and updated events', () => {
    const fw = loadForTestRun(CLIENT_POLICY, { settings: parseSettings({ session_update_interval_ms: 0 }) });
    const ingress = fw.program('ingress');
    const egress = fw.program('egress');
    const events = fw.sessionEventReader();
    const key = { protocol: 6, srcAddr: CLIENT, srcPort: 45000, dstAddr: SERVER, dstPort: 80, vni: 0 };
    const state = () => fw.session(key)?.tcpState;
    ingress.testRun(tcpFrame(CLIENT, SERVER, 45000, 80, TCP_SYN));
    expect(state()).toBe('syn_sent');
    egress.testRun(tcpFrame(SERVER, CLIENT, 80, 45000, TCP_SYN | TCP_ACK));
    expect(state()).toBe('syn_recv');
    ingress.testRun(tcpFrame(CLIENT, SERVER, 45000, 80, TCP_ACK));
    expect(state()).toBe('established');
    ingress.testRun(tcpFrame(CLIENT, SERVER, 45000, 80, TCP_ACK)); // no change: no event
    ingress.testRun(tcpFrame(CLIENT, SERVER, 45000, 80, TCP_FIN | TCP_ACK));
    expect(state()).toBe('fin_wait');
    egress.testRun(tcpFrame(SERVER, CLIENT, 80, 45000, TCP_FIN | TCP_ACK));
    expect(state()).toBe('closed');
    expect(
      drainSessionEvents(events).map((e) => [
        e.kind,
        e.session.tcpState,
        e.session.packetsForward,
        e.session.packetsReverse,
      ]),
    ).toStrictEqual([
      ['created', 'syn_sent', 1, 0],
      ['updated', 'syn_recv', 1, 1],
      ['updated', 'established', 2, 1],
      ['updated', 'fin_wait', 4, 1],
      ['updated', 'closed', 4, 2],
    ]);
    // A new SYN on the closed tuple is a new connection, judged again: the policy now blocks it.
    fw.applyPolicy({ file: 'x', networks: [], policies: [] });
    fw.setSetting(parseSetting('default_action', 'block'));
    expect(ingress.testRun(tcpFrame(CLIENT, SERVER, 45000, 80, TCP_SYN)).retval).toBe(TC_ACT_SHOT);
    fw.setSetting(parseSetting('default_action', 'allow'));
    expect(ingress.testRun(tcpFrame(CLIENT, SERVER, 45000, 80, TCP_SYN)).retval).toBe(TC_ACT_OK);
    expect(
      drainSessionEvents(events).map((e) => [
        e.kind,
        e.session.tcpState,
        e.session.packetsForward,
        e.session.reason,
      ]),
    ).toStrictEqual([['created', 'syn_sent', 1, 'no_network']]);
    // A RST closes at once.
    egress.testRun(tcpFrame(SERVER, CLIENT, 80, 45000, TCP_RST));
    expect(state()).toBe('closed');
  });

  it('sends an updated event at most once per session_update_interval_ms', () => {
    const fw = loadForTestRun(CLIENT_POLICY, {
      settings: parseSettings({ session_update_interval_ms: 3_600_000 }),
    });
    const ingress = fw.program('ingress');
    const events = fw.sessionEventReader();
    for (let i = 0; i < 10; i++) ingress.testRun(udpFrame(CLIENT, SERVER, 46000, 53));
    expect(drainSessionEvents(events).map((e) => e.kind)).toStrictEqual(['created']);
    fw.setSetting(parseSetting('session_update_interval_ms', 1));
    const t = process.hrtime.bigint();
    while (process.hrtime.bigint() - t < 2_000_000n) {
      // a spin of 2 ms: the kernel clock must pass the 1 ms interval
    }
    ingress.testRun(udpFrame(CLIENT, SERVER, 46000, 53));
    const [updated] = drainSessionEvents(events);
    expect(updated).toMatchObject({ kind: 'updated', session: { packetsForward: 11 } });
  });

  it('expires idle sessions in the kernel at once and in the map on expireSessions()', () => {
    const fw = loadForTestRun(CLIENT_POLICY, { settings: parseSettings({ session_idle_timeout_s: 60 }) });
    const ingress = fw.program('ingress');
    const now = process.hrtime.bigint();
    const old = now - 61n * 1_000_000_000n;
    // A session the policy would block (udp/9), last seen 61 s ago, and a fresh one.
    fw.restoreSessions([
      { protocol: 17, srcAddr: CLIENT, srcPort: 47000, dstAddr: SERVER, dstPort: 9, vni: 0, lastSeenNs: old },
      { protocol: 17, srcAddr: CLIENT, srcPort: 47001, dstAddr: SERVER, dstPort: 9, vni: 0, lastSeenNs: now },
    ]);
    expect(ingress.testRun(udpFrame(CLIENT, SERVER, 47000, 9)).retval).toBe(TC_ACT_SHOT);
    expect(ingress.testRun(udpFrame(CLIENT, SERVER, 47001, 9)).retval).toBe(TC_ACT_OK);
    const expired = fw.expireSessions();
    expect(expired.map((s) => s.srcPort)).toStrictEqual([47000]);
    expect(fw.sessions().map((s) => s.srcPort)).toStrictEqual([47001]);
  });

  it('a restored session passes traffic its policy blocks, both ways', () => {
    const fw = loadForTestRun(CLIENT_POLICY);
    const key = { protocol: 6, srcAddr: CLIENT, srcPort: 48000, dstAddr: OTHER, dstPort: 22, vni: 0 };
    expect(fw.program('ingress').testRun(tcpFrame(CLIENT, OTHER, 48000, 22, TCP_ACK)).retval).toBe(
      TC_ACT_SHOT,
    );
    expect(fw.restoreSessions([{ ...key, lastSeenNs: process.hrtime.bigint() }])).toStrictEqual({
      written: 1,
      skipped: 0,
    });
    expect(fw.restoreSessions([{ ...key, lastSeenNs: process.hrtime.bigint() }])).toStrictEqual({
      written: 0,
      skipped: 1,
    });
    expect(fw.program('ingress').testRun(tcpFrame(CLIENT, OTHER, 48000, 22, TCP_ACK)).retval).toBe(TC_ACT_OK);
    expect(fw.program('egress').testRun(tcpFrame(OTHER, CLIENT, 22, 48000, TCP_ACK)).retval).toBe(TC_ACT_OK);
    expect(fw.session(key)).toMatchObject({
      origin: 'restored',
      tcpState: 'established',
      packetsForward: 1,
      packetsReverse: 1,
    });
    expect(fw.deleteSessions([key])).toBe(1);
    expect(fw.program('ingress').testRun(tcpFrame(CLIENT, OTHER, 48000, 22, TCP_ACK)).retval).toBe(
      TC_ACT_SHOT,
    );
  });

  it('IPv6 and ICMP echo: the reply finds the request by its identifier', () => {
    const fw = loadForTestRun(CLIENT_POLICY);
    expect(fw.program('ingress').testRun(udpFrame('2001:db8:a::5', '2001:db8:b::1', 49000, 53)).retval).toBe(
      TC_ACT_OK,
    );
    expect(fw.program('ingress').testRun(udpFrame('2001:db8:a::5', '2001:db8:c::1', 49000, 53)).retval).toBe(
      TC_ACT_SHOT,
    );
    expect(fw.sessions()[0]).toMatchObject({ srcAddr: '2001:db8:a::5', dstAddr: '2001:db8:b::1' });
    // The server (no network) pings the client: allowed, and the client's echo reply is its return traffic.
    expect(fw.program('egress').testRun(icmpFrame(SERVER, CLIENT, 8)).retval).toBe(TC_ACT_OK);
    expect(fw.program('ingress').testRun(icmpFrame(CLIENT, SERVER, 0)).retval).toBe(TC_ACT_OK);
    expect(fw.counters()).toMatchObject({ blocked: 1, session_hits: 1 });
  });

  it('GENEVE: judges the inner packet, hairpins it with outer headers swapped, keeps VNI and cookie', () => {
    const fw = loadForTestRun(CLIENT_POLICY, { tunnelMode: 'geneve', address: '10.9.0.2' });
    const ingress = fw.program('ingress');
    const outer = {
      outerSrc: '10.9.0.1',
      outerDst: '10.9.0.2',
      outerSrcMac: '02:00:00:00:01:01',
      outerDstMac: '02:00:00:00:01:02',
      sport: 50123,
    };
    // Two options of class 0x0108: the first (type 1) carries the cookie, any type being asked for.
    const options = [
      ...geneveOption(0x0108, 1, [1, 2, 3, 4, 5, 6, 7, 8]),
      ...geneveOption(0x0108, 3, [9, 9, 9, 9]),
    ];
    const allowed = geneveFrame(outer, 0x123456, options, udpFrame(CLIENT, SERVER, 51000, 53));
    const r = ingress.testRun(allowed);
    expect(r.retval).toBe(TC_ACT_REDIRECT);
    // Swapped: MACs, outer IPs (IPv4 at 14+12), outer UDP ports; the rest byte for byte the same.
    const want = allowed.slice();
    want.set([...allowed.subarray(6, 12), ...allowed.subarray(0, 6)], 0);
    want.set([...allowed.subarray(30, 34), ...allowed.subarray(26, 30)], 26);
    want.set([...allowed.subarray(36, 38), ...allowed.subarray(34, 36)], 34);
    expect(Buffer.from(r.dataOut).toString('hex')).toBe(Buffer.from(want).toString('hex'));

    const blocked = geneveFrame(outer, 0x123456, options, udpFrame(CLIENT, OTHER, 51001, 53));
    const b = ingress.testRun(blocked);
    expect(b.retval).toBe(TC_ACT_SHOT);
    expect(fw.counters()).toMatchObject({ packets: 2, redirected: 1, blocked: 1, allowed: 0 });
    expect(fw.sessions()).toStrictEqual([
      expect.objectContaining({
        srcAddr: CLIENT,
        dstAddr: SERVER,
        srcPort: 51000,
        dstPort: 53,
        vni: 0x123456,
        tunnel: 'geneve',
        cookie: '0102030405060708',
        outerSrcAddr: '10.9.0.1',
        outerDstAddr: '10.9.0.2',
        outerSrcPort: 50123,
        outerDstPort: 6081,
        outerSrcMac: '02:00:00:00:01:01',
        outerDstMac: '02:00:00:00:01:02',
        ingressIfindex: 1,
      }),
    ]);

    // Cookie of a chosen type: type 3 holds 4 bytes, zero-padded to 8.
    fw.setSetting(parseSetting('geneve_cookie_type', 3));
    ingress.testRun(geneveFrame(outer, 7, options, udpFrame(CLIENT, SERVER, 51002, 53)));
    expect(fw.sessions({ port: 51002 })[0]).toMatchObject({ vni: 7, cookie: '0909090900000000' });

    // Our own hairpinned packet seen again on egress: passed, not judged, not counted as traffic.
    expect(fw.program('egress').testRun(r.dataOut).retval).toBe(TC_ACT_UNSPEC);
    expect(fw.counters().own_hairpin).toBe(1);

    // GENEVE to another address is not ours: judged as plain UDP from 10.9.0.1 (no network: allowed, no hairpin).
    const notOurs = geneveFrame(
      { ...outer, outerDst: '10.9.0.3' },
      1,
      [],
      udpFrame(CLIENT, OTHER, 51003, 53),
    );
    expect(ingress.testRun(notOurs).retval).toBe(TC_ACT_OK);
  });

  it('GENEVE over IPv6 swaps the 16-byte outer addresses', () => {
    const fw = loadForTestRun(CLIENT_POLICY, { tunnelMode: 'geneve' });
    const frame = geneveFrame(
      { outerSrc: 'fd00::1', outerDst: 'fd00::2', sport: 40001 },
      5,
      [],
      udpFrame(CLIENT, SERVER, 52000, 53),
    );
    const r = fw.program('ingress').testRun(frame);
    expect(r.retval).toBe(TC_ACT_REDIRECT);
    const out = r.dataOut;
    expect(Buffer.from(out.subarray(22, 38)).toString('hex')).toBe(
      Buffer.from(frame.subarray(38, 54)).toString('hex'),
    );
    expect(Buffer.from(out.subarray(38, 54)).toString('hex')).toBe(
      Buffer.from(frame.subarray(22, 38)).toString('hex'),
    );
    expect([out[54]! * 256 + out[55]!, out[56]! * 256 + out[57]!]).toStrictEqual([6081, 40001]);
    expect(fw.sessions()[0]).toMatchObject({
      vni: 5,
      outerSrcAddr: 'fd00::1',
      outerDstAddr: 'fd00::2',
      cookie: '0000000000000000',
    });
  });

  it('VXLAN mode judges the inner packet; hairpin is off unless set', () => {
    const fw = loadForTestRun(CLIENT_POLICY, { tunnelMode: 'vxlan' });
    const ingress = fw.program('ingress');
    const o = { outerSrc: '10.9.0.1', outerDst: '10.9.0.2', sport: 33000 };
    expect(ingress.testRun(vxlanFrame(o, 42, udpFrame(CLIENT, SERVER, 53000, 53))).retval).toBe(TC_ACT_OK);
    expect(ingress.testRun(vxlanFrame(o, 42, udpFrame(CLIENT, OTHER, 53001, 53))).retval).toBe(TC_ACT_SHOT);
    fw.setSetting(parseSetting('hairpin', 'on'));
    expect(ingress.testRun(vxlanFrame(o, 42, udpFrame(CLIENT, SERVER, 53000, 53))).retval).toBe(
      TC_ACT_REDIRECT,
    );
    expect(fw.counters()).toMatchObject({ allowed: 1, blocked: 1, redirected: 1, session_hits: 1 });
    expect(fw.sessions()[0]).toMatchObject({
      vni: 42,
      tunnel: 'vxlan',
      outerDstPort: 4789,
      packetsForward: 2,
    });
    // Tunnel mode none: the same frame is plain UDP to 4789 from 10.9.0.1 (no network: allowed).
    fw.setSetting(parseSetting('tunnel_mode', 'none'));
    expect(ingress.testRun(vxlanFrame(o, 42, udpFrame(CLIENT, OTHER, 53001, 53))).retval).toBe(TC_ACT_OK);
  });

  it('a policy update in place keeps sessions; new flows see the new policy', () => {
    const fw = loadForTestRun(CLIENT_POLICY);
    const ingress = fw.program('ingress');
    expect(ingress.testRun(tcpFrame(CLIENT, SERVER, 54000, 80, TCP_SYN)).retval).toBe(TC_ACT_OK);
    const result = fw.applyPolicy({
      file: 'x',
      networks: [
        {
          cidr: {
            address: '198.51.100.0',
            prefix: 24,
            version: 4,
            bytes: new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 198, 51, 100, 0]),
            bits: 120,
          },
          policy: 'clients',
        },
      ],
      policies: [{ name: 'clients', id: 7, defaultAction: 'block', redirectInterface: undefined, rules: [] }],
    });
    expect(result).toStrictEqual({ networks: 1, policies: 1, rules: 0, written: 0, removed: 4 });
    expect(ingress.testRun(tcpFrame(CLIENT, SERVER, 54000, 80, TCP_ACK)).retval).toBe(TC_ACT_OK);
    expect(ingress.testRun(tcpFrame(CLIENT, SERVER, 54001, 80, TCP_SYN)).retval).toBe(TC_ACT_SHOT);
  });
});
