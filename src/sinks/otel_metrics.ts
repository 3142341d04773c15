/**
 * `otel_metrics`: flow and pipeline metrics through OpenTelemetry, pulled by Prometheus from an
 * HTTP endpoint and/or pushed over OTLP/HTTP.
 *
 * Flow counters (bytes, packets, records by direction, transport, network type and interface, with
 * semantic-convention attribute names and UCUM units: src/sinks/otel/semconv.ts) are summed per
 * batch into a typed array indexed by (interface, transport, network type, direction) and added to
 * the counters once per batch and attribute set, never per record. The interface attribute is bounded: the first
 * max_interfaces interfaces seen get their own series, later ones count as "other". Every
 * component's received/sent/dropped counts and the loss ledger's totals are observable
 * instruments that read the ledger when metrics are collected, so nothing runs for them between
 * scrapes. Label values are sanitised (control characters replaced, length bounded), and a record
 * whose byte or packet count is not a count from 0 to 2^53-1 is left out of the flow counters and
 * dropped as sink_failed, so no counter ever becomes +Inf or NaN.
 *
 * Firewall samples (firewall_metrics) and audit events (firewall_audit) also become the firewall's
 * metrics: src/sinks/otel/firewall.ts names them and maps `rxflow firewall counters` onto them.
 *
 * The resource says which agent reports (src/sinks/otel/resource.ts: OTEL_SERVICE_NAME,
 * OTEL_RESOURCE_ATTRIBUTES, host, os and process, a stable service.instance.id); OTLP pushes in the
 * encoding OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL selects (src/sinks/otel/exporter.ts).
 *
 * A Prometheus port that cannot be bound fails the start: an agent that looks healthy while
 * serving no metrics is worse than one that does not start. Once running, telemetry never takes
 * the pipeline down: an unreachable collector is logged and reported as degraded health, and the
 * flows keep flowing.
 */
