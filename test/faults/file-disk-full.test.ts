/**
 * The file sink on a disk that fills up: a real 1 MiB tmpfs mounted by the test. The judge is the
 * files themselves: every line read back and parsed, outside rxflow, plus the ledger's drops must
 * make up exactly the records fed, no line may be torn, and `file_replay` must read the files back
 * without a parse error.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Subject, from, lastValueFrom, toArray } from 'rxjs';
import { afterAll, expect, it } from 'vitest';
import type { ComponentContext, HealthReporter } from '../../src/component.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import { buildPipeline } from '../../src/pipeline/build.js';
import { ComponentRegistry } from '../../src/pipeline/component-registry.js';
import { parsePipeline } from '../../src/pipeline/load.js';
import { modules } from '../../src/pipeline/registry.js';
import type { FlowBatch, FlowRecord } from '../../src/records/flow.js';
import fileModule from '../../src/sinks/file.js';
import fileReplayModule from '../../src/sources/file_replay.js';
import { cleanup, isAlive, makeTempDir, ownerOf } from '../fixtures/cleanup.js';
import { describeWith } from '../fixtures/privilege.js';
import { flowRecord } from '../fixtures/records.js';

afterAll(() => cleanup.dispose());

const T0 = 1_700_000_000_000;

/** Record `i`: its index rides in flowStartMilliseconds, so every line read back names its record. */
function record(i: number): FlowRecord {
  return flowRecord({
    sourceTransportPort: 1024 + (i % 60000),
    octetDeltaCount: 1500 * (i + 1),
    packetDeltaCount: i + 1,
    flowStartMilliseconds: T0 + i,
    flowEndMilliseconds: T0 + i + 1000,
    interfaceName: 'eth0',
  });
}

const batch = (from: number, count: number): FlowBatch =>
  Array.from({ length: count }, (_, k) => record(from + k));

/**
 * Unmounts the tmpfs of test runs that died before their cleanup (SIGKILL), so the sweep of their
 * temporary directories can remove them.
 */
function unmountStale(): void {
  for (const entry of fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const mountpoint = entry.split(' ')[1] ?? '';
    const owner = ownerOf(path.basename(path.dirname(mountpoint)), 'rxfs');
    if (
      path.basename(mountpoint) !== 'disk' ||
      owner === undefined ||
      owner === process.pid ||
      isAlive(owner)
    ) {
      continue;
    }
    execFileSync('umount', ['-l', mountpoint], { stdio: 'ignore' });
  }
}

/** Mounts a tmpfs of `size` in a fresh temporary directory; unmounted at cleanup, even on failure. */
function mountTmpfs(size: string): string {
  unmountStale();
  const dir = path.join(makeTempDir('rxfs'), 'disk');
  fs.mkdirSync(dir);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir]);
  cleanup.register(`tmpfs ${dir}`, () => {
    try {
      execFileSync('umount', [dir], { stdio: 'ignore' });
    } catch {
      execFileSync('umount', ['-l', dir], { stdio: 'ignore' });
    }
  });
  return dir;
}

/** Health as the sink reports it, in order. */
class HealthLog implements HealthReporter {
  readonly events: string[] = [];
  degraded(reason: string): void {
    this.events.push(`degraded: ${reason}`);
  }
  healthy(): void {
    this.events.push('healthy');
  }
  get isDegraded(): boolean {
    return this.events.length > 0 && this.events[this.events.length - 1] !== 'healthy';
  }
}

function context(ledger: Ledger, id: string, type: string, role: 'source' | 'sink'): ComponentContext {
  return { id, logger: silentLogger(), ledger, counters: ledger.stage(id, type, role) };
}

/** Waits for `cond`, polling; fails naming `what` after `ms`. */
async function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Every line of the files in `dir` matching `prefix`, oldest file first, parsed; fails on a file
 * that does not end in a newline or a line that is not JSON.
 */
