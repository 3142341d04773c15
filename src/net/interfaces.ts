/**
 * The host's ifindex -> interface name table, kept current without a syscall per lookup: read
 * once from /sys/class/net, then updated from `ip -o monitor link` (a child process that prints
 * one line per link event: new, changed, renamed, deleted). An unknown ifindex also triggers a
 * re-read of the table, at most once per `rereadIntervalMs`, which covers a monitor that could
 * not start and links created before it listened.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { Subject, type Observable } from 'rxjs';
import { withNetns } from './netns.js';
import { RxflowError } from '../errors.js';
import type { Logger } from '../logger.js';

/** An error of the interface table: `code` names the failure, `cause` carries the underlying error. */
export class InterfaceError extends RxflowError {
  override readonly name = 'InterfaceError';
}

/** What the decorate operator needs: a name per ifindex, and a way to stop watching. */
export interface InterfaceNames {
  /** The interface's current name, or undefined if no interface has this index. */
  name(ifindex: number): string | undefined;
  close(): void;
}

/** A change the watcher applied: `name` undefined means the link was deleted. */
export interface LinkChange {
  ifindex: number;
  name: string | undefined;
  /** 'monitor' for an `ip monitor` event, 'reread' for a difference found by re-reading the table. */
  via: 'monitor' | 'reread';
}

export const SYSFS_NET = '/sys/class/net';

/** Reads ifindex -> name from /sys/class/net (or `root`), one small file per interface. */
export function readInterfaceTable(root: string = SYSFS_NET): Map<number, string> {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch (err) {
    throw new InterfaceError(
      'ENOSYSFS',
      `read interfaces from ${root}: ${(err as Error).message}; mount sysfs or give the agent access to it`,
      { cause: err },
    );
  }
  const table = new Map<number, string>();
  for (const name of names) {
    const ifindex = readIfindex(root, name);
    if (ifindex !== undefined) table.set(ifindex, name);
  }
  return table;
}

function readIfindex(root: string, name: string): number | undefined {
  try {
    const n = Number(readFileSync(join(root, name, 'ifindex'), 'utf8'));
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  } catch {
    // The link vanished (or was renamed) between listing and reading; the monitor reports it.
    return undefined;
  }
}

/**
 * Reads ifindex -> name of another network namespace with `ip -j link show` run inside it: sysfs
 * shows the namespace it was mounted in, whatever namespace the reader is in.
 */
export function readNetnsInterfaceTable(netns: string, ip = 'ip'): Map<number, string> {
  let links: { ifindex?: unknown; ifname?: unknown }[];
  try {
    // The child inherits the namespace of the thread that forks it.
    const out = withNetns(netns, () =>
      execFileSync(ip, ['-j', 'link', 'show'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }),
    );
    links = JSON.parse(out) as typeof links;
  } catch (err) {
    throw new InterfaceError(
      'ENONETNS',
      `read interfaces of network namespace ${netns}: ${(err as Error).message}; check the name with 'ip netns list'`,
      { cause: err },
    );
  }
  const table = new Map<number, string>();
  for (const link of links) {
    if (typeof link.ifindex === 'number' && typeof link.ifname === 'string')
      table.set(link.ifindex, link.ifname);
  }
  return table;
}

/** One parsed line of `ip -o monitor link`. */
export interface MonitorEvent {
  ifindex: number;
  /** The name as printed: `name` or `name@peer` (a veth or vlan shows its peer or lower link). */
  label: string;
  deleted: boolean;
}

// Interface names cannot hold ':', '/' or whitespace, so the label runs to the next ': '.
const MONITOR_LINE = /^(Deleted )?(\d+): ([^\s:]+): /;

/** Parses a line of `ip -o monitor link`; undefined for lines that are not link events. */
export function parseMonitorLine(line: string): MonitorEvent | undefined {
  const m = MONITOR_LINE.exec(line);
  if (!m) return undefined;
  return { ifindex: Number(m[2]), label: m[3]!, deleted: m[1] !== undefined };
}

