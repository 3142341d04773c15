/**
 * Shared pieces of the datapath kernel tests: the root check, the test BPF objects, veth pairs in
 * network namespaces (all named rxdp*), and readers of what bpftool and tc report.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DatapathError } from '../../src/datapath/errors.js';
import { buildChild as buildTsChild, type BuiltChild } from '../fixtures/child.js';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface KernelGate {
  skip: boolean;
  /** Why the tests skip; appended to the describe title so the report states it. */
  title: (name: string) => string;
}

/**
 * Kernel tests need root. Elsewhere they skip with the reason; with CI=true they must run, so a
 * missing privilege fails the file instead.
 */
export function kernelGate(): KernelGate {
  const uid = process.getuid?.() ?? -1;
  if (uid === 0) return { skip: false, title: (name) => name };
  const reason = 'needs root (BPF, bpffs, network namespaces); run the kernel tests as root';
  if (process.env.CI === 'true') throw new Error(`kernel tests: ${reason}; CI=true does not allow skipping`);
  return { skip: true, title: (name) => `${name} (skipped: ${reason})` };
}

/**
 * Path of bpf/<name>.o, building the objects first when the source is newer. Test files run in
 * parallel, so the build runs under a lock directory.
 */
export function testObject(name: string): string {
  const obj = join(repoRoot, 'bpf', `${name}.o`);
  const src = join(repoRoot, 'bpf', `${name}.c`);
  if (existsSync(obj) && statSync(obj).mtimeMs >= statSync(src).mtimeMs) return obj;
  const lock = '/tmp/rxdp-bpf-build.lock';
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      if (Date.now() > deadline) throw new Error(`build ${name}.o: lock ${lock} held for 60 s; remove it`);
      spawnSync('sleep', ['0.1']);
    }
  }
  try {
    if (!existsSync(obj) || statSync(obj).mtimeMs < statSync(src).mtimeMs) {
      // Other engineers' sources may not compile yet; only this object matters here.
      spawnSync('bash', [join(repoRoot, 'bpf', 'build.sh')], { stdio: 'ignore' });
    }
  } finally {
    rmdirSync(lock);
  }
  if (!existsSync(obj)) throw new Error(`build ${name}.o failed: run 'bash bpf/build.sh' to see why`);
  return obj;
}

export function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function quiet(cmd: string, args: string[]): void {
  spawnSync(cmd, args, { stdio: 'ignore' });
}

export interface VethNs {
  ns: string;
  /** The end in the test's (root) namespace, where programs attach. */
  hostIf: string;
  /** The end inside `ns`. */
  peerIf: string;
  hostIp: string;
  peerIp: string;
}

/**
 * A veth pair rxdp<id>h (here, hostIp) <-> rxdp<id>p (in netns rxdp-<id>, peerIp) on
 * 10.213.<subnet>.0/30, with IPv6 off so only the test's own packets cross it.
 */
export function createVethNs(id: string, subnet: number): VethNs {
  const v: VethNs = {
    ns: `rxdp-${id}`,
    hostIf: `rxdp${id}h`,
    peerIf: `rxdp${id}p`,
    hostIp: `10.213.${subnet}.1`,
    peerIp: `10.213.${subnet}.2`,
  };
  destroyVethNs(v);
  sh('ip', ['netns', 'add', v.ns]);
  sh('ip', ['link', 'add', v.hostIf, 'type', 'veth', 'peer', 'name', v.peerIf, 'netns', v.ns]);
  quiet('sysctl', ['-qw', `net.ipv6.conf.${v.hostIf}.disable_ipv6=1`]);
  quiet('ip', ['netns', 'exec', v.ns, 'sysctl', '-qw', `net.ipv6.conf.${v.peerIf}.disable_ipv6=1`]);
  sh('ip', ['addr', 'add', `${v.hostIp}/30`, 'dev', v.hostIf]);
  sh('ip', ['link', 'set', v.hostIf, 'up']);
  sh('ip', ['-n', v.ns, 'addr', 'add', `${v.peerIp}/30`, 'dev', v.peerIf]);
  sh('ip', ['-n', v.ns, 'link', 'set', v.peerIf, 'up']);
  sh('ip', ['-n', v.ns, 'link', 'set', 'lo', 'up']);
  return v;
}

export function destroyVethNs(v: VethNs): void {
  quiet('ip', ['link', 'del', v.hostIf]);
  quiet('ip', ['netns', 'del', v.ns]);
}

/** Sends exactly `count` ICMP echo requests from the namespace to the host end. */
export function pingFromNs(v: VethNs, count: number): void {
  sh('ip', ['netns', 'exec', v.ns, 'ping', '-q', '-c', String(count), '-i', '0.05', '-W', '2', v.hostIp]);
}

