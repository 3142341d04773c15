import type { SchedulerLike, Subscription } from 'rxjs';

/**
 * Waits on a scheduler (virtual time in tests) that stopping can cut short: `sleep(ms)` resolves
 * after `ms`, `within(done, ms)` when `done` settles or after `ms`, or either at once when
 * `wake()` is called meanwhile. For a component that waits (pacing, a retry backoff, an answer
 * with a deadline) and must not hold a drain or a close up for the rest of the wait. Any number
 * of waits may run at once; `wake()` ends them all.
 */
export class Sleeper {
  private readonly waiting = new Set<() => void>();

  constructor(private readonly scheduler: SchedulerLike) {}

  sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        this.waiting.delete(wake);
        task.unsubscribe();
        resolve();
      };
      const task: Subscription = this.scheduler.schedule(wake, ms);
      this.waiting.add(wake);
    });
  }

  /** Resolves true when `done` settles (either way) within `ms`, false when not or when woken. */
  within(done: Promise<unknown>, ms: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const finish = (settled: boolean): void => {
        this.waiting.delete(wake);
        task.unsubscribe();
        resolve(settled);
      };
      const wake = (): void => finish(false);
      const task: Subscription = this.scheduler.schedule(wake, ms);
      this.waiting.add(wake);
      done.then(
        () => finish(true),
        () => finish(true),
      );
    });
  }

  /** Ends every wait in progress. */
  wake(): void {
    for (const wake of [...this.waiting]) wake();
  }
}
