import { asyncScheduler, type SchedulerLike } from 'rxjs';
import { silentLogger, type Logger } from '../logger.js';
import { ClockTranslator } from './clock.js';

/** What the replicator and the watch of one node share: who the node is and how it keeps time. */
export interface NodeRuntimeOptions {
  /** This node's id, written into every value: it tells the node's own writes from others'. */
  nodeId: string;
  /** A copy last seen more than this before another is outdated (the sync's tolerance). Default 1000. */
  toleranceMs?: number;
  /** Pause after a failed write, or a failed watch, before trying again. Default 1000. */
  retryMs?: number;
  /** Timers run on it, so tests drive them in virtual time. */
  scheduler?: SchedulerLike;
  logger?: Logger;
  clock?: ClockTranslator;
}

export type NodeRuntime = Required<NodeRuntimeOptions>;

export function nodeRuntime(options: NodeRuntimeOptions): NodeRuntime {
  return {
    nodeId: options.nodeId,
    toleranceMs: options.toleranceMs ?? 1000,
    retryMs: options.retryMs ?? 1000,
    scheduler: options.scheduler ?? asyncScheduler,
    logger: options.logger ?? silentLogger(),
    clock: options.clock ?? new ClockTranslator(),
  };
}
