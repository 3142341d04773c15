import { EventEmitter } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Observable } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { CliIo } from '../../../src/cli/io.js';
import { createCliLogger } from '../../../src/cli/log.js';
import { runCli } from '../../../src/cli/program.js';
import type { SourceModule } from '../../../src/component.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch } from '../../../src/records/flow.js';
import { collectModule, fixedBatch, until, type CollectStore } from '../pipeline/components.js';

const dir = mkdtempSync(join(tmpdir(), 'rxflow-flush-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A map tracer's shape: holds what it counted until a flush on demand, then emits it (2 records per flush). */
const held: SourceModule<Record<string, never>> = {
  type: 'held',
  kind: 'source',
  flushesOnDemand: true,
  example: {},
  schema: { type: 'object', additionalProperties: false, properties: {} },
  description: 'emits a batch on each flush on demand',
  build: (_config, context) =>
    new Observable<FlowBatch>((subscriber) => {
      let n = 0;
      const sub = context.flush$?.subscribe(() => {
        const batch = fixedBatch(n, 2);
        n += 2;
        context.counters.addReceived(batch.length);
        context.counters.addSent(batch.length);
        subscriber.next(batch);
      });
      return () => sub?.unsubscribe();
    }),
};

function harness(runDir: string, store: CollectStore = new Map()) {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIo = {
    out: (s) => void out.push(s),
    err: (s) => void err.push(s),
    env: { RXFLOW_RUN_DIR: runDir },
    registry: new ComponentRegistry([held, collectModule(store)]),
    signals: new EventEmitter(),
    exit: () => undefined,
    logger: createCliLogger('error', { write: () => undefined }),
  };
  return { io, text: () => ({ out: out.join(''), err: err.join('') }) };
}

describe('rxflow flush', () => {
  it('makes the running pipeline emit what its sources hold, through the status socket or SIGUSR1', async () => {
    const runDir = join(dir, 'run');
    const file = join(dir, 'edge.yaml');
    writeFileSync(file, 'sources:\n  flows: {type: held}\nsinks:\n  out: {type: collect, inputs: [flows]}\n');
    const store: CollectStore = new Map();
    const run = harness(runDir, store);
    const code = runCli(['run', file], run.io);
    const socket = join(runDir, 'edge.sock');
    const h = harness(runDir);
    const records = () => (store.get('out')?.batches ?? []).flat().length;
    for (let deadline = Date.now() + 5000; ;) {
      const s = harness(runDir);
      if ((await runCli(['status', '--socket', socket, '--json'], s.io)) === 0) {
        if ((JSON.parse(s.text().out) as { ready: boolean }).ready) break;
      }
      if (Date.now() > deadline) throw new Error('the pipeline never got ready');
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(records()).toBe(0);

    // The only socket in the run directory is found without --socket.
    expect(await runCli(['flush'], h.io)).toBe(0);
    expect(h.text()).toEqual({
      out: `flush: pipeline edge (pid ${process.pid}): flows reading the kernel now\n`,
      err: '',
    });
    await until(() => records() === 2, 'the flushed batch');

    const j = harness(runDir);
    expect(await runCli(['flush', '--socket', socket, '--json'], j.io)).toBe(0);
    expect(JSON.parse(j.text().out)).toEqual({ pipeline: 'edge', pid: process.pid, sources: ['flows'] });
    await until(() => records() === 4, 'the second flushed batch');

    // SIGUSR1 does the same.
    (run.io.signals as EventEmitter).emit('SIGUSR1', 'SIGUSR1');
    await until(() => records() === 6, 'the batch flushed by SIGUSR1');

    (run.io.signals as EventEmitter).emit('SIGTERM', 'SIGTERM');
    expect(await code).toBe(0);
  });

  it('says so and exits 1 when no pipeline runs', async () => {
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    const h = harness(empty);
    expect(await runCli(['flush'], h.io)).toBe(1);
    expect(h.text()).toEqual({
      out: '',
      err: `flush: no running pipeline has a socket in ${empty}; start one with 'rxflow run FILE', or pass --socket PATH\n`,
    });
    const s = harness(empty);
    const socket = join(empty, 'gone.sock');
    expect(await runCli(['flush', '--socket', socket], s.io)).toBe(1);
    expect(s.text().err).toBe(
      `flush ${socket}: no pipeline serves this socket (ENOENT); is 'rxflow run' running?\n`,
    );
  });

  it('exits 2 on a wrong command line', async () => {
    const h = harness(dir);
    expect(await runCli(['flush', '--now'], h.io)).toBe(2);
    expect(h.text().err).toBe("error: unknown option '--now'\n(run with --help for usage)\n");
    const a = harness(dir);
    expect(await runCli(['flush', '--socket'], a.io)).toBe(2);
    expect(a.text().err).toBe(
      "error: option '--socket <path>' argument missing\n(run with --help for usage)\n",
    );
  });
});
