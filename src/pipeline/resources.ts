/**
 * Memory a pipeline will lock in the kernel, checked at validate before anything is created. A
 * per-CPU hash map is allocated whole when it is created, a value slot for every possible CPU of
 * every entry: `cache_max_flows: 100000000` on a 2-CPU host asks for tens of GB, and the kernel
 * tries for minutes before the OOM killer picks a process, often not ours. Refused here, the user
 * reads the estimate instead.
 */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { DNS_NAME, DROP_VALUE_STRIDE, FLOW_KEY, FLOW_VALUE_STRIDE } from '../datapath/flow/index.js';

/** What the machine can give: read from /proc and /sys, or given by a test. */
export interface MachineMemory {
  /** MemAvailable of /proc/meminfo, in bytes. */
  availableBytes: number;
  /** CPUs the kernel sizes per-CPU values for (/sys/devices/system/cpu/possible). */
  possibleCpus: number;
  /**
   * RLIMIT_MEMLOCK in bytes (Infinity when unlimited) where the kernel charges BPF maps to it
   * (before Linux 5.11; later kernels charge the memory cgroup); undefined where it does not apply.
   */
  memlockBytes?: number;
}

/** Of the available memory, a pipeline may lock at most this share; the rest keeps the host alive. */
export const LOCKABLE_SHARE = 0.5;

/** One problem with a size option, at the option's key. */
export interface ResourceProblem {
  option: string;
  message: string;
}

function cpusOf(list: string): number {
  let n = 0;
  for (const part of list.trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || !Number.isInteger(a)) continue;
    n += b === undefined ? 1 : b - a + 1;
  }
  return n;
}

function kernelBefore(major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release());
  if (!m) return false;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj < major || (maj === major && min < minor);
}

let cached: MachineMemory | undefined;

/** This machine's memory, read once per process (MemAvailable moves, but not by orders of magnitude). */
export function machineMemory(): MachineMemory {
  if (cached) return cached;
  let availableBytes = Infinity;
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m) availableBytes = Number(m[1]) * 1024;
  } catch {
    // no /proc: nothing to compare with
  }
  let possibleCpus = 1;
  try {
    possibleCpus = Math.max(1, cpusOf(readFileSync('/sys/devices/system/cpu/possible', 'utf8')));
  } catch {
    // keep 1: the estimate is then a lower bound
  }
  let memlockBytes: number | undefined;
  if (kernelBefore(5, 11)) {
    try {
      const m = /^Max locked memory\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
      if (m) memlockBytes = m[1] === 'unlimited' ? Infinity : Number(m[1]);
    } catch {
      // unknown: not compared
    }
  }
  cached = { availableBytes, possibleCpus, ...(memlockBytes === undefined ? {} : { memlockBytes }) };
  return cached;
}