/**
 * The name of a monitor event's link. `ip` prints `name@peer` for links with a peer or lower
 * device, but '@' is also legal inside a name, so the candidates are checked against sysfs.
 */
export function resolveLabel(event: MonitorEvent, root: string = SYSFS_NET): string {
  const at = event.label.lastIndexOf('@');
  if (at <= 0) return event.label;
  const short = event.label.slice(0, at);
  if (readIfindex(root, short) === event.ifindex) return short;
  if (readIfindex(root, event.label) === event.ifindex) return event.label;
  // Renamed or deleted again since; a later event of the monitor corrects the table.
  return short;
}

/**
 * Whether process `pid` has a NETLINK_ROUTE socket bound to multicast groups, i.e. `ip monitor`
 * listens to the kernel. /proc/net/netlink lists sockets as: sk Eth Pid Groups ...
 */
export function monitorListening(pid: number, netlink = '/proc/net/netlink'): boolean {
  let text: string;
  try {
    text = readFileSync(netlink, 'utf8');
  } catch {
    return false;
  }
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (
      f[1] === '0' &&
      Number(f[2]) === pid &&
      /^[0-9a-f]+$/i.test(f[3] ?? '') &&
      parseInt(f[3]!, 16) !== 0
    ) {
      return true;
    }
  }
  return false;
}

/**
 * Monitor processes still running. The watcher unrefs its child so it never keeps the agent alive;
 * this makes sure an agent that exits without closing its watchers leaves no `ip monitor` behind
 * (the orphan would only notice on its next write to the closed pipe).
 */
const liveMonitors = new Set<ChildProcess>();
let exitHooked = false;

export function trackMonitor(child: ChildProcess): void {
  liveMonitors.add(child);
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', () => {
    for (const c of liveMonitors) c.kill('SIGTERM');
  });
}

/** Forgets a monitor that exited. */
export function untrackMonitor(child: ChildProcess): void {
  liveMonitors.delete(child);
}

/** Pids of the monitors this process runs: they sit in the namespaces they watch. */
export function monitorPids(): Set<number> {
  const out = new Set<number>();
  for (const c of liveMonitors) if (c.pid !== undefined) out.add(c.pid);
  return out;
}

export const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));

/**
 * The monitor's command line. Under util-linux's setpriv the kernel sends ip SIGTERM when the
 * thread that spawned it dies (PR_SET_PDEATHSIG), so even a killed agent or test worker leaves
 * no `ip monitor` behind; setpriv execs ip, so the pid stays ip's. Without setpriv, plain ip.
 */
export function monitorCommand(ip: string): [string, string[]] {
  const args = ['-o', 'monitor', 'link'];
  if (SETPRIV === undefined || !commandExists(ip)) return [ip, args];
  return [SETPRIV, ['--pdeathsig', 'TERM', '--', ip, ...args]];
}

/** Whether `cmd` names an executable (a path, or a name found in PATH). */
function commandExists(cmd: string): boolean {
  if (cmd.includes('/')) return existsSync(cmd);
  return (process.env.PATH ?? '').split(':').some((dir) => dir !== '' && existsSync(join(dir, cmd)));
}

export interface InterfaceWatcherOptions {
  /** Where the table is read; /sys/class/net by default. */
  sysfsRoot?: string;
  /** Follow `ip -o monitor link`; true by default. Without it, only unknown ifindexes re-read. */
  watch?: boolean;
  /** An unknown ifindex re-reads the table at most this often; 1000 ms by default. */
  rereadIntervalMs?: number;
  /** The clock of the re-read limit (ms); Date.now by default. */
  now?: () => number;
  /** The `ip` executable; 'ip' from PATH by default. */
  ipCommand?: string;
  /**
   * Name the interfaces of this network namespace (an `ip netns` name or a /proc/<pid>/ns/net
   * path) instead of the agent's own: the one an `ebpf_flows` source with `netns` attaches in.
   * The table is then read with `ip -j link show` inside it, and the monitor runs inside it.
   */
  netns?: string;
  /** How long to wait for the monitor to listen before relying on re-reads alone; 5000 ms by default. */
  readyTimeoutMs?: number;
  logger?: Logger;
}

