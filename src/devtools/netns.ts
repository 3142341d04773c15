import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { withNetns } from '../net/netns.js';
import { deleteLinkSync, deleteNetnsSync, run, runSync, type ExecResult, type RunOptions } from './system.js';
import { DevtoolError } from './tools.js';

/**
 * Network namespaces joined by veth pairs: the demo's network and the kernel tests' topologies
 * (test/fixtures/netns.ts adds names and cleanup registration on top of these).
 *
 * Veth ends are made quiet so a packet counter measures only the traffic sent on purpose: no IPv6
 * link-local address (so no DAD and no router solicitation), IPv6 addresses added with `nodad`,
 * MLD report retransmits squeezed into a millisecond, and `pinNeighbours()` to replace ARP and
 * neighbour discovery with permanent entries. TSO/GSO/GRO are off unless asked for, so one packet
 * on the veth is one segment of the sender (interface counters count buffers, not segments).
 */

/** Interface counters as the kernel reports them (`ip -s -j link`), 64-bit. */
export interface LinkStats {
  rxPackets: number;
  rxBytes: number;
  rxDropped: number;
  txPackets: number;
  txBytes: number;
  txDropped: number;
}

interface IpLinkJson {
  ifname: string;
  ifindex: number;
  address?: string;
  stats64?: {
    rx: { packets: number; bytes: number; dropped: number };
    tx: { packets: number; bytes: number; dropped: number };
  };
}

/** What naming a namespace takes: its `ip netns` name. */
export interface NamedNetns {
  readonly name: string;
}

function ipArgs(ns: NamedNetns | undefined, args: string[]): string[] {
  return ns === undefined ? args : ['-n', ns.name, ...args];
}

/** Reads the counters of `ifname` in `ns` (the root namespace when undefined). */
export async function linkStats(ns: NamedNetns | undefined, ifname: string): Promise<LinkStats> {
  const { stdout } = await run('ip', ipArgs(ns, ['-s', '-j', 'link', 'show', 'dev', ifname]));
  const [link] = JSON.parse(stdout) as IpLinkJson[];
  const s = link?.stats64;
  if (s === undefined) {
    throw new DevtoolError('ESTATS', `link stats ${ifname}: ip printed no stats64; check iproute2's version`);
  }
  return {
    rxPackets: s.rx.packets,
    rxBytes: s.rx.bytes,
    rxDropped: s.rx.dropped,
    txPackets: s.tx.packets,
    txBytes: s.tx.bytes,
    txDropped: s.tx.dropped,
  };
}

/** The difference `after - before` of each counter. */
export function statsDelta(before: LinkStats, after: LinkStats): LinkStats {
  return {
    rxPackets: after.rxPackets - before.rxPackets,
    rxBytes: after.rxBytes - before.rxBytes,
    rxDropped: after.rxDropped - before.rxDropped,
    txPackets: after.txPackets - before.txPackets,
    txBytes: after.txBytes - before.txBytes,
    txDropped: after.txDropped - before.txDropped,
  };
}

/** A named network namespace (`ip netns add`). */
export class Netns implements NamedNetns {
  /** `undo` deletes the namespace; `dispose()` calls it. */
  constructor(
    readonly name: string,
    private readonly undo: () => void = () => deleteNetnsSync(name),
  ) {}

  /** Runs `file args` inside the namespace (`ip netns exec`) to completion. */
  exec(file: string, args: string[], opts?: RunOptions): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', this.name, file, ...args], opts);
  }

  /**
   * Starts `file args` inside the namespace. `ip netns exec` replaces itself with the command, so
   * the child's pid is the command's. The caller owns the process.
   */
  spawn(file: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.name, file, ...args], opts);
  }

  /** Runs `ip -n <name> args`; resolves to its stdout. */
  async ip(args: string[]): Promise<string> {
    return (await run('ip', ['-n', this.name, ...args])).stdout;
  }

  /** Sets sysctls inside the namespace, e.g. `{ 'net.ipv4.ip_forward': 1 }`. */
  async sysctl(settings: Record<string, string | number>): Promise<void> {
    const pairs = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
    await this.exec('sysctl', ['-q', '-w', ...pairs]);
  }

  linkStats(ifname: string): Promise<LinkStats> {
    return linkStats(this, ifname);
  }

  /**
   * Runs `fn` with the calling thread inside this namespace, and returns to the original one
   * afterwards, even if `fn` throws. Sockets, netlink calls, BPF attachments by ifindex and child
   * processes spawned inside `fn` belong to this namespace. `fn` must be synchronous: anything it
   * left pending would run after the switch back.
   */
  enterSync<T>(fn: () => T): T {
    return withNetns(this.name, () => {
      const result = fn();
      if (typeof (result as { then?: unknown } | undefined)?.then === 'function') {
        throw new DevtoolError('EASYNC', `netns ${this.name}: enterSync takes a synchronous function`);
      }
      return result;
    });
  }

  /** Deletes the namespace now (and the veth ends inside it). Safe to call twice. */
  dispose(): void {
    this.undo();
  }
}

