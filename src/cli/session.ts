import { performance } from 'node:perf_hooks';
import type { ComponentModule } from '../component.js';
import type { Logger } from '../logger.js';
import { buildPipeline, type Pipeline } from '../pipeline/build.js';
import { ComponentRegistry } from '../pipeline/component-registry.js';
import { formatProblem, PipelineConfigError } from '../config/errors.js';
import type { Env } from '../config/interpolate.js';
import { loadPipeline, type PipelineConfig } from '../pipeline/load.js';
import topDefault, { topModule, type TopTable } from '../sinks/top.js';
import { CliError } from './errors.js';
import { HealthServer, StatusServer, type HealthAnswer } from './status-server.js';
import {
  componentStatus,
  ledgerSummary,
  pipelineName,
  type FlushAnswer,
  type PipelineStatus,
} from './status.js';

/**
 * The registry with the `top` sink swapped for one that reports its tables, so the status and the
 * demo can show the top flows; any other registry (tests') is used as it is.
 */
function withTopTables(registry: ComponentRegistry, tables: Map<string, TopTable>): ComponentRegistry {
  const original: ComponentModule = topDefault;
  if (!registry.modules.includes(original)) return registry;
  const hooked = topModule({ onBuild: (id, table) => tables.set(id, table) }) as ComponentModule;
  return new ComponentRegistry(registry.modules.map((m) => (m === original ? hooked : m)));
}

export interface OpenOptions {
  env: Env;
  registry: ComponentRegistry;
  logger: Logger;
}

/**
 * One pipeline file, loaded and built, with what running it from the command line adds: the
 * ready time, the status document and its socket, and the periodic ledger log. Used by `run` and
 * `demo`. Errors a user can fix come out as a CliError whose message is all they need to read.
 */
export class PipelineSession {
  readonly name: string;
  readonly startedAt = new Date();
  /** The `top` sinks of the pipeline by id, once built. */
  readonly topTables = new Map<string, TopTable>();
  private readyAtMs: number | undefined;
  private statusServer: StatusServer | undefined;
  private healthServer: HealthServer | undefined;
  private ledgerTimer: NodeJS.Timeout | undefined;

  private constructor(
    readonly config: PipelineConfig,
    readonly pipeline: Pipeline,
    private readonly logger: Logger,
  ) {
    this.name = pipelineName(config.file);
  }

  /** Loads and builds `file`; nothing runs until start(). */
  static async open(file: string, options: OpenOptions): Promise<PipelineSession> {
    const tables = new Map<string, TopTable>();
    const registry = withTopTables(options.registry, tables);
    let config: PipelineConfig;
    try {
      config = await loadPipeline(file, { env: options.env, registry });
    } catch (err) {
      if (err instanceof PipelineConfigError) {
        throw new CliError('ECONFIG', err.problems.map(formatProblem).join('\n'), { cause: err });
      }
      throw new CliError('ELOAD', (err as Error).message, { cause: err });
    }
    let pipeline: Pipeline;
    try {
      pipeline = await buildPipeline(config, { logger: options.logger });
    } catch (err) {
      throw new CliError('EBUILD', (err as Error).message, { cause: err });
    }
    const session = new PipelineSession(config, pipeline, options.logger);
    for (const [id, table] of tables) session.topTables.set(id, table);
    return session;
  }

  get ready(): boolean {
    return this.readyAtMs !== undefined;
  }

  /** Milliseconds from process start to ready; undefined before. */
  get startupMs(): number | undefined {
    return this.readyAtMs;
  }

