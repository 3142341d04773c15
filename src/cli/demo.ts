import { join } from 'node:path';
import type { DropReason } from '../ledger.js';
import type { Logger } from '../logger.js';
import { BackgroundTraffic } from '../devtools/background-traffic.js';
import {
  DEMO_NETWORK,
  DEMO_OWNER_ENV,
  DemoLock,
  createDemoNetwork,
  removeDemoNetwork,
  sweepDemo,
  type SweepResult,
} from '../devtools/demo-network.js';
import { KafkaMockCluster } from '../devtools/kafka-mock.js';
import { packageRoot } from '../paths.js';
import { defaultRegistry } from '../pipeline/registry.js';
import type { TopSnapshot } from '../sinks/top.js';
import type { CliIo } from './io.js';
import { createCliLogger } from './log.js';
import { LogTail } from './log-tail.js';
import { onStopSignals } from './run.js';
import { PipelineSession } from './session.js';
import { formatTopFlows, formatTopHeading } from './flows-table.js';
import { componentTable, defaultStatusSocket, formatReasons, type PipelineStatus } from './status.js';
import { formatBytes, formatCount, formatDuration } from './table.js';

export interface DemoOptions {
  logLevel: string;
  /** Stop after this many seconds; run until a signal when absent. */
  durationS?: number;
  /** Seconds between two tables; 1 on a terminal, 3 otherwise. */
  refreshS?: number;
}

const TOPIC = 'flows';
const DEMO_LOCK_FILE = '/run/rxflow/demo.pid';
const TOP_SINK = 'top';

// Alternate screen, cursor hidden; home, clear to end of line / of screen; back.
const ENTER_SCREEN = '\x1b[?1049h\x1b[?25l';
const LEAVE_SCREEN = '\x1b[?25h\x1b[?1049l';
const HOME = '\x1b[H';
const CLEAR_LINE = '\x1b[K';
const CLEAR_BELOW = '\x1b[J';

/** What the demo shows in a frame. */
export interface DemoView {
  uptimeMs: number;
  startupMs: number | undefined;
  kafkaBootstrap: string;
  status: ReturnType<PipelineSession['status']>;
  top: TopSnapshot | undefined;
  logs: readonly string[];
}

/** An address without its prefix length. */
function bare(cidr: string): string {
  return cidr.split('/')[0]!;
}

/** The demo's loss line: the pipeline's account with the kafka sink's drops and holdings added. */
function kafkaLedger(s: PipelineStatus): {
  written: number;
  dropped: Partial<Record<DropReason, number>>;
  droppedTotal: number;
  inFlight: number;
} {
  const dropped = { ...s.ledger.dropped };
  let written = 0;
  let droppedTotal = s.ledger.droppedTotal;
  let inFlight = s.ledger.inFlight;
  for (const k of s.ledger.sinks.filter((k) => k.type === 'kafka')) {
    written += k.exported;
    droppedTotal += k.droppedTotal;
    inFlight += k.inFlight;
    for (const [reason, n] of Object.entries(k.dropped) as [DropReason, number][]) {
      dropped[reason] = (dropped[reason] ?? 0) + n;
    }
  }
  return { written, dropped, droppedTotal, inFlight };
}

/** The lines of one frame of the live table. */
export function demoFrame(view: DemoView, live: boolean): string[] {
  const n = DEMO_NETWORK;
  const s = view.status;
  const k = kafkaLedger(s);
  const written = k.written;
  const lines = [
    `rxflow demo, up ${formatDuration(view.uptimeMs)}${live ? '  (Ctrl-C stops it and removes everything)' : ''}`,
    `network   ${n.client} ${bare(n.clientIPv4)} ${bare(n.clientIPv6)}  <->  ${n.server} ${bare(n.serverIPv4)} ${bare(n.serverIPv6)}`,
    `pipeline  ${s.file}: flows counted on ${n.serverIf} in ${n.server}` +
      (view.startupMs === undefined ? '' : `, ready in ${view.startupMs} ms`),
    `kafka     ${formatCount(written)} records written to topic ${TOPIC} at ${view.kafkaBootstrap}`,
    '',
  ];
  if (view.top === undefined) {
    lines.push('top flows: the pipeline has no top sink');
  } else {
    lines.push(formatTopHeading(TOP_SINK, view.top));
    lines.push(...formatTopFlows(view.top.flows));
    if (view.top.flows.length === 0) lines.push('(no flows yet: the kernel map is read every second)');
  }
  const l = s.ledger;
  const reasons = formatReasons(k.dropped);
  lines.push(
    '',
    `loss ledger  seen ${formatCount(l.seen)}  written to kafka ${formatCount(written)}  ` +
      `dropped ${formatCount(k.droppedTotal)}${reasons === '' ? '' : ` (${reasons})`}  ` +
      `merged ${formatCount(l.merged)}  in flight ${formatCount(k.inFlight)}`,
    ...componentTable(s.components),
  );
  if (view.logs.length > 0) lines.push('', ...view.logs.map((line) => `log: ${line}`));
  return lines;
}