/** Sends exactly `count` ICMP echo requests from here to the namespace end. */
export function pingToNs(v: VethNs, count: number): void {
  sh('ping', ['-q', '-c', String(count), '-i', '0.05', '-W', '2', '-I', v.hostIf, v.peerIp]);
}

export function ifindexOf(ifname: string): number {
  const j = JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', ifname])) as { ifindex: number }[];
  return j[0]!.ifindex;
}

export interface BpftoolLink {
  id: number;
  type: string;
  prog_id: number;
  ifindex?: number;
  attach_type?: string | number;
}

/** TCX links on an interface, as `bpftool -j link show` lists them. */
export function tcxLinksOn(ifindex: number): BpftoolLink[] {
  const links = JSON.parse(sh('bpftool', ['-j', 'link', 'show'])) as BpftoolLink[];
  return links.filter((l) => l.type === 'tcx' && l.ifindex === ifindex);
}

const BPF_LINK_TYPE_TCX = 11;

export interface LinkRow {
  id: number;
  type: number | string;
  prog_id: number;
}

/**
 * `bpftool -j link show`. bpftool fails when a link of another test goes away while it walks the
 * links (it looks each id up after listing it); walking again sees a consistent set.
 */
function bpftoolLinks(): string {
  for (let attempt = 1; ; attempt++) {
    try {
      return sh('bpftool', ['-j', 'link', 'show']);
    } catch (err) {
      if (attempt === 5) throw err;
    }
  }
}

/**
 * TCX links running one of these programs. bpftool 7.1 predates TCX, so it prints the link type as
 * a number and no ifindex; program ids are unique, which identifies the test's links anyway.
 */
export function tcxLinksRunning(...progIds: number[]): LinkRow[] {
  const rows = JSON.parse(bpftoolLinks()) as LinkRow[];
  return rows.filter(
    (l) => (l.type === BPF_LINK_TYPE_TCX || l.type === 'tcx') && progIds.includes(l.prog_id),
  );
}

/**
 * The TCX links this process holds open (fdinfo link_type tcx). A TCX link the follower made lives
 * only by its fd and its pin: with neither, the kernel has detached it.
 */
export function tcxLinkFds(): number[] {
  const out: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let info: string;
    try {
      info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    } catch {
      continue;
    }
    if (/^link_type:\s*tcx$/m.test(info)) out.push(Number(fd));
  }
  return out;
}

/** Filters of an interface hook, as `tc -j filter show dev X ingress|egress` lists them. */
export function tcFilters(ifname: string, direction: 'ingress' | 'egress'): unknown[] {
  const out = sh('tc', ['-j', 'filter', 'show', 'dev', ifname, direction]).trim();
  return out === '' ? [] : (JSON.parse(out) as unknown[]);
}

/** A fresh directory under /sys/fs/bpf for one test, removed by the caller. */
export function bpffsDir(name: string): string {
  const dir = `/sys/fs/bpf/rxdp-${name}-${process.pid}`;
  quiet('rm', ['-rf', dir]);
  return dir;
}

/**
 * Transpiles test/kernel/datapath-child.ts and the datapath modules it imports into a temporary
 * directory and returns the child's entry; run it with `node <entry> ...`.
 */
export function buildChild(): BuiltChild {
  return buildTsChild('test/kernel/datapath-child.ts');
}

/** An Ethernet + IPv4 + ICMP echo request frame with 56 bytes of payload: 98 bytes, like ping's. */
export function icmpEchoFrame(): Uint8Array {
  const f = new Uint8Array(98);
  const v = new DataView(f.buffer);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1], 0);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, 84);
  f[22] = 64;
  f[23] = 1;
  f.set([10, 213, 0, 2, 10, 213, 0, 1], 26);
  f[34] = 8;
  return f;
}

/** The DatapathError fn throws; anything else thrown is rethrown, and nothing thrown fails. */
export function thrown(fn: () => unknown): DatapathError {
  try {
    fn();
  } catch (err) {
    if (err instanceof DatapathError) return err;
    throw err;
  }
  throw new Error('expected a DatapathError, nothing was thrown');
}

/** A u32 in host byte order, as map key or value bytes. */
export function u32(n: number): Uint8Array {
  return new Uint8Array(new Uint32Array([n]).buffer);
}

/** A u64 in host byte order, as map key or value bytes. */
export function u64(n: number): Uint8Array {
  return new Uint8Array(new BigUint64Array([BigInt(n)]).buffer);
}
