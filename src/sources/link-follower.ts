/**
 * Keeps the flow programs attached to every link whose name matches, in one network namespace
 * or in all of them, as links and namespaces come and go.
 *
 * Links are keyed by ifindex within their namespace, so a rename keeps the attachment (and is
 * checked against the patterns again: a link renamed out of them is detached, one renamed into
 * them attached). Each link event of a namespace re-lists its links (listLinks, one FFI call)
 * rather than trusting the event's text: a burst of events costs one listing, and nothing missed
 * between listings can leave the set wrong.
 *
 * Attaching is asynchronous and one link at a time: the kernel returns from creating a TCX link
 * only after an RCU grace period (about 13 ms, so 26 s for both hooks of 1,000 links), which the
 * attach spends on a worker thread while the event loop serves metrics, health probes and the
 * ring buffer. A link found is queued; when its turn comes it is attached only if the latest
 * listing still shows it under a matching name, and when its attach completes it is kept only if
 * that is still so and the follower still follows its namespace; otherwise its links are closed.
 */
import { statSync } from 'node:fs';
import { Subject, type Observable } from 'rxjs';
import { DatapathError, type TcLink } from '../datapath/index.js';
import { NetnsError, withNetns } from '../net/netns.js';
import type { Logger } from '../logger.js';
import type { InterfaceMatcher } from '../net/interface-match.js';
import { LinkMonitor, listLinks } from '../net/links.js';
import { setNamespaceNames } from '../net/namespace-names.js';
import { NetnsWatcher, type NetnsInfo } from '../net/netns-watch.js';
import { SourceError } from './errors.js';

export interface FollowedNamespace {
  /** Inode of the namespace. */
  readonly ino: number;
  /**
   * undefined for the agent's own namespace; else the name records carry (see NetnsInfo.name),
   * which follows a rename.
   */
  readonly label: string | undefined;
  /** What enters it (withNetns); undefined for the agent's own. */
  readonly path: string | undefined;
}

export interface LinkEvent {
  type: 'attached' | 'detached' | 'renamed';
  /** The namespace's label: undefined for the agent's own. */
  netns: string | undefined;
  ifindex: number;
  ifname: string;
  /** When the event that led to this was handled (performance.now()). */
  at: number;
}

export interface LinkFollowerOptions {
  matcher: InterfaceMatcher;
  /** undefined: the agent's namespace; a name or path: that one; 'all': every namespace. */
  netns: string | undefined;
  /** How often /proc is rescanned for namespaces of processes (netns 'all'). */
  rescanIntervalMs: number;
  /**
   * Attaches the programs to a link of namespace `ns` (entering it where needed, see
   * attachTcAsync). `signal` aborts when the follower closes: an attach still running then must
   * leave nothing behind.
   */
  attach: (ns: FollowedNamespace, ifindex: number, ifname: string, signal: AbortSignal) => Promise<TcLink[]>;
  logger: Logger;
}

interface AttachJob {
  state: NsState;
  ifindex: number;
  ifname: string;
  /** When the listing that found the link was made (performance.now()). */
  at: number;
  /** Queued while open() ran: a failure fails the open. */
  atOpen: boolean;
}

interface NsState {
  ns: FollowedNamespace;
  monitor: LinkMonitor | undefined;
  /** Attached links by ifindex. */
  links: Map<number, { ifname: string; tc: TcLink[] }>;
  /** The last listing of the namespace's links. */
  table: ReadonlyMap<number, string>;
  /** ifindex -> name that failed to attach: not retried until the link changes. */
  failed: Map<number, string>;
  /** ifindex -> name of the links queued or being attached. */
  pending: Map<number, string>;
  /** Resolves when the monitor listens (or gave up). */
  ready: Promise<void>;
}