function sweepText(r: SweepResult): string {
  const parts = [
    r.netns.length > 0 ? `namespaces ${[...r.netns].sort().join(', ')}` : '',
    r.links.length > 0 ? `links ${r.links.join(', ')}` : '',
    r.pins.length > 0 ? `pins ${r.pins.join(', ')}` : '',
    r.processes.length > 0
      ? `${r.processes.length} ${r.processes.length === 1 ? 'process' : 'processes'}`
      : '',
  ].filter((p) => p !== '');
  return parts.join(', ');
}

/**
 * `rxflow demo`: on a fresh machine, as root, shows the agent at work with nothing to set up.
 * Makes the demo network (src/devtools/demo-network.ts), starts background traffic, an embedded
 * Kafka broker (librdkafka's mock cluster) and pipelines/demo.yaml, and redraws a table of the top
 * flows and the loss ledger until Ctrl-C, SIGTERM or --duration-s. Then it stops the traffic,
 * drains the pipeline (last kernel eviction, Kafka flush), stops Kafka, removes the network and the
 * pins, and prints a summary. A second signal removes everything at once and exits.
 */
export async function runDemo(options: DemoOptions, io: CliIo): Promise<number> {
  const live = io.isTTY === true;
  const tail = new LogTail(5);
  const logger: Logger =
    io.logger ?? (live ? createCliLogger(options.logLevel, tail) : createCliLogger(options.logLevel));
  const say = (text: string): void => io.out(`${text}\n`);
  if (process.getuid?.() !== 0) {
    io.err('demo: needs root for BPF, TC and network namespaces; run it as root (sudo npm run demo)\n');
    return 1;
  }

  let requestStop!: (why: string) => void;
  const stopRequested = new Promise<string>((resolve) => (requestStop = resolve));
  let lock: DemoLock | undefined;
  let kafka: KafkaMockCluster | undefined;
  let traffic: BackgroundTraffic | undefined;
  let session: PipelineSession | undefined;
  let networkMade = false;
  let screen = false;
  const leaveScreen = (): void => {
    if (screen) io.out(LEAVE_SCREEN);
    screen = false;
  };
  // A second signal: no draining, but nothing left behind either.
  const removeAtOnce = (): void => {
    leaveScreen();
    kafka?.kill();
    try {
      if (networkMade) removeDemoNetwork();
      sweepDemo();
    } catch (err) {
      io.err(`demo: cleanup: ${(err as Error).message}\n`);
    }
    lock?.release();
  };
  const signals = onStopSignals(io, logger, (signal) => requestStop(signal), removeAtOnce);
  const stopping = (): boolean => signals.received > 0;

  const startedAt = Date.now();
  let code = 0;
  let failure: string | undefined;
  try {
    // Fixed, not under $RXFLOW_RUN_DIR: the namespaces it guards are the host's, whatever the run dir.
    lock = DemoLock.acquire(DEMO_LOCK_FILE);
    const swept = sweepDemo();
    const leftovers = sweepText(swept);
    if (leftovers !== '') say(`demo: removed what an earlier demo left: ${leftovers}`);
    if (stopping()) return 0;

    const network = await createDemoNetwork();
    networkMade = true;
    say(
      `demo: network ${DEMO_NETWORK.client} <-> ${DEMO_NETWORK.server} over veth ${DEMO_NETWORK.clientIf}/${DEMO_NETWORK.serverIf}`,
    );
    if (stopping()) return 0;

    kafka = await KafkaMockCluster.start({ detached: true, env: { [DEMO_OWNER_ENV]: String(process.pid) } });
    await kafka.createTopic(TOPIC, 3);
    say(`demo: kafka (librdkafka mock cluster) on ${kafka.bootstrap}, topic ${TOPIC}`);
    if (stopping()) return 0;

    traffic = BackgroundTraffic.start(
      {
        client: network.client,
        server: network.server,
        serverIPv4: network.serverEnd.ipv4!,
        serverIPv6: network.serverEnd.ipv6!,
      },
      logger,
    );
    say('demo: traffic started: udp and tcp over ipv4 and ipv6, pings');

    const file = join(packageRoot(), 'pipelines', 'demo.yaml');
    session = await PipelineSession.open(file, {
      env: {
        ...io.env,
        RXFLOW_DEMO_NETNS: DEMO_NETWORK.server,
        RXFLOW_DEMO_INTERFACE: DEMO_NETWORK.serverIf,
        KAFKA_BOOTSTRAP: kafka.bootstrap,
      },
      registry: io.registry ?? defaultRegistry(),
      logger,
    });
    try {
      await session.serveStatus(defaultStatusSocket(file, io.env));
    } catch (err) {
      logger.warn({ err }, 'status socket not served; rxflow status will not reach the demo');
    }
    await session.start();
    const pipelineDone = session.pipeline.done.then(
      () => requestStop('the pipeline ended'),
      (err: unknown) => {
        failure = (err as Error).message;
        requestStop('the pipeline failed');
      },
    );
    say(
      `demo: pipeline ${file} ready in ${session.startupMs === undefined ? '?' : Math.round(session.startupMs)} ms` +
        (session.statusSocket === undefined ? '' : `; 'rxflow status' reads ${session.statusSocket}`),
    );

    const running = session;
    const kafkaBootstrap = kafka.bootstrap;
    const view = (): DemoView => ({
      uptimeMs: Date.now() - startedAt,
      startupMs: running.startupMs === undefined ? undefined : Math.round(running.startupMs),
      kafkaBootstrap,
      status: running.status(),
      top: running.topTables.get(TOP_SINK)?.snapshot(),
      logs: tail.lines(),
    });
    const draw = (): void => {
      const frame = demoFrame(view(), live);
      if (live) {
        // A terminal that reports no size (0) gets lines as they are.
        const width = io.columns?.() || Infinity;
        io.out(HOME + frame.map((line) => line.slice(0, width) + CLEAR_LINE).join('\n') + '\n' + CLEAR_BELOW);
      } else {
        io.out(`${frame.join('\n')}\n\n`);
      }
    };
    if (live) {
      io.out(ENTER_SCREEN);
      screen = true;
    }
    const refreshMs = (options.refreshS ?? (live ? 1 : 3)) * 1000;
    const ticker = setInterval(draw, refreshMs);
    const deadline =
      options.durationS === undefined
        ? undefined
        : setTimeout(() => requestStop(`--duration-s ${options.durationS}`), options.durationS * 1000);
    if (live) draw();
    const why = await stopRequested;
    clearInterval(ticker);
    clearTimeout(deadline);
    leaveScreen();
    say(`demo: stopping (${why}): traffic, then draining the pipeline`);
    await traffic.stop();
    await running.stop().catch(() => undefined);
    await pipelineDone;
    await running.close();
    say(finalSummary(view(), Date.now() - startedAt));
    if (failure !== undefined) {
      io.err(`demo: ${failure}\n`);
      code = 1;
    }
    return code;
  } catch (err) {
    leaveScreen();
    io.err(`${(err as Error).message}\n`);
    return 1;
  } finally {
    leaveScreen();
    await traffic?.stop();
    if (session !== undefined) {
      await session.stop().catch(() => undefined);
      await session.close();
    }
    await kafka?.stop();
    const removed: string[] = [];
    try {
      if (networkMade) {
        removeDemoNetwork();
        removed.push(
          `namespaces ${DEMO_NETWORK.client}, ${DEMO_NETWORK.server} with veth ${DEMO_NETWORK.clientIf}/${DEMO_NETWORK.serverIf}`,
        );
      }
      const rest = sweepDemo();
      if (rest.pins.length > 0) removed.push(`pins ${rest.pins.join(', ')}`);
      if (kafka !== undefined) removed.push(`kafka mock (pid ${kafka.pid})`);
      if (removed.length > 0) say(`demo: removed ${removed.join('; ')}`);
    } catch (err) {
      io.err(`demo: cleanup failed: ${(err as Error).message}; run the demo again to retry\n`);
    }
    lock?.release();
    signals.detach();
    for (const line of tail.lines()) io.err(`log: ${line}\n`);
  }
}

/** What the demo prints when it is done: totals, the ledger and the last top table. */
export function finalSummary(view: DemoView, elapsedMs: number): string {
  const s = view.status;
  const k = kafkaLedger(s);
  const written = k.written;
  const reasons = formatReasons(k.dropped);
  const lines = [
    '',
    `rxflow demo ran ${formatDuration(elapsedMs)}; the pipeline drained (kernel map read a last time, sinks flushed)`,
    `counted   ${formatCount(view.top?.totalRecords ?? s.ledger.seen)} flow records: ` +
      `${formatCount(view.top?.totalPackets ?? 0)} packets, ${formatBytes(view.top?.totalBytes ?? 0)}`,
    `kafka     ${formatCount(written)} records written to topic ${TOPIC}`,
    `ledger    seen ${formatCount(s.ledger.seen)}  written to kafka ${formatCount(written)}  ` +
      `dropped ${formatCount(k.droppedTotal)}${reasons === '' ? '' : ` (${reasons})`}  in flight ${formatCount(k.inFlight)}`,
  ];
  if (view.top !== undefined) {
    lines.push('', formatTopHeading(TOP_SINK, view.top), ...formatTopFlows(view.top.flows));
  }
  return lines.join('\n');
}
