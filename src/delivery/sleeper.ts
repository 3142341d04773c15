import type { SchedulerLike } from 'rxjs';

/**
 * Waits on a scheduler (virtual time in tests) that stopping can cut short: `sleep(ms)` resolves
 * after `ms`, or at once when `wake()` is called meanwhile. For a source that waits on one thing
 * at a time (pacing, a retry backoff) and must not hold a drain up for the rest of the wait.
 */
export class Sleeper {
  private wakeUp: (() => void) | undefined;

  constructor(private readonly scheduler: SchedulerLike) {}

  sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.wakeUp = undefined;
        task.unsubscribe();
        resolve();
      };
      const task = this.scheduler.schedule(done, ms);
      this.wakeUp = done;
    });
  }

  /** Ends the wait in progress, if any. */
  wake(): void {
    this.wakeUp?.();
  }
}
