/**
 * `otel_metrics`: flow and pipeline metrics through OpenTelemetry, pulled by Prometheus from an
 * HTTP endpoint and/or pushed over OTLP/HTTP.
 *
 * Flow counters (bytes, packets, records by direction, protocol and interface) are summed per batch
 * into a typed array indexed by (interface, protocol, direction) and added to the counters once per
 * batch and attribute set, never per record. The interface attribute is bounded: the first
 * max_interfaces interfaces seen get their own series, later ones count as "other". Every
 * component's received/sent/dropped counts and the loss ledger's totals are observable
 * instruments that read the ledger when metrics are collected, so nothing runs for them between
 * scrapes.
 *
 * Telemetry never takes the pipeline down: a port already in use or an unreachable collector is
 * logged, and the flows keep flowing.
 */
import type { Attributes, Counter, Meter } from '@opentelemetry/api';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  MeterProvider,
  PeriodicExportingMetricReader,
  type IMetricReader,
  type ViewOptions,
} from '@opentelemetry/sdk-metrics';
import type { Observable, Subscription } from 'rxjs';
import type { ComponentContext, JsonSchema, Sink, SinkModule } from '../component.js';
import type { DropReason, Ledger, StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import { flowInterface, type FlowBatch } from '../records.js';
import { consumeBatches } from './consume.js';
import { SinkError, messageOf } from './errors.js';

export interface OtelMetricsConfig {
  /** Port of the Prometheus endpoint; 0 turns it off. */
  prometheus_port?: number;
  prometheus_host?: string;
  prometheus_path?: string;
  /** OTLP/HTTP metrics URL, e.g. http://collector:4318/v1/metrics; absent: no push. */
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

/** Instrument names; the Prometheus exporter turns dots into underscores and adds _total to counters. */
export const METRIC = {
  flowBytes: 'rxflow.flow.bytes',
  flowPackets: 'rxflow.flow.packets',
  flowRecords: 'rxflow.flow.records',
  componentReceived: 'rxflow.component.received',
  componentSent: 'rxflow.component.sent',
  componentDropped: 'rxflow.component.dropped',
  componentMerged: 'rxflow.component.merged',
  componentInFlight: 'rxflow.component.in_flight',
  ledgerSeen: 'rxflow.ledger.seen',
  ledgerExported: 'rxflow.ledger.exported',
  ledgerDropped: 'rxflow.ledger.dropped',
  ledgerMerged: 'rxflow.ledger.merged',
  ledgerInFlight: 'rxflow.ledger.in_flight',
} as const;

/** The interface attribute's value for interfaces beyond max_interfaces. */
export const OTHER_INTERFACE = 'other';

const PROTOCOLS = ['tcp', 'udp', 'icmp', 'icmpv6', 'other'] as const;
const DIRECTIONS = ['ingress', 'egress'] as const;

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
      description: 'Port of the Prometheus pull endpoint; 0 turns it off.',
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
        'OTLP/HTTP metrics URL to push to (JSON), e.g. http://collector:4318/v1/metrics; absent: no push.',
    },
    otlp_interval_ms: {
      type: 'integer',
      minimum: 100,
      default: DEFAULTS.otlp_interval_ms,
      description: 'How often metrics are pushed over OTLP.',
    },
    otlp_timeout_ms: {
      type: 'integer',
      minimum: 1,
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
  if (resolved.prometheus_port === 0 && resolved.otlp_endpoint === undefined && extraReaders === 0) {
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
 * Per-batch sums by (interface slot, protocol, direction), flushed into the counters once per
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
    const cells = (maxInterfaces + 1) * PROTOCOLS.length * DIRECTIONS.length;
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
      this.names.push(String(key));
      this.slots.set(key, slot);
    }
    return slot;
  }

  add(batch: FlowBatch, bytes: Counter, packets: Counter, records: Counter): void {
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]!;
      const slot = this.slotOf(r.interfaceName ?? flowInterface(r));
      const cell =
        (slot * PROTOCOLS.length + protocolIndex(r.protocolIdentifier)) * 2 + (r.flowDirection === 1 ? 1 : 0);
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
  }

  private attributesOf(cell: number): Attributes {
    let attributes = this.attributes[cell];
    if (attributes === undefined) {
      const direction = cell % 2;
      const protocol = Math.floor(cell / 2) % PROTOCOLS.length;
      const slot = Math.floor(cell / 2 / PROTOCOLS.length);
      attributes = {
        direction: DIRECTIONS[direction]!,
        protocol: PROTOCOLS[protocol]!,
        interface: slot < this.names.length ? this.names[slot]! : OTHER_INTERFACE,
      };
      this.attributes[cell] = attributes;
    }
    return attributes;
  }
}

function stageAttributes(id: string, type: string): Attributes {
  return { component: id, type };
}

