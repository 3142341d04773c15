import fs from 'node:fs';
import path from 'node:path';
import { Subject } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';
import fileModule from '../../../src/sinks/file.js';
import { cleanup, makeTempDir } from '../../fixtures/cleanup.js';
import { flowRecord } from '../../fixtures/records.js';

afterAll(() => cleanup.dispose());

const record = (i: number): FlowRecord => flowRecord({ sourceTransportPort: 40000 + i });
const line = (i: number): string => `${JSON.stringify(record(i))}\n`;
const L = Buffer.byteLength(line(0));

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('file sink health', () => {
  it('reports a failed write as degraded, with what to expect, and healthy once a write succeeds', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'f');
    // A non-empty directory where the rotated file must go makes the rename fail.
    fs.mkdirSync(`${p}.1`);
    fs.writeFileSync(path.join(`${p}.1`, 'keep'), '');
    const events: string[] = [];
    const ledger = new Ledger();
    const ctx: ComponentContext = {
      id: 'f',
      logger: silentLogger(),
      ledger,
      counters: ledger.stage('f', 'file', 'sink'),
      health: {
        degraded: (reason) => events.push(`degraded: ${reason}`),
        healthy: () => events.push('healthy'),
      },
    };
    const sink = fileModule.build({ path: p, max_file_bytes: 2 * L, max_files: 2 }, ctx);
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    await until(() => input.observed, 'the sink to subscribe');
    input.next([record(0), record(1), record(2)]);
    await until(() => ctx.counters.droppedTotal() === 1, 'the failed rotation');
    expect(events).toEqual([
      `degraded: file sink ${p}: EISDIR: illegal operation on a directory, rename '${p}' -> '${p}.1'; records are dropped as sink_failed until a write succeeds`,
    ]);
    fs.rmSync(`${p}.1`, { recursive: true });
    input.next([record(3)]);
    input.complete();
    await consumed;
    await sink.close();
    expect(events.slice(1)).toEqual(['healthy']);
    expect(fs.readFileSync(p, 'utf8')).toBe(line(3));
    expect(fs.readFileSync(`${p}.1`, 'utf8')).toBe(line(0) + line(1));
    expect(ctx.counters.snapshot()).toMatchObject({
      received: 4,
      sent: 3,
      dropped: { sink_failed: 1 },
      inFlight: 0,
    });
  });
});
