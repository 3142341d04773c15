/**
 * `npm run bench [-- --json] [-- --quick] [-- name-filter]`: runs every bench/*.bench.js (built by
 * tsc) and prints a table of figures, or one JSON object per figure with --json.
 */
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Benchmark, Figure } from './lib.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const quick = args.includes('--quick');
const filters = args.filter((a) => !a.startsWith('--'));
const here = dirname(fileURLToPath(import.meta.url));

function fmt(n: number): string {
  if (Math.abs(n) >= 1e6) return n.toExponential(3);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  return n.toPrecision(4);
}

function row(f: Figure): string {
  const vs = f.baseline
    ? `${(f.value / f.baseline.value).toFixed(2)}x of ${f.baseline.name} (${fmt(f.baseline.value)})`
    : '';
  const target = f.target
    ? `${f.target.better === 'higher' ? '>=' : '<='} ${fmt(f.target.value)} ${
        (f.target.better === 'higher' ? f.value >= f.target.value : f.value <= f.target.value)
          ? 'met'
          : 'MISSED'
      }`
    : '';
  return [f.name.padEnd(44), `${fmt(f.value)} ${f.unit}`.padEnd(24), target.padEnd(22), vs].join(' ');
}

const files = readdirSync(here)
  .filter((f) => f.endsWith('.bench.js'))
  .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
  .sort();
let failed = 0;
if (!json)
  console.log(
    ['figure'.padEnd(44), 'value'.padEnd(24), 'target'.padEnd(22), 'same-run comparison'].join(' '),
  );
for (const file of files) {
  const mod = (await import(pathToFileURL(join(here, file)).href)) as { default: Benchmark };
  try {
    await mod.default({
      quick,
      report(f) {
        console.log(json ? JSON.stringify(f) : row(f));
      },
    });
  } catch (err) {
    failed++;
    console.error(`bench ${file} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  }
}
process.exitCode = failed ? 1 : 0;