import type { Attributes, Counter, Histogram, Meter } from '@opentelemetry/api';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import {
  MeterProvider,
  PeriodicExportingMetricReader,
  type IMetricReader,
  type PushMetricExporter,
  type ViewOptions,
} from '@opentelemetry/sdk-metrics';
import type { Observable } from 'rxjs';
import type { ComponentContext, HealthReporter, JsonSchema, Sink, SinkModule } from '../component.js';
import { DNS_RCODE_NAMES } from '../datapath/flow/index.js';
import type { DropReason, Ledger, StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import { flowInterface, isFirewallMetricsRecord, type FlowBatch } from '../records/flow.js';
import { SinkInput } from './consume.js';
import { messageOf } from '../errors.js';
import { SinkError } from './errors.js';
import { otlpEndpointFromEnv, otlpMetricExporter, otlpProtocol } from './otel/exporter.js';
import { FirewallInstruments, isAuditRecord, MAX_FIREWALL_INSTANCES } from './otel/firewall.js';
import { agentResource } from './otel/resource.js';
import {
  ATTR_NETWORK_INTERFACE_NAME,
  ATTR_NETWORK_IO_DIRECTION,
  ATTR_NETWORK_TRANSPORT,
  ATTR_NETWORK_TYPE,
  NETWORK_IO_DIRECTIONS,
  NETWORK_TYPE_IPV4,
  NETWORK_TYPE_IPV6,
  UNIT,
} from './otel/semconv.js';

export interface OtelMetricsConfig {
  /** Port of the Prometheus endpoint; 0 turns it off. */
  prometheus_port?: number;
  prometheus_host?: string;
  prometheus_path?: string;
  /**
   * OTLP/HTTP metrics URL, e.g. http://collector:4318/v1/metrics; absent: the one
   * OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT names, else no push.
   */
  otlp_endpoint?: string;
  otlp_interval_ms?: number;
  otlp_timeout_ms?: number;
  max_interfaces?: number;
}

type Resolved = Required<Omit<OtelMetricsConfig, 'otlp_endpoint'>> & Pick<OtelMetricsConfig, 'otlp_endpoint'>;

const DEFAULTS = {
  prometheus_port: 9464,
  prometheus_host: '127.0.0.1',
  prometheus_path: '/metrics',
  otlp_interval_ms: 60_000,
  otlp_timeout_ms: 10_000,
  max_interfaces: 64,
} as const satisfies Partial<OtelMetricsConfig>;

/**
 * Instrument names; the Prometheus exporter turns dots into underscores and adds _total to counters.
 * They stay in rxflow's namespace: semantic conventions define no flow metrics, and their
 * system.network.io and system.network.packet.count are the kernel's interface counters, which a
 * host's collector reports under the same host.name; flow sums (IP octets of the flows TC saw) under
 * those names would be two measures under one name.
 */
export const METRIC = {
  flowBytes: 'rxflow.flow.bytes',
  flowPackets: 'rxflow.flow.packets',
  flowRecords: 'rxflow.flow.records',
  flowDroppedPackets: 'rxflow.flow.dropped_packets',
  flowDroppedBytes: 'rxflow.flow.dropped_bytes',
  flowTcpRtt: 'rxflow.flow.tcp_rtt',
  flowDnsLatency: 'rxflow.flow.dns_latency',
  componentReceived: 'rxflow.component.received',
  componentSent: 'rxflow.component.sent',
  componentDropped: 'rxflow.component.dropped',
  componentMerged: 'rxflow.component.merged',
  componentInFlight: 'rxflow.component.in_flight',
  ledgerSeen: 'rxflow.ledger.seen',
  ledgerDelivered: 'rxflow.ledger.delivered',
  ledgerDropped: 'rxflow.ledger.dropped',
  ledgerMerged: 'rxflow.ledger.merged',
  ledgerInFlight: 'rxflow.ledger.in_flight',
  sinkHanded: 'rxflow.sink.handed',
  sinkExported: 'rxflow.sink.exported',
  sinkDropped: 'rxflow.sink.dropped',
  sinkInFlight: 'rxflow.sink.in_flight',
} as const;

/**
 * The attribute of the drop counters: the kernel's drop reason of the records (dropReason). The
 * kernel's enum is closed (about 130 values), and series beyond MAX_DROP_REASONS count as "other".
 */
export const ATTR_DROP_REASON = 'rxflow.drop.reason';
export const MAX_DROP_REASONS = 256;
const OTHER_DROP_REASON: Attributes = { [ATTR_DROP_REASON]: 'other' };

/**
 * The attribute of the RTT histogram: which RTT of the records it is, `handshake`
 * (tcpHandshakeRttMicroseconds) or `smoothed` (tcpSmoothedRttMicroseconds): two series.
 */
export const ATTR_RTT_KIND = 'rxflow.rtt.kind';
const RTT_HANDSHAKE: Attributes = { [ATTR_RTT_KIND]: 'handshake' };
const RTT_SMOOTHED: Attributes = { [ATTR_RTT_KIND]: 'smoothed' };
/** Bucket bounds of the RTT histogram, in seconds: 100 us (a LAN) to 5 s (a congested satellite link). */
export const RTT_BUCKETS_S = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
];

/**
 * The attribute of the DNS latency histogram: the response code by name (NOERROR, NXDOMAIN,
 * SERVFAIL, ...; DNS_RCODE_NAMES), at most 16 series.
 */
export const ATTR_DNS_RCODE = 'rxflow.dns.rcode';
const DNS_RCODE_ATTRS: readonly Attributes[] = DNS_RCODE_NAMES.map((name) => ({ [ATTR_DNS_RCODE]: name }));

/** The network.interface.name attribute's value for interfaces beyond max_interfaces. */
export const OTHER_INTERFACE = 'other';

/** Characters a label value keeps at most; the rest is cut and marked with '...'. */
export const MAX_LABEL_CHARS = 128;

