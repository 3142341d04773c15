import type { SchedulerLike } from 'rxjs';
import type { Logger } from '../logger.js';

export interface OutageLogOptions {
  logger: Logger;
  scheduler: SchedulerLike;
  /** Logged at info, with `outage_ms`, when an outage ends. */
  recovered: string;
  /**
   * While the outage lasts, the warning is repeated this often (with `outage_ms`); failures in
   * between are logged at debug as `stillFailing`. Unset: one warning per outage, and nothing more.
   */
  repeatMs?: number;
  stillFailing?: string;
}

/**
 * The log of a component's outages (the brokers or the KV store out of reach): a warning when
 * the first attempt fails, not one per retry, and an info line with the outage's length when an
 * attempt succeeds again. The component keeps its own messages, counts and health; this keeps
 * when the outage began.
 */
export class OutageLog {
  private began: number | undefined;
  private warned = 0;

  constructor(private readonly options: OutageLogOptions) {}

  /** When the outage in progress began, on the scheduler's clock; undefined without one. */
  get since(): number | undefined {
    return this.began;
  }

  /**
   * A failed attempt: warns with `fields` and `message` when it begins an outage (and every
   * repeatMs after). Returns true when it began one.
   */
  failing(fields: Record<string, unknown>, message: string): boolean {
    const { logger, scheduler, repeatMs, stillFailing } = this.options;
    const now = scheduler.now();
    const began = this.began;
    if (began !== undefined) {
      const logged = { ...fields, outage_ms: now - began };
      if (repeatMs !== undefined && now - this.warned >= repeatMs) {
        this.warned = now;
        logger.warn(logged, message);
      } else if (stillFailing !== undefined) {
        logger.debug(logged, stillFailing);
      }
      return false;
    }
    this.began = now;
    this.warned = now;
    logger.warn(fields, message);
    return true;
  }

  /**
   * A successful attempt: ends the outage in progress, logging its length with `fields` (and
   * `message`, if given, instead of the recovered one). Returns its length, or undefined when
   * there was none (and nothing is logged).
   */
  recovered(fields: Record<string, unknown> = {}, message = this.options.recovered): number | undefined {
    if (this.began === undefined) return undefined;
    const outageMs = this.options.scheduler.now() - this.began;
    this.began = undefined;
    this.options.logger.info({ ...fields, outage_ms: outageMs }, message);
    return outageMs;
  }
}
