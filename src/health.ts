/**
 * Component health: each component gets a HealthReporter (see component.ts) and says when it
 * cannot do its job and when it can again. The board keeps the current state of every component,
 * logs each change (warn when degraded, info when healthy again), and answers the status and the
 * health endpoint.
 */
import type { HealthReporter } from './component.js';
import type { Logger } from './logger.js';

export interface DegradedComponent {
  component: string;
  type: string;
  /** What the component said: why, and what to do. */
  reason: string;
  /** When it became degraded (ISO time); a new reason keeps the time. */
  since: string;
}

export interface HealthSnapshot {
  /** healthy when no component is degraded. */
  status: 'healthy' | 'degraded';
  degraded: DegradedComponent[];
}

export class HealthBoard {
  private readonly degradedById = new Map<string, DegradedComponent>();

  /** The reporter of one component; changes are logged on `logger` (the component's child logger). */
  reporter(component: string, type: string, logger: Logger): HealthReporter {
    return {
      degraded: (reason: string) => {
        const current = this.degradedById.get(component);
        if (current?.reason === reason) return;
        this.degradedById.set(component, {
          component,
          type,
          reason,
          since: current?.since ?? new Date().toISOString(),
        });
        logger.warn({ health: 'degraded', reason }, 'component degraded');
      },
      healthy: () => {
        const current = this.degradedById.get(component);
        if (current === undefined) return;
        this.degradedById.delete(component);
        logger.info(
          { health: 'healthy', was: current.reason, since: current.since },
          'component healthy again',
        );
      },
    };
  }

  snapshot(): HealthSnapshot {
    const degraded = [...this.degradedById.values()].map((d) => ({ ...d }));
    return { status: degraded.length === 0 ? 'healthy' : 'degraded', degraded };
  }
}