// C0 and C1 control characters and DEL (NUL, ESC, newlines), and halves of surrogate pairs.
const UNFIT_LABEL_CHARS =
  /[\u0000-\u001f\u007f-\u009f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * A label (attribute) value fit for any metrics backend: control characters and unpaired
 * surrogates become U+FFFD, and text past MAX_LABEL_CHARS is cut. Values come from records and
 * pipeline files; a NUL or a newline written raw would corrupt the Prometheus text.
 */
export function sanitizeLabel(value: string): string {
  let out = value.replace(UNFIT_LABEL_CHARS, '\ufffd');
  if (out.length > MAX_LABEL_CHARS) {
    let end = MAX_LABEL_CHARS - 3;
    const last = out.charCodeAt(end - 1);
    if (last >= 0xd800 && last <= 0xdbff) end--;
    out = `${out.slice(0, end)}...`;
  }
  return out;
}

/** Whether `n` can be added to a counter: a finite number from 0 to 2^53-1. */
function isCount(n: number): boolean {
  return n >= 0 && n <= Number.MAX_SAFE_INTEGER;
}

/** network.transport values: semantic conventions' for tcp and udp, the protocol's own name for the rest. */
const PROTOCOLS = ['tcp', 'udp', 'icmp', 'icmpv6', 'other'] as const;
const DIRECTIONS = NETWORK_IO_DIRECTIONS;
/** network.type by ipVersion: 4, 6, and none for layer-2 flows (ipVersion 0). */
const NETWORK_TYPES = [NETWORK_TYPE_IPV4, NETWORK_TYPE_IPV6, undefined] as const;

function networkTypeIndex(ipVersion: number): number {
  return ipVersion === 4 ? 0 : ipVersion === 6 ? 1 : 2;
}

function protocolIndex(protocol: number): number {
  switch (protocol) {
    case 6:
      return 0;
    case 17:
      return 1;
    case 1:
      return 2;
    case 58:
      return 3;
    default:
      return 4;
  }
}

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    prometheus_port: {
      type: 'integer',
      minimum: 0,
      maximum: 65535,
      default: DEFAULTS.prometheus_port,
      description:
        'Port of the Prometheus pull endpoint; 0 turns it off. A port that cannot be bound fails the start.',
    },
    prometheus_host: {
      type: 'string',
      minLength: 1,
      default: DEFAULTS.prometheus_host,
      description: 'Address the Prometheus endpoint listens on; 0.0.0.0 lets a remote Prometheus scrape it.',
    },
    prometheus_path: {
      type: 'string',
      pattern: '^/',
      default: DEFAULTS.prometheus_path,
      description: 'Path of the Prometheus endpoint.',
    },
    otlp_endpoint: {
      type: 'string',
      pattern: '^https?://',
      description:
        'OTLP/HTTP metrics URL to push to, e.g. http://collector:4318/v1/metrics; absent: the URL OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT gives, else no push. Encoded as OTEL_EXPORTER_OTLP_METRICS_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL select: http/protobuf (default) or http/json. A failed push shows the sink degraded until one succeeds.',
    },
    otlp_interval_ms: {
      type: 'integer',
      minimum: 100,
      maximum: 2147483647,
      default: DEFAULTS.otlp_interval_ms,
      description: 'How often metrics are pushed over OTLP.',
    },
    otlp_timeout_ms: {
      type: 'integer',
      minimum: 1,
      maximum: 2147483647,
      default: DEFAULTS.otlp_timeout_ms,
      description: 'Time an OTLP push may take.',
    },
    max_interfaces: {
      type: 'integer',
      minimum: 1,
      maximum: 1000,
      default: DEFAULTS.max_interfaces,
      description: `Interfaces that get their own series in the flow counters; the rest count as "${OTHER_INTERFACE}".`,
    },
  },
};

function resolveConfig(config: OtelMetricsConfig, extraReaders: number): Resolved {
  const resolved = { ...DEFAULTS, ...config } as Resolved;
  const push = resolved.otlp_endpoint !== undefined || otlpEndpointFromEnv() !== undefined;
  if (resolved.prometheus_port === 0 && !push && extraReaders === 0) {
    throw new SinkError(
      'EBADCONFIG',
      'otel_metrics sink: prometheus_port is 0 and there is no otlp_endpoint, so metrics would go nowhere; set one of them',
    );
  }
  return resolved;
}

