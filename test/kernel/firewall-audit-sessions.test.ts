/**
 * Audit mode (enforcement off) on real TCP between namespaces: a connection the policy blocks
 * passes, and its session is kept as enforcement keeps an allowed one, with the initiator as
 * source, so `rxflow firewall sessions --src <initiator>` lists it with the counts each way that
 * the two stacks report. The responder's network allows the replies: judged on their own they
 * would open a session keyed by the responder.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FirewallCollection } from '../../src/datapath/firewall/index.js';
import { parsePolicy } from '../../src/config/firewall-policy.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { firewallCli as cli } from '../fixtures/firewall-cli.js';
import { createPair, type PairTopology } from '../fixtures/netns.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import {
  NodeChild,
  TCP_CLIENT,
  TCP_ECHO_SERVER,
  drainAudit,
  quickAcks,
  snmp,
  tcpSegmentsSent,
  waitFor,
} from './firewall-helpers.js';
import { parseSettings } from '../../src/config/firewall-settings.js';

const POLICY = `
networks:
  - {cidr: 192.0.2.1/32, policy: clients}
  - {cidr: 192.0.2.2/32, policy: servers}
policies:
  clients:
    default_action: block
  servers:
    default_action: allow
`;

interface ListedSession {
  srcAddr: string;
  srcPort: number;
  dstAddr: string;
  dstPort: number;
  action: string;
  reason: string;
  packetsForward: number;
  packetsReverse: number;
}

kernelDescribe('firewall audit mode on real TCP', () => {
  let topo: PairTopology;
  let root: string;
  let fw: FirewallCollection | undefined;

  beforeAll(async () => {
    topo = await createPair({ prefix: 'rxrec' });
    await quickAcks(topo);
    root = makeBpffsDir('record');
  });
  afterAll(() => {
    fw?.close({ unpin: true });
    return cleanup.dispose();
  });

  it('keeps a blocked connection as a session of its initiator, counted each way', async () => {
    const loaded = FirewallCollection.load({
      pinDir: join(root, 'rxflow-firewall-audit'),
      ingress: topo.link.b.ifname,
      netns: topo.server.name,
      settings: parseSettings({ enforcement: 'off' }),
    });
    fw = loaded;
    loaded.applyPolicy(parsePolicy(POLICY, 'policy.yaml', {}));
    loaded.attach();
    const audit = loaded.auditReader();
    const server = new NodeChild(topo.server, TCP_ECHO_SERVER, ['192.0.2.2', '7300']);
    const client = new NodeChild(topo.client, TCP_CLIENT, []);
    try {
      await waitFor('server listening', () => server.notes.some((n) => n.note === 'listening'));
      const before = await snmp(topo.client);
      const counters = loaded.counters();
      const c = await client.request('connect a 192.0.2.2 7300 5000');
      expect(c.connected).toBe(true);
      for (let i = 0; i < 3; i++) expect(await client.request('send a 1000')).toStrictEqual({ echoed: 1000 });

      const pins = ['--pin-root', root, '--instance', 'audit'];
      const list = async (src: string): Promise<ListedSession[]> => {
        const r = await cli(['firewall', 'sessions', ...pins, '--src', src, '--json']);
        expect(r).toMatchObject({ code: 0, err: '' });
        return JSON.parse(r.out) as ListedSession[];
      };
      // The client's stack counts what it sent and received; the session must agree once the last
      // ACK went through.
      let sent = 0;
      let received = 0;
      // A late ACK may still be on its way when the stack is read: read again until all agree.
      await waitFor('the session and counters to count what the client stack sent', async () => {
        const now = await snmp(topo.client);
        sent = tcpSegmentsSent(now, before);
        received = now['Tcp.InSegs']! - before['Tcp.InSegs']!;
        const [s] = await list('192.0.2.1');
        const passed = loaded.counters().audit_passed - counters.audit_passed;
        return (
          s !== undefined &&
          s.packetsForward === sent &&
          s.packetsReverse === received &&
          passed === sent + received
        );
      });
      const sessions = await list('192.0.2.1');
      expect(sessions).toHaveLength(1);
      expect(sessions[0]).toMatchObject({
        srcAddr: '192.0.2.1',
        srcPort: c.srcPort,
        dstAddr: '192.0.2.2',
        dstPort: 7300,
        action: 'block',
        reason: 'policy_default',
        packetsForward: sent,
        packetsReverse: received,
      });
      // No session keyed by the responder.
      expect(await list('192.0.2.2')).toStrictEqual([]);
      // Every packet passed, none as allowed; each the client sent was reported as a block verdict.
      const after = loaded.counters();
      expect(after.blocked - counters.blocked).toBe(0);
      expect(after.allowed - counters.allowed).toBe(0);
      expect(after.audit_passed - counters.audit_passed).toBe(sent + received);
      const events = drainAudit(audit);
      expect(events).toHaveLength(sent);
      expect(
        events.every(
          (e) =>
            e.srcAddr === '192.0.2.1' &&
            e.srcPort === c.srcPort &&
            e.dstPort === 7300 &&
            e.action === 'block' &&
            !e.enforced,
        ),
      ).toBe(true);
    } finally {
      client.stop();
      server.stop();
      audit.close();
    }
  });
});
