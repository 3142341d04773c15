/**
 * `npm run bench:compare -- --base REV [--rounds N] [--quick] [name-filter...]`: the benchmarks of
 * this tree and of revision REV in one run, alternating (base, head, head, base, ...) so that load
 * on the machine falls on both sides alike. REV is checked out and built in a temporary worktree,
 * which is removed at the end. Prints, per figure, the median of each side and head/base.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Figure } from './lib.js';

const usage = 'usage: npm run bench:compare -- --base REV [--rounds N] [--quick] [name-filter...]';
const args = process.argv.slice(2);
let base: string | undefined;
let rounds = 3;
const passOn: string[] = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  if (a === '--base') base = args[++i];
  else if (a === '--rounds') rounds = Number(args[++i]);
  else if (a === '--help' || a === '-h') {
    console.log(usage);
    process.exit(0);
  } else passOn.push(a);
}
if (!base || !Number.isInteger(rounds) || rounds < 1 || rounds > 20) {
  console.error(`bench:compare: ${!base ? '--base REV is required' : '--rounds takes 1 to 20'}\n${usage}`);
  process.exit(2);
}

const head = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

function run(cwd: string, cmd: string, argv: string[]): void {
  execFileSync(cmd, argv, { cwd, stdio: ['ignore', 'ignore', 'inherit'] });
}

function benchOnce(tree: string): Figure[] {
  const r = spawnSync('node', [join(tree, 'dist/bench/run.js'), '--json', ...passOn], {
    cwd: tree,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 << 20,
  });
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Figure);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const baseTree = mkdtempSync(join(tmpdir(), 'rxflow-bench-base-'));
try {
  console.error(`bench:compare: building ${base} in ${baseTree}`);
  run(head, 'git', ['worktree', 'add', '--detach', '--force', baseTree, base]);
  symlinkSync(join(head, 'node_modules'), join(baseTree, 'node_modules'));
  for (const script of ['bpf/build.sh', 'native/build.sh', 'tools/build.sh']) run(baseTree, 'bash', [script]);
  run(baseTree, 'npx', ['tsc', '-p', 'tsconfig.json']);

  const seen = new Map<string, { unit: string; base: number[]; head: number[] }>();
  const collect = (side: 'base' | 'head', figures: Figure[]): void => {
    for (const f of figures) {
      const e = seen.get(f.name) ?? { unit: f.unit, base: [], head: [] };
      e[side].push(f.value);
      seen.set(f.name, e);
    }
  };
  for (let r = 0; r < rounds; r++) {
    const order: ('base' | 'head')[] = r % 2 ? ['head', 'base'] : ['base', 'head'];
    for (const side of order) {
      console.error(`bench:compare: round ${r + 1}/${rounds}, ${side}`);
      collect(side, benchOnce(side === 'base' ? baseTree : head));
    }
  }

  console.log(
    ['figure'.padEnd(48), 'unit'.padEnd(14), `base ${base}`.padEnd(16), 'head'.padEnd(14), 'head/base'].join(
      ' ',
    ),
  );
  for (const [name, e] of seen) {
    const b = e.base.length ? median(e.base) : NaN;
    const h = e.head.length ? median(e.head) : NaN;
    const ratio = Number.isFinite(b) && Number.isFinite(h) && b !== 0 ? (h / b).toFixed(3) : 'only one side';
    console.log(
      [
        name.padEnd(48),
        e.unit.padEnd(14),
        b.toPrecision(5).padEnd(16),
        h.toPrecision(5).padEnd(14),
        ratio,
      ].join(' '),
    );
  }
} finally {
  spawnSync('git', ['worktree', 'remove', '--force', baseTree], { cwd: head, stdio: 'ignore' });
  rmSync(baseTree, { recursive: true, force: true });
  spawnSync('git', ['worktree', 'prune'], { cwd: head, stdio: 'ignore' });
}
