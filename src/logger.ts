import { pino, type Logger } from 'pino';

export type { Logger };

/** The one root logger; components take `child({ component })` of it. */
export function createRootLogger(level: string = process.env.RXFLOW_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name: 'rxflow', level });
}

/** A logger that writes nothing, for unit tests and benchmarks. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
