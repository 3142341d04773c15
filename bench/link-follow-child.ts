/**
 * The measuring side of bench/link-follow.bench.ts, in a process of its own so its resident
 * memory is the follower's alone. `node link-follow-child.js latency|scale N`: prints one JSON
 * object on stdout.
 *
 * latency: N veth pairs created one after another, each host end matching the pattern; per link,
 *   ms from writing its `link add` line to a running `ip -batch` to the follower reporting it
 *   attached (both hooks), and to the follower starting to handle the link event.
 * scale: N veth pairs created in one `ip -batch` before the follower opens; ms of the open, which
 *   attaches every one of them, and RSS growth over it (after full collections).
 */
import { execFileSync, spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { filter, firstValueFrom } from 'rxjs';
import { silentLogger } from '../src/logger.js';
import { InterfaceMatcher } from '../src/net/interface-match.js';
import { FlowDatapath } from '../src/datapath/flow/datapath.js';
import { followLinks } from '../src/sources/follow-links.js';
import type { LinkFollower } from '../src/sources/link-follower.js';
import type { TcDirection } from '../src/datapath/index.js';

const [mode, countArg] = process.argv.slice(2);
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

await (mode === 'latency' ? latency() : scale());
