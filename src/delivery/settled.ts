/**
 * Waiters for everything up to a position to settle: a flush waits until each record (or change)
 * admitted before it was called is written or counted, whatever else arrives meanwhile. The owner
 * numbers what it admits, says with `isSettled(target)` whether everything below `target` has
 * settled, and calls `check()` whenever something settles.
 */
export class SettledWaiters {
  private waiters: { target: number; resolve: () => void }[] = [];

  constructor(private readonly isSettled: (target: number) => boolean) {}

  /** Resolves once everything below `target` has settled: at once when it already has. */
  wait(target: number): Promise<void> {
    if (this.isSettled(target)) return Promise.resolve();
    return new Promise<void>((resolve) => this.waiters.push({ target, resolve }));
  }

  /** Resolves the waiters whose targets have settled. */
  check(): void {
    if (this.waiters.length === 0) return;
    const waiting: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (this.isSettled(w.target)) w.resolve();
      else waiting.push(w);
    }
    this.waiters = waiting;
  }

  /** Whether a waiter waits for something at or beyond `position`. */
  wants(position: number): boolean {
    for (const w of this.waiters) if (w.target > position) return true;
    return false;
  }

  /** Resolves every waiter, settled or not: the owner has stopped. */
  releaseAll(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
  }
}
