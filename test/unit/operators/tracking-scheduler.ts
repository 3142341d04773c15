import type { SchedulerLike, Subscription } from 'rxjs';

/** Delegates to another scheduler and keeps every subscription it hands out, to check teardown. */
export class TrackingScheduler implements SchedulerLike {
  readonly scheduled: Subscription[] = [];
  constructor(private readonly inner: SchedulerLike) {}
  now(): number {
    return this.inner.now();
  }
  schedule<T>(work: (this: unknown, state?: T) => void, delay?: number, state?: T): Subscription {
    const sub = this.inner.schedule(work as never, delay, state);
    this.scheduled.push(sub);
    return sub;
  }
}
