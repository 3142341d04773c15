import type { ComponentRegistry } from '../pipeline/component-registry.js';
import type { Env } from '../config/interpolate.js';
import type { Logger } from '../logger.js';

export type SignalName = 'SIGINT' | 'SIGTERM';
/** The signal that asks a running pipeline to flush on demand, as `rxflow flush` does. */
export type FlushSignalName = 'SIGUSR1';

export interface SignalSource {
  on(signal: SignalName | FlushSignalName, listener: (signal: SignalName) => void): unknown;
  off(signal: SignalName | FlushSignalName, listener: (signal: SignalName) => void): unknown;
}

/** What the commands touch outside themselves; the process's by default, fakes in tests. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  env: Env;
  /** The component types; src/pipeline/registry.ts when unset. */
  registry?: ComponentRegistry;
  /** Where `run` hears SIGINT and SIGTERM, and SIGUSR1 (flush). */
  signals: SignalSource;
  /** Ends the process at once: a second signal while draining. */
  exit(code: number): void;
  /** The root logger of `run`; made from --log-level when unset. */
  logger?: Logger;
  /** Whether `out` is a terminal (the demo redraws its table in place there). */
  isTTY?: boolean;
  /** The terminal's width, when it is one. */
  columns?: () => number | undefined;
}

export function processIo(): CliIo {
  return {
    out: (text) => void process.stdout.write(text),
    err: (text) => void process.stderr.write(text),
    env: process.env,
    signals: process,
    exit: (code) => process.exit(code),
    isTTY: process.stdout.isTTY === true,
    columns: () => process.stdout.columns,
  };
}
