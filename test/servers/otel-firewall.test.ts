import { Subject } from 'rxjs';
import { afterEach, expect, it } from 'vitest';
import type { ComponentContext } from '../../src/component.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import type { FirewallMetricsRecord, FlowBatch, FlowRecord } from '../../src/records/flow.js';
import otelMetricsModule from '../../src/sinks/otel_metrics.js';
import { freePort, promtool } from '../faults/records-helpers.js';
import { describeWith } from '../fixtures/privilege.js';
import { flowRecord } from '../fixtures/records.js';

/**
 * The firewall's metrics on the otel_metrics sink's Prometheus endpoint: samples as
 * firewall_metrics emits them (the latest of each instance is what a scrape shows) and audit events
 * as firewall_audit emits them, scraped over HTTP, exact, and checked with promtool.
 */

/** The `rxflow_firewall_*` samples of a Prometheus text: `name{a=x,b=y}` -> value, labels sorted. */
function firewallSamples(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(rxflow_firewall_[a-z_]+)(\{.*\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
      .map(([, k, v]) => `${k}=${v}`)
      .sort()
      .join(',');
    out[`${m[1]}{${labels}}`] = Number(m[3]);
  }
  return out;
}

const COUNTERS = {
  packets: 33,
  allowed: 20,
  blocked: 5,
  redirected: 3,
  audit_passed: 2,
  non_ip: 1,
  parse_failed: 1,
  own_hairpin: 1,
  session_hits: 17,
  session_create_failed: 0,
  audit_lost: 4,
  session_events_lost: 6,
};

function sample(
  instance: string,
  counters: Record<string, number>,
  extra: Partial<FirewallMetricsRecord> = {},
) {
  const r: FirewallMetricsRecord = {
    ...flowRecord({ ipVersion: 0, octetDeltaCount: 0, packetDeltaCount: 0 }),
    firewallInstance: instance,
    firewallCounters: counters,
    firewallSessionCount: 12,
    firewallSessionLimit: 262144,
    ...extra,
  };
  delete r.sourceIPv4Address;
  delete r.destinationIPv4Address;
  return r;
}

function audit(action: string, reason: string, enforced: boolean): FlowRecord {
  return {
    ...flowRecord({ octetDeltaCount: 60, packetDeltaCount: 1 }),
    firewallAction: action,
    firewallReason: reason,
    firewallPolicyId: 7,
    firewallRuleId: 0,
    firewallEnforced: enforced,
  } as FlowRecord;
}

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

describeWith({ commands: ['promtool'] }, 'otel_metrics sink, firewall metrics', () => {
  it('serves the latest sample of each instance and audit events by verdict, exactly', async () => {
    const port = await freePort();
    const ledger = new Ledger();
    const counters = ledger.stage('metrics', 'otel_metrics', 'sink');
    const context: ComponentContext = { id: 'metrics', logger: silentLogger(), ledger, counters };
    const sink = otelMetricsModule.build({ prometheus_port: port, prometheus_host: '127.0.0.1' }, context);
    closers.push(() => sink.close());
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    for (let i = 0; i < 500 && !input.observed; i++) await new Promise((r) => setTimeout(r, 10));

    // An older sample of `edge`, then the latest, which the scrape shows.
    input.next([sample('edge', { ...COUNTERS, allowed: 1 })]);
    input.next([
      sample('edge', COUNTERS, {
        firewallReplication: {
          connected: true,
          ready: true,
          sessionsInBoth: 10,
          sessionsOnlyLocal: 2,
          sessionsOnlyKv: 1,
          lagMs: 250,
          pending: 3,
          puts: 40,
          deletes: 9,
          failedWrites: 1,
          lastSyncAgeMs: 2000,
        },
      }),
    ]);
    // A second instance, not replicated: no replication series for it.
    input.next([
      sample('core', { ...COUNTERS, packets: 0, allowed: 0, blocked: 0 }, { firewallSessionCount: 0 }),
    ]);
    input.next([
      audit('block', 'policy_default', true),
      audit('block', 'policy_default', true),
      audit('block', 'rule', false),
      audit('allow', 'rule', true),
    ]);
    input.next([audit('block', 'policy_default', true)]);

    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(await promtool(text)).toEqual({ code: 0, output: '' });
    const edge = 'rxflow_firewall_instance=edge';
    const core = 'rxflow_firewall_instance=core';
    const packets = (instance: string, c: Record<string, number>) =>
      Object.fromEntries(
        ['allowed', 'blocked', 'redirected', 'audit_passed', 'non_ip', 'parse_failed', 'own_hairpin'].map(
          (o) => [`rxflow_firewall_packets_total{${instance},rxflow_firewall_outcome=${o}}`, c[o]],
        ),
      );
    const perInstance = (instance: string, c: Record<string, number>, sessions: number) => ({
      ...packets(instance, c),
      [`rxflow_firewall_session_hits_total{${instance}}`]: c.session_hits,
      [`rxflow_firewall_session_create_failures_total{${instance}}`]: c.session_create_failed,
      [`rxflow_firewall_events_lost_total{${instance},rxflow_firewall_ring=audit}`]: c.audit_lost,
      [`rxflow_firewall_events_lost_total{${instance},rxflow_firewall_ring=session}`]: c.session_events_lost,
      [`rxflow_firewall_sessions{${instance}}`]: sessions,
      [`rxflow_firewall_sessions_limit{${instance}}`]: 262144,
    });
    expect(firewallSamples(text)).toStrictEqual({
      ...perInstance(edge, COUNTERS, 12),
      ...perInstance(core, { ...COUNTERS, allowed: 0, blocked: 0 }, 0),
      [`rxflow_firewall_replication_sessions{${edge},rxflow_replication_presence=both}`]: 10,
      [`rxflow_firewall_replication_sessions{${edge},rxflow_replication_presence=local_only}`]: 2,
      [`rxflow_firewall_replication_sessions{${edge},rxflow_replication_presence=kv_only}`]: 1,
      [`rxflow_firewall_replication_lag{${edge}}`]: 0.25,
      [`rxflow_firewall_replication_pending{${edge}}`]: 3,
      [`rxflow_firewall_replication_writes_total{${edge},rxflow_replication_operation=put}`]: 40,
      [`rxflow_firewall_replication_writes_total{${edge},rxflow_replication_operation=delete}`]: 9,
      [`rxflow_firewall_replication_failed_writes_total{${edge}}`]: 1,
      [`rxflow_firewall_replication_connected{${edge}}`]: 1,
      [`rxflow_firewall_replication_ready{${edge}}`]: 1,
      [`rxflow_firewall_replication_sync_age{${edge}}`]: 2,
      'rxflow_firewall_audit_events_total{rxflow_firewall_action=block,rxflow_firewall_enforced=true,rxflow_firewall_reason=policy_default}': 3,
      'rxflow_firewall_audit_events_total{rxflow_firewall_action=block,rxflow_firewall_enforced=false,rxflow_firewall_reason=rule}': 1,
      'rxflow_firewall_audit_events_total{rxflow_firewall_action=allow,rxflow_firewall_enforced=true,rxflow_firewall_reason=rule}': 1,
    });
    expect(text).toMatch(/^# UNIT rxflow_firewall_packets_total \{packet\}$/m);
    expect(text).toMatch(/^# UNIT rxflow_firewall_replication_lag s$/m);
    // Samples are no flows: the flow counters saw only the 5 audit records.
    expect(text).toMatch(/^rxflow_flow_records_total\{[^}]*\} 5$/m);
    expect(ledger.totals().stages[0]).toMatchObject({ received: 8, sent: 8 });

    input.complete();
    await consumed;
  });
});