/**
 * The ifindex -> name table of this network namespace, kept current.
 *
 * @example
 * ```ts
 * const names = InterfaceWatcher.open({ logger });
 * await names.ready; // the monitor listens: renames from now on are seen
 * names.name(1); // 'lo'
 * names.close(); // stops the monitor process
 * ```
 */
export class InterfaceWatcher implements InterfaceNames {
  private table: Map<number, string>;
  private lastRead: number;
  private child: ChildProcess | undefined;
  private closed = false;
  private readonly subject = new Subject<LinkChange>();
  private readonly root: string;
  private readonly netns: string | undefined;
  private readonly ip: string;
  private readonly rereadIntervalMs: number;
  private readonly now: () => number;
  private readonly logger: Logger | undefined;
  private readyTimer: NodeJS.Timeout | undefined;
  private markReady!: () => void;
  /** Every change applied to the table. */
  readonly changes: Observable<LinkChange> = this.subject.asObservable();
  /**
   * Resolves once the monitor listens to the kernel (then re-reads the table, so nothing that
   * changed before is missed), at once without `watch`, or when the monitor could not start.
   */
  readonly ready: Promise<void>;
  /** Re-reads of the table so far (the first read included). */
  reads = 0;

  private constructor(options: InterfaceWatcherOptions) {
    this.root = options.sysfsRoot ?? SYSFS_NET;
    this.netns = options.netns;
    this.ip = options.ipCommand ?? 'ip';
    this.rereadIntervalMs = options.rereadIntervalMs ?? 1000;
    this.now = options.now ?? Date.now;
    this.logger = options.logger;
    this.ready = new Promise<void>((resolve) => (this.markReady = resolve));
    this.table = this.readTable();
    this.reads = 1;
    this.lastRead = this.now();
  }

  /** Reads the table and, unless `watch: false`, starts following link events. */
  static open(options: InterfaceWatcherOptions = {}): InterfaceWatcher {
    const watcher = new InterfaceWatcher(options);
    if (options.watch === false) watcher.markReady();
    else watcher.startMonitor(watcher.ip, options.readyTimeoutMs ?? 5000);
    return watcher;
  }

  /** True while the monitor process runs. */
  get watching(): boolean {
    return this.child !== undefined;
  }

  name(ifindex: number): string | undefined {
    const name = this.table.get(ifindex);
    if (name !== undefined || this.closed) return name;
    if (this.now() - this.lastRead < this.rereadIntervalMs) return undefined;
    this.reread();
    return this.table.get(ifindex);
  }

  /** Stops the monitor; safe to call more than once. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.readyTimer);
    this.stopMonitor();
    this.markReady();
    this.subject.complete();
  }

  private reread(): void {
    let fresh: Map<number, string>;
    try {
      fresh = this.readTable();
    } catch (err) {
      this.logger?.warn({ err }, 'interface table re-read failed; keeping the last one');
      this.lastRead = this.now();
      return;
    }
    this.reads++;
    this.lastRead = this.now();
    const old = this.table;
    this.table = fresh;
    for (const [ifindex, name] of fresh) {
      if (old.get(ifindex) !== name) this.subject.next({ ifindex, name, via: 'reread' });
    }
    for (const ifindex of old.keys()) {
      if (!fresh.has(ifindex)) this.subject.next({ ifindex, name: undefined, via: 'reread' });
    }
  }

  private apply(line: string): void {
    const event = parseMonitorLine(line);
    if (!event) return;
    if (event.deleted) {
      if (this.table.delete(event.ifindex)) {
        this.subject.next({ ifindex: event.ifindex, name: undefined, via: 'monitor' });
      }
      return;
    }
    const name = this.netns === undefined ? resolveLabel(event, this.root) : this.netnsLabel(event);
    if (this.table.get(event.ifindex) === name) return;
    this.table.set(event.ifindex, name);
    this.subject.next({ ifindex: event.ifindex, name, via: 'monitor' });
  }

  private readTable(): Map<number, string> {
    return this.netns === undefined
      ? readInterfaceTable(this.root)
      : readNetnsInterfaceTable(this.netns, this.ip);
  }

  /** resolveLabel for another namespace, whose sysfs is not ours to read: asks `ip` instead. */
  private netnsLabel(event: MonitorEvent): string {
    const short =
      event.label.lastIndexOf('@') > 0 ? event.label.slice(0, event.label.lastIndexOf('@')) : event.label;
    try {
      return readNetnsInterfaceTable(this.netns!, this.ip).get(event.ifindex) ?? short;
    } catch {
      return short;
    }
  }

