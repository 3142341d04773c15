/**
 * The measuring side of bench/link-follow.bench.ts, in a process of its own so its resident
 * memory is the follower's alone. `node link-follow-child.js latency|scale N`: prints one JSON
 * object on stdout.
 *
 * latency: N veth pairs created one after another, each host end matching the pattern; per link,
 *   ms from writing its `link add` line to a running `ip -batch` to the follower reporting it
 *   attached (both hooks), and to the follower starting to handle the link event.
 * scale: N veth pairs created in one `ip -batch` before the follower opens; ms from the open to
 *   every one of them attached, and RSS growth over it (after full collections).
 * stall N async|sync: N veth pairs in a namespace of their own, attached (both hooks) by the
 *   follower (async), or as the follower attached before its attaches left the event loop: one
 *   withNetns + attachTc per link, every link in one pass on the JS thread (sync). Reports the
 *   longest gap between the ticks of a 10 ms interval timer while they are attached, the event
 *   loop delay histogram's max, the ticks that ran, the total attach time, and the same for the
 *   detach of them all: closeAsync() as a stop does (async), or close() per link (sync).
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { filter, firstValueFrom } from 'rxjs';
import { silentLogger } from '../src/logger.js';
import { InterfaceMatcher } from '../src/net/interface-match.js';
import { FlowDatapath } from '../src/datapath/flow/datapath.js';
import { followLinks, linkPinName } from '../src/sources/follow-links.js';
import type { LinkFollower } from '../src/sources/link-follower.js';
import { attachTc, type TcDirection, type TcLink } from '../src/datapath/index.js';
import { listLinks } from '../src/net/links.js';
import { withNetns } from '../src/net/netns.js';

const [mode, countArg, variant] = process.argv.slice(2);
const count = Number(countArg);
const tag = `rxbl${process.pid}`;
const FOLLOW = {
  netns_rescan_interval_ms: 1000,
  directions: ['ingress', 'egress'] as TcDirection[],
  attach_mode: 'auto' as const,
};

function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

function ip(args: string[], input?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    if (input !== undefined) child.stdin!.end(input);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`ip ${args.join(' ')}: ${err}`))));
  });
}

function removeLinks(names: string[]): void {
  if (names.length === 0) return;
  try {
    execFileSync('ip', ['-force', '-batch', '-'], {
      input: names.map((n) => `link del ${n}\n`).join(''),
      stdio: ['pipe', 'ignore', 'ignore'],
    });
  } catch {
    // Some were gone already.
  }
}

async function latency(): Promise<void> {
  // The follower's monitors never keep a process alive; this measurement must.
  const alive = setInterval(() => undefined, 1000);
  const names: string[] = [];
  const dp = FlowDatapath.open({ interfaces: [], instance: tag, maxFlows: 1024, ringbufBytes: 65536 });
  const follower = followLinks(dp, FOLLOW, InterfaceMatcher.parse([`/^${tag}a/`]), silentLogger());
  try {
    await follower.ready;
    // One `ip -batch` that runs all along: a line written to it creates the link at once, so the
    // clock starts when the link appears, give or take the pipe, not at a process spawn.
    const batch = spawn('ip', ['-force', '-batch', '-'], { stdio: ['pipe', 'ignore', 'inherit'] });
    const ms: number[] = [];
    const seen: number[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const name = `${tag}a${i}`;
        names.push(name);
        const attached = firstValueFrom(
          follower.events.pipe(filter((e) => e.type === 'attached' && e.ifname === name)),
        );
        const start = performance.now();
        batch.stdin.write(`link add ${name} type veth peer name ${tag}p${i}\n`);
        const event = await attached;
        ms.push(performance.now() - start);
        seen.push(event.at - start);
      }
    } finally {
      batch.stdin.end();
    }
    process.stdout.write(`${JSON.stringify({ ms, seen })}\n`);
  } finally {
    follower.close();
    dp.close();
    removeLinks(names);
    rmSync(`/sys/fs/bpf/rxflow-${tag}`, { recursive: true, force: true });
    clearInterval(alive);
  }
}

/** N links that exist before the follower opens: its first listing attaches them all. */
async function scale(): Promise<void> {
  const names: string[] = [];
  for (let i = 0; i < count; i++) names.push(`${tag}d${i}`);
  const dp = FlowDatapath.open({ interfaces: [], instance: tag, maxFlows: 1024, ringbufBytes: 65536 });
  let follower: LinkFollower | undefined;
  const alive = setInterval(() => undefined, 1000);
  try {
    await ip(
      ['-batch', '-'],
      names.map((n, i) => `link add ${n} type veth peer name ${tag}p${i}\n`).join(''),
    );
    collectGarbage();
    const rssBefore = process.memoryUsage().rss;
    const start = performance.now();
    follower = followLinks(dp, FOLLOW, InterfaceMatcher.parse([`/^${tag}d/`]), silentLogger());
    await follower.opened;
    const totalMs = performance.now() - start;
    await follower.ready;
    collectGarbage();
    const rssAfter = process.memoryUsage().rss;
    const links = follower.tcLinks().length;
    process.stdout.write(`${JSON.stringify({ totalMs, rssGrowthBytes: rssAfter - rssBefore, links })}\n`);
  } finally {
    follower?.close();
    dp.close();
    removeLinks(names);
    rmSync(`/sys/fs/bpf/rxflow-${tag}`, { recursive: true, force: true });
    clearInterval(alive);
  }
}

