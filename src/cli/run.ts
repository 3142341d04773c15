import { createRootLogger } from '../logger.js';
import { buildPipeline } from '../pipeline/build.js';
import type { ComponentRegistry } from '../pipeline/component-registry.js';
import { formatProblem, PipelineConfigError } from '../pipeline/errors.js';
import { loadPipeline } from '../pipeline/load.js';
import type { CliIo, SignalName } from './io.js';

const SIGNAL_EXIT: Record<SignalName, number> = { SIGINT: 130, SIGTERM: 143 };

/**
 * Runs a pipeline until its sources end or a signal arrives. The first SIGINT/SIGTERM drains
 * (sources complete, transforms emit what they hold, sinks flush and close) and exits 0; a second
 * one exits at once.
 */
export async function runFile(
  file: string,
  options: { logLevel: string },
  registry: ComponentRegistry,
  io: CliIo,
): Promise<number> {
  const logger = io.logger ?? createRootLogger(options.logLevel);
  let config;
  try {
    config = await loadPipeline(file, { env: io.env, registry });
  } catch (err) {
    if (err instanceof PipelineConfigError) {
      for (const problem of err.problems) io.err(`${formatProblem(problem)}\n`);
    } else {
      io.err(`${(err as Error).message}\n`);
    }
    return 1;
  }

  let pipeline;
  try {
    pipeline = await buildPipeline(config, { logger });
  } catch (err) {
    logger.error({ err, file }, 'pipeline build failed');
    io.err(`${(err as Error).message}\n`);
    return 1;
  }

  let signals = 0;
  const onSignal = (signal: SignalName): void => {
    signals++;
    if (signals === 1) {
      logger.info({ signal }, 'draining the pipeline; send the signal again to exit at once');
      // A failure while draining surfaces through pipeline.done below.
      pipeline.stop().catch(() => undefined);
    } else {
      logger.warn({ signal }, 'exiting without draining');
      io.exit(SIGNAL_EXIT[signal]);
    }
  };
  io.signals.on('SIGINT', onSignal);
  io.signals.on('SIGTERM', onSignal);
  try {
    await pipeline.start();
    await pipeline.done;
    const totals = pipeline.totals();
    logger.info(
      { seen: totals.seen, exported: totals.exported, dropped: totals.dropped, inFlight: totals.inFlight },
      'ledger',
    );
    return 0;
  } catch (err) {
    io.err(`${(err as Error).message}\n`);
    return 1;
  } finally {
    io.signals.off('SIGINT', onSignal);
    io.signals.off('SIGTERM', onSignal);
  }
}
