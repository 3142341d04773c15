/**
 * Following interfaces by pattern (ebpf_flows with a glob or regex in `interfaces`): how long
 * after a link appears its flows are counted, what 1,000 attached interfaces cost, and how long
 * the event loop waits while they are attached (against attaching them on the JS thread, as the
 * follower did before its attaches moved to a worker thread, in the same run). Each part
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

async function stalls(ctx: BenchContext, n: number): Promise<void> {
  type Stall = { attach: Watched; detach: Watched; links: number };
  const sync = await child<Stall>(['stall', String(n), 'sync']);
  const async_ = await child<Stall>(['stall', String(n), 'async']);
  const syncStall = { name: `link_follow.loop_stall_attach_${n}_sync`, value: sync.attach.maxGapMs };
  ctx.report({
    ...syncStall,
    unit: 'ms',
    note: `baseline: ${n} links of a namespace attached on the JS thread (withNetns + attachTc per link); ${sync.attach.ticks} ticks of a 10 ms timer ran`,
  });
  ctx.report({
    name: `link_follow.loop_stall_attach_${n}`,
    value: async_.attach.maxGapMs,
    unit: 'ms',
    baseline: syncStall,
    note: `longest gap between 10 ms timer ticks while the follower attaches ${n} links (${async_.links} TC links) of a namespace; event loop delay max ${async_.attach.delayMaxMs.toFixed(1)} ms; ${async_.attach.ticks} ticks ran`,
  });
  const syncTotal = { name: `link_follow.attach_${n}_ns_total_sync`, value: sync.attach.ms };
  ctx.report({ ...syncTotal, unit: 'ms', note: 'baseline: the same attaches on the JS thread' });
  ctx.report({
    name: `link_follow.attach_${n}_ns_total`,
    value: async_.attach.ms,
    unit: 'ms',
    baseline: syncTotal,
    note: 'from followLinks() to opened: every link attached, one after another on a worker thread',
  });
  ctx.report({
    name: `link_follow.loop_stall_close_${n}`,
    value: async_.detach.maxGapMs,
    unit: 'ms',
    note: `close() detaches every link on the JS thread (${async_.detach.ms.toFixed(0)} ms)`,
  });
}