function readBack(dir: string, prefix: string): FlowRecord[] {
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.startsWith(prefix))
    .sort((a, b) => rotation(b) - rotation(a));
  const out: FlowRecord[] = [];
  for (const f of files) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    if (text.length === 0) continue;
    expect(text.endsWith('\n'), `${f} ends with a newline`).toBe(true);
    for (const line of text.slice(0, -1).split('\n')) out.push(JSON.parse(line) as FlowRecord);
  }
  return out;
}

function rotation(file: string): number {
  const m = /\.(\d+)$/.exec(file);
  return m ? Number(m[1]) : 0;
}

/** What `file_replay` reads back from `paths`: records and its parse failures. */
async function replay(paths: string[]): Promise<{ records: number; parseFailed: number }> {
  const ledger = new Ledger();
  const ctx = context(ledger, 'back', 'file_replay', 'source');
  const batches = await lastValueFrom(fileReplayModule.build({ paths }, ctx).pipe(toArray()));
  return {
    records: batches.reduce((n, b) => n + b.length, 0),
    parseFailed: ctx.counters.dropped.get('parse_failed') ?? 0,
  };
}

/** Indexes of the records read back; they must be distinct and in the order fed. */
function indexes(records: readonly FlowRecord[]): number[] {
  const idx = records.map((r) => r.flowStartMilliseconds - T0);
  for (let k = 1; k < idx.length; k++) expect(idx[k]!).toBeGreaterThan(idx[k - 1]!);
  return idx;
}

/** A file of records 0..n-1 as JSON lines, as file_replay reads them; returns its path. */
function writeRecords(n: number): string {
  const input = path.join(makeTempDir('rxfs'), 'in.jsonl');
  fs.writeFileSync(
    input,
    batch(0, n)
      .map((r) => `${JSON.stringify(r)}\n`)
      .join(''),
  );
  return input;
}

/**
 * A pipeline replaying records 0..n-1 from a file into a file sink at `file`; `extra` adds options
 * to the source's and the sink's YAML flow maps (", batch_size: 100").
 */
async function replayPipeline(n: number, file: string, extra: { source?: string; sink?: string } = {}) {
  const input = writeRecords(n);
  const config = parsePipeline(
    `sources:
  in: {type: file_replay, paths: ['${input}']${extra.source ?? ''}}
sinks:
  out: {type: file, inputs: [in], path: '${file}'${extra.sink ?? ''}}
`,
    'replay-to-file.yaml',
    { registry: new ComponentRegistry(modules), env: {} },
  );
  return buildPipeline(config);
}

