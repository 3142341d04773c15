import type { SchedulerLike, Subscription } from 'rxjs';

const LATE = Symbol('late');

/**
 * The shutdown-deadline race: waits for `work` at most `ms` on `scheduler` (virtual time in
 * tests). Resolves 'done' when it settled in time, 'late' when the deadline came first; the
 * deadline's timer is cancelled either way. A rejection of `work` within the deadline rejects.
 */
export async function beforeDeadline(
  work: Promise<unknown>,
  ms: number,
  scheduler: SchedulerLike,
): Promise<'done' | 'late'> {
  let timer: Subscription | undefined;
  const late = new Promise<typeof LATE>((resolve) => {
    timer = scheduler.schedule(() => resolve(LATE), ms);
  });
  try {
    return (await Promise.race([work, late])) === LATE ? 'late' : 'done';
  } finally {
    timer?.unsubscribe();
  }
}
