/**
 * The firewall's metrics in `otel_metrics`: the samples `firewall_metrics` emits (kernel counters,
 * session count, replication status) as observable instruments that report the latest sample of
 * each instance when metrics are collected, and the audit events `firewall_audit` emits counted by
 * verdict. Names stay in rxflow's namespace (semantic conventions define no firewall metrics),
 * shaped as they are: a metric's attribute splits it into parts that sum to a meaningful whole
 * (packets by outcome add up to every packet the programs saw), units are UCUM, and every
 * attribute takes a bounded set of values.
 *
 * `rxflow firewall counters` | metric (Prometheus name)
 * allowed, blocked, redirected, audit_passed, non_ip, parse_failed, own_hairpin |
 *   rxflow.firewall.packets{rxflow.firewall.outcome=<name>} (rxflow_firewall_packets_total)
 * packets | the sum of rxflow.firewall.packets over its outcomes
 * session_hits | rxflow.firewall.session.hits (rxflow_firewall_session_hits_total)
 * session_create_failed | rxflow.firewall.session.create_failures
 * audit_lost, session_events_lost | rxflow.firewall.events.lost{rxflow.firewall.ring=audit|session}
 */
import type { Attributes, BatchObservableResult, Counter, Meter } from '@opentelemetry/api';
import {
  isFirewallMetricsRecord,
  type FlowBatch,
  type FirewallMetricsRecord,
  type FlowRecord,
} from '../../records/flow.js';
import { UNIT } from './semconv.js';

export const FIREWALL_METRIC = {
  packets: 'rxflow.firewall.packets',
  sessionHits: 'rxflow.firewall.session.hits',
  sessionCreateFailures: 'rxflow.firewall.session.create_failures',
  eventsLost: 'rxflow.firewall.events.lost',
  // Not session.count as semantic conventions would say: Prometheus reserves _count for histograms
  // and summaries (promtool refuses it on a gauge).
  sessionCount: 'rxflow.firewall.sessions',
  sessionLimit: 'rxflow.firewall.sessions.limit',
  auditEvents: 'rxflow.firewall.audit.events',
  replicationSessions: 'rxflow.firewall.replication.sessions',
  replicationLag: 'rxflow.firewall.replication.lag',
  replicationPending: 'rxflow.firewall.replication.pending',
  replicationWrites: 'rxflow.firewall.replication.writes',
  replicationFailedWrites: 'rxflow.firewall.replication.failed_writes',
  replicationConnected: 'rxflow.firewall.replication.connected',
  replicationReady: 'rxflow.firewall.replication.ready',
  replicationSyncAge: 'rxflow.firewall.replication.sync.age',
} as const;

/** The attributes of the firewall's metrics; each takes a bounded set of values. */
export const FIREWALL_ATTR = {
  /** The firewall instance a sample is of. */
  instance: 'rxflow.firewall.instance',
  /** What became of a packet: one of PACKET_OUTCOMES. */
  outcome: 'rxflow.firewall.outcome',
  /** The ring buffer that was full: `audit` or `session`. */
  ring: 'rxflow.firewall.ring',
  /** An audit event's verdict: `allow`, `block` or `redirect`. */
  action: 'rxflow.firewall.action',
  /** Why: `rule`, `policy_default`, `no_network`, `no_policy`, `session`. */
  reason: 'rxflow.firewall.reason',
  /** Whether the verdict was enforced (false in audit mode: a block reported, the packet passed). */
  enforced: 'rxflow.firewall.enforced',
  /** Where a replicated session is: `both` (kernel map and bucket), `local_only`, `kv_only`. */
  presence: 'rxflow.replication.presence',
  /** `put` or `delete`. */
  operation: 'rxflow.replication.operation',
} as const;

/**
 * The kernel counters that say what became of a packet: each packet the programs see adds to
 * exactly one (bpf/firewall.c fw_process), so they sum to the `packets` counter.
 */
export const PACKET_OUTCOMES = [
  'allowed',
  'blocked',
  'redirected',
  'audit_passed',
  'non_ip',
  'parse_failed',
  'own_hairpin',
] as const;

/** Instances with their own series at most; samples of more are left out (and logged once). */
export const MAX_FIREWALL_INSTANCES = 16;
/** (action, reason, enforced) series of the audit counter at most; the rest count as action "other". */
export const MAX_AUDIT_SERIES = 64;

/** The fields of a firewall_audit record this module reads. */
interface AuditFields {
  firewallAction?: unknown;
  firewallReason?: unknown;
  firewallEnforced?: unknown;
}