/**
 * Adds a network namespace and brings its `lo` up. A namespace of that name left behind (by a
 * killed process that used the same name) is replaced.
 */
export async function addNetns(name: string): Promise<void> {
  try {
    await run('ip', ['netns', 'add', name]);
  } catch (error) {
    if (!String(error).includes('File exists')) {
      throw error;
    }
    deleteNetnsSync(name);
    await run('ip', ['netns', 'add', name]);
  }
  await run('ip', ['-n', name, 'link', 'set', 'dev', 'lo', 'up']);
}

export interface VethEndOptions<N extends NamedNetns = Netns> {
  /** The namespace of this end; the root namespace when absent (then no addresses allowed). */
  ns?: N;
  /** IPv4 address with prefix length, e.g. `192.0.2.1/24`. */
  ipv4?: string;
  /** IPv6 address with prefix length, e.g. `2001:db8::1/64`; added with `nodad`. */
  ipv6?: string;
}

export interface VethEnd<N extends NamedNetns = Netns> {
  readonly ns: N | undefined;
  readonly ifname: string;
  readonly ifindex: number;
  readonly mac: string;
  /** The IPv4 address without its prefix length. */
  readonly ipv4: string | undefined;
  /** The IPv6 address without its prefix length. */
  readonly ipv6: string | undefined;
  stats(): Promise<LinkStats>;
}

export interface VethLinkOptions {
  /** Keep TSO/GSO/GRO on (default off, so one counted packet is one segment). */
  offloads?: boolean;
  mtu?: number;
}

/** Refuses addresses on a root-namespace end: they would change the host's routes. */
export function checkVethEnds(a: VethEndOptions<NamedNetns>, b: VethEndOptions<NamedNetns>): void {
  for (const end of [a, b]) {
    if (end.ns === undefined && (end.ipv4 !== undefined || end.ipv6 !== undefined)) {
      throw new DevtoolError(
        'EROOTADDR',
        'veth: an end in the root namespace takes no addresses (it would change the host routes); put it in a namespace',
      );
    }
  }
}

/**
 * `ip link add nameA type veth peer name nameB`, each end created directly in its namespace, so
 * the pair never appears in the root namespace unless asked to.
 */
export async function addVethPair(
  nameA: string,
  a: VethEndOptions<NamedNetns>,
  nameB: string,
  b: VethEndOptions<NamedNetns>,
): Promise<void> {
  checkVethEnds(a, b);
  const where = (ns: NamedNetns | undefined): string[] => (ns === undefined ? [] : ['netns', ns.name]);
  await run('ip', [
    'link',
    'add',
    nameA,
    ...where(a.ns),
    'type',
    'veth',
    'peer',
    'name',
    nameB,
    ...where(b.ns),
  ]);
}

/** Deletes one veth end in `ns` (or the root namespace); an end already gone is not an error. */
export function deleteVethSync(ns: NamedNetns | undefined, ifname: string): void {
  if (ns === undefined) {
    deleteLinkSync(ifname);
    return;
  }
  try {
    runSync('ip', ['-n', ns.name, 'link', 'del', 'dev', ifname]);
  } catch (error) {
    // Gone with its namespace, or already deleted: nothing left to undo.
    const text = String(error);
    if (!text.includes('Cannot find device') && !text.includes('No such file')) {
      throw error;
    }
  }
}

function stripPrefixLen(cidr: string | undefined): string | undefined {
  return cidr?.split('/')[0];
}

