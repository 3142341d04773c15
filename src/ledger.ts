/**
 * The loss ledger: every stage counts what it received, sent and dropped (with a reason), so
 * every flow the kernel saw is either exported, dropped with a reason, or still in flight.
 * Counters are plain numbers bumped by batch sizes on the hot path; nothing allocates per record.
 */

/** Reasons a record can be lost. Kernel-side reasons come from the flow program's counters. */
export type DropReason =
  | 'kernel_map_full'
  | 'ringbuf_reserve_failed'
  | 'parse_failed'
  /** Frames deeper than the flow program's parser walks (VLAN tags, IPv6 extension headers). */
  | 'beyond_parser_limits'
  /** Non-IP frames an older flow program counted instead of making them layer-2 flows. */
  | 'non_ip'
  | 'sampled_out'
  /**
   * Records an exporter sent that never reached the `ipfix` source, by the sequence numbers of its
   * messages (NetFlow v9 numbers packets: one per lost export packet).
   */
  | 'upstream_lost'
  | 'limiter_dropped'
  | 'dedupe_duplicate'
  | 'sink_failed'
  | 'sink_buffer_full'
  | 'shutdown';

export interface StageSnapshot {
  id: string;
  type: string;
  received: number;
  sent: number;
  dropped: Partial<Record<DropReason, number>>;
  /**
   * Records folded into another record by an aggregating stage (account): not lost, their packets
   * and bytes ride in the record they were merged into. Present only when not zero.
   */
  merged?: number;
  /** received - sent - dropped - merged: what the stage holds right now (buffers, aggregation tables). */
  inFlight: number;
}

export class StageCounters {
  received = 0;
  sent = 0;
  merged = 0;
  readonly dropped = new Map<DropReason, number>();
  /**
   * Called after every count of records leaving the stage (sent or dropped): the pipeline's buffer
   * in front of a sink learns from it that the sink has room again. One listener at most.
   */
  onLeft: (() => void) | undefined;

  constructor(
    readonly id: string,
    readonly type: string,
  ) {}

  addReceived(n: number): void {
    this.received += n;
  }

  addSent(n: number): void {
    this.sent += n;
    if (this.onLeft !== undefined) this.onLeft();
  }

  /** Records absorbed into another record (aggregation), so they leave the stage without being sent. */
  addMerged(n: number): void {
    this.merged += n;
  }

  addDropped(reason: DropReason, n: number): void {
    if (n === 0) return;
    this.dropped.set(reason, (this.dropped.get(reason) ?? 0) + n);
    if (this.onLeft !== undefined) this.onLeft();
  }

  /** received - sent - dropped - merged: what the stage holds right now. */
  held(): number {
    return this.received - this.sent - this.droppedTotal() - this.merged;
  }

  droppedTotal(): number {
    let total = 0;
    for (const n of this.dropped.values()) total += n;
    return total;
  }

  snapshot(): StageSnapshot {
    const snapshot: StageSnapshot = {
      id: this.id,
      type: this.type,
      received: this.received,
      sent: this.sent,
      dropped: Object.fromEntries(this.dropped),
      inFlight: this.held(),
    };
    if (this.merged !== 0) snapshot.merged = this.merged;
    return snapshot;
  }
}

/** One sink's account: every record it was handed is exported, dropped with a reason, or in flight. */
export interface SinkLedger {
  id: string;
  type: string;
  /** Records the pipeline handed this sink. */
  handed: number;
  /** Records this sink wrote and had confirmed. */
  exported: number;
  dropped: Partial<Record<DropReason, number>>;
  droppedTotal: number;
  /** handed - exported - dropped: what the sink holds right now. */
  inFlight: number;
}

export interface LedgerTotals {
  /** What the first stages received (the sources' output, kernel-side losses included). */
  seen: number;
  /** Records merged into others by aggregating stages. */
  merged: number;
  /** Dropped before the sinks (sources and transforms), by reason. */
  dropped: Partial<Record<DropReason, number>>;
  droppedTotal: number;
  /** Held before the sinks (sources and transforms) right now. */
  inFlight: number;
  /**
   * Records that reached the sinks, each counted once however many sinks read it; for a pipeline
   * whose branches split only into sinks, seen = merged + droppedTotal + inFlight + delivered.
   */
  delivered: number;
  /** Each sink's own account (a record read by two sinks is handed to each). */
  sinks: SinkLedger[];
  stages: StageSnapshot[];
}

export class Ledger {
  private readonly stages = new Map<string, StageCounters>();
  private readonly sources = new Set<string>();
  private readonly sinks = new Set<string>();
  private delivered = 0;

  /** Registers (or returns) the counters of one stage. */
  stage(id: string, type: string, role: 'source' | 'transform' | 'sink' = 'transform'): StageCounters {
    let counters = this.stages.get(id);
    if (!counters) {
      counters = new StageCounters(id, type);
      this.stages.set(id, counters);
    }
    if (role === 'source') this.sources.add(id);
    if (role === 'sink') this.sinks.add(id);
    return counters;
  }

  /** Records leaving a stage that sinks read, counted once before they fan out to the sinks. */
  addDelivered(n: number): void {
    this.delivered += n;
  }

  /** Totals since start: the pipeline's account up to the sinks, then each sink's own. */
  totals(): LedgerTotals {
    const stages = [...this.stages.values()].map((s) => s.snapshot());
    let seen = 0;
    let droppedTotal = 0;
    let merged = 0;
    let inFlight = 0;
    const dropped: Partial<Record<DropReason, number>> = {};
    const sinks: SinkLedger[] = [];
    for (const s of stages) {
      if (this.sources.has(s.id)) seen += s.received;
      if (this.sinks.has(s.id)) {
        let sinkDropped = 0;
        for (const n of Object.values(s.dropped)) sinkDropped += n;
        sinks.push({
          id: s.id,
          type: s.type,
          handed: s.received,
          exported: s.sent,
          dropped: s.dropped,
          droppedTotal: sinkDropped,
          inFlight: s.inFlight,
        });
        continue;
      }
      for (const [reason, n] of Object.entries(s.dropped) as [DropReason, number][]) {
        dropped[reason] = (dropped[reason] ?? 0) + n;
        droppedTotal += n;
      }
      merged += s.merged ?? 0;
      inFlight += s.inFlight;
    }
    return { seen, merged, dropped, droppedTotal, inFlight, delivered: this.delivered, sinks, stages };
  }
}
