/**
 * The firewall_audit and firewall_sessions sources over a firewall loaded by another owner (as
 * `rxflow firewall load` leaves it): exact records, counters, the final drain on stop, and deleted
 * events from expiry in virtual time.
 */
import { Subject, VirtualTimeScheduler, lastValueFrom, toArray } from 'rxjs';
import { afterAll, expect, it } from 'vitest';
import type { ComponentContext } from '../../src/component.js';
import { FirewallCollection, firewallPinDir } from '../../src/datapath/firewall/index.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import type { FlowRecord } from '../../src/records/flow.js';
import firewallAudit from '../../src/sources/firewall_audit.js';
import firewallSessions, { firewallSessionEvents } from '../../src/sources/firewall_sessions.js';
import { cleanup, makeBpffsDir } from '../fixtures/cleanup.js';
import { kernelDescribe } from '../fixtures/privilege.js';
import {
  CLIENT_POLICY,
  TCP_ACK,
  TCP_SYN,
  geneveFrame,
  geneveOption,
  loadForTestRun,
  tcpFrame,
  udpFrame,
} from './firewall-helpers.js';
import { parseSettings } from '../../src/config/firewall-settings.js';

const CLIENT = '198.51.100.7';
const SERVER = '203.0.113.2';

function context(id: string, stop$: Subject<void>): ComponentContext & { ledger: Ledger } {
  const ledger = new Ledger();
  return { id, logger: silentLogger(), ledger, counters: ledger.stage(id, 'test', 'source'), stop$ };
}