/** Whether `r` is an audit event (firewall_audit) rather than a flow or a session event. */
export function isAuditRecord(r: FlowRecord): boolean {
  return typeof (r as AuditFields).firewallEnforced === 'boolean';
}

const OTHER_AUDIT: Attributes = { [FIREWALL_ATTR.action]: 'other' };

export class FirewallInstruments {
  private readonly latest = new Map<string, { sample: FirewallMetricsRecord; attributes: Attributes }>();
  private readonly auditEvents: Counter;
  private readonly auditSeries = new Map<string, Attributes>();
  /** Called once when samples of more than MAX_FIREWALL_INSTANCES instances arrive. */
  private overflow: ((instance: string) => void) | undefined;

  constructor(
    meter: Meter,
    private readonly sanitize: (value: string) => string,
    onTooManyInstances?: (instance: string) => void,
  ) {
    this.overflow = onTooManyInstances;
    this.auditEvents = meter.createCounter(FIREWALL_METRIC.auditEvents, {
      description:
        'Audit events of the firewall (firewall_audit records), by verdict, reason and enforcement.',
      unit: UNIT.events,
    });
    this.observe(meter);
  }

  /** Keeps the batch's samples (the latest of each instance wins); returns the records that are not samples. */
  addSamples(batch: FlowBatch): FlowRecord[] {
    const rest: FlowRecord[] = [];
    for (const r of batch) {
      if (!isFirewallMetricsRecord(r)) {
        rest.push(r);
        continue;
      }
      const entry = this.latest.get(r.firewallInstance);
      if (entry !== undefined) {
        entry.sample = r;
      } else if (this.latest.size < MAX_FIREWALL_INSTANCES) {
        this.latest.set(r.firewallInstance, {
          sample: r,
          attributes: { [FIREWALL_ATTR.instance]: this.sanitize(r.firewallInstance) },
        });
      } else {
        this.overflow?.(r.firewallInstance);
        this.overflow = undefined;
      }
    }
    return rest;
  }

