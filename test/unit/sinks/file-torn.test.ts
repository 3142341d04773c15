import fs from 'node:fs';
import path from 'node:path';
import { from } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import type { FlowRecord } from '../../../src/records/flow.js';
import fileModule from '../../../src/sinks/file.js';
import { cleanup, makeTempDir } from '../../fixtures/cleanup.js';
import { flowRecord } from '../../fixtures/records.js';

afterAll(() => cleanup.dispose());

const record = (i: number): FlowRecord => flowRecord({ sourceTransportPort: 40000 + i });
const line = (i: number): string => `${JSON.stringify(record(i))}\n`;

function context(): ComponentContext {
  const ledger = new Ledger();
  return { id: 'f', logger: silentLogger(), ledger, counters: ledger.stage('f', 'file', 'sink') };
}

describe('file sink and a file left with a partial last line', () => {
  it('cuts the partial line off before appending, so every line is a record', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'flows.jsonl');
    // What a crash in the middle of a write leaves: two whole lines and half of a third.
    fs.writeFileSync(p, line(0) + line(1) + line(2).slice(0, 50));
    const ctx = context();
    const sink = fileModule.build({ path: p }, ctx);
    await sink.consume(from([[record(3), record(4)]]));
    await sink.close();
    expect(fs.readFileSync(p, 'utf8')).toBe(line(0) + line(1) + line(3) + line(4));
    expect(ctx.counters.snapshot()).toMatchObject({ received: 2, sent: 2, dropped: {}, inFlight: 0 });
  });

  it('empties a file that holds no newline at all, and keeps one that ends in a newline whole', async () => {
    const dir = makeTempDir('rxsink');
    const torn = path.join(dir, 'torn');
    fs.writeFileSync(torn, line(0).slice(0, 100));
    const whole = path.join(dir, 'whole');
    fs.writeFileSync(whole, line(0));
    for (const p of [torn, whole]) {
      const sink = fileModule.build({ path: p }, context());
      await sink.consume(from([[record(1)]]));
      await sink.close();
    }
    expect(fs.readFileSync(torn, 'utf8')).toBe(line(1));
    expect(fs.readFileSync(whole, 'utf8')).toBe(line(0) + line(1));
  });
});