export interface OtelMetricsOptions {
  /** More readers, e.g. an in-memory one in tests. */
  readers?: IMetricReader[];
}

/**
 * Per-batch sums by (interface slot, protocol, network type, direction), flushed into the counters once per
 * batch: a handful of `add` calls per batch whatever its size.
 */
export class FlowTally {
  private readonly slots = new Map<string | number, number>();
  private readonly names: string[] = [];
  private readonly bytes: Float64Array;
  private readonly packets: Float64Array;
  private readonly records: Float64Array;
  private readonly touched: Int32Array;
  private touchedCount = 0;
  private readonly attributes: (Attributes | undefined)[];

  constructor(private readonly maxInterfaces: number) {
    const cells = (maxInterfaces + 1) * PROTOCOLS.length * NETWORK_TYPES.length * DIRECTIONS.length;
    this.bytes = new Float64Array(cells);
    this.packets = new Float64Array(cells);
    this.records = new Float64Array(cells);
    this.touched = new Int32Array(cells);
    this.attributes = new Array<Attributes | undefined>(cells);
  }

  /** Series of the flow counters at most: what the SDK's cardinality limit must allow. */
  get cells(): number {
    return this.bytes.length;
  }

  private slotOf(key: string | number): number {
    let slot = this.slots.get(key);
    if (slot === undefined) {
      if (this.names.length >= this.maxInterfaces) return this.maxInterfaces;
      slot = this.names.length;
      this.names.push(sanitizeLabel(String(key)));
      this.slots.set(key, slot);
    }
    return slot;
  }

  /**
   * Adds the batch to the counters; returns how many records were left out because a count of
   * theirs is not a finite number from 0 to 2^53-1 (one such value would make a counter +Inf or
   * NaN for good).
   */
  add(batch: FlowBatch, bytes: Counter, packets: Counter, records: Counter): number {
    let skipped = 0;
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]!;
      if (!isCount(r.octetDeltaCount) || !isCount(r.packetDeltaCount)) {
        skipped++;
        continue;
      }
      const slot = this.slotOf(r.interfaceName ?? flowInterface(r));
      const cell =
        ((slot * PROTOCOLS.length + protocolIndex(r.protocolIdentifier)) * NETWORK_TYPES.length +
          networkTypeIndex(r.ipVersion)) *
          2 +
        (r.flowDirection === 1 ? 1 : 0);
      if (this.records[cell] === 0) this.touched[this.touchedCount++] = cell;
      this.bytes[cell]! += r.octetDeltaCount;
      this.packets[cell]! += r.packetDeltaCount;
      this.records[cell]! += 1;
    }
    for (let t = 0; t < this.touchedCount; t++) {
      const cell = this.touched[t]!;
      const attributes = this.attributesOf(cell);
      bytes.add(this.bytes[cell]!, attributes);
      packets.add(this.packets[cell]!, attributes);
      records.add(this.records[cell]!, attributes);
      this.bytes[cell] = 0;
      this.packets[cell] = 0;
      this.records[cell] = 0;
    }
    this.touchedCount = 0;
    return skipped;
  }

  private attributesOf(cell: number): Attributes {
    let attributes = this.attributes[cell];
    if (attributes === undefined) {
      const direction = cell % 2;
      const networkType = NETWORK_TYPES[Math.floor(cell / 2) % NETWORK_TYPES.length];
      const protocol = Math.floor(cell / 2 / NETWORK_TYPES.length) % PROTOCOLS.length;
      const slot = Math.floor(cell / 2 / NETWORK_TYPES.length / PROTOCOLS.length);
      attributes = {
        [ATTR_NETWORK_IO_DIRECTION]: DIRECTIONS[direction]!,
        [ATTR_NETWORK_TRANSPORT]: PROTOCOLS[protocol]!,
        [ATTR_NETWORK_INTERFACE_NAME]: slot < this.names.length ? this.names[slot]! : OTHER_INTERFACE,
      };
      if (networkType !== undefined) attributes[ATTR_NETWORK_TYPE] = networkType;
      this.attributes[cell] = attributes;
    }
    return attributes;
  }
}