  /** Counts the batch's audit events by (action, reason, enforced): one add per series and batch. */
  addAudit(batch: FlowBatch): void {
    let sums: Map<Attributes, number> | undefined;
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]! as AuditFields;
      if (typeof r.firewallEnforced !== 'boolean') continue;
      const attributes = this.auditAttributes(
        String(r.firewallAction),
        String(r.firewallReason),
        r.firewallEnforced,
      );
      sums ??= new Map();
      sums.set(attributes, (sums.get(attributes) ?? 0) + 1);
    }
    if (sums) for (const [attributes, n] of sums) this.auditEvents.add(n, attributes);
  }

  private auditAttributes(action: string, reason: string, enforced: boolean): Attributes {
    const key = `${action}\u0000${reason}\u0000${enforced}`;
    let attributes = this.auditSeries.get(key);
    if (attributes === undefined) {
      if (this.auditSeries.size >= MAX_AUDIT_SERIES) return OTHER_AUDIT;
      attributes = {
        [FIREWALL_ATTR.action]: this.sanitize(action),
        [FIREWALL_ATTR.reason]: this.sanitize(reason),
        [FIREWALL_ATTR.enforced]: enforced,
      };
      this.auditSeries.set(key, attributes);
    }
    return attributes;
  }

  /** The observable instruments: each reads the latest sample of every instance at collection. */
  private observe(meter: Meter): void {
    const counter = (name: string, description: string, unit: string) =>
      meter.createObservableCounter(name, { description, unit });
    const gauge = (name: string, description: string, unit: string) =>
      meter.createObservableGauge(name, { description, unit });
    const packets = counter(
      FIREWALL_METRIC.packets,
      'Packets the firewall programs saw since the firewall was first loaded, by what became of them; the outcomes add up to every packet.',
      UNIT.packets,
    );
    const hits = counter(
      FIREWALL_METRIC.sessionHits,
      'Packets that matched a session (judged by the session, not the policy).',
      UNIT.packets,
    );
    const createFailures = counter(
      FIREWALL_METRIC.sessionCreateFailures,
      'Packets whose verdict stood but whose session could not be stored.',
      UNIT.packets,
    );
    const lost = counter(
      FIREWALL_METRIC.eventsLost,
      'Events the kernel could not queue because their ring buffer was full, by ring (audit, session).',
      UNIT.events,
    );
    const sessions = gauge(
      FIREWALL_METRIC.sessionCount,
      'Sessions in the kernel session map.',
      UNIT.sessions,
    );
    const limit = gauge(
      FIREWALL_METRIC.sessionLimit,
      'Sessions the kernel session map holds at most.',
      UNIT.sessions,
    );
    const replicated = gauge(
      FIREWALL_METRIC.replicationSessions,
      'Sessions of the kernel map and keys of the KV bucket compared: in both, only in the map, only in the bucket.',
      UNIT.sessions,
    );
    const lag = gauge(
      FIREWALL_METRIC.replicationLag,
      'Age of the oldest session change not yet acknowledged by the KV bucket; 0 when none.',
      UNIT.seconds,
    );
    const pending = gauge(
      FIREWALL_METRIC.replicationPending,
      'Session changes not yet acknowledged by the KV bucket.',
      UNIT.changes,
    );
    const writes = counter(
      FIREWALL_METRIC.replicationWrites,
      'Writes to the KV bucket it acknowledged, by operation.',
      UNIT.writes,
    );
    const failedWrites = counter(
      FIREWALL_METRIC.replicationFailedWrites,
      'Writes to the KV bucket that failed.',
      UNIT.writes,
    );
    const connected = gauge(
      FIREWALL_METRIC.replicationConnected,
      '1 while connected to NATS, else 0.',
      UNIT.dimensionless,
    );
    const ready = gauge(
      FIREWALL_METRIC.replicationReady,
      '1 once the bucket was loaded into the kernel and the node reports ready, else 0.',
      UNIT.dimensionless,
    );
    const syncAge = gauge(
      FIREWALL_METRIC.replicationSyncAge,
      'Time since the last full sync of the kernel map with the bucket finished, at the sample.',
      UNIT.seconds,
    );
    const outcomes = new Map<string, Map<string, Attributes>>();
    const withOutcome = (instance: Attributes, key: string, name: string, value: string): Attributes => {
      let byValue = outcomes.get(key);
      if (byValue === undefined) outcomes.set(key, (byValue = new Map<string, Attributes>()));
      let attributes = byValue.get(value);
      if (attributes === undefined) byValue.set(value, (attributes = { ...instance, [name]: value }));
      return attributes;
    };
    meter.addBatchObservableCallback(
      (result: BatchObservableResult) => {
        for (const [instance, { sample, attributes }] of this.latest) {
          const c = sample.firewallCounters;
          for (const outcome of PACKET_OUTCOMES) {
            const n = c[outcome];
            if (n !== undefined) {
              result.observe(
                packets,
                n,
                withOutcome(attributes, `${instance}/o`, FIREWALL_ATTR.outcome, outcome),
              );
            }
          }
          if (c.session_hits !== undefined) result.observe(hits, c.session_hits, attributes);
          if (c.session_create_failed !== undefined) {
            result.observe(createFailures, c.session_create_failed, attributes);
          }
          if (c.audit_lost !== undefined) {
            result.observe(
              lost,
              c.audit_lost,
              withOutcome(attributes, `${instance}/r`, FIREWALL_ATTR.ring, 'audit'),
            );
          }
          if (c.session_events_lost !== undefined) {
            result.observe(
              lost,
              c.session_events_lost,
              withOutcome(attributes, `${instance}/r`, FIREWALL_ATTR.ring, 'session'),
            );
          }
          result.observe(sessions, sample.firewallSessionCount, attributes);
          result.observe(limit, sample.firewallSessionLimit, attributes);
          const r = sample.firewallReplication;
          if (r === undefined) continue;
          const presence = (value: string) =>
            withOutcome(attributes, `${instance}/p`, FIREWALL_ATTR.presence, value);
          if (r.sessionsInBoth !== undefined) result.observe(replicated, r.sessionsInBoth, presence('both'));
          if (r.sessionsOnlyLocal !== undefined) {
            result.observe(replicated, r.sessionsOnlyLocal, presence('local_only'));
          }
          if (r.sessionsOnlyKv !== undefined)
            result.observe(replicated, r.sessionsOnlyKv, presence('kv_only'));
          result.observe(lag, r.lagMs / 1000, attributes);
          result.observe(pending, r.pending, attributes);
          const operation = (value: string) =>
            withOutcome(attributes, `${instance}/w`, FIREWALL_ATTR.operation, value);
          result.observe(writes, r.puts, operation('put'));
          result.observe(writes, r.deletes, operation('delete'));
          result.observe(failedWrites, r.failedWrites, attributes);
          result.observe(connected, r.connected ? 1 : 0, attributes);
          result.observe(ready, r.ready ? 1 : 0, attributes);
          if (r.lastSyncAgeMs !== undefined) result.observe(syncAge, r.lastSyncAgeMs / 1000, attributes);
        }
      },
      [
        packets,
        hits,
        createFailures,
        lost,
        sessions,
        limit,
        replicated,
        lag,
        pending,
        writes,
        failedWrites,
        connected,
        ready,
        syncAge,
      ],
    );
  }
}