/** `19.2 GB`, `512.0 MB`: decimal units, as free(1) -h and most people read them. */
export function formatBytes(bytes: number): string {
  const units = ['bytes', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let v = bytes;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${v} bytes` : `${v.toFixed(1)} ${units[i]}`;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

interface Estimate {
  option: string;
  value: number;
  bytes: number;
  /** How the estimate is made, in words. */
  how: string;
}

/** The flow maps of bpf/flow.o: flow_map_a and flow_map_b, swapped at every eviction. */
const FLOW_MAPS = 2;

function ebpfFlows(config: Record<string, unknown>, machine: MachineMemory): Estimate[] {
  const out: Estimate[] = [];
  const flows = config.cache_max_flows;
  if (typeof flows === 'number') {
    const perEntry = FLOW_VALUE_STRIDE * machine.possibleCpus + FLOW_KEY.size;
    out.push({
      option: 'cache_max_flows',
      value: flows,
      bytes: FLOW_MAPS * flows * perEntry,
      how: `${FLOW_MAPS} flow maps x ${flows} entries x (${FLOW_VALUE_STRIDE} bytes x ${machine.possibleCpus} possible cpus + ${FLOW_KEY.size} bytes of key)`,
    });
  }
  const ring = config.ringbuf_size_bytes;
  if (typeof ring === 'number') {
    out.push({ option: 'ringbuf_size_bytes', value: ring, bytes: ring, how: 'the ring buffer' });
  }
  const drops = config.drops_max_flows;
  if (config.drops === true && typeof drops === 'number') {
    const perEntry = DROP_VALUE_STRIDE * machine.possibleCpus + FLOW_KEY.size;
    out.push({
      option: 'drops_max_flows',
      value: drops,
      bytes: FLOW_MAPS * drops * perEntry,
      how: `${FLOW_MAPS} drop maps x ${drops} entries x (${DROP_VALUE_STRIDE} bytes x ${machine.possibleCpus} possible cpus + ${FLOW_KEY.size} bytes of key)`,
    });
  }
  const names = config.dns_query_name_max_flows;
  if (config.dns_query_name === true && typeof names === 'number') {
    out.push({
      option: 'dns_query_name_max_flows',
      value: names,
      bytes: names * (DNS_NAME.size + FLOW_KEY.size),
      how: `one name map x ${names} entries x (${DNS_NAME.size} bytes of name + ${FLOW_KEY.size} bytes of key)`,
    });
  }
  return out;
}

/** Size options of a component that lock kernel memory, by `<kind>.<type>`. */
const ESTIMATORS: Record<string, (config: Record<string, unknown>, machine: MachineMemory) => Estimate[]> = {
  'source.ebpf_flows': ebpfFlows,
};

/** True when the component has options whose memory is checked (and `machine` is worth reading). */
export function locksMemory(kind: string, type: string): boolean {
  return `${kind}.${type}` in ESTIMATORS;
}

/**
 * Why `bytes` of kernel memory are more than `who` may lock on `machine` (half of what is
 * available, and RLIMIT_MEMLOCK where the kernel charges maps to it), as the end of a sentence
 * that says what to do; undefined when they fit.
 */
export function beyondLockable(bytes: number, machine: MachineMemory, who: string): string | undefined {
  if (bytes > machine.availableBytes * LOCKABLE_SHARE) {
    return `but the machine has ${formatBytes(machine.availableBytes)} available and ${who} may lock at most half of it; lower it`;
  }
  if (machine.memlockBytes !== undefined && bytes > machine.memlockBytes) {
    return `but RLIMIT_MEMLOCK allows ${formatBytes(machine.memlockBytes)}; lower it, or raise the limit (ulimit -l, LimitMEMLOCK= in a systemd unit)`;
  }
  return undefined;
}

/**
 * Problems with the kernel memory a component's config asks for: sizes the kernel refuses, or
 * more than the machine can lock. `config` is the validated config, defaults filled in.
 */
export function checkResources(
  kind: string,
  type: string,
  config: Record<string, unknown>,
  machine: MachineMemory,
): ResourceProblem[] {
  const estimate = ESTIMATORS[`${kind}.${type}`];
  if (!estimate) return [];
  const problems: ResourceProblem[] = [];
  const ring = config.ringbuf_size_bytes;
  if (typeof ring === 'number' && !isPowerOfTwo(ring)) {
    const below = 2 ** Math.floor(Math.log2(ring));
    problems.push({
      option: 'ringbuf_size_bytes',
      message: `must be a power of two (the kernel refuses other sizes), got ${ring}; use ${below} or ${below * 2}`,
    });
  }
  const estimates = estimate(config, machine);
  const total = estimates.reduce((sum, e) => sum + e.bytes, 0);
  // Name the option that asks for the most: lowering it helps most.
  const largest = [...estimates].sort((a, b) => b.bytes - a.bytes)[0];
  if (!largest) return problems;
  const others = estimates.filter((e) => e !== largest);
  const rest =
    others.length === 0
      ? ''
      : `; with ${others.map((e) => `${e.option} ${formatBytes(e.bytes)}`).join(', ')}: ${formatBytes(total)} in all`;
  const head = `${largest.option} ${largest.value} would lock about ${formatBytes(largest.bytes)} (${largest.how})${rest}`;
  const beyond = beyondLockable(total, machine, 'a pipeline');
  if (beyond !== undefined) problems.push({ option: largest.option, message: `${head}, ${beyond}` });
  return problems;
}
