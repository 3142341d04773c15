import { EventEmitter } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Observable } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../../src/cli/io.js';
import { createCliLogger } from '../../../src/cli/log.js';
import { runCli } from '../../../src/cli/program.js';
import { onStopSignals } from '../../../src/cli/run.js';
import type { PipelineStatus } from '../../../src/cli/status.js';
import type { SourceModule } from '../../../src/component.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch } from '../../../src/records/flow.js';
import top from '../../../src/sinks/top.js';
import { collectModule, fixedBatch, hold, until, type CollectStore } from '../pipeline/components.js';

const dir = mkdtempSync(join(tmpdir(), 'rxflow-run-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** Emits one batch of 3 when subscribed and stays open until the pipeline drains. */
function openSource(onSubscribe: () => void): SourceModule<Record<string, never>> {
  return {
    type: 'open',
    kind: 'source',
    description: 'emits one batch and stays open',
    schema: { type: 'object', additionalProperties: false, properties: {} },
    example: {},
    build: (_config, context) =>
      new Observable<FlowBatch>((subscriber) => {
        const batch = fixedBatch(0, 3);
        context.counters.addReceived(batch.length);
        context.counters.addSent(batch.length);
        subscriber.next(batch);
        onSubscribe();
      }),
  };
}

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

function harness(env: Record<string, string> = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const logs: LogLine[] = [];
  const exits: number[] = [];
  const store: CollectStore = new Map();
  const signals = new EventEmitter();
  let subscribed = false;
  const io: CliIo = {
    out: (s) => void out.push(s),
    err: (s) => void err.push(s),
    env: { RXFLOW_RUN_DIR: join(dir, 'run'), ...env },
    registry: new ComponentRegistry([openSource(() => (subscribed = true)), hold, collectModule(store), top]),
    signals,
    exit: (code) => void exits.push(code),
    logger: createCliLogger('info', { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) }),
  };
  return {
    io,
    logs,
    exits,
    store,
    signals,
    subscribed: () => subscribed,
    text: () => ({ out: out.join(''), err: err.join('') }),
  };
}

const PIPELINE = `sources:
  flows: {type: open}
transforms:
  acct: {type: hold, inputs: [flows]}
sinks:
  out: {type: collect, inputs: [acct]}
  top: {type: top, inputs: [flows], window_ms: 1h}
`;

describe('rxflow run: ready, status socket and ledger', () => {
  it("logs 'ready', serves the state for rxflow status while it runs, and removes the socket when drained", async () => {
    const file = write('edge.yaml', PIPELINE);
    const socket = join(dir, 'edge-test.sock');
    const h = harness();
    const code = runCli(['run', file, '--status-socket', socket], h.io);
    await until(h.subscribed, 'the source to start');
    await until(() => h.logs.some((l) => l.msg === 'ready'), "the 'ready' log");
    const ready = h.logs.find((l) => l.msg === 'ready')!;
    expect(ready).toMatchObject({ pipeline: 'edge', file, sources: ['flows'], status_socket: socket });
    expect(ready.startup_ms).toBeGreaterThan(0);

    const s = harness();
    expect(await runCli(['status', '--socket', socket, '--json'], s.io)).toBe(0);
    const status = JSON.parse(s.text().out) as PipelineStatus;
    expect(status).toMatchObject({ pipeline: 'edge', file, pid: process.pid, state: 'running', ready: true });
    // flows reaches the sinks on two branches: top directly, out through acct (which holds 3).
    expect(status.ledger).toEqual({
      seen: 3,
      merged: 0,
      dropped: {},
      droppedTotal: 0,
      inFlight: 3,
      delivered: 3,
      sinks: [
        { id: 'out', type: 'collect', handed: 0, exported: 0, dropped: {}, droppedTotal: 0, inFlight: 0 },
        { id: 'top', type: 'top', handed: 3, exported: 3, dropped: {}, droppedTotal: 0, inFlight: 0 },
      ],
    });
    expect(status.health).toEqual({ status: 'healthy', degraded: [] });
    expect(status.components.map((c) => [c.id, c.kind, c.received, c.sent, c.inFlight])).toEqual([
      ['flows', 'source', 3, 3, 0],
      ['acct', 'transform', 3, 0, 3],
      ['out', 'sink', 0, 0, 0],
      ['top', 'sink', 3, 3, 0],
    ]);
    expect(status.top?.top?.flows.map((f) => f.packets)).toEqual([3, 2, 1]);

    const table = harness();
    expect(await runCli(['status', '--socket', socket], table.io)).toBe(0);
    expect(table.text().out.split('\n').slice(0, 6)).toEqual([
      `pipeline  edge (${file}), pid ${process.pid}`,
      expect.stringMatching(/^state {5}running, ready, up \d+(ms|s), started in \d+ ms$/),
      'ledger    seen 3  merged 0  dropped 0  in flight 3  delivered 3',
      '          sink out  handed 0  exported 0  dropped 0  in flight 0',
      '          sink top  handed 3  exported 3  dropped 0  in flight 0',
      'health    healthy',
    ]);

    h.signals.emit('SIGTERM', 'SIGTERM');
    expect(await code).toBe(0);
    expect(h.store.get('out')!.batches).toEqual([fixedBatch(0, 3)]);
    expect(existsSync(socket)).toBe(false);
    expect(h.logs.at(-1)).toMatchObject({
      msg: 'ledger',
      pipeline: 'edge',
      seen: 3,
      dropped: {},
      droppedTotal: 0,
      inFlight: 0,
      delivered: 6,
      sinks: [
        { id: 'out', handed: 3, exported: 3, droppedTotal: 0, inFlight: 0 },
        { id: 'top', handed: 3, exported: 3, droppedTotal: 0, inFlight: 0 },
      ],
    });
    expect(h.text().err).toBe('');
  });

  it('serves <run dir>/<pipeline name>.sock by default, and no socket with --no-status-socket', async () => {
    const file = write('branch.yaml', PIPELINE);
    const h = harness();
    const code = runCli(['run', file], h.io);
    const socket = join(dir, 'run', 'branch.sock');
    await until(() => h.logs.some((l) => l.msg === 'ready'), "the 'ready' log");
    expect(existsSync(socket)).toBe(true);
    const s = harness();
    expect(await runCli(['status'], s.io)).toBe(0);
    expect(s.text().out).toContain(`pipeline  branch (${file})`);
    h.signals.emit('SIGINT', 'SIGINT');
    expect(await code).toBe(0);
    expect(existsSync(socket)).toBe(false);

    const n = harness();
    const none = runCli(['run', file, '--no-status-socket'], n.io);
    await until(() => n.logs.some((l) => l.msg === 'ready'), "the 'ready' log");
    expect(n.logs.find((l) => l.msg === 'ready')!.status_socket).toBeUndefined();
    expect(existsSync(socket)).toBe(false);
    n.signals.emit('SIGTERM', 'SIGTERM');
    expect(await none).toBe(0);
  });

  it('exits 1 without running when the socket it was given is served by another pipeline', async () => {
    const file = write('twin.yaml', PIPELINE);
    const socket = join(dir, 'twin.sock');
    const first = harness();
    const running = runCli(['run', file, '--status-socket', socket], first.io);
    await until(() => first.logs.some((l) => l.msg === 'ready'), "the first pipeline's 'ready' log");
    const second = harness();
    expect(await runCli(['run', file, '--status-socket', socket], second.io)).toBe(1);
    expect(second.text().err).toBe(
      `status socket ${socket}: another pipeline serves it; stop it, or pass --status-socket with another path\n`,
    );
    expect(second.subscribed()).toBe(false);
    expect(second.store.get('out')!.events).toEqual(['flush', 'close']);
    first.signals.emit('SIGTERM', 'SIGTERM');
    expect(await running).toBe(0);
  });

  it('runs on with a warning when the default socket cannot be made', async () => {
    const file = write('nodir.yaml', PIPELINE);
    const blocker = write('not-a-dir', '');
    const h = harness({ RXFLOW_RUN_DIR: join(blocker, 'run') });
    const code = runCli(['run', file], h.io);
    await until(() => h.logs.some((l) => l.msg === 'ready'), "the 'ready' log");
    expect(h.logs.find((l) => l.level === 40)).toMatchObject({
      msg: 'status socket not served; rxflow status will not reach this pipeline',
      err: { code: 'ESOCKETDIR' },
    });
    h.signals.emit('SIGTERM', 'SIGTERM');
    expect(await code).toBe(0);
  });

  it('logs the ledger every --ledger-log-interval, and refuses an interval that is not a duration', async () => {
    const file = write('ticker.yaml', PIPELINE);
    const h = harness();
    const code = runCli(['run', file, '--no-status-socket', '--ledger-log-interval', '20ms'], h.io);
    await until(() => h.logs.filter((l) => l.msg === 'ledger').length >= 2, 'two ledger logs');
    expect(h.logs.filter((l) => l.msg === 'ledger')[0]).toMatchObject({
      seen: 3,
      inFlight: 3,
      sinks: [
        { id: 'out', handed: 0 },
        { id: 'top', handed: 3, exported: 3 },
      ],
    });
    h.signals.emit('SIGTERM', 'SIGTERM');
    expect(await code).toBe(0);

    const bad = harness();
    expect(await runCli(['run', file, '--ledger-log-interval', 'often'], bad.io)).toBe(2);
    expect(bad.text().err).toBe(
      "error: option '--ledger-log-interval <duration>' argument 'often' is invalid. write milliseconds as an integer (5000) or a number with a unit: 500ms, 5s, 1m, 1h, 1m30s\n(run with --help for usage)\n",
    );
  });
});

describe('onStopSignals', () => {
  it('drains on the first signal only; the second cleans up at once and exits 130 or 143', () => {
    for (const [signal, exitCode] of [
      ['SIGINT', 130],
      ['SIGTERM', 143],
    ] as const) {
      const h = harness();
      const calls: string[] = [];
      const handle = onStopSignals(
        h.io,
        h.io.logger!,
        (s) => calls.push(`drain ${s}`),
        () => calls.push('cleanup'),
      );
      h.signals.emit(signal, signal);
      expect(calls).toEqual([`drain ${signal}`]);
      expect(h.exits).toEqual([]);
      h.signals.emit('SIGTERM', 'SIGTERM');
      expect(calls).toEqual([`drain ${signal}`, 'cleanup']);
      expect(h.exits).toEqual([143]);
      h.signals.emit(signal, signal);
      expect(h.exits).toEqual([143, exitCode]);
      expect(handle.received).toBe(3);
      handle.detach();
      expect(h.signals.listenerCount('SIGINT') + h.signals.listenerCount('SIGTERM')).toBe(0);
    }
  });

  it('exits even when the cleanup throws', () => {
    const h = harness();
    onStopSignals(
      h.io,
      h.io.logger!,
      () => undefined,
      () => {
        throw new Error('ip: no such namespace');
      },
    );
    h.signals.emit('SIGINT', 'SIGINT');
    expect(() => h.signals.emit('SIGINT', 'SIGINT')).toThrow('ip: no such namespace');
    expect(h.exits).toEqual([130]);
  });
});
