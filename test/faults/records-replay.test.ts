import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { FlowRecord } from '../../src/records/flow.js';
import { makeTempDir } from '../fixtures/cleanup.js';
import { byStart, goodRecord, hostileRecords, runPipeline } from './records-helpers.js';

/**
 * Hostile records in a file: file_replay in `rxflow run` into a file sink. Only the good records
 * reach the output file (lines read back); every other line is counted parse_failed, and the
 * reason of the first is logged with its file:line at once, the rest summed (rate-limited).
 */
describe('file_replay with hostile records', () => {
  it('passes only valid records to the sink and counts each invalid one parse_failed with its reason', async () => {
    const dir = makeTempDir('rxrec');
    const hostile = hostileRecords();
    const good = Array.from({ length: hostile.length + 1 }, (_, i) => goodRecord(i));
    const lines: string[] = [];
    good.forEach((g, i) => {
      lines.push(JSON.stringify(g));
      if (i < hostile.length) lines.push(JSON.stringify(hostile[i]!.record));
    });
    const input = path.join(dir, 'hostile.jsonl');
    fs.writeFileSync(input, `${lines.join('\n')}\n`);
    const out = path.join(dir, 'out.jsonl');
    const yaml = path.join(dir, 'replay.yaml');
    fs.writeFileSync(
      yaml,
      `sources:\n  replay: {type: file_replay, paths: ['${input}']}\n` +
        `sinks:\n  out: {type: file, inputs: [replay], path: '${out}'}\n`,
    );
    const run = runPipeline(yaml);
    expect(await run.code).toBe(0);
    expect(run.err).toEqual([]);

    const written = fs
      .readFileSync(out, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as FlowRecord);
    expect(byStart(written)).toEqual(good);

    const warnings = run.logs.filter((l) => l.msg === 'file replay: lines skipped');
    expect(warnings[0]!.cause).toBe(`${input}:2: ${hostile[0]!.reason}`);
    expect(warnings.reduce((n, w) => n + (w.dropped as { parse_failed: number }).parse_failed, 0)).toBe(
      hostile.length,
    );
    expect(warnings.length).toBeLessThan(hostile.length);
    expect(run.logs.find((l) => l.msg === 'file replay: done')).toMatchObject({
      records: good.length,
      skipped: hostile.length,
    });
    expect(run.logs.find((l) => l.msg === 'pipeline stopped')).toMatchObject({
      seen: good.length + hostile.length,
      delivered: good.length,
      dropped: hostile.length,
      sinks: { out: { handed: good.length, exported: good.length, dropped: 0 } },
    });
  });

  it('names the reason of each kind of invalid value, one file per kind', async () => {
    const dir = makeTempDir('rxrec');
    const hostile = hostileRecords();
    for (const [k, { record, reason }] of hostile.entries()) {
      const input = path.join(dir, `kind-${k}.jsonl`);
      fs.writeFileSync(input, `${JSON.stringify(goodRecord(k))}\n${JSON.stringify(record)}\n`);
      const out = path.join(dir, `out-${k}.jsonl`);
      const yaml = path.join(dir, `kind-${k}.yaml`);
      fs.writeFileSync(
        yaml,
        `sources:\n  replay: {type: file_replay, paths: ['${input}']}\n` +
          `sinks:\n  out: {type: file, inputs: [replay], path: '${out}'}\n`,
      );
      const run = runPipeline(yaml);
      expect(await run.code).toBe(0);
      expect(fs.readFileSync(out, 'utf8')).toBe(`${JSON.stringify(goodRecord(k))}\n`);
      const warnings = run.logs.filter((l) => l.msg === 'file replay: lines skipped');
      expect(warnings.map((w) => [w.dropped, w.cause])).toEqual([
        [{ parse_failed: 1 }, `${input}:2: ${reason}`],
      ]);
    }
  });
});
