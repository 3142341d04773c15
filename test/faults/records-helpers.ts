/**
 * What the records-* fault tests share: the hostile records (one per kind of invalid value) and
 * good ones beside them, a pipeline run through the CLI with its log captured, and a Prometheus
 * scrape read and checked with promtool.
 */
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { pino } from 'pino';
import type { CliIo } from '../../src/cli/io.js';
import { runCli } from '../../src/cli/program.js';
import type { Logger } from '../../src/logger.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import type { FlowRecord } from '../../src/records/flow.js';
import fileSinkModule from '../../src/sinks/file.js';
import otelMetricsModule from '../../src/sinks/otel_metrics.js';
import fileReplayModule from '../../src/sources/file_replay.js';
import kafkaConsumerModule from '../../src/sources/kafka_consumer.js';
import { variedFlowRecord } from '../fixtures/records.js';

export const T0 = 1_700_000_000_000;

/** Good record i: flowStartMilliseconds - T0 is i, so records read back can be put in order. */
export const goodRecord = (i: number): FlowRecord => variedFlowRecord(i);

export const byStart = (all: FlowRecord[]): FlowRecord[] =>
  [...all].sort((a, b) => a.flowStartMilliseconds - b.flowStartMilliseconds);

/** One record per kind of invalid value, with the reason the source must give for it. */
export function hostileRecords(): { record: Record<string, unknown>; reason: string }[] {
  const base = (i: number): Record<string, unknown> => ({ ...goodRecord(1000 + i) });
  const v4 = (i: number): Record<string, unknown> => ({ ...goodRecord(1000 + i * 5) });
  const kinds: [Record<string, unknown>, string][] = [
    [{ ...v4(0), sourceIPv4Address: 'not-an-ip' }, 'sourceIPv4Address is not an IPv4 address: "not-an-ip"'],
    [{ ...v4(1), octetDeltaCount: -5 }, 'octetDeltaCount is not an integer from 0 to 2^53-1: -5'],
    [{ ...v4(2), octetDeltaCount: 1e308 }, 'octetDeltaCount is not an integer from 0 to 2^53-1: 1e+308'],
    [{ ...v4(3), packetDeltaCount: 2.5 }, 'packetDeltaCount is not an integer from 0 to 2^53-1: 2.5'],
    [
      { ...v4(4), sourceTransportPort: 70000 },
      'sourceTransportPort is not an integer from 0 to 65535: 70000',
    ],
    [{ ...v4(5), protocolIdentifier: 300 }, 'protocolIdentifier is not an integer from 0 to 255: 300'],
    [
      { ...v4(6), flowStartMilliseconds: 1e300, flowEndMilliseconds: 1e300 },
      'flowStartMilliseconds is not a time in milliseconds from 2000-01-01 to a day from now: 1e+300',
    ],
    [
      { ...v4(7), flowStartMilliseconds: T0 + 5000, flowEndMilliseconds: T0 },
      'flowStartMilliseconds is after flowEndMilliseconds',
    ],
    [{ ...v4(8), interfaceName: 'eth0\u0000x' }, 'interfaceName holds a control character: "eth0\\u0000x"'],
    [
      { ...v4(9), interfaceName: 'eth0"} 1e308\n# TYPE' },
      'interfaceName holds a control character: "eth0\\"} 1e308\\n# TYPE"',
    ],
    [{ ...base(50), ipVersion: '4' }, 'ipVersion is not 0, 4 or 6'],
  ];
  return kinds.map(([record, reason]) => ({ record, reason }));
}

export interface Run {
  code: Promise<number>;
  err: string[];
  logs: Record<string, unknown>[];
  stop(): void;
}

/** `rxflow run <yaml>` in this process, its log lines captured as objects. */
export function runPipeline(yaml: string): Run {
  const logs: Record<string, unknown>[] = [];
  const logger: Logger = pino(
    { level: 'info' },
    { write: (s: string) => void logs.push(JSON.parse(s) as Record<string, unknown>) },
  );
  const signals = new EventEmitter();
  const err: string[] = [];
  const io: CliIo = {
    out: () => undefined,
    err: (text) => void err.push(text),
    env: {},
    registry: new ComponentRegistry([
      kafkaConsumerModule,
      fileReplayModule,
      fileSinkModule,
      otelMetricsModule,
    ]),
    signals,
    exit: () => undefined,
    logger,
  };
  const code = runCli(['run', yaml, '--no-status-socket'], io);
  return { code, err, logs, stop: () => void signals.emit('SIGTERM', 'SIGTERM') };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export async function waitFor(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function promtool(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
    child.stdin.end(text);
  });
}

/** Samples of a Prometheus text exposition, `name{a=x,b=y}` (labels sorted) -> value, as text. */
export function samples(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const labels = [...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
      .map(([, k, v]) => `${k}=${v}`)
      .sort()
      .join(',');
    out.set(`${m[1]}{${labels}}`, m[3]!);
  }
  return out;
}

/** Every sample value is a finite number. */
export function nonFinite(all: Map<string, string>): [string, string][] {
  return [...all].filter(([, v]) => !Number.isFinite(Number(v)));
}