function stageAttributes(id: string, type: string): Attributes {
  return { component: sanitizeLabel(id), type: sanitizeLabel(type) };
}

/** Registers the ledger's observable instruments; they read the ledger once per collection. */
function observeLedger(meter: Meter, ledger: Ledger): void {
  // Every one of them counts records.
  const unit = UNIT.records;
  const counter = (name: string, description: string) =>
    meter.createObservableCounter(name, { description, unit });
  const gauge = (name: string, description: string) =>
    meter.createObservableGauge(name, { description, unit });
  const received = counter(METRIC.componentReceived, 'Records a pipeline component received.');
  const sent = counter(METRIC.componentSent, 'Records a pipeline component passed on or wrote.');
  const dropped = counter(METRIC.componentDropped, 'Records a pipeline component dropped, by reason.');
  const merged = counter(METRIC.componentMerged, 'Records an aggregating component merged into others.');
  const inFlight = gauge(METRIC.componentInFlight, 'Records a pipeline component holds right now.');
  const seen = counter(METRIC.ledgerSeen, 'Records the pipeline sources produced.');
  const delivered = counter(
    METRIC.ledgerDelivered,
    'Records that reached the sinks, each counted once however many sinks read it.',
  );
  const lost = counter(METRIC.ledgerDropped, 'Records lost before the sinks, by reason.');
  const mergedTotal = counter(METRIC.ledgerMerged, 'Records merged into others anywhere in the pipeline.');
  const held = gauge(METRIC.ledgerInFlight, 'Records held before the sinks right now.');
  const handed = counter(METRIC.sinkHanded, 'Records the pipeline handed a sink.');
  const exported = counter(METRIC.sinkExported, 'Records a sink wrote and had confirmed.');
  const sinkLost = counter(METRIC.sinkDropped, 'Records a sink dropped, by reason.');
  const sinkHeld = gauge(METRIC.sinkInFlight, 'Records a sink holds right now.');
  meter.addBatchObservableCallback(
    (result) => {
      const totals = ledger.totals();
      for (const s of totals.stages) {
        const attributes = stageAttributes(s.id, s.type);
        result.observe(received, s.received, attributes);
        result.observe(sent, s.sent, attributes);
        result.observe(merged, s.merged ?? 0, attributes);
        result.observe(inFlight, s.inFlight, attributes);
        for (const [reason, n] of Object.entries(s.dropped) as [DropReason, number][]) {
          result.observe(dropped, n, { ...attributes, reason });
        }
      }
      result.observe(seen, totals.seen);
      result.observe(delivered, totals.delivered);
      result.observe(mergedTotal, totals.merged);
      result.observe(held, totals.inFlight);
      for (const [reason, n] of Object.entries(totals.dropped) as [DropReason, number][]) {
        result.observe(lost, n, { reason });
      }
      for (const k of totals.sinks) {
        const attributes = { sink: sanitizeLabel(k.id), type: sanitizeLabel(k.type) };
        result.observe(handed, k.handed, attributes);
        result.observe(exported, k.exported, attributes);
        result.observe(sinkHeld, k.inFlight, attributes);
        for (const [reason, n] of Object.entries(k.dropped) as [DropReason, number][]) {
          result.observe(sinkLost, n, { ...attributes, reason });
        }
      }
    },
    [
      received,
      sent,
      dropped,
      merged,
      inFlight,
      seen,
      delivered,
      lost,
      mergedTotal,
      held,
      handed,
      exported,
      sinkLost,
      sinkHeld,
    ],
  );
}

type ExportCallback = Parameters<PushMetricExporter['export']>[1];

/**
 * An OTLP exporter that reports each push's outcome as the sink's health: degraded with the reason
 * when a push fails, healthy when one succeeds again.
 */