export class LinkFollower {
  private readonly states = new Map<number, NsState>();
  /** ifindex -> (namespace inode -> label) of the links attached now. */
  private readonly attachedBy = new Map<number, Map<number, string | undefined>>();
  /** ifindex -> label of the namespace that last had a link of this ifindex attached. */
  private readonly lastBy = new Map<number, string | undefined>();
  /** Inode of each namespace followed -> its label. Kept after a namespace goes: its last flows are evicted later. */
  private readonly inodeLabels = new Map<number, string | undefined>();
  private readonly subject = new Subject<LinkEvent>();
  private watcher: NetnsWatcher | undefined;
  private goneTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** During open(): an attach failure fails the source, as a fixed list of interfaces always did. */
  private opening = true;
  /** Links waiting for their attach, in the order they were found. */
  private readonly queue: AttachJob[] = [];
  /** The attach running now, if any. */
  private running: Promise<void> | undefined;
  private readonly abort = new AbortController();
  /** Attaches queued during open() not settled yet, and the first failure among them. */
  private openJobs = 0;
  private openFailure: Error | undefined;
  private openSettled: (() => void) | undefined;
  private readonly idleWaiters: (() => void)[] = [];
  /** Set during closeAsync()'s close(): the links detach() lets go of, detached in turn after. */
  private deferred: { state: NsState; tc: TcLink[] }[] | undefined;
  /** closeAsync()'s detaches, once started. */
  private closing: Promise<void> | undefined;
  /** The links closeAsync() has not detached yet; release() hands them to the kernel. */
  private readonly undetached = new Set<TcLink>();
  /**
   * Settles once every link that matched when open() ran is attached (or found gone): rejects
   * with the first attach that failed, as a fixed list of interfaces always did. Until then the
   * event loop runs; see the class comment.
   */
  readonly opened: Promise<void>;
  /** Attach, detach and rename of links, as they happen. */
  readonly events: Observable<LinkEvent> = this.subject.asObservable();

  private constructor(private readonly options: LinkFollowerOptions) {
    this.opened = new Promise<void>((resolve) => (this.openSettled = resolve)).then(() => {
      if (this.openFailure !== undefined) throw this.openFailure;
    });
    // Whoever awaits `opened` sees the failure; nobody awaiting it is no crash.
    this.opened.catch(() => undefined);
  }

  /**
   * Attaches to every matching link that exists now (throws when a plainly named interface does
   * not exist, as a fixed list always did), then follows. `ready` resolves when every monitor
   * of the namespaces found at open listens.
   */
  static open(options: LinkFollowerOptions): LinkFollower {
    const f = new LinkFollower(options);
    try {
      if (options.netns === 'all') {
        f.watcher = NetnsWatcher.open({
          rescanIntervalMs: options.rescanIntervalMs,
          onAdded: (info) => f.addNamespace(info),
          onRemoved: (info) => f.removeNamespace(info.ino, 'namespace gone'),
          onRenamed: (info, previous) => f.renameNamespace(info, previous),
          logger: options.logger,
        });
      } else {
        const path = options.netns;
        const ino = namespaceInode(path);
        f.addNamespace({
          ino,
          name: path ?? 'host',
          path: path ?? '/proc/self/ns/net',
          host: path === undefined,
        });
        f.requireNamed();
        if (path !== undefined) f.watchGone(path, ino);
      }
      f.opening = false;
      if (f.openJobs === 0) f.openSettled?.();
    } catch (err) {
      f.close();
      throw err;
    }
    return f;
  }

  /** Resolves when the monitor of every namespace followed now listens. */
  get ready(): Promise<void> {
    return Promise.all([...this.states.values()].map((s) => s.ready)).then(() => undefined);
  }

  /** Links attached now, as `<netns>/<ifname>` (the agent's own namespace without the prefix). */
  attached(): string[] {
    const out: string[] = [];
    for (const s of this.states.values()) {
      for (const l of s.links.values()) out.push(s.ns.label ? `${s.ns.label}/${l.ifname}` : l.ifname);
    }
    return out;
  }

  /**
   * The label of the namespace whose attached link has this ifindex (undefined: the agent's own).
   * The kernel's flow key holds the ifindex alone, so when links of two followed namespaces share
   * an ifindex at once, their flows are not told apart and this answers undefined. After a
   * link is detached, its namespace still answers for flows evicted later.
   */
  namespaceOf(ifindex: number): string | undefined {
    const now = this.attachedBy.get(ifindex);
    if (now !== undefined && now.size > 0) return now.size === 1 ? now.values().next().value : undefined;
    return this.lastBy.get(ifindex);
  }

