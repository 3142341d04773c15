/**
 * Pipeline-wide settings: the top-level keys of a pipeline file beside its sections, declared once
 * here for the loader (which checks them) and the editor schema (which shows them).
 */
import type { JsonSchema } from '../component.js';
import type { Path } from '../config/document.js';
import { DURATION_HINT, parseDuration } from '../config/duration.js';

export interface PipelineSettings {
  /** How long a drain (SIGTERM, SIGINT, a failed component) may take before sinks give up. */
  drain_timeout_ms: number;
}

/**
 * Below the 30 s a Kubernetes pod gets between SIGTERM and SIGKILL (systemd's default is 90 s), so
 * the final ledger is logged before either kills the agent.
 */
export const DEFAULT_DRAIN_TIMEOUT_MS = 20_000;
const MAX_DRAIN_TIMEOUT_MS = 3_600_000;

export const SETTINGS_SCHEMA: Record<keyof PipelineSettings, JsonSchema> = {
  drain_timeout_ms: {
    type: 'integer',
    minimum: 0,
    maximum: MAX_DRAIN_TIMEOUT_MS,
    default: DEFAULT_DRAIN_TIMEOUT_MS,
    description:
      'How long a drain (on SIGTERM or SIGINT, or after a component failed) may take: sources stop, transforms emit what they hold, sinks write what they can; at the deadline each sink stops and what it still holds is counted as shutdown in the ledger, which is logged before exit. Keep it below the grace period of the service manager (Kubernetes terminationGracePeriodSeconds, 30 s by default; systemd TimeoutStopSec, 90 s).',
  },
};

export const SETTING_NAMES: readonly string[] = Object.keys(SETTINGS_SCHEMA);

/** The settings of a pipeline file's root map, defaults filled in; problems go to `report`. */
export function checkSettings(
  root: Record<string, unknown>,
  report: (path: Path, message: string) => void,
): PipelineSettings {
  const settings: PipelineSettings = { drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS };
  const value = root.drain_timeout_ms;
  if (value === undefined || value === null) return settings;
  const ms = typeof value === 'string' ? parseDuration(value) : value;
  if (typeof ms !== 'number' || !Number.isInteger(ms)) {
    report(['drain_timeout_ms'], `bad duration ${JSON.stringify(value)}; ${DURATION_HINT}`);
  } else if (ms < 0 || ms > MAX_DRAIN_TIMEOUT_MS) {
    report(['drain_timeout_ms'], `must be from 0 to ${MAX_DRAIN_TIMEOUT_MS} ms (1h); got ${ms}`);
  } else {
    settings.drain_timeout_ms = ms;
  }
  return settings;
}
