/**
 * `top`: keeps the flows of the last `window_ms` aggregated by flow and direction, and ranks them
 * by bytes, like `iftop` for a pipeline. `rxflow status` and `rxflow demo` show its table; with
 * `log_interval_ms` it also logs the top flows. Bytes are those on the wire
 * (layer2OctetDeltaCount), as an interface's counters count them.
 *
 * The window is a ring of ten buckets, each a map of the flows that arrived in its tenth of the
 * window: adding a batch touches one map, and old traffic leaves the window a bucket at a time
 * without a timer. A bucket holds at most `max_flows` distinct flows; records of further flows are
 * counted as dropped (`sink_buffer_full`) rather than letting a flood of flows grow memory.
 */
import { asyncScheduler, interval, type Observable, type SchedulerLike, type Subscription } from 'rxjs';
import type { ComponentContext, Sink, SinkModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import { flowInterface, type FlowBatch, type FlowRecord } from '../records/flow.js';

export interface TopConfig {
  top_n: number;
  window_ms: number;
  max_flows: number;
  log_interval_ms: number;
}

/** One row of the table: a flow in one direction on one interface, summed over the window. */
export interface TopFlow {
  /** 0: a layer-2 flow, whose source and destination are MACs and protocol the ethertype. */
  ipVersion: 0 | 4 | 6;
  source: string;
  destination: string;
  sourcePort: number;
  destinationPort: number;
  protocol: number;
  /** 0 ingress, 1 egress. */
  direction: 0 | 1;
  /** interfaceName when a decorate stage set it, else the ifindex. */
  interface: string;
  packets: number;
  /** Frame bytes on the wire (layer2OctetDeltaCount, or octetDeltaCount for records without it). */
  bytes: number;
  /** bytes over the part of the window the table has existed for. */
  bytesPerSecond: number;
}

export interface TopSnapshot {
  windowMs: number;
  /** The `top_n` flows with the most bytes in the window, most first. */
  flows: TopFlow[];
  /** Distinct flows, packets and bytes in the window. */
  windowFlows: number;
  windowPackets: number;
  windowBytes: number;
  /** Since the table was made. */
  totalRecords: number;
  totalPackets: number;
  totalBytes: number;
}

interface Bucket {
  index: number;
  flows: Map<string, TopFlow>;
}

const BUCKETS = 10;

function protocolOf(r: FlowRecord): number {
  return r.ipVersion === 0 ? r.ethernetType : r.protocolIdentifier;
}

function keyOf(r: FlowRecord, iface: string): string {
  const src = r.sourceIPv4Address ?? r.sourceIPv6Address ?? r.sourceMacAddress;
  const dst = r.destinationIPv4Address ?? r.destinationIPv6Address ?? r.destinationMacAddress;
  return `${r.flowDirection}|${iface}|${protocolOf(r)}|${src}|${r.sourceTransportPort}|${dst}|${r.destinationTransportPort}`;
}

/** The windowed flow table of one `top` sink. */
export class TopTable {
  readonly bucketMs: number;
  private readonly buckets: Bucket[] = [];
  private readonly createdMs: number;
  private totalRecords = 0;
  private totalPackets = 0;
  private totalBytes = 0;

  constructor(
    readonly topN: number,
    readonly windowMs: number,
    readonly maxFlows: number,
    private readonly now: () => number,
  ) {
    this.bucketMs = Math.max(1, Math.ceil(windowMs / BUCKETS));
    this.createdMs = now();
  }

  /** Adds a batch; returns how many records found no room (a bucket at max_flows). */
  add(batch: FlowBatch): number {
    const index = Math.floor(this.now() / this.bucketMs);
    this.prune(index);
    let bucket = this.buckets[this.buckets.length - 1];
    if (bucket?.index !== index) {
      bucket = { index, flows: new Map() };
      this.buckets.push(bucket);
    }
    let refused = 0;
    for (const r of batch) {
      const iface = r.interfaceName ?? String(flowInterface(r));
      const key = keyOf(r, iface);
      let row = bucket.flows.get(key);
      if (row === undefined) {
        if (bucket.flows.size >= this.maxFlows) {
          refused++;
          continue;
        }
        row = {
          ipVersion: r.ipVersion,
          source: r.sourceIPv4Address ?? r.sourceIPv6Address ?? r.sourceMacAddress,
          destination: r.destinationIPv4Address ?? r.destinationIPv6Address ?? r.destinationMacAddress,
          sourcePort: r.sourceTransportPort,
          destinationPort: r.destinationTransportPort,
          protocol: protocolOf(r),
          direction: r.flowDirection,
          interface: iface,
          packets: 0,
          bytes: 0,
          bytesPerSecond: 0,
        };
        bucket.flows.set(key, row);
      }
      // Bytes as the interface carried them (the bandwidth a flow takes); IP octets for records
      // of older versions, which have no layer2OctetDeltaCount.
      const bytes = r.layer2OctetDeltaCount ?? r.octetDeltaCount;
      row.packets += r.packetDeltaCount;
      row.bytes += bytes;
      this.totalRecords++;
      this.totalPackets += r.packetDeltaCount;
      this.totalBytes += bytes;
    }
    return refused;
  }

  /** The top flows of the window ending now. */
  snapshot(): TopSnapshot {
    const now = this.now();
    this.prune(Math.floor(now / this.bucketMs));
    const merged = new Map<string, TopFlow>();
    let windowPackets = 0;
    let windowBytes = 0;
    for (const bucket of this.buckets) {
      for (const [key, row] of bucket.flows) {
        windowPackets += row.packets;
        windowBytes += row.bytes;
        const seen = merged.get(key);
        if (seen === undefined) merged.set(key, { ...row });
        else {
          seen.packets += row.packets;
          seen.bytes += row.bytes;
        }
      }
    }
    // A table younger than its window has seen less than a window of traffic.
    const spanMs = Math.max(this.bucketMs, Math.min(this.windowMs, now - this.createdMs));
    const flows = [...merged.values()]
      .sort((a, b) => b.bytes - a.bytes || b.packets - a.packets)
      .slice(0, this.topN);
    for (const f of flows) f.bytesPerSecond = (f.bytes * 1000) / spanMs;
    return {
      windowMs: this.windowMs,
      flows,
      windowFlows: merged.size,
      windowPackets,
      windowBytes,
      totalRecords: this.totalRecords,
      totalPackets: this.totalPackets,
      totalBytes: this.totalBytes,
    };
  }

  private prune(index: number): void {
    let stale = 0;
    while (stale < this.buckets.length && this.buckets[stale]!.index <= index - BUCKETS) stale++;
    if (stale > 0) this.buckets.splice(0, stale);
  }
}

class TopSink implements Sink {
  private subscription: Subscription | undefined;
  private logTimer: Subscription | undefined;

  constructor(
    readonly table: TopTable,
    private readonly counters: StageCounters,
    private readonly logger: Logger,
    private readonly logIntervalMs: number,
    private readonly scheduler: SchedulerLike,
  ) {}

  consume(input: Observable<FlowBatch>): Promise<void> {
    if (this.logIntervalMs > 0) {
      this.logTimer = interval(this.logIntervalMs, this.scheduler).subscribe(() => this.log());
    }
    return new Promise<void>((resolve, reject) => {
      this.subscription = input.subscribe({
        next: (batch) => {
          this.counters.addReceived(batch.length);
          const refused = this.table.add(batch);
          this.counters.addSent(batch.length - refused);
          this.counters.addDropped('sink_buffer_full', refused);
        },
        error: (err: unknown) => {
          this.stopLog();
          reject(err instanceof Error ? err : new Error(String(err)));
        },
        complete: () => {
          if (this.logTimer !== undefined) this.log();
          this.stopLog();
          resolve();
        },
      });
    });
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.stopLog();
    this.subscription?.unsubscribe();
    return Promise.resolve();
  }

  private stopLog(): void {
    this.logTimer?.unsubscribe();
    this.logTimer = undefined;
  }

  private log(): void {
    const s = this.table.snapshot();
    this.logger.info(
      {
        window_ms: s.windowMs,
        window_flows: s.windowFlows,
        window_bytes: s.windowBytes,
        flows: s.flows.map((f) => ({
          src: f.source,
          sport: f.sourcePort,
          dst: f.destination,
          dport: f.destinationPort,
          proto: f.protocol,
          dir: f.direction === 0 ? 'ingress' : 'egress',
          iface: f.interface,
          packets: f.packets,
          bytes: f.bytes,
        })),
      },
      'top flows',
    );
  }
}

export interface TopHooks {
  /** Called with each built sink's table, so a caller (the status, the demo) can read it. */
  onBuild?: (id: string, table: TopTable) => void;
}

/** The `top` module; `hooks` let the command line reach the tables of the sinks it builds. */
export function topModule(hooks: TopHooks = {}): SinkModule<TopConfig> {
  return {
    type: 'top',
    kind: 'sink',
    description: 'keeps the top flows by bytes over a sliding window, for rxflow status and the demo',
    schema: {
      type: 'object',
      additionalProperties: false,
      properties: {
        top_n: {
          type: 'integer',
          minimum: 1,
          maximum: 1000,
          default: 10,
          description: 'flows in the table, most bytes first',
        },
        window_ms: {
          type: 'integer',
          minimum: 100,
          maximum: 2147483647,
          default: 10000,
          description: 'flows are ranked by their bytes over this much time',
        },
        max_flows: {
          type: 'integer',
          minimum: 1,
          maximum: 16777216,
          default: 10000,
          description:
            'distinct flows held per tenth of the window; records of further flows count as dropped (sink_buffer_full)',
        },
        log_interval_ms: {
          type: 'integer',
          minimum: 0,
          maximum: 2147483647,
          default: 0,
          description: 'log the top flows at info this often and once when the input ends (0: never)',
        },
      },
    },
    example: { top_n: 10, window_ms: 10000, max_flows: 10000, log_interval_ms: 0 },
    build(config: TopConfig, context: ComponentContext): Sink {
      const scheduler = context.scheduler ?? asyncScheduler;
      const table = new TopTable(config.top_n, config.window_ms, config.max_flows, () => scheduler.now());
      hooks.onBuild?.(context.id, table);
      return new TopSink(table, context.counters, context.logger, config.log_interval_ms, scheduler);
    },
  };
}

const top: SinkModule<TopConfig> = topModule();

export default top;
