import { readdirSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import type { HealthSnapshot } from '../health.js';
import type { DropReason, LedgerTotals } from '../ledger.js';
import type { PipelineConfig } from '../pipeline/load.js';
import type { Env } from '../config/interpolate.js';
import { pipelineName } from '../pipeline/name.js';
import type { TopSnapshot } from '../sinks/top.js';
import { CliError } from './errors.js';
import { formatTopFlows, formatTopHeading } from './flows-table.js';
import { formatCount, formatDuration, renderTable } from './table.js';

/**
 * The state of a running pipeline as `rxflow run` serves it on its status socket (JSON over HTTP
 * on a unix socket) and `rxflow status` prints it.
 */
export interface PipelineStatus {
  pipeline: string;
  file: string;
  pid: number;
  /** built, running, stopping or stopped (see Pipeline.state). */
  state: string;
  /** Every source started (programs attached, first eviction scheduled). */
  ready: boolean;
  startedAt: string;
  uptimeMs: number;
  /** From process start to ready; absent before. */
  startupMs?: number;
  ledger: LedgerSummary;
  /** healthy, or the components that said they cannot do their job, and why. */
  health: HealthSnapshot;
  components: ComponentStatus[];
  /** The tables of the pipeline's `top` sinks, by sink id. */
  top?: Record<string, TopSnapshot>;
}

/** The answer to POST /flush (`rxflow flush`): the pipeline, and the sources asked to read the kernel now. */
export interface FlushAnswer {
  pipeline: string;
  pid: number;
  sources: string[];
}

/** The ledger without the per-stage list (see LedgerTotals): the pipeline's account, then each sink's. */
export type LedgerSummary = Omit<LedgerTotals, 'stages'>;

export interface ComponentStatus {
  id: string;
  type: string;
  /** The pipeline section of the component; `stage` for a stage inside one (e.g. `flows.account`). */
  kind: 'source' | 'transform' | 'sink' | 'stage';
  received: number;
  sent: number;
  dropped: Partial<Record<DropReason, number>>;
  droppedTotal: number;
  merged: number;
  inFlight: number;
}

/** The ledger totals without the per-stage list, for logs and the status. */
export function ledgerSummary(totals: LedgerTotals): LedgerSummary {
  return {
    seen: totals.seen,
    merged: totals.merged,
    dropped: totals.dropped,
    droppedTotal: totals.droppedTotal,
    inFlight: totals.inFlight,
    delivered: totals.delivered,
    sinks: totals.sinks,
  };
}

/** The components of a pipeline with their ledger counters, in the ledger's order. */
export function componentStatus(config: PipelineConfig, totals: LedgerTotals): ComponentStatus[] {
  return totals.stages.map((s) => {
    let droppedTotal = 0;
    for (const n of Object.values(s.dropped)) droppedTotal += n;
    return {
      id: s.id,
      type: s.type,
      kind: config.components.get(s.id)?.kind ?? 'stage',
      received: s.received,
      sent: s.sent,
      dropped: s.dropped,
      droppedTotal,
      merged: s.merged ?? 0,
      inFlight: s.inFlight,
    };
  });
}

/** Where status sockets live unless told otherwise: $RXFLOW_RUN_DIR, else /run/rxflow. */
export function statusDir(env: Env): string {
  return env.RXFLOW_RUN_DIR ?? '/run/rxflow';
}

export { pipelineName };

/** The default status socket of a pipeline file: <status dir>/<pipeline name>.sock. */
export function defaultStatusSocket(file: string, env: Env): string {
  return join(statusDir(env), `${pipelineName(file)}.sock`);
}

/**
 * The socket `rxflow status` reads when none is given: the only `*.sock` in the status directory.
 * Several, or none, is an error that says what to do.
 */
export function findStatusSocket(env: Env, command = 'status'): string {
  const dir = statusDir(env);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    names = [];
  }
  const sockets = names
    .filter((n) => n.endsWith('.sock'))
    .map((n) => join(dir, n))
    .filter((p) => {
      try {
        return statSync(p).isSocket();
      } catch {
        return false;
      }
    })
    .sort();
  if (sockets.length === 1) return sockets[0]!;
  if (sockets.length === 0) {
    throw new CliError(
      'ENOSOCKET',
      `${command}: no running pipeline has a socket in ${dir}; start one with 'rxflow run FILE', or pass --socket PATH`,
    );
  }
  throw new CliError(
    'EMANYSOCKETS',
    `${command}: ${sockets.length} pipelines run (${sockets.join(', ')}); pick one with --socket PATH`,
  );
}

/** Asks the pipeline behind `socket` for its status. */
export function readStatus(socket: string, timeoutMs = 5000): Promise<PipelineStatus> {
  return askPipeline<PipelineStatus>(socket, 'GET', '/status', 'status', timeoutMs);
}

/** Asks the pipeline behind `socket` to flush on demand (POST /flush). */
export function requestFlush(socket: string, timeoutMs = 5000): Promise<FlushAnswer> {
  return askPipeline<FlushAnswer>(socket, 'POST', '/flush', 'flush', timeoutMs);
}

