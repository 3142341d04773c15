import fs from 'node:fs';
import path from 'node:path';
import { Subject, from } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';
import fileModule, { type FileSinkConfig } from '../../../src/sinks/file.js';
import { cleanup, makeTempDir } from '../../fixtures/cleanup.js';

afterAll(() => cleanup.dispose());

/** Records whose JSON lines all have the same length: only same-width digits differ. */
function record(i: number, extra: Partial<FlowRecord> = {}): FlowRecord {
  return {
    ipVersion: 4,
    sourceIPv4Address: '10.0.0.1',
    destinationIPv4Address: '10.0.0.2',
    sourceTransportPort: 40000 + i,
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 1000 + i,
    packetDeltaCount: 10 + i,
    flowStartMilliseconds: 1_700_000_000_000 + i,
    flowEndMilliseconds: 1_700_000_001_000 + i,
    tcpControlBits: 0x12,
    ipDiffServCodePoint: 0,
    ingressInterface: 2,
    flowDirection: 0,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
    interfaceName: 'eth0',
    ...extra,
  };
}

const line = (i: number): string => `${JSON.stringify(record(i))}\n`;
const L = Buffer.byteLength(line(0));
const lines = (...idx: number[]): string => idx.map(line).join('');

function context(ledger = new Ledger()): ComponentContext {
  return { id: 'f', logger: silentLogger(), ledger, counters: ledger.stage('f', 'file', 'sink') };
}

async function run(config: FileSinkConfig, batches: FlowBatch[]): Promise<ComponentContext> {
  const ctx = context();
  const sink = fileModule.build(config, ctx);
  await sink.consume(from(batches));
  await sink.close();
  return ctx;
}

/** Every file of the directory with its content. */
function files(dir: string): Record<string, string> {
  return Object.fromEntries(
    fs
      .readdirSync(dir)
      .sort()
      .map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')]),
  );
}

const batch = (from: number, count: number): FlowRecord[] =>
  Array.from({ length: count }, (_, k) => record(from + k));