function reportingExporter(
  exporter: PushMetricExporter,
  url: string,
  health: HealthReporter,
): PushMetricExporter {
  const reporting: PushMetricExporter = {
    export: (metrics, done: ExportCallback) =>
      exporter.export(metrics, (result) => {
        if (Number(result.code) === 0) health.healthy();
        else {
          health.degraded(
            `otel_metrics sink: metrics push to ${url} failed: ${result.error ? messageOf(result.error) : 'no reason given'}; check that the collector runs and otlp_endpoint is right`,
          );
        }
        done(result);
      }),
    forceFlush: () => exporter.forceFlush(),
    shutdown: () => exporter.shutdown(),
  };
  if (exporter.selectAggregationTemporality) {
    reporting.selectAggregationTemporality = (t) => exporter.selectAggregationTemporality!(t);
  }
  if (exporter.selectAggregation) reporting.selectAggregation = (t) => exporter.selectAggregation!(t);
  return reporting;
}

export class OtelMetricsSink implements Sink {
  private readonly config: Resolved;
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly provider: MeterProvider;
  private readonly prometheus: PrometheusExporter | undefined;
  private readonly tally: FlowTally;
  private readonly bytes: Counter;
  private readonly packets: Counter;
  private readonly records: Counter;
  private readonly droppedPackets: Counter;
  private readonly droppedBytes: Counter;
  private readonly tcpRtt: Histogram;
  private readonly dnsLatency: Histogram;
  private readonly dropReasons = new Map<string, Attributes>();
  private readonly firewall: FirewallInstruments;
  private readonly input = new SinkInput();
  private closed: Promise<void> | undefined;
  private failedBatches = 0;
  private badCountBatches = 0;

  constructor(config: OtelMetricsConfig, context: ComponentContext, options: OtelMetricsOptions = {}) {
    this.config = resolveConfig(config, options.readers?.length ?? 0);
    this.counters = context.counters;
    this.logger = context.logger;
    this.tally = new FlowTally(this.config.max_interfaces);
    const readers: IMetricReader[] = [...(options.readers ?? [])];
    if (this.config.prometheus_port !== 0) {
      this.prometheus = new PrometheusExporter({
        host: this.config.prometheus_host,
        port: this.config.prometheus_port,
        endpoint: this.config.prometheus_path,
        preventServerStart: true,
        withoutScopeInfo: true,
      });
      readers.push(this.prometheus);
    }
    const otlpEndpoint = this.config.otlp_endpoint ?? otlpEndpointFromEnv();
    if (otlpEndpoint !== undefined) {
      readers.push(
        new PeriodicExportingMetricReader({
          exporter: reportingExporter(
            otlpMetricExporter(otlpProtocol(), {
              url: this.config.otlp_endpoint,
              timeoutMillis: this.config.otlp_timeout_ms,
            }),
            otlpEndpoint,
            context.health ?? { degraded: () => undefined, healthy: () => undefined },
          ),
          exportIntervalMillis: this.config.otlp_interval_ms,
          exportTimeoutMillis: Math.min(this.config.otlp_timeout_ms, this.config.otlp_interval_ms),
        }),
      );
    }
    // The SDK caps series per instrument (2000 by default); the flow counters may need more.
    const views: ViewOptions[] = [METRIC.flowBytes, METRIC.flowPackets, METRIC.flowRecords].map(
      (instrumentName) => ({
        instrumentName,
        aggregationCardinalityLimit: this.tally.cells + 1,
      }),
    );
    this.provider = new MeterProvider({
      resource: agentResource({ pipeline: context.pipeline, logger: this.logger }),
      readers,
      views,
    });
    const meter = this.provider.getMeter('rxflow');
    this.bytes = meter.createCounter(METRIC.flowBytes, {
      description:
        'Bytes of the flows this sink received (octetDeltaCount), by direction, transport, network type and interface.',
      unit: UNIT.bytes,
    });
    this.packets = meter.createCounter(METRIC.flowPackets, {
      description:
        'Packets of the flows this sink received (packetDeltaCount), by direction, transport, network type and interface.',
      unit: UNIT.packets,
    });
    this.records = meter.createCounter(METRIC.flowRecords, {
      description: 'Flow records this sink received, by direction, transport, network type and interface.',
      unit: UNIT.records,
    });
    this.droppedPackets = meter.createCounter(METRIC.flowDroppedPackets, {
      description:
        'Packets of the flows this sink received that the kernel dropped (droppedPacketDeltaCount), by the reason of the latest drop.',
      unit: UNIT.packets,
    });
    this.droppedBytes = meter.createCounter(METRIC.flowDroppedBytes, {
      description:
        'Bytes of the flows this sink received that the kernel dropped (droppedOctetDeltaCount), by the reason of the latest drop.',
      unit: UNIT.bytes,
    });
    this.tcpRtt = meter.createHistogram(METRIC.flowTcpRtt, {
      description:
        'TCP round-trip times of the flows this sink received: handshake (tcpHandshakeRttMicroseconds) and the kernel smoothed RTT (tcpSmoothedRttMicroseconds), one sample per record that has one.',
      unit: 's',
      advice: { explicitBucketBoundaries: RTT_BUCKETS_S },
    });
    this.dnsLatency = meter.createHistogram(METRIC.flowDnsLatency, {
      description:
        'DNS latencies of the flows this sink received (dnsLatencyMicroseconds: query to response of the latest query answered), by response code, one sample per record that has one.',
      unit: 's',
      advice: { explicitBucketBoundaries: RTT_BUCKETS_S },
    });
    observeLedger(meter, context.ledger);
    this.firewall = new FirewallInstruments(meter, sanitizeLabel, (instance) =>
      this.logger.warn(
        { instance, max: MAX_FIREWALL_INSTANCES },
        'otel_metrics sink: samples of more firewall instances than it keeps series for are left out',
      ),
    );
  }

