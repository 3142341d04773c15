import { writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanup, makeTempDir } from '../fixtures/cleanup.js';
import { variedFlowRecord } from '../fixtures/records.js';
import { Cli, assertBuilt } from '../kernel/cli-helpers.js';
import { isReady, lastLog, readRecords, waitFor } from './lifecycle-helpers.js';

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

async function get(url: string): Promise<{ code: number; doc: Record<string, unknown> }> {
  const res = await fetch(url);
  return { code: res.status, doc: (await res.json()) as Record<string, unknown> };
}

describe('sink health, the health endpoint, a metrics port that cannot be bound, the ledger per sink', () => {
  let dir: string;
  let input: string;
  const RECORDS = 25;
  const env = () => ({ RXFLOW_RUN_DIR: dir, RXFLOW_LOG_LEVEL: 'info' });
  const closers: (() => Promise<void>)[] = [];

  beforeAll(() => {
    assertBuilt();
    dir = makeTempDir('lcyhl');
    input = join(dir, 'in.jsonl');
    writeFileSync(
      input,
      Array.from({ length: RECORDS }, (_, i) => `${JSON.stringify(variedFlowRecord(i))}\n`).join(''),
    );
  });
  afterAll(async () => {
    for (const close of closers) await close();
    await cleanup.dispose();
  });

  function pipeline(name: string, body: string): string {
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, body);
    return file;
  }

  it('fails the start, exit 1, when the metrics port is taken', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => blocker.close(() => r())));
    const port = (blocker.address() as net.AddressInfo).port;
    const file = pipeline(
      'lcybind',
      `sources:
  replay: {type: file_replay, paths: [${input}], rate_limit_records_per_s: 5}
sinks:
  metrics: {type: otel_metrics, inputs: [replay], prometheus_host: 127.0.0.1, prometheus_port: ${port}}
`,
    );
    const cli = new Cli(['run', file], env());
    // On a bound failure it exits; while it runs (the bug) the replay takes 5 s, then it exits 0.
    expect(await cli.exited).toEqual({ code: 1, signal: null });
    expect(cli.stderr.split('\n')).toContain(
      `run sinks.metrics (otel_metrics): otel_metrics sink: cannot listen on 127.0.0.1:${port}: ` +
        `listen EADDRINUSE: address already in use 127.0.0.1:${port}; ` +
        'pick another prometheus_port or prometheus_host, or stop what holds it',
    );
    expect(isReady(cli)).toBe(false);
  });

  it('shows a sink that cannot push as degraded in the status, the health endpoint and the log, and healthy again once it can', async () => {
    const collectorPort = await freePort();
    const url = `http://127.0.0.1:${collectorPort}/v1/metrics`;
    const file = pipeline(
      'lcyhealth',
      `sources:
  replay: {type: file_replay, paths: [${input}], rate_limit_records_per_s: 1}
sinks:
  out: {type: file, inputs: [replay], path: ${join(dir, 'lcyhealth.jsonl')}}
  metrics:
    type: otel_metrics
    inputs: [replay]
    prometheus_port: 0
    otlp_endpoint: ${url}
    otlp_interval_ms: 200
    otlp_timeout_ms: 1000
`,
    );
    const socket = join(dir, 'lcyhealth.sock');
    const cli = new Cli(['run', file, '--health-address', '127.0.0.1:0', '--status-socket', socket], env());
    await cli.until(isReady, "the 'ready' log");
    const address = lastLog(cli, 'ready')!.health_address as string;
    expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
    const base = `http://${address}`;
    expect(await get(`${base}/livez`)).toEqual({ code: 200, doc: { status: 'alive', pid: cli.pid } });

    // Nothing listens on the collector's port: every push fails.
    let answer = await get(`${base}/readyz`);
    const deadline = Date.now() + 20_000;
    while (answer.code !== 503 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      answer = await get(`${base}/readyz`);
    }
    const reason = `otel_metrics sink: metrics push to ${url} failed: connect ECONNREFUSED 127.0.0.1:${collectorPort}; check that the collector runs and otlp_endpoint is right`;
    expect(answer).toEqual({
      code: 503,
      doc: {
        status: 'degraded',
        pipeline: 'lcyhealth',
        state: 'running',
        ready: true,
        degraded: [
          { component: 'metrics', type: 'otel_metrics', reason, since: expect.any(String) as string },
        ],
      },
    });
    const since = (answer.doc.degraded as { since: string }[])[0]!.since;
    expect(cli.logs().filter((l) => l.msg === 'component degraded')).toEqual([
      expect.objectContaining({
        level: 40,
        component: 'metrics',
        type: 'otel_metrics',
        health: 'degraded',
        reason,
      }),
    ]);
    const printed = new Cli(['status', '--socket', socket], env());
    expect(await printed.exited).toEqual({ code: 0, signal: null });
    const lines = printed.stdout.split('\n');
    const at = lines.findIndex((l) => l.startsWith('health '));
    expect(lines.slice(at, at + 2)).toEqual([
      'health    degraded (1 component)',
      `          metrics (otel_metrics) since ${since}: ${reason}`,
    ]);

    // The collector comes up: the next push succeeds, and the sink is healthy again.
    const posts: string[] = [];
    const collector = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        posts.push(req.url ?? '');
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
    await new Promise<void>((r) => collector.listen(collectorPort, '127.0.0.1', r));
    closers.push(() => new Promise((r) => collector.close(() => r())));
    await waitFor(() => cli.logs().some((l) => l.msg === 'component healthy again'), 'the recovery log');
    expect(posts.length).toBeGreaterThan(0);
    expect(posts.every((p) => p === '/v1/metrics')).toBe(true);
    expect(await get(`${base}/readyz`)).toEqual({
      code: 200,
      doc: { status: 'healthy', pipeline: 'lcyhealth', state: 'running', ready: true, degraded: [] },
    });
    expect(lastLog(cli, 'component healthy again')).toMatchObject({
      level: 30,
      component: 'metrics',
      health: 'healthy',
      was: reason,
    });

    cli.signal('SIGTERM');
    expect(await cli.exited).toEqual({ code: 0, signal: null });
  });

  it('with two sinks, counts each sink on its own: handed and exported per sink equal the lines each file holds', async () => {
    const a = join(dir, 'lcytwo-a.jsonl');
    const b = join(dir, 'lcytwo-b.jsonl');
    const file = pipeline(
      'lcytwo',
      `sources:
  replay: {type: file_replay, paths: [${input}], batch_size: 10}
sinks:
  a: {type: file, inputs: [replay], path: ${a}}
  b: {type: file, inputs: [replay], path: ${b}}
`,
    );
    const cli = new Cli(['run', file, '--no-status-socket'], env());
    expect(await cli.exited).toEqual({ code: 0, signal: null });
    const inA = readRecords(a).length;
    const inB = readRecords(b).length;
    expect([inA, inB]).toEqual([RECORDS, RECORDS]);
    const ledger = lastLog(cli, 'ledger')!;
    expect(ledger).toMatchObject({
      seen: RECORDS,
      delivered: RECORDS,
      droppedTotal: 0,
      inFlight: 0,
      sinks: [
        { id: 'a', type: 'file', handed: RECORDS, exported: inA, droppedTotal: 0, inFlight: 0 },
        { id: 'b', type: 'file', handed: RECORDS, exported: inB, droppedTotal: 0, inFlight: 0 },
      ],
    });
    // No single total that adds both sinks' exports up.
    expect(ledger).not.toHaveProperty('exported');
    expect(lastLog(cli, 'pipeline stopped')).toMatchObject({
      seen: RECORDS,
      delivered: RECORDS,
      sinks: {
        a: { handed: RECORDS, exported: inA, dropped: 0 },
        b: { handed: RECORDS, exported: inB, dropped: 0 },
      },
    });
  });
});