/** The longest gap between ticks of a 10 ms interval, and how many ran, while `work` runs. */
async function watchLoop(work: () => Promise<void> | void): Promise<{
  maxGapMs: number;
  delayMaxMs: number;
  ticks: number;
  ms: number;
}> {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  let last = performance.now();
  let maxGapMs = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGapMs = Math.max(maxGapMs, now - last);
    last = now;
    ticks++;
  }, 10);
  delay.enable();
  const start = performance.now();
  await work();
  const ms = performance.now() - start;
  // The gap that is still open when the work ends counts too.
  await new Promise((r) => setImmediate(r));
  maxGapMs = Math.max(maxGapMs, performance.now() - last);
  clearInterval(timer);
  delay.disable();
  return { maxGapMs, delayMaxMs: delay.max / 1e6, ticks, ms };
}

async function stall(): Promise<void> {
  const ns = `${tag}s`;
  const names: string[] = [];
  for (let i = 0; i < count; i++) names.push(`${tag}s${i}`);
  const dp = FlowDatapath.open({ interfaces: [], instance: tag, maxFlows: 1024, ringbufBytes: 65536 });
  const alive = setInterval(() => undefined, 1000);
  let follower: LinkFollower | undefined;
  let links: TcLink[] = [];
  try {
    execFileSync('ip', ['netns', 'add', ns]);
    await ip(
      ['-n', ns, '-batch', '-'],
      names.map((n, i) => `link add ${n} type veth peer name ${tag}p${i}\n`).join(''),
    );
    const attach = await watchLoop(async () => {
      if (variant === 'sync') {
        const linksDir = join(dp.pinDir, 'links');
        mkdirSync(linksDir, { recursive: true });
        const nsInfo = { ino: 0, label: ns, path: ns };
        for (const [ifindex, name] of listLinks(ns)) {
          if (!name.startsWith(`${tag}s`)) continue;
          withNetns(ns, () => {
            for (const direction of FOLLOW.directions) {
              const pinPath = join(linksDir, linkPinName(nsInfo, ifindex, direction));
              links.push(attachTc(dp.program(direction), name, direction, { mode: 'auto', pinPath }));
            }
          });
        }
      } else {
        follower = followLinks(
          dp,
          { ...FOLLOW, netns: ns },
          InterfaceMatcher.parse([`/^${tag}s/`]),
          silentLogger(),
        );
        await follower.opened;
        links = follower.tcLinks();
      }
    });
    const attached = links.length;
    // As at a stop: the follower detaches on a worker thread, one link after another; the
    // baseline detaches on the JS thread, as the follower's close() did before.
    const detach = await watchLoop(async () => {
      if (follower) await follower.closeAsync();
      else withNetns(ns, () => links.forEach((l) => l.close()));
    });
    process.stdout.write(`${JSON.stringify({ attach, detach, links: attached })}\n`);
  } finally {
    follower?.close();
    if (variant === 'sync') withNetns(ns, () => links.forEach((l) => l.close()));
    dp.close();
    try {
      execFileSync('ip', ['netns', 'del', ns]);
    } catch {
      // not made
    }
    rmSync(`/sys/fs/bpf/rxflow-${tag}`, { recursive: true, force: true });
    clearInterval(alive);
  }
}

await (mode === 'latency' ? latency() : mode === 'stall' ? stall() : scale());
