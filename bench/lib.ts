/**
 * Benchmarks are modules named bench/<name>.bench.ts whose default export is an async function
 * that reports figures. Each figure names what it is compared with when a baseline was measured
 * in the same run, so a noisy shared machine still gives a meaningful ratio.
 */
import type { Program } from '../src/datapath/index.js';

export interface Figure {
  /** e.g. "ringbuf.js_reader" */
  name: string;
  value: number;
  /** e.g. "records/s", "ns/packet", "ms" */
  unit: string;
  /** The figure this one is compared with, measured in the same run. */
  baseline?: { name: string; value: number };
  /** The target from the issue, for the table; the direction says which side is good. */
  target?: { value: number; better: 'higher' | 'lower' };
  note?: string;
}

export interface BenchContext {
  report(figure: Figure): void;
  /** Set by `npm run bench -- --quick`: fewer iterations, for a smoke run. */
  quick: boolean;
}

export type Benchmark = (ctx: BenchContext) => Promise<void>;

/** Runs fn repeatedly for at least minMs and returns the best ns per op over `rounds` rounds. */
export function bestNsPerOp(fn: () => number, rounds = 5): number {
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    const ops = fn();
    const ns = Number(process.hrtime.bigint() - start);
    best = Math.min(best, ns / ops);
  }
  return best;
}

/** A Benchmark of synchronous measurements (system calls, FFI): a throw becomes the rejection. */
export function synchronousBenchmark(measure: (ctx: BenchContext) => void): Benchmark {
  return (ctx) => {
    try {
      measure(ctx);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
  };
}

/** Best (lowest) kernel-measured ns per run over `rounds` BPF_PROG_TEST_RUNs of `repeat` runs. */
export function bestTestRunNs(program: Program, frame: Uint8Array, repeat: number, rounds: number): number {
  let best = Infinity;
  for (let r = 0; r < rounds; r++) best = Math.min(best, program.testRun(frame, { repeat }).durationNs);
  return best;
}

/** Mean kernel-measured ns of single runs over the frames (each run a separate test run). */
export function meanSingleTestRunNs(program: Program, frames: Uint8Array[]): number {
  let total = 0;
  for (const f of frames) total += program.testRun(f).durationNs;
  return total / frames.length;
}
