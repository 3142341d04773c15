/**
 * `firewall_metrics`: samples of a loaded firewall's counters and state, for `otel_metrics`.
 *
 * Every interval_ms (and once at start) it reads the kernel's per-CPU counters (packets by outcome,
 * session hits, losses: what `rxflow firewall counters` prints), counts the session map (one batch
 * read of it) and, when a sink of the same pipeline replicates the instance (`nats_sessions`), its
 * live replication status (the kernel map compared with the bucket, the lag, the writes). Each
 * sample is one record (FirewallMetricsRecord) that `otel_metrics` turns into counters and gauges;
 * the kernel's counters are cumulative, so a sample lost or a scrape missed loses no packet. Samples
 * never overlap: one that takes longer than the interval delays the next.
 */
import { asyncScheduler, exhaustMap, from, map, timer, type Observable } from 'rxjs';
import {
  msOption,
  type ComponentContext,
  type ReplicationStatusView,
  type SourceModule,
} from '../component.js';
import type { FirewallCollection } from '../datapath/firewall/index.js';
import type { FirewallMetricsRecord, FirewallReplicationSample, FlowBatch } from '../records/flow.js';

import { FIREWALL_SOURCE_PROPERTIES, firewallSource } from './firewall-source.js';

export interface FirewallMetricsConfig {
  instance: string;
  pin_root: string;
  interval_ms: number;
}

/** The replication sample of a status, `nowMs` the wall-clock time of the sample. */
export function replicationSample(s: ReplicationStatusView, nowMs: number): FirewallReplicationSample {
  const sample: FirewallReplicationSample = {
    connected: s.connected,
    ready: s.ready,
    lagMs: s.lagMs,
    pending: s.pending,
    puts: s.puts,
    deletes: s.deletes,
    failedWrites: s.failedWrites,
  };
  if (s.counts !== undefined) {
    sample.sessionsInBoth = s.counts.both;
    sample.sessionsOnlyLocal = s.counts.onlyLocal;
    sample.sessionsOnlyKv = s.counts.onlyKv;
  }
  if (s.lastSync !== undefined) sample.lastSyncAgeMs = Math.max(0, nowMs - s.lastSync.atMs);
  return sample;
}

/** One sample of the firewall `fw` of `instance`, with the replication status when there is one. */
export function firewallSample(
  fw: FirewallCollection,
  instance: string,
  nowMs: number,
  replication: ReplicationStatusView | undefined,
): FirewallMetricsRecord {
  const sessions = fw.map('sessions');
  const record: FirewallMetricsRecord = {
    ipVersion: 0,
    sourceTransportPort: 0,
    destinationTransportPort: 0,
    protocolIdentifier: 0,
    octetDeltaCount: 0,
    packetDeltaCount: 0,
    flowStartMilliseconds: nowMs,
    flowEndMilliseconds: nowMs,
    tcpControlBits: 0,
    ipDiffServCodePoint: 0,
    flowDirection: 0,
    sourceMacAddress: '',
    destinationMacAddress: '',
    ethernetType: 0,
    firewallInstance: instance,
    firewallCounters: fw.counters(),
    firewallSessionCount: sessions.dump().count,
    firewallSessionLimit: sessions.maxEntries,
  };
  if (replication !== undefined) record.firewallReplication = replicationSample(replication, nowMs);
  return record;
}

export function firewallMetrics(
  config: FirewallMetricsConfig,
  context: ComponentContext,
): Observable<FlowBatch> {
  return firewallSource(config, context, 'sampling firewall counters', (fw) => {
    let replicationFailures = 0;
    const readReplication = async (): Promise<ReplicationStatusView | undefined> => {
      const read = context.replication?.reader(config.instance);
      if (read === undefined) return undefined;
      try {
        return await read();
      } catch (err) {
        // The counters are still worth publishing without it.
        if (replicationFailures++ === 0) {
          context.logger.warn(
            { err },
            'firewall_metrics: cannot read the replication status; samples go out without it',
          );
        }
        return undefined;
      }
    };
    return timer(0, config.interval_ms, context.scheduler ?? asyncScheduler).pipe(
      exhaustMap(() => from(readReplication())),
      map((replication) => [firewallSample(fw, config.instance, Date.now(), replication)]),
    );
  });
}

const firewallMetricsModule: SourceModule<FirewallMetricsConfig> = {
  type: 'firewall_metrics',
  kind: 'source',
  description:
    "samples of a loaded firewall's counters (packets by outcome, losses), session count and replication status, for otel_metrics",
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      ...FIREWALL_SOURCE_PROPERTIES,
      interval_ms: msOption(
        'how often the counters, the session count (one batch read of the session map) and, when a nats_sessions sink of the pipeline replicates the instance, its live replication status are sampled; each sample is one record',
        10_000,
        100,
      ),
    },
  },
  example: { instance: 'default', pin_root: '/sys/fs/bpf', interval_ms: 10000 },
  build: firewallMetrics,
};

export default firewallMetricsModule;
