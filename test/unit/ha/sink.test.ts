import { describe, expect, it } from 'vitest';
import type { FirewallSession } from '../../../src/datapath/firewall/index.js';
import { ClockTranslator } from '../../../src/ha/clock.js';
import {
  fromFirewallSession,
  sessionEventOfRecord,
  toFirewallSession,
  type InterfaceTable,
} from '../../../src/ha/firewall-store.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import natsSessionsModule, { type NatsSessionsConfig } from '../../../src/sinks/nats_sessions.js';
import { sessionRecord } from '../../../src/sources/firewall_sessions.js';

const registry = new ComponentRegistry([natsSessionsModule]);

function build(config: Partial<NatsSessionsConfig>) {
  const ledger = new Ledger();
  return natsSessionsModule.build(
    { servers: ['nats://127.0.0.1:4222'], ...config },
    {
      id: 'ha',
      logger: silentLogger(),
      ledger,
      counters: ledger.stage('ha', 'nats_sessions', 'sink'),
    },
  );
}

const fwSession: FirewallSession = {
  protocol: 6,
  srcAddr: '10.0.0.1',
  srcPort: 40000,
  dstAddr: '10.0.0.2',
  dstPort: 443,
  vni: 77,
  createdNs: 5_000_000_000n,
  lastSeenNs: 9_000_000_000n,
  lastEventNs: 9_000_000_000n,
  packetsForward: 10,
  bytesForward: 1000,
  packetsReverse: 8,
  bytesReverse: 9000,
  tunnel: 'geneve',
  cookie: 'a1b2c3d4e5f60718',
  outerSrcAddr: '192.168.0.1',
  outerDstAddr: '192.168.0.2',
  outerSrcMac: '02:00:00:00:00:01',
  outerDstMac: '02:00:00:00:00:02',
  outerSrcPort: 50000,
  outerDstPort: 6081,
  ingressIfindex: 4,
  redirectIfindex: 6,
  policyId: 3,
  ruleId: 2,
  tcpState: 'established',
  tcpFlags: 0x18,
  action: 'redirect',
  direction: 'ingress',
  origin: 'kernel',
  reason: 'rule',
};

const interfacesA: InterfaceTable = {
  nameOf: (i) => ({ 4: 'eth1', 6: 'eth2' })[i],
  indexOf: () => undefined,
};

describe('nats_sessions sink config', () => {
  it('its example passes the strict schema, with defaults filled in', () => {
    const r = registry.validate(
      natsSessionsModule,
      natsSessionsModule.example as unknown as Record<string, unknown>,
    );
    expect(r.errors).toEqual([]);
    expect(r.config).toMatchObject({
      coalesce_ms: 500,
      max_in_flight: 1024,
      load_on_start: true,
      pin_root: '/sys/fs/bpf',
      watch: true,
    });
    expect(registry.validate(natsSessionsModule, { servers: ['n:1'], watch: false }).config).toMatchObject({
      watch: false,
    });
  });

  it('rejects unknown keys and a bad replica count', () => {
    expect(registry.validate(natsSessionsModule, { servers: ['n:1'], replica: 3 }).ok).toBe(false);
    expect(registry.validate(natsSessionsModule, { servers: ['n:1'], replicas: 2 }).ok).toBe(false);
    expect(registry.validate(natsSessionsModule, { servers: ['n:1'], watch: 'yes' }).ok).toBe(false);
  });

  it('says what is wrong with credentials and node ids', () => {
    expect(() => build({ user: 'u' })).toThrow(
      'nats_sessions sink: user and password go together; give both or neither',
    );
    expect(() => build({ token: 't', credentials_file: '/c' })).toThrow(
      'nats_sessions sink: give one of credentials_file, user/password or token',
    );
    expect(() => build({ node_id: 'fw a' })).toThrow(
      "nats_sessions sink: node id 'fw a' has characters a key cannot hold; set node_id to letters, digits, '-', '_', '.' or ':'",
    );
    expect(() => build({ tls: { cert_file: '/c.pem' } })).toThrow(
      'nats_sessions sink: tls.cert_file needs tls.key_file',
    );
  });
});

describe('firewall sessions in replicated form', () => {
  it('a firewall_sessions record carries everything a peer needs to restore the session', () => {
    const clock = new ClockTranslator({
      monotonicNs: () => 10_000_000_000n,
      wallMs: () => 1_700_000_010_000,
    });
    const rec = sessionRecord('updated', fwSession, 1_700_000_000_000);
    const event = sessionEventOfRecord(rec, clock, interfacesA)!;
    expect(event).toEqual({
      kind: 'updated',
      session: { ...fromFirewallSession(fwSession, interfacesA) },
    });
    expect(event.session.ingressIfname).toBe('eth1');
    expect(event.session.redirectIfname).toBe('eth2');
  });

  it('a record of another source is not a session event', () => {
    const rec = sessionRecord('created', fwSession, 0) as unknown as Record<string, unknown>;
    delete rec.firewallSessionEvent;
    expect(sessionEventOfRecord(rec as never, new ClockTranslator())).toBeUndefined();
  });

  it('restoring maps interface indexes by name, else to this firewall’s own devices, and marks it restored', () => {
    const r = fromFirewallSession(fwSession, interfacesA);
    const hereByName: InterfaceTable = {
      nameOf: () => undefined,
      indexOf: (n) => ({ eth1: 14, eth2: 16 })[n],
    };
    const nowhere: InterfaceTable = { nameOf: () => undefined, indexOf: () => undefined };
    const local = { ingressIfindex: 21, egressIfindex: 22 };
    expect(toFirewallSession(r, local, hereByName)).toMatchObject({
      ingressIfindex: 14,
      redirectIfindex: 16,
      origin: 'restored',
    });
    const fallback = toFirewallSession(r, local, nowhere);
    expect(fallback).toMatchObject({ ingressIfindex: 21, redirectIfindex: 22 });
    const {
      packetsForward: _p,
      bytesForward: _b,
      packetsReverse: _pr,
      bytesReverse: _br,
      lastEventNs: _e,
      ...rest
    } = fwSession;
    expect(fallback).toEqual({ ...rest, ingressIfindex: 21, redirectIfindex: 22, origin: 'restored' });
  });
});
