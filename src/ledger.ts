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

  constructor(
    readonly id: string,
    readonly type: string,
  ) {}

  addReceived(n: number): void {
    this.received += n;
  }

  addSent(n: number): void {
    this.sent += n;
  }

  /** Records absorbed into another record (aggregation), so they leave the stage without being sent. */
  addMerged(n: number): void {
    this.merged += n;
  }

  addDropped(reason: DropReason, n: number): void {
    if (n === 0) return;
    this.dropped.set(reason, (this.dropped.get(reason) ?? 0) + n);
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
      inFlight: this.received - this.sent - this.droppedTotal() - this.merged,
    };
    if (this.merged !== 0) snapshot.merged = this.merged;
    return snapshot;
  }
}

export interface LedgerTotals {
  /** What the first stages received (the sources' output). */
  seen: number;
  /** What the last stages (sinks) delivered. */
  exported: number;
  dropped: Partial<Record<DropReason, number>>;
  droppedTotal: number;
  /** Records merged into others by aggregating stages. */
  merged: number;
  inFlight: number;
  stages: StageSnapshot[];
}

export class Ledger {
  private readonly stages = new Map<string, StageCounters>();
  private readonly sources = new Set<string>();
  private readonly sinks = new Set<string>();

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

  /**
   * Totals since start. For a linear pipeline seen = exported + droppedTotal + merged + inFlight
   * holds exactly; sources count kernel-side losses as their own drops.
   */
  totals(): LedgerTotals {
    const stages = [...this.stages.values()].map((s) => s.snapshot());
    let seen = 0;
    let exported = 0;
    let droppedTotal = 0;
    let merged = 0;
    let inFlight = 0;
    const dropped: Partial<Record<DropReason, number>> = {};
    for (const s of stages) {
      if (this.sources.has(s.id)) seen += s.received;
      if (this.sinks.has(s.id)) exported += s.sent;
      for (const [reason, n] of Object.entries(s.dropped) as [DropReason, number][]) {
        dropped[reason] = (dropped[reason] ?? 0) + n;
        droppedTotal += n;
      }
      merged += s.merged ?? 0;
      inFlight += s.inFlight;
    }
    return { seen, exported, dropped, droppedTotal, merged, inFlight, stages };
  }
}