kernelDescribe('firewall sources', () => {
  afterAll(() => cleanup.dispose());

  function loaded(instance: string, settings: Record<string, number> = {}) {
    const root = makeBpffsDir('rxfw');
    const fw = loadForTestRun(CLIENT_POLICY, {
      pinDir: firewallPinDir(instance, root),
      tunnelMode: 'geneve',
      settings: parseSettings(settings),
    });
    return { fw, root };
  }

  it('firewall_audit emits one record per audited packet and completes after a last drain on stop', async () => {
    const { fw, root } = loaded('audit');
    const stop$ = new Subject<void>();
    const ctx = context('audit', stop$);
    const records = lastValueFrom(
      firewallAudit
        .build(
          { instance: 'audit', pin_root: root, drain_interval_ms: 3_600_000, log_interval_ms: 1000 },
          ctx,
        )
        .pipe(toArray()),
    );
    const options = geneveOption(0x0108, 1, [1, 1, 2, 2, 3, 3, 4, 4]);
    fw.program('ingress').testRun(udpFrame(CLIENT, SERVER, 60000, 9));
    fw.program('ingress').testRun(
      geneveFrame(
        { outerSrc: '10.0.0.1', outerDst: '10.0.0.2', sport: 1 },
        99,
        options,
        tcpFrame(CLIENT, '203.0.113.9', 60001, 443, TCP_SYN),
      ),
    );
    fw.program('ingress').testRun(udpFrame(CLIENT, SERVER, 60002, 53)); // allowed: not audited
    stop$.next();
    const batches = await records;
    const recs = batches.flat() as (FlowRecord & Record<string, unknown>)[];
    expect(recs.map((r) => ({ ...r, flowStartMilliseconds: 0, flowEndMilliseconds: 0 }))).toStrictEqual([
      {
        ipVersion: 4,
        sourceIPv4Address: CLIENT,
        destinationIPv4Address: SERVER,
        sourceTransportPort: 60000,
        destinationTransportPort: 9,
        protocolIdentifier: 17,
        octetDeltaCount: 46,
        packetDeltaCount: 1,
        flowStartMilliseconds: 0,
        flowEndMilliseconds: 0,
        tcpControlBits: 0,
        ipDiffServCodePoint: 0,
        ingressInterface: 1,
        flowDirection: 0,
        sourceMacAddress: '',
        destinationMacAddress: '',
        ethernetType: 0x0800,
        firewallAction: 'block',
        firewallReason: 'policy_default',
        firewallPolicyId: 7,
        firewallRuleId: 0,
        firewallEnforced: true,
      },
      expect.objectContaining({
        sourceTransportPort: 60001,
        destinationIPv4Address: '203.0.113.9',
        protocolIdentifier: 6,
        encapsulationType: 'geneve',
        virtualNetworkIdentifier: 99,
        firewallAction: 'block',
      }),
    ]);
    // Wall-clock times: within a minute of now.
    expect(Math.abs(recs[0]!.flowStartMilliseconds - Date.now())).toBeLessThan(60_000);
    expect(ctx.counters.snapshot()).toMatchObject({ received: 2, sent: 2, dropped: {} });
  });

  it('firewall_audit counts events the kernel lost as ring-buffer drops', async () => {
    const { fw, root } = loaded('lost');
    const stop$ = new Subject<void>();
    const ctx = context('lost', stop$);
    const done = lastValueFrom(
      firewallAudit
        .build({ instance: 'lost', pin_root: root, drain_interval_ms: 3_600_000, log_interval_ms: 1000 }, ctx)
        .pipe(toArray()),
    );
    // Fill the 1 MiB ring: 72-byte events take 80 bytes each, so 13107 fit and the rest are lost.
    const frame = udpFrame(CLIENT, SERVER, 60100, 9);
    fw.program('ingress').testRun(frame, { repeat: 14000 });
    const lost = fw.counter('audit_lost');
    expect(lost).toBe(14000 - Math.floor((1 << 20) / 80));
    stop$.next();
    const n = (await done).flat().length;
    expect(n).toBe(14000 - lost);
    expect(ctx.counters.snapshot()).toMatchObject({
      received: 14000,
      sent: n,
      dropped: { ringbuf_reserve_failed: lost },
    });
  });

  it('firewall_sessions emits created and updated events as records', async () => {
    const { fw, root } = loaded('sessions', { session_update_interval_ms: 0 });
    const stop$ = new Subject<void>();
    const ctx = context('sessions', stop$);
    const done = lastValueFrom(
      firewallSessions
        .build(
          {
            instance: 'sessions',
            pin_root: root,
            drain_interval_ms: 3_600_000,
            expire_interval_ms: 3_600_000,
          },
          ctx,
        )
        .pipe(toArray()),
    );
    fw.program('ingress').testRun(tcpFrame(CLIENT, SERVER, 61000, 80, TCP_SYN));
    fw.program('egress').testRun(tcpFrame(SERVER, CLIENT, 80, 61000, TCP_SYN | TCP_ACK));
    fw.program('ingress').testRun(tcpFrame(CLIENT, SERVER, 61000, 80, TCP_ACK));
    const options = geneveOption(0x0108, 1, [0, 0, 0, 0, 0, 0, 0, 9]);
    fw.program('ingress').testRun(
      geneveFrame(
        { outerSrc: '10.0.0.1', outerDst: '10.0.0.2', sport: 7 },
        5,
        options,
        udpFrame(CLIENT, SERVER, 61001, 53),
      ),
    );
    stop$.next();
    const recs = (await done).flat() as (FlowRecord & Record<string, unknown>)[];
    expect(
      recs.map((r) => [
        r.firewallSessionEvent,
        r.tcpState,
        r.packetDeltaCount,
        r.reversePacketTotalCount,
        r.sourceTransportPort,
      ]),
    ).toStrictEqual([
      ['created', 'syn_sent', 1, 0, 61000],
      ['updated', 'syn_recv', 1, 1, 61000],
      ['updated', 'established', 2, 1, 61000],
      ['created', 'none', 1, 0, 61001],
    ]);
    expect(recs[3]).toMatchObject({
      encapsulationType: 'geneve',
      virtualNetworkIdentifier: 5,
      flowCookie: '0000000000000009',
      tunnelSourceIPAddress: '10.0.0.1',
      tunnelDestinationIPAddress: '10.0.0.2',
      tunnelSourceTransportPort: 7,
      tunnelDestinationTransportPort: 6081,
      firewallPolicyId: 7,
      firewallRuleId: 2,
      firewallSessionOrigin: 'kernel',
    });
    expect(ctx.counters.snapshot()).toMatchObject({ received: 4, sent: 4 });
  });

  it('expiry on its timer emits deleted events after the events that preceded them', () => {
    const { fw } = loaded('expire', { session_idle_timeout_s: 30 });
    const reader = FirewallCollection.open(fw.pinDir);
    const scheduler = new VirtualTimeScheduler(undefined, 1000);
    const seen: [string, number][] = [];
    const sub = firewallSessionEvents({
      collection: reader,
      drainIntervalMs: 400,
      expireIntervalMs: 1000,
      scheduler,
    }).subscribe((events) => seen.push(...events.map((e): [string, number] => [e.kind, e.session.srcPort])));
    fw.program('ingress').testRun(udpFrame(CLIENT, SERVER, 62000, 53));
    fw.restoreSessions([
      {
        protocol: 17,
        srcAddr: CLIENT,
        srcPort: 62001,
        dstAddr: SERVER,
        dstPort: 53,
        vni: 0,
        lastSeenNs: process.hrtime.bigint() - 31_000_000_000n,
      },
    ]);
    scheduler.flush();
    sub.unsubscribe();
    reader.close();
    // The ring read at 400 ms; expiry at 1000 ms deletes the stale restored session only.
    expect(seen).toStrictEqual([
      ['created', 62000],
      ['deleted', 62001],
    ]);
    expect(fw.sessions().map((s) => s.srcPort)).toStrictEqual([62000]);
  });
});