describe('file sink', () => {
  it('writes one JSON line per record, IPFIX names, exactly', async () => {
    const dir = makeTempDir('rxsink');
    const ctx = await run({ path: path.join(dir, 'flows.jsonl') }, [batch(0, 3), batch(3, 2)]);
    expect(files(dir)).toEqual({ 'flows.jsonl': lines(0, 1, 2, 3, 4) });
    expect(fs.readFileSync(path.join(dir, 'flows.jsonl'), 'utf8').split('\n')[0]).toBe(
      '{"ipVersion":4,"sourceIPv4Address":"10.0.0.1","destinationIPv4Address":"10.0.0.2","sourceTransportPort":40000,"destinationTransportPort":443,"protocolIdentifier":6,"octetDeltaCount":1000,"packetDeltaCount":10,"flowStartMilliseconds":1700000000000,"flowEndMilliseconds":1700000001000,"tcpControlBits":18,"ipDiffServCodePoint":0,"ingressInterface":2,"flowDirection":0,"sourceMacAddress":"02:00:00:00:00:01","destinationMacAddress":"02:00:00:00:00:02","ethernetType":2048,"interfaceName":"eth0"}',
    );
    expect(ctx.counters.snapshot()).toMatchObject({ received: 5, sent: 5, dropped: {}, inFlight: 0 });
  });

  it('rotates before a line would pass max_file_bytes and keeps max_files files, newest first', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'f.jsonl');
    // Room for 2.5 lines: two lines per file; 7 lines make 4 files, of which 3 are kept.
    await run({ path: p, max_file_bytes: 2 * L + Math.floor(L / 2), max_files: 3 }, [
      batch(0, 3),
      batch(3, 4),
    ]);
    expect(files(dir)).toEqual({ 'f.jsonl': lines(6), 'f.jsonl.1': lines(4, 5), 'f.jsonl.2': lines(2, 3) });
  });

  it('fills a file up to exactly max_file_bytes, and one byte less holds one line fewer', async () => {
    const exact = makeTempDir('rxsink');
    await run({ path: path.join(exact, 'f'), max_file_bytes: 2 * L, max_files: 10 }, [batch(0, 5)]);
    expect(files(exact)).toEqual({ f: lines(4), 'f.1': lines(2, 3), 'f.2': lines(0, 1) });
    const less = makeTempDir('rxsink');
    await run({ path: path.join(less, 'f'), max_file_bytes: 2 * L - 1, max_files: 10 }, [batch(0, 3)]);
    expect(files(less)).toEqual({ f: lines(2), 'f.1': lines(1), 'f.2': lines(0) });
  });

  it('gives a line longer than max_file_bytes a file of its own, never splitting it', async () => {
    const dir = makeTempDir('rxsink');
    await run({ path: path.join(dir, 'f'), max_file_bytes: 10, max_files: 3 }, [batch(0, 2)]);
    expect(files(dir)).toEqual({ f: lines(1), 'f.1': lines(0) });
  });

  it('appends to an existing file, counting what it already holds', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'f');
    const before = `${'x'.repeat(L - 1)}\n`;
    fs.writeFileSync(p, before);
    await run({ path: p, max_file_bytes: 2 * L, max_files: 2 }, [batch(0, 2)]);
    expect(files(dir)).toEqual({ f: lines(1), 'f.1': before + lines(0) });
  });

  it('with max_files 1 starts the file over on rotation', async () => {
    const dir = makeTempDir('rxsink');
    await run({ path: path.join(dir, 'f'), max_file_bytes: 2 * L, max_files: 1 }, [batch(0, 5)]);
    expect(files(dir)).toEqual({ f: lines(4) });
  });

  it('counts the records of a failed write as sink_failed and goes on', async () => {
    const dir = makeTempDir('rxsink');
    const p = path.join(dir, 'f');
    // A non-empty directory where the rotated file must go makes the rename fail.
    fs.mkdirSync(`${p}.1`);
    fs.writeFileSync(path.join(`${p}.1`, 'keep'), '');
    const ctx = await run({ path: p, max_file_bytes: 2 * L, max_files: 2 }, [batch(0, 3)]);
    expect(ctx.counters.snapshot()).toMatchObject({
      received: 3,
      sent: 2,
      dropped: { sink_failed: 1 },
      inFlight: 0,
    });
    expect(fs.readFileSync(p, 'utf8')).toBe(lines(0, 1));
  });

  it('drops what arrives beyond buffer_max_records while writes are pending', async () => {
    const dir = makeTempDir('rxsink');
    const ctx = context();
    const sink = fileModule.build({ path: path.join(dir, 'f'), buffer_max_records: 3 }, ctx);
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    // consume() subscribes once the file is open.
    while (!input.observed) await new Promise((r) => setTimeout(r, 1));
    input.next(batch(0, 2));
    input.next(batch(2, 2));
    input.complete();
    await consumed;
    await sink.close();
    expect(ctx.counters.snapshot()).toMatchObject({
      received: 4,
      sent: 3,
      dropped: { sink_buffer_full: 1 },
      inFlight: 0,
    });
    expect(files(dir)).toEqual({ f: lines(0, 1, 2) });
  });

  it('refuses to start when the file cannot be opened, saying what to do', async () => {
    const sink = fileModule.build({ path: '/nonexistent-rxflow/f.jsonl' }, context());
    await expect(sink.consume(from([]))).rejects.toThrow(
      "file sink /nonexistent-rxflow/f.jsonl: cannot open: ENOENT: no such file or directory, open '/nonexistent-rxflow/f.jsonl'; check that the directory exists and is writable",
    );
    await sink.close();
  });

  it('has a strict schema with defaults', () => {
    const registry = new ComponentRegistry([fileModule]);
    expect(registry.validate(fileModule, { path: '/x' })).toMatchObject({
      ok: true,
      config: { path: '/x', max_file_bytes: 104857600, max_files: 5, buffer_max_records: 100000 },
    });
    expect(registry.validate(fileModule, fileModule.example as unknown as Record<string, unknown>).ok).toBe(
      true,
    );
    expect(registry.validate(fileModule, { path: '/x', rotate: true }).ok).toBe(false);
    expect(registry.validate(fileModule, {}).ok).toBe(false);
  });
});
