/**
 * Every network namespace of the host, followed as they are created and destroyed: the named
 * ones under /run/netns (`ip netns add`) and those of running processes (/proc/<pid>/ns/net),
 * de-duplicated by inode, which is what identifies a namespace (`lsns`, `ip netns identify`).
 *
 * Named namespaces are watched with inotify on /run/netns. Processes entering new namespaces
 * (unshare, clone, setns) raise no event a process can subscribe to (the proc connector reports
 * forks and execs, not namespace changes), so /proc is rescanned on an interval: one stat per
 * process, about 2 ms for 500 processes.
 */
import { readdirSync, statSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../logger.js';
import { monitorPids } from './interfaces.js';

export const NETNS_RUN_DIR = '/run/netns';

export interface NetnsInfo {
  /** The namespace's inode number: its identity while it lives. */
  readonly ino: number;
  /**
   * The `ip netns` name of a named namespace, else `net:[<inode>]` as /proc/<pid>/ns/net links
   * read and `lsns` shows it. It changes when a namespace seen through a process is named later
   * (`ip netns attach`) or loses its name (`ip netns del` while processes keep it): onRenamed.
   */
  name: string;
  /** A path that enters it: /run/netns/<name> or /proc/<pid>/ns/net of a process in it. */
  path: string;
  /** The agent's own namespace. */
  readonly host: boolean;
}

/** The inode of the namespace a path refers to, or undefined if it is not a namespace (yet). */
function nsInode(path: string, nsfsDev: number): number | undefined {
  try {
    const st = statSync(path);
    // A file under /run/netns before `ip netns add` has bind-mounted the namespace on it is a plain
    // empty file on tmpfs.
    return st.dev === nsfsDev ? st.ino : undefined;
  } catch {
    return undefined;
  }
}

export interface ScanResult {
  namespaces: Map<number, NetnsInfo>;
  /** Entries of /run/netns that are not mounted yet: worth looking again shortly. */
  pending: number;
}

/**
 * One scan of every namespace: the agent's own, the named ones, and those of processes other
 * than `excludePids` (the agent's own monitors sit in the namespaces they watch; counting them
 * would keep a namespace followed after everything else in it is gone).
 */
export function scanNamespaces(
  opts: { runDir?: string; proc?: string; excludePids?: ReadonlySet<number> } = {},
): ScanResult {
  const runDir = opts.runDir ?? NETNS_RUN_DIR;
  const proc = opts.proc ?? '/proc';
  const self = statSync(join(proc, 'self/ns/net'));
  const out = new Map<number, NetnsInfo>();
  out.set(self.ino, { ino: self.ino, name: 'host', path: join(proc, 'self/ns/net'), host: true });
  let pending = 0;
  let names: string[] = [];
  try {
    names = readdirSync(runDir);
  } catch {
    // No namespace was ever named on this host.
  }
  for (const name of names) {
    const path = join(runDir, name);
    const ino = nsInode(path, self.dev);
    if (ino === undefined) pending++;
    else if (!out.has(ino)) out.set(ino, { ino, name, path, host: false });
  }
  let pids: string[] = [];
  try {
    pids = readdirSync(proc);
  } catch {
    // Without /proc only named namespaces are seen.
  }
  const exclude = opts.excludePids;
  for (const pid of pids) {
    const c = pid.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    if (exclude?.has(Number(pid))) continue;
    const path = join(proc, pid, 'ns/net');
    const ino = nsInode(path, self.dev);
    if (ino === undefined || out.has(ino)) continue;
    out.set(ino, { ino, name: `net:[${ino}]`, path, host: false });
  }
  return { namespaces: out, pending };
}

export interface NetnsWatcherOptions {
  /** How often /proc is rescanned for namespaces of processes. */
  rescanIntervalMs: number;
  onAdded: (ns: NetnsInfo) => void;
  onRemoved: (ns: NetnsInfo) => void;
  /** A followed namespace got another name; `ns.name` is the new one. */
  onRenamed?: (ns: NetnsInfo, previous: string) => void;
  runDir?: string;
  proc?: string;
  logger?: Logger;
}

/**
 * Follows every namespace of the host. The first scan runs in open(), so the callbacks have
 * reported every existing namespace when it returns.
 */
export class NetnsWatcher {
  private known = new Map<number, NetnsInfo>();
  private timer: NodeJS.Timeout | undefined;
  private retry: NodeJS.Timeout | undefined;
  private fsWatcher: FSWatcher | undefined;
  private scheduled = false;
  private closed = false;
  private retries = 0;

  private constructor(private readonly options: NetnsWatcherOptions) {}

  static open(options: NetnsWatcherOptions): NetnsWatcher {
    const w = new NetnsWatcher(options);
    w.watchRunDir();
    try {
      w.rescan();
    } catch (err) {
      w.close();
      throw err;
    }
    w.timer = setInterval(() => w.rescan(), options.rescanIntervalMs);
    w.timer.unref();
    return w;
  }

  /** The namespaces followed now, by inode. */
  get namespaces(): ReadonlyMap<number, NetnsInfo> {
    return this.known;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.retry);
    this.fsWatcher?.close();
  }

  /** Scans now; what changed since the last scan goes to the callbacks. */
  rescan(): void {
    if (this.closed) return;
    this.watchRunDir();
    const { namespaces, pending } = scanNamespaces({
      excludePids: monitorPids(),
      ...(this.options.runDir ? { runDir: this.options.runDir } : {}),
      ...(this.options.proc ? { proc: this.options.proc } : {}),
    });
    for (const [ino, ns] of this.known) {
      if (!namespaces.has(ino)) {
        this.known.delete(ino);
        this.options.onRemoved(ns);
      }
    }
    // While a name under the run directory waits for its mount, a namespace seen only through a
    // process may be that one (`ip netns add` then `ip -n` runs in it before the retry): it is
    // added once the mount is there, under its name, or when the retries run out.
    const naming = pending > 0 && this.retries < 50;
    for (const [ino, ns] of namespaces) {
      const old = this.known.get(ino);
      if (old) {
        // The process a path went through may have exited while another holds the namespace.
        old.path = ns.path;
        if (old.name !== ns.name && !old.host) {
          const previous = old.name;
          old.name = ns.name;
          this.options.onRenamed?.(old, previous);
        }
      } else if (naming && !ns.host && ns.name.startsWith('net:[')) continue;
      else {
        this.known.set(ino, ns);
        this.options.onAdded(ns);
      }
    }
    // `ip netns add` creates the file, then mounts the namespace on it: inotify saw the first only.
    if (pending > 0 && this.retries < 50) {
      this.retries++;
      clearTimeout(this.retry);
      this.retry = setTimeout(() => this.rescan(), 20);
      this.retry.unref();
    } else if (pending === 0) this.retries = 0;
  }

  private watchRunDir(): void {
    if (this.fsWatcher || this.closed) return;
    const dir = this.options.runDir ?? NETNS_RUN_DIR;
    try {
      this.fsWatcher = watch(dir, () => {
        if (this.scheduled) return;
        this.scheduled = true;
        setImmediate(() => {
          this.scheduled = false;
          this.rescan();
        });
      });
    } catch {
      // /run/netns appears with the first `ip netns add`; the next rescan tries again.
      return;
    }
    this.fsWatcher.on('error', (err) => {
      this.options.logger?.warn(
        { err, dir },
        'watch of named network namespaces failed; rescanning on the interval',
      );
      this.fsWatcher?.close();
      this.fsWatcher = undefined;
    });
    this.fsWatcher.unref();
  }
}