  /**
   * Starts every source, then logs 'ready' with the start-up time. The kernel source attaches its
   * programs and schedules its first eviction while it is subscribed, so ready means attached.
   * Rejects with the first component's failure (e.g. no such interface).
   */
  async start(): Promise<void> {
    try {
      await this.pipeline.start();
    } catch (err) {
      throw new CliError('ESTART', (err as Error).message, { cause: err });
    }
    this.readyAtMs = performance.now();
    this.logger.info(
      {
        pipeline: this.name,
        file: this.config.file,
        startup_ms: Math.round(this.readyAtMs),
        sources: this.config.sources.map((s) => s.id),
        status_socket: this.statusServer?.path,
        health_address: this.healthServer?.address,
      },
      'ready',
    );
  }

  /** Drains the pipeline (see Pipeline.stop); resolves when every sink is flushed and closed. */
  stop(): Promise<void> {
    return this.pipeline.stop();
  }

  status(): PipelineStatus {
    const totals = this.pipeline.totals();
    const status: PipelineStatus = {
      pipeline: this.name,
      file: this.config.file,
      pid: process.pid,
      state: this.pipeline.state,
      ready: this.ready,
      startedAt: this.startedAt.toISOString(),
      uptimeMs: Date.now() - this.startedAt.getTime(),
      ledger: ledgerSummary(totals),
      health: this.pipeline.health.snapshot(),
      components: componentStatus(this.config, totals),
    };
    if (this.readyAtMs !== undefined) status.startupMs = Math.round(this.readyAtMs);
    if (this.topTables.size > 0) {
      status.top = Object.fromEntries([...this.topTables].map(([id, table]) => [id, table.snapshot()]));
    }
    return status;
  }

  /** A flush on demand (`rxflow flush`): see Pipeline.flush. */
  flush(): FlushAnswer {
    return { pipeline: this.name, pid: process.pid, sources: this.pipeline.flush() };
  }

  /** Serves status() on a unix socket until close(), and flush() on POST /flush. */
  async serveStatus(path: string): Promise<void> {
    this.statusServer = await StatusServer.listen(
      path,
      () => this.status(),
      () => this.flush(),
    );
  }

  /**
   * The health endpoint's answer to `path`: /livez is 200 while the process answers; /readyz and
   * /health are 200 when the pipeline is running, ready and no component is degraded, else 503 with
   * the state and the degraded components and their reasons.
   */
  healthAnswer(path: string): HealthAnswer | undefined {
    if (path === '/livez') return { code: 200, doc: { status: 'alive', pid: process.pid } };
    if (path !== '/readyz' && path !== '/health' && path !== '/healthz' && path !== '/') return undefined;
    const health = this.pipeline.health.snapshot();
    const state = this.pipeline.state;
    const status = state !== 'running' || !this.ready ? 'not ready' : health.status;
    return {
      code: status === 'healthy' ? 200 : 503,
      doc: { status, pipeline: this.name, state, ready: this.ready, degraded: health.degraded },
    };
  }

  /** Serves the health endpoint on TCP `address` (host:port) until close(). */
  async serveHealth(address: string): Promise<void> {
    this.healthServer = await HealthServer.listen(address, (path) => this.healthAnswer(path));
  }

  get healthAddress(): string | undefined {
    return this.healthServer?.address;
  }

  get statusSocket(): string | undefined {
    return this.statusServer?.path;
  }

  /** Logs the ledger now. */
  logLedger(message = 'ledger'): void {
    this.logger.info({ pipeline: this.name, ...ledgerSummary(this.pipeline.totals()) }, message);
  }

  /** Logs the ledger every `intervalMs` (0: never) until close(). */
  logLedgerEvery(intervalMs: number): void {
    if (intervalMs <= 0) return;
    this.ledgerTimer = setInterval(() => this.logLedger(), intervalMs);
    this.ledgerTimer.unref();
  }

  /** Stops the ledger log and the status socket (removing its file). Safe to call twice. */
  async close(): Promise<void> {
    clearInterval(this.ledgerTimer);
    this.ledgerTimer = undefined;
    const server = this.statusServer;
    this.statusServer = undefined;
    await server?.close();
    const health = this.healthServer;
    this.healthServer = undefined;
    await health?.close();
  }
}