describeWith({ root: true, commands: ['mount', 'umount'] }, 'file sink on a full disk (tmpfs)', () => {
  it('20,000 records through file_replay into 1 MiB: lines read back + drops = records fed, none torn', async () => {
    const disk = mountTmpfs('1m');
    const N = 20_000;
    const input = writeRecords(N);

    const ledger = new Ledger();
    const source = context(ledger, 'in', 'file_replay', 'source');
    const out = context(ledger, 'out', 'file', 'sink');
    const health = new HealthLog();
    out.health = health;
    // Rotation on: 5 files of 300 kB would take 1.5 MB, so the disk fills in the fourth.
    const sink = fileModule.build(
      {
        path: path.join(disk, 'flows.jsonl'),
        max_file_bytes: 300_000,
        max_files: 5,
        // More than 1 MiB of records: the disk fills up even when the replay outruns the writes.
        buffer_max_records: 5000,
        retry_interval_ms: 20,
      },
      out,
    );
    const consumed = sink.consume(fileReplayModule.build({ paths: [input], batch_size: 500 }, source));
    // The replay has ended and the sink is stuck on the full disk (or, had it given up on records,
    // holds nothing any more).
    await until(
      () => source.counters.sent === N && (health.isDegraded || out.counters.snapshot().inFlight === 0),
      'the replay to end on a full disk',
    );
    // The disk stays full: close gives up on what is held, counting it as shutdown.
    await sink.close(200);
    await consumed;

    const lines = readBack(disk, 'flows.jsonl');
    const snap = out.counters.snapshot();
    const dropped = out.counters.droppedTotal();
    expect(source.counters.sent).toBe(N);
    expect(lines.length + dropped).toBe(N);
    expect(snap.sent).toBe(lines.length);
    expect(Object.keys(snap.dropped).sort()).toEqual(['shutdown', 'sink_buffer_full']);
    expect(snap.dropped.shutdown).toBeGreaterThan(0);
    expect(snap.inFlight).toBe(0);
    // The disk was full: the files hold most of 1 MiB, in the order fed, from the first record on.
    expect(lines.length).toBeGreaterThan(2000);
    expect(indexes(lines).slice(0, 3)).toEqual([0, 1, 2]);
    expect(fs.readdirSync(disk).sort()).toEqual([
      'flows.jsonl',
      'flows.jsonl.1',
      'flows.jsonl.2',
      'flows.jsonl.3',
    ]);
    expect(health.events[0]).toMatch(
      new RegExp(
        `^degraded: file sink ${disk}/flows\\.jsonl: ENOSPC: no space left on device, write; holding up to 5000 records and retrying every 20 ms; free space on its filesystem$`,
      ),
    );

    expect(await replay([path.join(disk, 'flows.jsonl*')])).toEqual({
      records: lines.length,
      parseFailed: 0,
    });
  });

  it('a file_replay pipeline onto a disk that stays full ends by itself, and its ledger holds', async () => {
    const disk = mountTmpfs('1m');
    const N = 20_000;
    const file = path.join(disk, 'flows.jsonl');
    const pipeline = await replayPipeline(N, file);
    await pipeline.start();
    // The input ends with the disk full: the sink writes what it can, and the stop counts the rest.
    await pipeline.done;

    const lines = readBack(disk, 'flows.jsonl');
    const totals = pipeline.totals();
    const sink = totals.stages.find((s) => s.id === 'out')!;
    expect(totals.seen).toBe(N);
    expect(lines.length + sink.dropped.shutdown!).toBe(N);
    expect(sink).toMatchObject({
      received: N,
      sent: lines.length,
      dropped: { shutdown: N - lines.length },
      inFlight: 0,
    });
    expect(lines.length).toBeGreaterThan(2000);
    expect(indexes(lines)).toEqual(Array.from({ length: lines.length }, (_, k) => k));
    expect(await replay([file])).toEqual({ records: lines.length, parseFailed: 0 });
  });

  it('writes again when space is freed while records keep coming: lines + drops = records fed', async () => {
    const disk = mountTmpfs('1m');
    const filler = path.join(disk, 'filler');
    fs.writeFileSync(filler, Buffer.alloc(600_000, 0x78));

    const ledger = new Ledger();
    const out = context(ledger, 'out', 'file', 'sink');
    const health = new HealthLog();
    out.health = health;
    const file = path.join(disk, 'flows.jsonl');
    const sink = fileModule.build({ path: file, buffer_max_records: 300, retry_interval_ms: 20 }, out);
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    await until(() => input.observed, 'the sink to subscribe');

    let fed = 0;
    const feed = async (count: number): Promise<void> => {
      input.next(batch(fed, count));
      fed += count;
      // Let the writes of what was fed run before more comes.
      await new Promise((r) => setTimeout(r, 2));
    };
    // Until the disk is full (450 kB left: about 1,200 records), then more while it stays full.
    while (!health.isDegraded && fs.statfsSync(disk).bavail > 0) {
      expect(fed).toBeLessThan(5000);
      await feed(50);
    }
    const fullAt = fed;
    const linesAtFull = readBack(disk, 'flows.jsonl').length;
    for (let k = 0; k < 10; k++) await feed(50);
    const degradedWhileFull = health.isDegraded;

    fs.rmSync(filler);
    while (health.isDegraded) {
      expect(fed - fullAt).toBeLessThan(5000);
      await feed(50);
    }
    const resumedAt = fed;
    for (let k = 0; k < 5; k++) await feed(50);
    input.complete();
    await consumed;
    await sink.close();

    const lines = readBack(disk, 'flows.jsonl');
    const snap = out.counters.snapshot();
    expect(lines.length + out.counters.droppedTotal()).toBe(fed);
    expect(snap.sent).toBe(lines.length);
    expect(Object.keys(snap.dropped)).toEqual(['sink_buffer_full']);
    expect(snap.inFlight).toBe(0);
    const idx = indexes(lines);
    // Writing resumed: everything fed after the sink reported healthy is on the file, to the last.
    expect(idx.slice(-(fed - resumedAt))).toEqual(
      Array.from({ length: fed - resumedAt }, (_, k) => resumedAt + k),
    );
    // While the disk was full, 300 records were held (as many as buffer_max_records), and written
    // once space came back: lines past those on the file when it filled, fed before it resumed.
    expect(idx.slice(linesAtFull).filter((i) => i < resumedAt).length).toBeGreaterThanOrEqual(300);
    expect(degradedWhileFull).toBe(true);
    expect(health.events.at(-1)).toBe('healthy');

    expect(await replay([file])).toEqual({ records: lines.length, parseFailed: 0 });
  });

  it('close() tries the held records once more: written if space came back, else counted shutdown', async () => {
    for (const freed of [false, true]) {
      const disk = mountTmpfs('1m');
      const filler = path.join(disk, 'filler');
      // Fill the disk to the last block.
      expect(() => fs.writeFileSync(filler, Buffer.alloc(2 << 20, 0x78))).toThrow(/^ENOSPC/);
      const ledger = new Ledger();
      const out = context(ledger, 'out', 'file', 'sink');
      const health = new HealthLog();
      out.health = health;
      const file = path.join(disk, 'flows.jsonl');
      // A retry interval far beyond the test: only close() makes the sink try again.
      const sink = fileModule.build({ path: file, retry_interval_ms: 3_600_000 }, out);
      const consumed = sink.consume(from([batch(0, 100), batch(100, 100)]));
      await until(
        () => out.counters.received === 200 && (health.isDegraded || out.counters.snapshot().inFlight === 0),
        'the sink to find the disk full',
      );
      if (freed) fs.rmSync(filler);
      await sink.close();
      await consumed;

      const lines = readBack(disk, 'flows.jsonl');
      expect(indexes(lines), `freed ${freed}`).toEqual(freed ? Array.from({ length: 200 }, (_, k) => k) : []);
      expect(out.counters.snapshot()).toMatchObject(
        freed
          ? { received: 200, sent: 200, dropped: {}, inFlight: 0 }
          : { received: 200, sent: 0, dropped: { shutdown: 200 }, inFlight: 0 },
      );
    }
  });

  it('when_full block: the buffer in front of the sink holds file_replay while the disk is full; once freed, every record is written, none dropped', async () => {
    const disk = mountTmpfs('1m');
    const filler = path.join(disk, 'filler');
    expect(() => fs.writeFileSync(filler, Buffer.alloc(2 << 20, 0x78))).toThrow(/^ENOSPC/);
    // About 730 kB of lines: they fit on the 1 MiB disk once the filler is gone.
    const N = 1500;
    const file = path.join(disk, 'flows.jsonl');
    const pipeline = await replayPipeline(N, file, {
      source: ', batch_size: 100',
      sink: ', buffer_max_records: 300, when_full: block, retry_interval_ms: 20',
    });
    const stage = (id: string) => pipeline.totals().stages.find((s) => s.id === id)!;
    await pipeline.start();
    await until(() => stage('out').received >= 300, 'the sink to hold buffer_max_records');
    // The sink retries every 20 ms meanwhile; the replay stays held at most one batch past the bound.
    await new Promise((r) => setTimeout(r, 500));
    expect(stage('in').sent).toBeLessThanOrEqual(300 + 100);
    expect(stage('out')).toMatchObject({ received: stage('in').sent, sent: 0, dropped: {} });
    expect(readBack(disk, 'flows.jsonl')).toEqual([]);

    fs.rmSync(filler);
    await pipeline.done;
    const lines = readBack(disk, 'flows.jsonl');
    expect(indexes(lines)).toEqual(Array.from({ length: N }, (_, k) => k));
    expect(stage('out')).toMatchObject({ received: N, sent: N, dropped: {}, inFlight: 0 });
    expect(await replay([file])).toEqual({ records: N, parseFailed: 0 });
  });
});