/** One request to a status socket; the JSON answer, or a CliError whose message starts with `command socket:`. */
function askPipeline<T>(
  socket: string,
  method: 'GET' | 'POST',
  path: string,
  command: string,
  timeoutMs: number,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const fail = (why: string, cause?: unknown) =>
      reject(
        new CliError('ESTATUS', `${command} ${socket}: ${why}`, cause === undefined ? undefined : { cause }),
      );
    const req = request({ socketPath: socket, path, method, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => {
        if (res.statusCode !== 200) {
          fail(`the pipeline answered ${res.statusCode}: ${errorText(body)}`);
          return;
        }
        try {
          resolve(JSON.parse(body) as T);
        } catch (err) {
          fail('the answer is not JSON; is this an rxflow status socket?', err);
        }
      });
      res.on('error', (err) => fail(err.message, err));
    });
    req.on('timeout', () => {
      req.destroy();
      fail(`no answer within ${timeoutMs} ms; the pipeline may be stuck`);
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        fail(`no pipeline serves this socket (${err.code}); is 'rxflow run' running?`, err);
      } else if (err.code === 'EACCES') {
        fail('permission denied; run as the user that runs the pipeline (root)', err);
      } else {
        fail(err.message, err);
      }
    });
    req.end();
  });
}

/** The `error` of a JSON error answer, else the body as it came. */
function errorText(body: string): string {
  try {
    const doc = JSON.parse(body) as { error?: unknown };
    if (typeof doc.error === 'string') return doc.error;
  } catch {
    // Not JSON: shown as it is.
  }
  return body.trim();
}

/** `reason n, reason n` in reason order; empty when nothing was dropped. */
export function formatReasons(dropped: Partial<Record<DropReason, number>>): string {
  return Object.entries(dropped)
    .filter(([, n]) => n !== 0)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([reason, n]) => `${reason} ${formatCount(n)}`)
    .join(', ');
}

function droppedText(dropped: Partial<Record<DropReason, number>>): string {
  const reasons = formatReasons(dropped);
  return reasons === '' ? '' : ` (${reasons})`;
}

/**
 * The loss ledger: one line for the pipeline up to the sinks (seen, merged, dropped by reason, in
 * flight, delivered to the sinks), then one line per sink (handed, exported, dropped, in flight).
 */
export function formatLedger(ledger: LedgerSummary): string[] {
  const lines = [
    `seen ${formatCount(ledger.seen)}  merged ${formatCount(ledger.merged)}  ` +
      `dropped ${formatCount(ledger.droppedTotal)}${droppedText(ledger.dropped)}  ` +
      `in flight ${formatCount(ledger.inFlight)}  delivered ${formatCount(ledger.delivered)}`,
  ];
  const width = Math.max(0, ...ledger.sinks.map((k) => k.id.length));
  for (const k of ledger.sinks) {
    lines.push(
      `sink ${k.id.padEnd(width)}  handed ${formatCount(k.handed)}  exported ${formatCount(k.exported)}  ` +
        `dropped ${formatCount(k.droppedTotal)}${droppedText(k.dropped)}  in flight ${formatCount(k.inFlight)}`,
    );
  }
  return lines;
}

/** `healthy`, or `degraded` and one line per degraded component with its reason. */
export function formatHealth(health: HealthSnapshot): string[] {
  if (health.status === 'healthy') return ['healthy'];
  return [
    `degraded (${health.degraded.length} component${health.degraded.length === 1 ? '' : 's'})`,
    ...health.degraded.map((d) => `${d.component} (${d.type}) since ${d.since}: ${d.reason}`),
  ];
}

/** The components with their counters, one row each. */
export function componentTable(components: readonly ComponentStatus[]): string[] {
  return renderTable(
    [
      { title: 'COMPONENT' },
      { title: 'TYPE' },
      { title: 'KIND' },
      { title: 'RECEIVED', align: 'right' },
      { title: 'SENT', align: 'right' },
      { title: 'DROPPED', align: 'right' },
      { title: 'MERGED', align: 'right' },
      { title: 'IN FLIGHT', align: 'right' },
    ],
    components.map((c) => [
      c.id,
      c.type,
      c.kind,
      formatCount(c.received),
      formatCount(c.sent),
      formatCount(c.droppedTotal),
      formatCount(c.merged),
      formatCount(c.inFlight),
    ]),
  );
}

/** The status as `rxflow status` prints it: a header, the ledger, and a table of components. */
export function formatStatus(status: PipelineStatus): string {
  const lines = [
    `pipeline  ${status.pipeline} (${status.file}), pid ${status.pid}`,
    `state     ${status.state}${status.ready ? ', ready' : ''}, up ${formatDuration(status.uptimeMs)}` +
      (status.startupMs === undefined ? '' : `, started in ${Math.round(status.startupMs)} ms`),
  ];
  const [pipelineLine, ...sinkLines] = formatLedger(status.ledger);
  lines.push(`ledger    ${pipelineLine}`, ...sinkLines.map((l) => `          ${l}`));
  const [healthLine, ...degradedLines] = formatHealth(status.health ?? { status: 'healthy', degraded: [] });
  lines.push(`health    ${healthLine}`, ...degradedLines.map((l) => `          ${l}`), '');
  lines.push(...componentTable(status.components));
  const drops = status.components.filter((c) => c.droppedTotal > 0);
  if (drops.length > 0) {
    lines.push('', 'drops by reason:');
    for (const c of drops) lines.push(`  ${c.id}: ${formatReasons(c.dropped)}`);
  }
  for (const [id, snapshot] of Object.entries(status.top ?? {})) {
    lines.push('', formatTopHeading(id, snapshot), ...formatTopFlows(snapshot.flows));
  }
  return `${lines.join('\n')}\n`;
}