  /** Records the RTTs and DNS latencies of the batch's records into their histograms. */
  private addRtts(batch: FlowBatch): void {
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]!;
      const handshake = r.tcpHandshakeRttMicroseconds;
      if (handshake !== undefined && isCount(handshake)) this.tcpRtt.record(handshake / 1e6, RTT_HANDSHAKE);
      const smoothed = r.tcpSmoothedRttMicroseconds;
      if (smoothed !== undefined && isCount(smoothed)) this.tcpRtt.record(smoothed / 1e6, RTT_SMOOTHED);
      const dns = r.dnsLatencyMicroseconds;
      if (dns !== undefined && isCount(dns)) {
        this.dnsLatency.record(dns / 1e6, DNS_RCODE_ATTRS[(r.dnsResponseCode ?? 0) & 15]);
      }
    }
  }

  /** Adds the drops of the batch's records to the drop counters, one add per reason and batch. */
  private addDrops(batch: FlowBatch): void {
    let sums: Map<Attributes, [number, number]> | undefined;
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]!;
      const packets = r.droppedPacketDeltaCount;
      if (packets === undefined || !isCount(packets)) continue;
      const bytes = r.droppedOctetDeltaCount;
      const attrs = this.dropReasonAttributes(r.dropReason ?? '');
      sums ??= new Map();
      const sum = sums.get(attrs);
      const b = bytes !== undefined && isCount(bytes) ? bytes : 0;
      if (sum) {
        sum[0] += packets;
        sum[1] += b;
      } else {
        sums.set(attrs, [packets, b]);
      }
    }
    if (!sums) return;
    for (const [attrs, [packets, bytes]] of sums) {
      this.droppedPackets.add(packets, attrs);
      this.droppedBytes.add(bytes, attrs);
    }
  }

  private dropReasonAttributes(reason: string): Attributes {
    let attrs = this.dropReasons.get(reason);
    if (attrs === undefined) {
      if (this.dropReasons.size >= MAX_DROP_REASONS) return OTHER_DROP_REASON;
      attrs = { [ATTR_DROP_REASON]: sanitizeLabel(reason) };
      this.dropReasons.set(reason, attrs);
    }
    return attrs;
  }

  /**
   * Starts the Prometheus endpoint, then reads the input. A port that cannot be bound rejects
   * before the input is subscribed, so the pipeline does not start.
   */
  async consume(input: Observable<FlowBatch>): Promise<void> {
    const refused = this.input.claim('otel_metrics sink', this.closed !== undefined);
    if (refused) throw refused;
    await this.startServer();
    if (this.closed !== undefined) return;
    return this.input.start(
      input,
      (batch) => this.accept(batch),
      () => this.flush(),
    );
  }

  /** Pushes over OTLP now (the Prometheus endpoint always serves current values). Never rejects. */
  async flush(): Promise<void> {
    if (this.closed !== undefined) return;
    try {
      await this.provider.forceFlush();
    } catch (err) {
      this.logger.warn({ err }, 'otel_metrics sink: metrics push failed');
    }
  }

  /** Pushes a last time, stops the endpoint; never rejects, and once is enough. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.input.stop();
      try {
        await this.provider.shutdown();
      } catch (err) {
        this.logger.warn({ err }, 'otel_metrics sink: shutdown of the metrics exporters failed');
      }
      this.input.end();
    })();
    return this.closed;
  }

  private async startServer(): Promise<void> {
    if (!this.prometheus) return;
    const where = `${this.config.prometheus_host}:${this.config.prometheus_port}`;
    try {
      await this.prometheus.startServer();
    } catch (err) {
      throw new SinkError(
        'ELISTEN',
        `otel_metrics sink: cannot listen on ${where}: ${messageOf(err)}; pick another prometheus_port or prometheus_host, or stop what holds it`,
        { cause: err },
      );
    }
    this.logger.info(
      { address: where, path: this.config.prometheus_path },
      'otel_metrics sink: serving Prometheus metrics',
    );
  }

  private accept(input: FlowBatch): void {
    const n = input.length;
    if (n === 0) return;
    this.counters.addReceived(n);
    let samples = 0;
    try {
      // A source's batches are all of a kind: firewall samples, audit events, or flows.
      let batch = input;
      if (isFirewallMetricsRecord(input[0]!)) {
        batch = this.firewall.addSamples(input);
        samples = n - batch.length;
        this.counters.addSent(samples);
        if (batch.length === 0) return;
      } else if (isAuditRecord(input[0]!)) {
        this.firewall.addAudit(input);
      }
      const skipped = this.tally.add(batch, this.bytes, this.packets, this.records);
      this.addDrops(batch);
      this.addRtts(batch);
      this.counters.addSent(batch.length - skipped);
      if (skipped > 0) {
        this.counters.addDropped('sink_failed', skipped);
        if (this.badCountBatches++ === 0) {
          this.logger.warn(
            { dropped: skipped },
            'otel_metrics sink: records whose octetDeltaCount or packetDeltaCount is not a count from 0 to 2^53-1 were left out of the flow counters; fix the source that produced them',
          );
        }
      }
    } catch (err) {
      this.counters.addDropped('sink_failed', n - samples);
      if (this.failedBatches++ === 0) this.logger.error({ err }, 'otel_metrics sink: cannot count a batch');
    }
  }
}

const otelMetricsModule: SinkModule<OtelMetricsConfig> = {
  type: 'otel_metrics',
  kind: 'sink',
  description:
    "Counts flow bytes and packets by direction, transport, network type and interface, every component's received/sent/dropped, and the firewall's counters, sessions, replication status (firewall_metrics) and audit events by verdict (firewall_audit), for Prometheus or OTLP (http/protobuf or http/json).",
  schema,
  example: {
    prometheus_port: 9464,
    prometheus_host: '0.0.0.0',
    prometheus_path: '/metrics',
    otlp_endpoint: 'http://otel-collector:4318/v1/metrics',
    otlp_interval_ms: 60000,
    max_interfaces: 64,
  },
  build(config: OtelMetricsConfig, context: ComponentContext): Sink {
    return new OtelMetricsSink(config, context);
  },
};

export default otelMetricsModule;
