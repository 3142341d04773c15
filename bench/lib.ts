/**
 * Benchmarks are modules named bench/<name>.bench.ts whose default export is an async function
 * that reports figures. Each figure names what it is compared with when a baseline was measured
 * in the same run, so a noisy shared machine still gives a meaningful ratio.
 */
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