  /**
   * The NetnsLabeler of the flow records: by the namespace inode the programs put in the flow
   * key, else (0: the kernel would not say) by the ifindex, see namespaceOf.
   */
  readonly labeler = (inode: number, ifindex: number): string | undefined =>
    inode !== 0 && this.inodeLabels.has(inode) ? this.inodeLabels.get(inode) : this.namespaceOf(ifindex);

  /** Every TC link held now. */
  tcLinks(): TcLink[] {
    const out: TcLink[] = [];
    for (const s of this.states.values()) for (const l of s.links.values()) out.push(...l.tc);
    return out;
  }

  /** close() was called. */
  isClosed(): boolean {
    return this.closed;
  }

  /**
   * Resolves when no attach is queued or running: after close(), once the attach that was running
   * has closed what it made.
   */
  idle(): Promise<void> {
    if (this.running === undefined && this.queue.length === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Stops following and detaches every link. Idempotent. An attach running now is aborted: what
   * it made is closed when it completes (see idle()); those still queued never start.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    const dropped = this.queue.splice(0);
    for (const job of dropped) this.settleJob(job);
    this.watcher?.close();
    clearInterval(this.goneTimer);
    let first: Error | undefined;
    for (const ino of [...this.states.keys()]) {
      try {
        this.removeNamespace(ino, 'closing');
      } catch (err) {
        first ??= err instanceof Error ? err : new Error(String(err));
      }
    }
    this.subject.complete();
    if (first !== undefined) throw first;
  }

  /**
   * close() with the links detached one after another off the event loop (TcLink.closeAsync), as
   * the kernel makes each TCX detach wait out an RCU grace period (about 13 ms, so 27 s for both
   * hooks of 1,000 links): stops following at once, and resolves once every link is detached and
   * unpinned, or once the detach under way when release() let go of the rest is over. A detach
   * that fails is logged. Idempotent.
   */
  closeAsync(): Promise<void> {
    if (this.closing !== undefined) return this.closing;
    if (this.closed) return Promise.resolve();
    const deferred: { state: NsState; tc: TcLink[] }[] = [];
    this.deferred = deferred;
    try {
      this.close();
    } catch (err) {
      // Only a clsact filter is removed at once (see detach()).
      this.options.logger.error({ err }, 'detach failed');
    } finally {
      this.deferred = undefined;
    }
    for (const d of deferred) for (const l of d.tc) this.undetached.add(l);
    this.closing = this.detachInTurn(deferred);
    return this.closing;
  }

  /**
   * During closeAsync(): lets go of the links not detached yet without waiting for the kernel
   * (TcLink.release: their pins removed, the kernel detaches them on its own workqueue, after this
   * process exits if need be); closeAsync() settles once the detach under way (one grace period)
   * is over. Returns how many it let go of, that one included.
   */
  release(): number {
    const rest = [...this.undetached];
    this.undetached.clear();
    for (const l of rest) {
      try {
        l.release();
      } catch (err) {
        this.options.logger.error({ err, ifname: l.ifname, direction: l.direction }, 'release failed');
      }
    }
    return rest.length;
  }

  private async detachInTurn(deferred: { state: NsState; tc: TcLink[] }[]): Promise<void> {
    for (const { state, tc } of deferred) {
      for (const l of tc) {
        // Let go of by release() meanwhile.
        if (!this.undetached.has(l)) return;
        try {
          await l.closeAsync();
        } catch (err) {
          this.options.logger.error(
            { err, netns: state.ns.label, ifname: l.ifname, ifindex: l.ifindex },
            'detach failed',
          );
        }
        this.undetached.delete(l);
      }
    }
  }

  /**
   * Lets go of the one namespace followed once `path` no longer leads to it (`ip netns del`, the
   * process exited): its monitor would otherwise keep it alive.
   */
  private watchGone(path: string, ino: number): void {
    const file = path.startsWith('/') ? path : `/run/netns/${path}`;
    this.goneTimer = setInterval(() => {
      let now: number | undefined;
      try {
        now = statSync(file).ino;
      } catch {
        now = undefined;
      }
      if (now === ino) return;
      clearInterval(this.goneTimer);
      this.removeNamespace(ino, 'namespace gone');
    }, this.options.rescanIntervalMs);
    this.goneTimer.unref();
  }

  /** Plainly named interfaces must exist at start, in the one namespace followed. */
  private requireNamed(): void {
    const state = [...this.states.values()][0];
    if (state === undefined) return;
    const present = new Set(state.table.values());
    for (const name of this.options.matcher.names) {
      if (present.has(name)) continue;
      throw new SourceError(
        'ENOIFACE',
        `attach tc ingress ${name}: no such interface; check the name with 'ip link'`,
      );
    }
  }

  /** Records and logs name a followed namespace by its new name from now on. */
  private renameNamespace(info: NetnsInfo, previous: string): void {
    // state.ns reads its label from info, which the watcher renamed.
    if (!this.states.has(info.ino)) return;
    this.inodeLabels.set(info.ino, info.name);
    this.options.logger.info({ netns: info.name, previous }, 'network namespace renamed');
  }

  private addNamespace(info: NetnsInfo): void {
    if (this.closed || this.states.has(info.ino)) return;
    // The path follows the NetnsWatcher's latest one: the process it went through may exit while
    // others keep the namespace.
    const ns: FollowedNamespace = {
      ino: info.ino,
      get label() {
        return info.host ? undefined : info.name;
      },
      get path() {
        return info.host ? undefined : info.path;
      },
    };
    let markReady!: () => void;
    const state: NsState = {
      ns,
      monitor: undefined,
      links: new Map(),
      table: new Map(),
      failed: new Map(),
      pending: new Map(),
      ready: new Promise<void>((resolve) => (markReady = resolve)),
    };
    this.states.set(info.ino, state);
    this.inodeLabels.set(info.ino, ns.label);
    try {
      state.monitor = new LinkMonitor({
        ...(ns.path !== undefined ? { netns: ns.path } : {}),
        onChange: () => this.reconcile(state),
        onReady: () => {
          // Links created between the first listing and the subscription raised no event.
          this.reconcile(state);
          markReady();
        },
        logger: this.options.logger,
      });
    } catch (err) {
      this.states.delete(info.ino);
      markReady();
      // Not allowed to enter (no CAP_SYS_ADMIN): the start fails, or the source would run
      // without the links it was asked for. The one namespace configured fails it whatever the cause.
      if (this.opening && (this.options.netns !== 'all' || isNoPrivilege(err))) throw err;
      if (isNoPrivilege(err)) {
        this.options.logger.warn({ err, netns: ns.label }, 'cannot follow network namespace');
      } else {
        // The namespace went away between the scan and here.
        this.options.logger.debug({ err, netns: ns.label }, 'cannot follow network namespace');
      }
      return;
    }
    this.reconcile(state);
    this.options.logger.info(
      { netns: ns.label ?? 'host', links: state.links.size, queued: state.pending.size },
      'following network namespace',
    );
  }

  private removeNamespace(ino: number, why: string): void {
    const state = this.states.get(ino);
    if (!state) return;
    this.states.delete(ino);
    state.monitor?.close();
    let first: Error | undefined;
    for (const ifindex of [...state.links.keys()]) {
      try {
        this.detach(state, ifindex);
      } catch (err) {
        first ??= err instanceof Error ? err : new Error(String(err));
      }
    }
    if (why !== 'closing')
      this.options.logger.info({ netns: state.ns.label ?? 'host' }, 'network namespace gone');
    if (first !== undefined) throw first;
  }

  private reconcile(state: NsState): void {
    if (this.closed || this.states.get(state.ns.ino) !== state) return;
    const at = performance.now();
    let table: Map<number, string>;
    try {
      table = listLinks(state.ns.path);
    } catch (err) {
      // The namespace is going: its watcher removes it on the next scan.
      this.options.logger.debug({ err, netns: state.ns.label }, 'cannot list links of network namespace');
      return;
    }
    state.table = table;
    setNamespaceNames(state.ns.label, table);
    const { matcher } = this.options;
    for (const [ifindex, cur] of state.links) {
      const name = table.get(ifindex);
      if (name === undefined) {
        this.detachLogged(state, ifindex, at);
      } else if (name !== cur.ifname) {
        cur.ifname = name;
        if (matcher.matches(name)) this.emit('renamed', state, ifindex, name, at);
        else this.detachLogged(state, ifindex, at);
      }
    }
    for (const [ifindex, failedName] of state.failed) {
      if (table.get(ifindex) !== failedName) state.failed.delete(ifindex);
    }
    for (const [ifindex, name] of table) {
      if (state.links.has(ifindex) || state.failed.has(ifindex) || state.pending.has(ifindex)) continue;
      if (!matcher.matches(name)) continue;
      state.pending.set(ifindex, name);
      this.queue.push({ state, ifindex, ifname: name, at, atOpen: this.opening });
      if (this.opening) this.openJobs++;
    }
    this.pump();
  }

  /** Starts the next queued attach unless one runs. */
  private pump(): void {
    if (this.running !== undefined) return;
    const job = this.queue.shift();
    if (job === undefined) {
      for (const resolve of this.idleWaiters.splice(0)) resolve();
      return;
    }
    this.running = this.attachOne(job)
      .catch((err: unknown) => {
        // attachOne handles the attach's own failures; this is a bug, which must not stop the queue.
        this.options.logger.error({ err, netns: job.state.ns.label, ifname: job.ifname }, 'attach failed');
      })
      .finally(() => {
        this.running = undefined;
        this.settleJob(job);
        this.requeueIfChanged(job);
        this.pump();
      });
  }

  /**
   * A link whose listing changed while it was attached, and that matches now but is neither held
   * nor failed (the attach found it renamed, or was undone): the listing of its event queued
   * nothing while the attach was pending, so it is queued again.
   */
  private requeueIfChanged(job: AttachJob): void {
    const { state, ifindex } = job;
    if (!this.following(state) || state.links.has(ifindex) || state.failed.has(ifindex)) return;
    // Listed as it was attempted: settled for this listing; a later event's listing queues it.
    if (state.table.get(ifindex) === job.ifname) return;
    const name = this.matchingName(state, ifindex);
    if (name === undefined || state.pending.has(ifindex)) return;
    state.pending.set(ifindex, name);
    this.queue.push({ state, ifindex, ifname: name, at: performance.now(), atOpen: false });
  }

  private settleJob(job: AttachJob): void {
    job.state.pending.delete(job.ifindex);
    if (!job.atOpen) return;
    if (--this.openJobs === 0 && !this.opening) this.openSettled?.();
  }

  /** The namespace of `state` is still followed, by a follower not closed. */
  private following(state: NsState): boolean {
    return !this.closed && this.states.get(state.ns.ino) === state;
  }

  /** The name the latest listing gives `ifindex`, when it still matches. */
  private matchingName(state: NsState, ifindex: number): string | undefined {
    const name = state.table.get(ifindex);
    return name !== undefined && this.options.matcher.matches(name) ? name : undefined;
  }

  private async attachOne(job: AttachJob): Promise<void> {
    const { state, ifindex, at } = job;
    // Deleted or renamed out of the patterns while it waited: nothing to do. Renamed within them:
    // attached under its name now.
    const current = this.matchingName(state, ifindex);
    if (!this.following(state) || current === undefined) return;
    job.ifname = current;
    let tc: TcLink[];
    try {
      tc = await this.options.attach(state.ns, ifindex, job.ifname, this.abort.signal);
    } catch (err) {
      if (!this.following(state)) return;
      this.attachFailed(job, err);
      return;
    }
    const name = this.matchingName(state, ifindex);
    if (!this.following(state) || name === undefined || tc.some((l) => l.ifindex !== ifindex)) {
      // Gone, renamed out of the patterns, or renamed with its name taken by another link, while
      // it was being attached; or the follower let go of it: undo. An event re-lists.
      try {
        this.closeLinks(state, tc);
      } catch (err) {
        this.options.logger.error(
          { err, netns: state.ns.label, ifname: name ?? job.ifname, ifindex },
          'detach failed',
        );
      }
      return;
    }
    state.links.set(ifindex, { ifname: name, tc });
    let by = this.attachedBy.get(ifindex);
    if (by === undefined) this.attachedBy.set(ifindex, (by = new Map<number, string | undefined>()));
    by.set(state.ns.ino, state.ns.label);
    this.lastBy.set(ifindex, state.ns.label);
    this.emit('attached', state, ifindex, name, at);
  }

  private attachFailed(job: AttachJob, err: unknown): void {
    const { state, ifindex, ifname } = job;
    // Renamed or deleted meanwhile: not this link's failure (see requeueIfChanged).
    if (state.table.get(ifindex) !== ifname) return;
    state.failed.set(ifindex, ifname);
    const code = (err as { code?: string }).code;
    const gone = code === 'ENOIFACE' || code === 'ENONETNS';
    if (job.atOpen && !gone) {
      this.openFailure ??= err instanceof Error ? err : new Error(String(err));
      return;
    }
    // Deleted between listing and attaching is no failure; anything else the user must see.
    if (gone) {
      this.options.logger.debug({ err, netns: state.ns.label, ifname }, 'link went away before attach');
    } else {
      this.options.logger.error({ err, netns: state.ns.label, ifname, ifindex }, 'attach failed');
    }
  }

  private detachLogged(state: NsState, ifindex: number, at: number): void {
    const name = state.links.get(ifindex)?.ifname ?? '';
    try {
      this.detach(state, ifindex);
    } catch (err) {
      this.options.logger.error({ err, netns: state.ns.label, ifname: name, ifindex }, 'detach failed');
      return;
    }
    this.emit('detached', state, ifindex, name, at);
  }

  private detach(state: NsState, ifindex: number): void {
    const cur = state.links.get(ifindex);
    if (!cur) return;
    state.links.delete(ifindex);
    const by = this.attachedBy.get(ifindex);
    by?.delete(state.ns.ino);
    if (by?.size === 0) this.attachedBy.delete(ifindex);
    // closeAsync() detaches TCX links later; a clsact filter is found in its namespace, now.
    if (this.deferred !== undefined && cur.tc.every((l) => l.mode === 'tcx')) {
      this.deferred.push({ state, tc: cur.tc });
      return;
    }
    this.closeLinks(state, cur.tc);
  }

  private closeLinks(state: NsState, tc: TcLink[]): void {
    let first: Error | undefined;
    const closeAll = (): void => {
      for (const l of tc) {
        try {
          l.close();
        } catch (err) {
          first ??= err instanceof Error ? err : new Error(String(err));
        }
      }
    };
    // A TCX link detaches by its fd from anywhere; a clsact filter is found by ifindex, in the
    // namespace it was attached in, and is gone with that namespace.
    if (tc.every((l) => l.mode === 'tcx')) closeAll();
    else {
      try {
        withNetns(state.ns.path, closeAll);
      } catch (err) {
        if ((err as { code?: string }).code !== 'ENONETNS') throw err;
        for (const l of tc) if (l.mode === 'tcx') l.close();
      }
    }
    if (first !== undefined) throw first;
  }

  private emit(type: LinkEvent['type'], state: NsState, ifindex: number, ifname: string, at: number): void {
    const event: LinkEvent = { type, netns: state.ns.label, ifindex, ifname, at };
    this.options.logger.info({ netns: event.netns ?? 'host', ifname, ifindex }, `interface ${type}`);
    this.subject.next(event);
  }
}

/** Entering a namespace was refused for want of a capability (see withNetns). */
function isNoPrivilege(err: unknown): boolean {
  return (err instanceof DatapathError || err instanceof NetnsError) && err.code === 'ENOPRIV';
}

/** The inode of a namespace given as a name or path (the agent's own when undefined). */
function namespaceInode(netns: string | undefined): number {
  const path =
    netns === undefined ? '/proc/self/ns/net' : netns.startsWith('/') ? netns : `/run/netns/${netns}`;
  try {
    return statSync(path).ino;
  } catch (err) {
    throw new SourceError(
      'ENONETNS',
      `enter network namespace ${netns}: ${path} cannot be opened; check the name with 'ip netns list'`,
      { cause: err },
    );
  }
}