async function prepareEnd(
  end: VethEndOptions<NamedNetns>,
  ifname: string,
  opts: VethLinkOptions,
): Promise<void> {
  const ip = (args: string[]): Promise<ExecResult> => run('ip', ipArgs(end.ns, args));
  const exec = (file: string, args: string[]): Promise<ExecResult> =>
    run(
      end.ns === undefined ? file : 'ip',
      end.ns === undefined ? args : ['netns', 'exec', end.ns.name, file, ...args],
    );
  await ip(['link', 'set', 'dev', ifname, 'addrgenmode', 'none']);
  const sysctls =
    end.ns === undefined
      ? // A root-namespace end must never route test traffic onto the host's networks.
        [`net.ipv4.conf.${ifname}.forwarding=0`, `net.ipv6.conf.${ifname}.disable_ipv6=1`]
      : [
          `net.ipv6.conf.${ifname}.accept_ra=0`,
          `net.ipv6.conf.${ifname}.router_solicitations=0`,
          `net.ipv6.conf.${ifname}.mldv1_unsolicited_report_interval=1`,
          `net.ipv6.conf.${ifname}.mldv2_unsolicited_report_interval=1`,
        ];
  await exec('sysctl', ['-q', '-w', ...sysctls]);
  if (opts.offloads !== true) {
    await exec('ethtool', ['-K', ifname, 'tso', 'off', 'gso', 'off', 'gro', 'off']);
  }
  if (opts.mtu !== undefined) {
    await ip(['link', 'set', 'dev', ifname, 'mtu', String(opts.mtu)]);
  }
  if (end.ipv4 !== undefined) {
    await ip(['addr', 'add', end.ipv4, 'dev', ifname]);
  }
  if (end.ipv6 !== undefined) {
    await ip(['-6', 'addr', 'add', end.ipv6, 'dev', ifname, 'nodad']);
  }
}

async function describeEnd<N extends NamedNetns>(
  end: VethEndOptions<N>,
  ifname: string,
): Promise<VethEnd<N>> {
  const { stdout } = await run('ip', ipArgs(end.ns, ['-j', 'link', 'show', 'dev', ifname]));
  const [link] = JSON.parse(stdout) as IpLinkJson[];
  if (link?.address === undefined) {
    throw new DevtoolError('ELINK', `veth ${ifname}: ip shows no MAC address`);
  }
  const ns = end.ns;
  return {
    ns,
    ifname,
    ifindex: link.ifindex,
    mac: link.address,
    ipv4: stripPrefixLen(end.ipv4),
    ipv6: stripPrefixLen(end.ipv6),
    stats: () => linkStats(ns, ifname),
  };
}

/**
 * Makes both ends of a pair made by {@link addVethPair} quiet, addressed and up, and describes
 * them (ifindex, MAC). The caller deletes the pair if this rejects.
 */
export async function setUpVethEnds<N extends NamedNetns>(
  nameA: string,
  a: VethEndOptions<N>,
  nameB: string,
  b: VethEndOptions<N>,
  opts: VethLinkOptions = {},
): Promise<[VethEnd<N>, VethEnd<N>]> {
  await prepareEnd(a, nameA, opts);
  await prepareEnd(b, nameB, opts);
  await run('ip', ipArgs(a.ns, ['link', 'set', 'dev', nameA, 'up']));
  await run('ip', ipArgs(b.ns, ['link', 'set', 'dev', nameB, 'up']));
  return [await describeEnd(a, nameA), await describeEnd(b, nameB)];
}

/**
 * Adds permanent neighbour entries on each end for the other end's addresses, so no ARP or
 * neighbour solicitation ever crosses the link and a packet count equals what was sent.
 */
export async function pinNeighbours(a: VethEnd<NamedNetns>, b: VethEnd<NamedNetns>): Promise<void> {
  for (const [local, remote] of [
    [a, b],
    [b, a],
  ] as const) {
    for (const addr of [remote.ipv4, remote.ipv6]) {
      if (addr === undefined) {
        continue;
      }
      await run(
        'ip',
        ipArgs(local.ns, [
          'neigh',
          'replace',
          addr,
          'lladdr',
          remote.mac,
          'dev',
          local.ifname,
          'nud',
          'permanent',
        ]),
      );
    }
  }
}

export interface QuietOptions {
  /** How long the counters must stand still; default 200 ms. */
  quietMs?: number;
  /** Give up after this long; default 5000 ms. */
  timeoutMs?: number;
}

/**
 * Waits until the counters of every end stop moving for `quietMs` (the MLD reports a link sends
 * when it comes up), so a later delta counts only the traffic sent on purpose.
 */
export async function waitQuiet(ends: VethEnd<NamedNetns>[], opts: QuietOptions = {}): Promise<void> {
  const quietMs = opts.quietMs ?? 200;
  const deadline = Date.now() + (opts.timeoutMs ?? 5000);
  const snapshot = async (): Promise<string> => JSON.stringify(await Promise.all(ends.map((e) => e.stats())));
  let last = await snapshot();
  let since = Date.now();
  for (;;) {
    await new Promise((r) => setTimeout(r, 25));
    const now = await snapshot();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) {
      return;
    }
    if (Date.now() > deadline) {
      throw new DevtoolError(
        'ENOTQUIET',
        `veth ${ends.map((e) => e.ifname).join(', ')}: counters still moving after ${opts.timeoutMs ?? 5000} ms; something else sends on the link`,
      );
    }
  }
}
