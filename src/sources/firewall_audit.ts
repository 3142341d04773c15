import { asyncScheduler, type Observable } from 'rxjs';
import type { ComponentContext, SourceModule } from '../component.js';
import type { FirewallAction } from '../config/firewall-policy.js';
import { decodeAuditEvent, type AuditEvent, type FirewallReason } from '../datapath/firewall/types.js';
import { monotonicToWallClockOffsetMs } from '../datapath/flow/types.js';
import type { FlowBatch, FlowRecord } from '../records/flow.js';
import { FIREWALL_SOURCE_PROPERTIES, firewallSource, setAddresses } from './firewall-source.js';
import { ringbufTracer } from './ringbuf-tracer.js';

export interface FirewallAuditConfig {
  instance: string;
  pin_root: string;
  drain_interval_ms: number;
  log_interval_ms: number;
}

/** A flow record of one audited packet: the verdict and why, in fields named firewall*. */
export interface FirewallAuditRecord extends FlowRecord {
  firewallAction: FirewallAction;
  firewallReason: FirewallReason;
  firewallPolicyId: number;
  /** 0 when a default action decided. */
  firewallRuleId: number;
  /** false in audit mode: a block verdict was reported and the packet passed. */
  firewallEnforced: boolean;
}

/** The record of an audit event; `offsetMs` converts kernel monotonic time to wall-clock ms. */
export function auditRecord(e: AuditEvent, offsetMs: number): FirewallAuditRecord {
  const v4 = !e.srcAddr.includes(':');
  const ms = Math.floor(Number(e.timeNs) / 1e6 + offsetMs);
  const rec: FirewallAuditRecord = {
    ipVersion: v4 ? 4 : 6,
    sourceTransportPort: e.srcPort,
    destinationTransportPort: e.dstPort,
    protocolIdentifier: e.protocol,
    octetDeltaCount: e.packetLength,
    packetDeltaCount: 1,
    flowStartMilliseconds: ms,
    flowEndMilliseconds: ms,
    tcpControlBits: 0,
    ipDiffServCodePoint: 0,
    ingressInterface: e.ifindex,
    flowDirection: e.direction === 'egress' ? 1 : 0,
    // The audit event carries no link-layer addresses.
    sourceMacAddress: '',
    destinationMacAddress: '',
    ethernetType: v4 ? 0x0800 : 0x86dd,
    firewallAction: e.action,
    firewallReason: e.reason,
    firewallPolicyId: e.policyId,
    firewallRuleId: e.ruleId,
    firewallEnforced: e.enforced,
  };
  setAddresses(rec, e.srcAddr, e.dstAddr, v4);
  if (e.tunnel !== 'none') {
    rec.encapsulationType = e.tunnel;
    rec.virtualNetworkIdentifier = e.vni;
  }
  return rec;
}

/**
 * The audit events of a loaded firewall (rxflow firewall load), read from its pinned ring buffer
 * on a timer. A ring has one consumer: two pipelines reading one firewall's audit events would
 * each see a part of them. Events the kernel could not queue (ring full) are counted as dropped.
 */
export function firewallAudit(config: FirewallAuditConfig, context: ComponentContext): Observable<FlowBatch> {
  return firewallSource(config, context, 'reading firewall audit events', (fw) => {
    const reader = fw.auditReader();
    const counters = context.counters;
    const offsetMs = monotonicToWallClockOffsetMs();
    let lost = fw.counter('audit_lost');
    return ringbufTracer({
      drain: (onRecord) => {
        const n = reader.drain(onRecord);
        const now = fw.counter('audit_lost');
        if (now > lost) {
          counters.addReceived(now - lost);
          counters.addDropped('ringbuf_reserve_failed', now - lost);
          lost = now;
        }
        return n;
      },
      decode: (view, offset, length, out) => {
        out.push(auditRecord(decodeAuditEvent(view, offset, length), offsetMs));
        return false;
      },
      drainIntervalMs: config.drain_interval_ms,
      logIntervalMs: config.log_interval_ms,
      logger: context.logger,
      scheduler: context.scheduler ?? asyncScheduler,
      ...(context.stop$ ? { stop$: context.stop$ } : {}),
    });
  });
}

const firewallAuditModule: SourceModule<FirewallAuditConfig> = {
  type: 'firewall_audit',
  kind: 'source',
  description:
    'audit events of a loaded firewall: blocked packets (and, with audit_allowed, allowed ones) with verdict, policy and reason',
  drainsOnStop: true,
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      ...FIREWALL_SOURCE_PROPERTIES,
      drain_interval_ms: {
        type: 'integer',
        minimum: 1,
        maximum: 2147483647,
        default: 100,
        description: 'how often the audit ring buffer is read',
      },
      log_interval_ms: {
        type: 'integer',
        minimum: 1,
        maximum: 2147483647,
        default: 10000,
        description: 'how often, at most, the count of events read is logged',
      },
    },
  },
  example: { instance: 'default', pin_root: '/sys/fs/bpf', drain_interval_ms: 100, log_interval_ms: 10000 },
  build: firewallAudit,
};

export default firewallAuditModule;