  private startMonitor(ip: string, readyTimeoutMs: number): void {
    // Spawned from inside the namespace, so the monitor's netlink socket listens there.
    const [file, args] = monitorCommand(ip);
    // Under setpriv the monitor dies with us anyway, so it gets a process group of its own: a
    // Ctrl-C at the terminal then reaches only the agent, which stops the monitor when it is done.
    const child = withNetns(this.netns, () =>
      spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: file === SETPRIV }),
    );
    this.child = child;
    trackMonitor(child);
    let pending = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      const lines = (pending + chunk).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) this.apply(line);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      if (stderr.length < 4096) stderr += chunk;
    });
    child.on('error', (err) => {
      liveMonitors.delete(child);
      this.logger?.warn(
        { err, command: ip },
        "interface monitor could not start; names of renamed links may be stale; install iproute2 ('ip')",
      );
      this.monitorGone();
    });
    child.on('exit', (code, signal) => {
      liveMonitors.delete(child);
      if (this.closed) return;
      this.logger?.warn(
        { code, signal, stderr: stderr.trim() },
        'interface monitor exited; names of renamed links may be stale until a re-read',
      );
      this.monitorGone();
    });
    // The watcher must never be what keeps the process alive.
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stderr as unknown as { unref?: () => void }).unref?.();

    const deadline = Date.now() + readyTimeoutMs;
    const poll = (): void => {
      this.readyTimer = undefined;
      if (this.closed || this.child !== child) return;
      // /proc/<pid>/net shows the monitor's own namespace; /proc/net shows ours.
      const netlink = this.netns === undefined ? undefined : `/proc/${child.pid}/net/netlink`;
      if (child.pid !== undefined && monitorListening(child.pid, netlink)) {
        // Changes between the first read and the monitor's subscription were not reported.
        this.reread();
        this.markReady();
      } else if (Date.now() >= deadline) {
        this.logger?.warn(
          { timeout_ms: readyTimeoutMs },
          'interface monitor did not start listening in time',
        );
        this.markReady();
      } else {
        this.readyTimer = setTimeout(poll, 5);
        this.readyTimer.unref();
      }
    };
    poll();
  }

  private monitorGone(): void {
    this.stopMonitor();
    this.markReady();
  }

  private stopMonitor(): void {
    const child = this.child;
    this.child = undefined;
    if (!child) return;
    child.stdout?.removeAllListeners('data');
    child.stderr?.removeAllListeners('data');
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  }
}

/**
 * The first address of `family` on interface `name`: for IPv6 a global address if there is one,
 * else a link-local one.
 */
export function interfaceAddress(name: string, family: 4 | 6): string | undefined {
  const addrs = networkInterfaces()[name];
  if (!addrs) {
    // os.networkInterfaces() leaves out links without addresses.
    if (existsSync(join(SYSFS_NET, name))) return undefined;
    throw new InterfaceError(
      'ENOIFACE',
      `interface ${name}: no such interface; check the name with 'ip link'`,
    );
  }
  const matching = addrs.filter((a) => a.family === (family === 4 ? 'IPv4' : 'IPv6'));
  if (family === 6) {
    const global = matching.find((a) => !a.address.toLowerCase().startsWith('fe80:'));
    if (global) return global.address;
  }
  return matching[0]?.address;
}
