import { asyncScheduler, type SchedulerLike, type Subscription } from 'rxjs';
import type { DropReason } from '../ledger.js';
import type { Logger } from '../logger.js';

/**
 * Logs a sink's losses without a log line per lost batch: the first loss after a quiet interval is
 * logged at once, later ones are summed until the interval ends. The ledger has the exact counts;
 * this only tells the operator that, and why, records are being lost.
 */
export class LossLog {
  private readonly pending = new Map<DropReason, number>();
  private timer: Subscription | undefined;
  private lastCause: string | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly message: string,
    private readonly intervalMs: number,
    private readonly scheduler: SchedulerLike = asyncScheduler,
  ) {}

  add(reason: DropReason, n: number, cause?: string): void {
    if (n <= 0) return;
    this.pending.set(reason, (this.pending.get(reason) ?? 0) + n);
    if (cause !== undefined) this.lastCause = cause;
    if (this.timer === undefined) {
      this.report();
      this.timer = this.scheduler.schedule(() => this.onTimer(), this.intervalMs);
    }
  }

  /** Logs what is pending and stops the timer. */
  close(): void {
    this.timer?.unsubscribe();
    this.timer = undefined;
    this.report();
  }

  private onTimer(): void {
    this.timer = undefined;
    if (this.pending.size === 0) return;
    this.report();
    this.timer = this.scheduler.schedule(() => this.onTimer(), this.intervalMs);
  }

  private report(): void {
    if (this.pending.size === 0) return;
    const dropped = Object.fromEntries(this.pending);
    this.pending.clear();
    const cause = this.lastCause;
    this.lastCause = undefined;
    this.logger.warn(cause === undefined ? { dropped } : { dropped, cause }, this.message);
  }
}