/** Registers the ledger's observable instruments; they read the ledger once per collection. */
function observeLedger(meter: Meter, ledger: Ledger): void {
  const counter = (name: string, description: string) => meter.createObservableCounter(name, { description });
  const gauge = (name: string, description: string) => meter.createObservableGauge(name, { description });
  const received = counter(METRIC.componentReceived, 'Records a pipeline component received.');
  const sent = counter(METRIC.componentSent, 'Records a pipeline component passed on or wrote.');
  const dropped = counter(METRIC.componentDropped, 'Records a pipeline component dropped, by reason.');
  const merged = counter(METRIC.componentMerged, 'Records an aggregating component merged into others.');
  const inFlight = gauge(METRIC.componentInFlight, 'Records a pipeline component holds right now.');
  const seen = counter(METRIC.ledgerSeen, 'Records the pipeline sources produced.');
  const exported = counter(METRIC.ledgerExported, 'Records the pipeline sinks wrote.');
  const lost = counter(METRIC.ledgerDropped, 'Records lost anywhere in the pipeline, by reason.');
  const mergedTotal = counter(METRIC.ledgerMerged, 'Records merged into others anywhere in the pipeline.');
  const held = gauge(METRIC.ledgerInFlight, 'Records held anywhere in the pipeline right now.');
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
      result.observe(exported, totals.exported);
      result.observe(mergedTotal, totals.merged);
      result.observe(held, totals.inFlight);
      for (const [reason, n] of Object.entries(totals.dropped) as [DropReason, number][]) {
        result.observe(lost, n, { reason });
      }
    },
    [received, sent, dropped, merged, inFlight, seen, exported, lost, mergedTotal, held],
  );
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
  private subscription: Subscription | undefined;
  private endConsume: (() => void) | undefined;
  private closed: Promise<void> | undefined;
  private failedBatches = 0;

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
    if (this.config.otlp_endpoint !== undefined) {
      readers.push(
        new PeriodicExportingMetricReader({
          exporter: new OTLPMetricExporter({
            url: this.config.otlp_endpoint,
            timeoutMillis: this.config.otlp_timeout_ms,
          }),
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
      resource: resourceFromAttributes({ 'service.name': 'rxflow' }),
      readers,
      views,
    });
    const meter = this.provider.getMeter('rxflow');
    this.bytes = meter.createCounter(METRIC.flowBytes, {
      description:
        'Bytes of the flows this sink received (octetDeltaCount), by direction, protocol and interface.',
    });
    this.packets = meter.createCounter(METRIC.flowPackets, {
      description:
        'Packets of the flows this sink received (packetDeltaCount), by direction, protocol and interface.',
    });
    this.records = meter.createCounter(METRIC.flowRecords, {
      description: 'Flow records this sink received, by direction, protocol and interface.',
    });
    observeLedger(meter, context.ledger);
  }

  consume(input: Observable<FlowBatch>): Promise<void> {
    if (this.subscription !== undefined || this.closed !== undefined) {
      return Promise.reject(
        new SinkError('ECONSUME', 'otel_metrics sink: consume() was already called or the sink is closed'),
      );
    }
    void this.startServer();
    const consumption = consumeBatches(
      input,
      (batch) => this.accept(batch),
      () => this.flush(),
    );
    this.subscription = consumption.subscription;
    this.endConsume = consumption.end;
    return consumption.done;
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
      this.subscription?.unsubscribe();
      try {
        await this.provider.shutdown();
      } catch (err) {
        this.logger.warn({ err }, 'otel_metrics sink: shutdown of the metrics exporters failed');
      }
      this.endConsume?.();
    })();
    return this.closed;
  }

  private async startServer(): Promise<void> {
    if (!this.prometheus) return;
    const where = `${this.config.prometheus_host}:${this.config.prometheus_port}`;
    try {
      await this.prometheus.startServer();
      this.logger.info(
        { address: where, path: this.config.prometheus_path },
        'otel_metrics sink: serving Prometheus metrics',
      );
    } catch (err) {
      this.logger.error(
        { err, address: where },
        `otel_metrics sink: cannot listen on ${where}: ${messageOf(err)}; pick another prometheus_port or prometheus_host`,
      );
    }
  }

  private accept(batch: FlowBatch): void {
    const n = batch.length;
    if (n === 0) return;
    this.counters.addReceived(n);
    try {
      this.tally.add(batch, this.bytes, this.packets, this.records);
      this.counters.addSent(n);
    } catch (err) {
      this.counters.addDropped('sink_failed', n);
      if (this.failedBatches++ === 0) this.logger.error({ err }, 'otel_metrics sink: cannot count a batch');
    }
  }
}

const otelMetricsModule: SinkModule<OtelMetricsConfig> = {
  type: 'otel_metrics',
  kind: 'sink',
  description:
    "Counts flow bytes and packets by direction, protocol and interface, and every component's received/sent/dropped, for Prometheus or OTLP.",
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
