import { pino, type Logger, type LoggerOptions } from 'pino';
import { redactText, redactValue } from './redact.js';

export type { Logger };

/**
 * Every log line passes through redactValue: fields named like a secret (password, token, ...) are
 * written as [redacted] and URLs lose their userinfo, whichever component logs them. The message
 * string too: a component that puts a URL in it does not leak its password.
 */
export const REDACTING: LoggerOptions = {
  formatters: { log: (object) => redactValue(object) as Record<string, unknown> },
  hooks: {
    logMethod(args, method) {
      method.apply(
        this,
        args.map((a) => (typeof a === 'string' ? redactText(a) : a)) as Parameters<typeof method>,
      );
    },
  },
};

/** The one root logger; components take `child({ component })` of it. */
export function createRootLogger(level: string = process.env.RXFLOW_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name: 'rxflow', level, ...REDACTING });
}

/** A logger that writes nothing, for unit tests and benchmarks. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
