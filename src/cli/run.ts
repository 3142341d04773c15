import type { Logger } from '../logger.js';
import type { ComponentRegistry } from '../pipeline/component-registry.js';
import type { CliIo, SignalName } from './io.js';
import { createCliLogger } from './log.js';
import { PipelineSession } from './session.js';
import { defaultStatusSocket } from './status.js';

/**
 * After a drain on a signal has ended and the ledger is logged, how long a connection still
 * closing (a client library retrying a broker that is away) may keep the process alive.
 */
const EXIT_GRACE_MS = 500;

/** Exit codes of a second signal, as the shell reports a process killed by it. */
export const SIGNAL_EXIT: Record<SignalName, number> = { SIGINT: 130, SIGTERM: 143 };

export interface RunOptions {
  logLevel: string;
  /** A path; false for none; undefined for <status dir>/<pipeline name>.sock. */
  statusSocket?: string | false;
  /** How often the ledger is logged at info; 0 never (it is always logged at exit). */
  ledgerLogIntervalMs?: number;
  /** host:port of the HTTP health endpoint (/livez, /readyz); none when undefined. */
  healthAddress?: string;
}

/**
 * Signal handling of a long-running command: the first SIGINT/SIGTERM calls `drain` (once), a
 * second one runs `beforeExit` (synchronous cleanup that cannot wait) and exits at once with
 * 130/143. `detach()` removes the listeners.
 */
export function onStopSignals(
  io: CliIo,
  logger: Logger,
  drain: (signal: SignalName) => void,
  beforeExit?: () => void,
): { detach(): void; readonly received: number } {
  let received = 0;
  const listener = (signal: SignalName): void => {
    received++;
    if (received === 1) {
      logger.info({ signal }, 'draining the pipeline; send the signal again to exit at once');
      drain(signal);
    } else {
      logger.warn({ signal }, 'exiting without draining');
      try {
        beforeExit?.();
      } finally {
        io.exit(SIGNAL_EXIT[signal]);
      }
    }
  };
  io.signals.on('SIGINT', listener);
  io.signals.on('SIGTERM', listener);
  return {
    detach: () => {
      io.signals.off('SIGINT', listener);
      io.signals.off('SIGTERM', listener);
    },
    get received() {
      return received;
    },
  };
}

/**
 * Runs a pipeline until its sources end or a signal arrives. The first SIGINT/SIGTERM drains
 * (sources complete, the kernel map is evicted a last time, transforms emit what they hold, sinks
 * flush and close) and exits 0; a second one exits at once. While it runs, the pipeline's state is
 * served on a unix socket for `rxflow status`, and the ledger is logged every interval and at exit.
 * A pipeline that cannot be loaded, built or started exits 1 with the reason on stderr.
 */
export async function runFile(
  file: string,
  options: RunOptions,
  registry: ComponentRegistry,
  io: CliIo,
): Promise<number> {
  const logger = io.logger ?? createCliLogger(options.logLevel);
  let session: PipelineSession | undefined;
  let stopRequested = false;
  const signals = onStopSignals(io, logger, () => {
    stopRequested = true;
    // A failure while draining surfaces through pipeline.done below.
    session?.stop().catch(() => undefined);
  });
  // SIGUSR1 flushes, as `rxflow flush` does. Listening also keeps Node from opening its inspector.
  const flushSignal = (): void => {
    try {
      if (session === undefined) throw new Error('the pipeline is not built yet');
      session.flush();
    } catch (err) {
      logger.warn({ err }, 'SIGUSR1: no flush');
    }
  };
  io.signals.on('SIGUSR1', flushSignal);
  try {
    try {
      session = await PipelineSession.open(file, { env: io.env, registry, logger });
    } catch (err) {
      io.err(`${(err as Error).message}\n`);
      return 1;
    }
    if (stopRequested) {
      await session.stop();
      return 0;
    }
    const socket =
      options.statusSocket === false
        ? undefined
        : (options.statusSocket ?? defaultStatusSocket(file, io.env));
    if (socket !== undefined) {
      try {
        await session.serveStatus(socket);
      } catch (err) {
        if (options.statusSocket !== undefined) {
          await session.stop().catch(() => undefined);
          io.err(`${(err as Error).message}\n`);
          return 1;
        }
        // The default socket is a convenience; a pipeline runs without it.
        logger.warn({ err }, 'status socket not served; rxflow status will not reach this pipeline');
      }
    }
    if (options.healthAddress !== undefined) {
      try {
        await session.serveHealth(options.healthAddress);
      } catch (err) {
        await session.stop().catch(() => undefined);
        io.err(`${(err as Error).message}\n`);
        return 1;
      }
    }
    try {
      await session.start();
    } catch (err) {
      io.err(`${(err as Error).message}\n`);
      // Sinks still flush and close what they hold.
      await session.pipeline.done.catch(() => undefined);
      return 1;
    }
    if (stopRequested) void session.stop().catch(() => undefined);
    session.logLedgerEvery(options.ledgerLogIntervalMs ?? 60_000);
    try {
      await session.pipeline.done;
      return 0;
    } catch (err) {
      io.err(`${err instanceof Error ? err.message : String(err)}\n`);
      return 1;
    } finally {
      session.logLedger();
    }
  } finally {
    signals.detach();
    io.signals.off('SIGUSR1', flushSignal);
    await session?.close();
    // The drain is over and the ledger logged: a service manager waiting for the exit does not
    // wait on what is left. Unreferenced, so a process with nothing left exits at once.
    if (stopRequested) {
      setTimeout(
        () => io.exit(typeof process.exitCode === 'number' ? process.exitCode : 0),
        EXIT_GRACE_MS,
      ).unref();
    }
  }
}
