/**
 * Following interfaces by pattern (ebpf_flows with a glob or regex in `interfaces`): how long
 * after a link appears its flows are counted, what 1,000 attached interfaces cost, and how long
 * the event loop waits while they are attached and detached (against doing it on the JS thread, as
 * the follower did before its attaches and its stop's detaches moved to a worker thread, in the
 * same run). Each part
 * runs in a child process (bench/link-follow-child.ts) so its memory is measured alone. Needs root
 * and the built tree.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { BenchContext } from './lib.js';

const CHILD = fileURLToPath(new URL('./link-follow-child.js', import.meta.url));
const MB = 1024 * 1024;

function child<T>(args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [CHILD, ...args], { maxBuffer: 16 * MB }, (err, stdout, stderr) => {
      if (err) reject(new Error(`link-follow child ${args.join(' ')}: ${err.message} ${stderr}`));
      else resolve(JSON.parse(stdout) as T);
    });
  });
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export default async function linkFollow(ctx: BenchContext): Promise<void> {
  const links = 100;
  const { ms, seen } = await child<{ ms: number[]; seen: number[] }>(['latency', String(links)]);
  const seenP99 = { name: 'link_follow.appear_to_event_p99', value: percentile(seen, 99) };
  ctx.report({
    ...seenP99,
    unit: 'ms',
    note: `from 'link add' to the follower handling the link event (median ${percentile(seen, 50).toFixed(1)})`,
  });
  ctx.report({
    name: 'link_follow.appear_to_attach_p99',
    value: percentile(ms, 99),
    unit: 'ms',
    target: { value: 100, better: 'lower' },
    baseline: seenP99,
    note: `${links} veth pairs one by one, from 'link add' to attached (both hooks); median ${percentile(ms, 50).toFixed(1)}, max ${Math.max(...ms).toFixed(1)}`,
  });
  const scale = ctx.quick ? 200 : 1000;
  const r = await child<{ totalMs: number; rssGrowthBytes: number; links: number }>(['scale', String(scale)]);
  ctx.report({
    name: `link_follow.attach_${scale}_total`,
    value: r.totalMs,
    unit: 'ms',
    note: `${scale} veth pairs existing before the follower opens: from the open to every one attached; ${r.links} TC links`,
  });
  ctx.report({
    name: `link_follow.rss_growth_${scale}`,
    value: r.rssGrowthBytes / MB,
    unit: 'MB',
    target: { value: 50, better: 'lower' },
    note: 'resident memory after the open minus before it, after full collections',
  });
  await stalls(ctx, scale);
}

interface Watched {
  maxGapMs: number;
  delayMaxMs: number;
  ticks: number;
  ms: number;
}

/** A figure and its same-run baseline (`<name>_sync`), both in ms. */
function withBaseline(
  ctx: BenchContext,
  name: string,
  values: { sync: number; measured: number },
  notes: { sync: string; measured: string },
): void {
  const baseline = { name: `${name}_sync`, value: values.sync };
  ctx.report({ ...baseline, unit: 'ms', note: notes.sync });
  ctx.report({ name, value: values.measured, unit: 'ms', baseline, note: notes.measured });
}

async function stalls(ctx: BenchContext, n: number): Promise<void> {
  type Stall = { attach: Watched; detach: Watched; links: number };
  const sync = await child<Stall>(['stall', String(n), 'sync']);
  const async_ = await child<Stall>(['stall', String(n), 'async']);
  withBaseline(
    ctx,
    `link_follow.loop_stall_attach_${n}`,
    { sync: sync.attach.maxGapMs, measured: async_.attach.maxGapMs },
    {
      sync: `baseline: ${n} links of a namespace attached on the JS thread (withNetns + attachTc per link); ${sync.attach.ticks} ticks of a 10 ms timer ran`,
      measured: `longest gap between 10 ms timer ticks while the follower attaches ${n} links (${async_.links} TC links) of a namespace; event loop delay max ${async_.attach.delayMaxMs.toFixed(1)} ms; ${async_.attach.ticks} ticks ran`,
    },
  );
  withBaseline(
    ctx,
    `link_follow.attach_${n}_ns_total`,
    { sync: sync.attach.ms, measured: async_.attach.ms },
    {
      sync: 'baseline: the same attaches on the JS thread',
      measured: 'from followLinks() to opened: every link attached, one after another on a worker thread',
    },
  );
  withBaseline(
    ctx,
    `link_follow.loop_stall_close_${n}`,
    { sync: sync.detach.maxGapMs, measured: async_.detach.maxGapMs },
    {
      sync: `baseline: close() of every link on the JS thread, as a stop did; ${sync.detach.ticks} ticks ran`,
      measured: `longest gap between 10 ms timer ticks while the follower's closeAsync() detaches every link on a worker thread, as a stop does; event loop delay max ${async_.detach.delayMaxMs.toFixed(1)} ms; ${async_.detach.ticks} ticks ran`,
    },
  );
  withBaseline(
    ctx,
    `link_follow.detach_${n}_ns_total`,
    { sync: sync.detach.ms, measured: async_.detach.ms },
    {
      sync: 'baseline: the same detaches on the JS thread',
      measured:
        'closeAsync(): every link detached, one after another on a worker thread (the kernel serializes them)',
    },
  );
}
