import { existsSync, mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import koffi from 'koffi';
import { SyscallError } from '../errors.js';
import { callOnWorker, rxflowLibrary, type NativeFunction } from '../native.js';
import { netnsError, netnsPath, withNetns } from '../net/netns.js';
import { DatapathError, syscallFailure } from './errors.js';
import {
  BPF_TCX_EGRESS,
  BPF_TCX_INGRESS,
  BPF_TC_EGRESS,
  BPF_TC_F_REPLACE,
  BPF_TC_INGRESS,
  TC_OPTS_PROG_ID,
  libbpf,
  libbpfAsync,
  libc,
  tcHook,
  tcOpts,
  type Ptr,
} from './libbpf.js';
import { requireBpffs, type Program } from './object.js';

export type TcDirection = 'ingress' | 'egress';

export interface TcLink {
  readonly ifname: string;
  readonly ifindex: number;
  readonly direction: TcDirection;
  readonly mode: 'tcx' | 'clsact';
  /** Kernel id of the attached program (as `bpftool prog` shows it). */
  readonly programId: number;
  /** Where a TCX link is pinned, when attachTc() was given a pinPath. */
  readonly pinPath: string | undefined;
  /** Detaches; leaves no filter or link behind and removes the pin. Idempotent. */
  close(): void;
  /**
   * close() with the kernel's wait off the calling thread: a TCX link is detached on a worker
   * thread of the libuv pool (the kernel returns only after an RCU grace period, about 13 ms a
   * link), its fd closed and its pin removed once that is done. A clsact filter (about 1 ms) is
   * removed on the calling thread. Idempotent; close() meanwhile does nothing.
   */
  closeAsync(): Promise<void>;
  /**
   * Lets go of a pinned TCX link without waiting for the kernel: the fd is closed while the pin
   * still holds the link, then the pin is removed, and the kernel detaches the link on its own
   * workqueue (one after another, about 13 ms each), whether or not this process is still
   * running. During a closeAsync() only the pin is removed: the worker's detach ends it. A
   * clsact filter, or a link without a pin, is closed as close() does.
   */
  release(): void;
}

export interface AttachOptions {
  mode?: 'auto' | 'tcx' | 'clsact';
  /**
   * bpffs path for a TCX link, e.g. <pinDir>/links/tc-eth0-ingress. A link already pinned there (left
   * by a killed agent) is updated to this program in place, or detached when it belongs to another
   * interface or hook, so a restart never attaches twice. Ignored by clsact, whose filter at a fixed
   * handle and priority is replaced on attach anyway.
   */
  pinPath?: string;
  /** clsact filter handle (default 1). */
  handle?: number;
  /** clsact filter priority (default 1). */
  priority?: number;
}

const ENOENT = 2;
const ENODEV = 19;
const EEXIST = 17;
const EINVAL = 22;
const ENOLINK = 67;

/**
 * TCX (bpf_link_create with BPF_TCX_INGRESS=46 / BPF_TCX_EGRESS=47) where the kernel has it, else a
 * clsact qdisc + filter (bpf_tc_hook_create / bpf_tc_attach); mode 'auto' picks. close() detaches and
 * leaves no filter behind. With a pinPath, TCX links are pinned so a restarted agent replaces rather
 * than duplicates its attachment.
 */
export function attachTc(
  program: Program,
  ifname: string,
  direction: TcDirection,
  opts: AttachOptions = {},
): TcLink {
  const ctx = `attach tc ${direction} ${ifname}`;
  if (program.closed) {
    throw new DatapathError('ECLOSED', `${ctx}: program ${program.name} was closed with its collection`);
  }
  const ifindex = libc().if_nametoindex(ifname);
  if (ifindex === 0) {
    throw new DatapathError('ENOIFACE', `${ctx}: no such interface; check the name with 'ip link'`);
  }
  const mode = opts.mode ?? 'auto';
  if (mode === 'clsact') return attachClsact(program, ifname, ifindex, direction, opts, ctx);
  const link = attachTcx(program, ifname, ifindex, direction, opts.pinPath, ctx, mode === 'auto');
  return link ?? attachClsact(program, ifname, ifindex, direction, opts, ctx);
}

interface LinkFdInfo {
  type: string;
  ifindex: number;
  attachType: number;
  progId: number;
}

/** The kernel's description of a link fd, or undefined for another kind of bpf object. */
function linkFdInfo(fd: number): LinkFdInfo | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return undefined;
  }
  const field = (name: string): string | undefined => new RegExp(`^${name}:\\s*(\\S+)`, 'm').exec(text)?.[1];
  const type = field('link_type');
  if (type === undefined) return undefined;
  return {
    type,
    ifindex: Number(field('ifindex') ?? 0),
    attachType: Number(field('attach_type') ?? -1),
    progId: Number(field('prog_id') ?? 0),
  };
}

function attachTcx(
  program: Program,
  ifname: string,
  ifindex: number,
  direction: TcDirection,
  pinPath: string | undefined,
  ctx: string,
  fallback: boolean,
): TcLink | undefined {
  const bpf = libbpf();
  const attachType = direction === 'ingress' ? BPF_TCX_INGRESS : BPF_TCX_EGRESS;
  if (pinPath !== undefined) {
    requireBpffs(dirname(pinPath), `${ctx}: pin link at ${pinPath}`);
    const adopted = takeOverPinned(pinPath, ifindex, attachType, program, ctx);
    if (adopted !== undefined) return new TcxLink(ifname, ifindex, direction, adopted, pinPath);
  }
  const fd = bpf.bpf_link_create(program.fd, ifindex, attachType, null);
  if (fd < 0) {
    // Kernels before 6.6 do not know the TCX attach types and answer EINVAL.
    if (fallback && -fd === EINVAL) return undefined;
    throw syscallFailure(ctx, 'bpf_link_create', fd, {
      code: 'EATTACH',
      hint: -fd === EINVAL ? "this kernel may lack tcx (linux 6.6+); use mode 'clsact'" : undefined,
    });
  }
  if (pinPath !== undefined) pinLink(fd, pinPath, ctx);
  return new TcxLink(ifname, ifindex, direction, fd, pinPath);
}

/** Pins a new link at pinPath; on failure detaches and closes it, and throws. */
function pinLink(fd: number, pinPath: string, ctx: string): void {
  const bpf = libbpf();
  try {
    mkdirSync(dirname(pinPath), { recursive: true, mode: 0o700 });
  } catch (err) {
    bpf.bpf_link_detach(fd);
    libc().close(fd);
    throw new DatapathError('EATTACH', `${ctx}: create ${dirname(pinPath)}: ${(err as Error).message}`, err);
  }
  const r = bpf.bpf_obj_pin(fd, pinPath);
  if (r < 0) {
    bpf.bpf_link_detach(fd);
    libc().close(fd);
    throw syscallFailure(`${ctx}: pin link at ${pinPath}`, 'bpf_obj_pin', r, { code: 'EATTACH' });
  }
}

export interface AsyncAttachOptions extends AttachOptions {
  /** The interface's network namespace, as withNetns takes it; the agent's own when undefined. */
  netns?: string | undefined;
  /**
   * The interface's ifindex as its namespace's listing gave it: a link pinned at pinPath for it is
   * taken over without entering the namespace. The link returned carries the ifindex the name has
   * when the attach is made, which differs when the name moved to another link meanwhile.
   */
  ifindex: number;
  /**
   * Aborted while the worker thread creates the link: the link is closed instead of pinned, and
   * the promise rejects with ECANCELED (nothing is left behind, not even the pin directory).
   */
  signal?: AbortSignal;
}

type TcxLinkCreate = NativeFunction;
let tcxLinkCreate: TcxLinkCreate | null | undefined;

/**
 * Whether attachTcAsync creates TCX links off the calling thread: false when librxflow.so was not
 * built (native/build.sh), and the attach then waits on the calling thread as attachTc does.
 */
export function tcxAttachOffThread(): boolean {
  return nativeTcxLinkCreate() !== undefined;
}

/** rxflow_tcx_link_create of native/tcx_attach.c; undefined when librxflow.so was not built. */
function nativeTcxLinkCreate(): TcxLinkCreate | undefined {
  if (tcxLinkCreate === undefined) {
    const lib = rxflowLibrary();
    tcxLinkCreate =
      lib?.func(
        'int rxflow_tcx_link_create(const char *netns_path, const char *ifname, int prog_fd, int attach_type, int32_t *out)',
      ) ?? null;
  }
  return tcxLinkCreate ?? undefined;
}

// Steps of rxflow_tcx_link_create, as it reports the one that failed.
const TCX_OPEN_NETNS = 1;
const TCX_ENTER = 2;
const TCX_IFINDEX = 3;
const TCX_LEAVE = 5;

/**
 * attachTc() for an interface of any namespace, with the kernel's wait off the event loop: a TCX
 * link is created on a worker thread of the libuv pool, which enters the namespace for the call
 * (native/tcx_attach.c), because the kernel returns from it only after an RCU grace period (about
 * 13 ms a link here, so 26 s for both hooks of 1,000 interfaces). Taking over a pinned link, the
 * pin and a clsact filter (about 1 ms) stay on the calling thread. Each call uses one worker
 * thread: callers that attach many links should await one before starting the next, leaving the
 * pool to the rest of the agent.
 */
export async function attachTcAsync(
  program: Program,
  ifname: string,
  direction: TcDirection,
  opts: AsyncAttachOptions,
): Promise<TcLink> {
  const ctx = `attach tc ${direction} ${ifname}`;
  if (opts.signal?.aborted) throw new DatapathError('ECANCELED', `${ctx}: cancelled before it started`);
  const mode = opts.mode ?? 'auto';
  const here = (): TcLink => withNetns(opts.netns, () => attachTc(program, ifname, direction, opts));
  // attachTc throws ECLOSED for a closed program; without librxflow.so, the wait stays on this thread.
  const create = nativeTcxLinkCreate();
  if (mode === 'clsact' || program.closed || create === undefined) return here();
  const attachType = direction === 'ingress' ? BPF_TCX_INGRESS : BPF_TCX_EGRESS;
  const { pinPath } = opts;
  if (pinPath !== undefined) {
    requireBpffs(dirname(pinPath), `${ctx}: pin link at ${pinPath}`);
    const adopted = takeOverPinned(pinPath, opts.ifindex, attachType, program, ctx);
    if (adopted !== undefined) return new TcxLink(ifname, opts.ifindex, direction, adopted, pinPath);
  }
  // The worker holds its own reference to the program: closing the collection meanwhile must not
  // let the number name another file by the time the kernel reads it.
  const progFd = libc().dup(program.fd);
  if (progFd < 0) throw syscallFailure(ctx, 'dup', -koffi.errno(), { code: 'EATTACH' });
  const out = koffi.alloc('int32_t', 2) as Ptr;
  let fd: number;
  let step: number;
  let ifindex: number;
  try {
    fd = await callOnWorker<number>(
      create,
      [opts.netns === undefined ? null : netnsPath(opts.netns), ifname, progFd, attachType, out],
      (err) =>
        new DatapathError(
          'EATTACH',
          `${ctx}: koffi could not make the call on a worker thread (${err instanceof Error ? err.message : typeof err}); report this as a bug`,
          err,
        ),
    );
    const view = new Int32Array(koffi.view(out, 8));
    ifindex = view[0]!;
    step = view[1]!;
  } finally {
    koffi.free(out);
    libc().close(progFd);
  }
  if (fd >= 0) {
    if (opts.signal?.aborted) {
      // Closing the only fd of a link not pinned yet detaches it.
      libc().close(fd);
      throw new DatapathError('ECANCELED', `${ctx}: cancelled while the link was being created`);
    }
    if (pinPath !== undefined) pinLink(fd, pinPath, ctx);
    return new TcxLink(ifname, ifindex, direction, fd, pinPath);
  }
  const ns = opts.netns ?? '';
  if (step === TCX_OPEN_NETNS) throw netnsError(ns, 'open', new SyscallError('open', -fd));
  if (step === TCX_ENTER) throw netnsError(ns, 'enter', -fd);
  if (step === TCX_LEAVE) throw netnsError(ns, 'leave', -fd);
  if (step === TCX_IFINDEX) {
    throw new DatapathError('ENOIFACE', `${ctx}: no such interface; check the name with 'ip link'`);
  }
  // Kernels before 6.6 do not know the TCX attach types and answer EINVAL.
  if (mode === 'auto' && -fd === EINVAL) {
    return withNetns(opts.netns, () => attachTc(program, ifname, direction, { ...opts, mode: 'clsact' }));
  }
  throw syscallFailure(ctx, 'bpf_link_create', fd, {
    code: 'EATTACH',
    hint: -fd === EINVAL ? "this kernel may lack tcx (linux 6.6+); use mode 'clsact'" : undefined,
  });
}

/**
 * A link pinned at `pinPath` by an earlier run: updated in place to `program` (no moment without a
 * program on the hook) when it is a TCX link on the same interface and hook, else detached and
 * unpinned. Returns the adopted link fd, or undefined when a new link is needed.
 */
function takeOverPinned(
  pinPath: string,
  ifindex: number,
  attachType: number,
  program: Program,
  ctx: string,
): number | undefined {
  if (!existsSync(pinPath)) return undefined;
  const bpf = libbpf();
  const fd = bpf.bpf_obj_get(pinPath);
  if (fd < 0)
    throw syscallFailure(`${ctx}: open pinned link ${pinPath}`, 'bpf_obj_get', fd, { code: 'EATTACH' });
  const info = linkFdInfo(fd);
  if (info === undefined) {
    libc().close(fd);
    throw new DatapathError(
      'EATTACH',
      `${ctx}: ${pinPath} holds a bpf object that is not a link; remove it with 'rm ${pinPath}'`,
    );
  }
  if (info.type === 'tcx' && info.ifindex === ifindex && info.attachType === attachType) {
    if (bpf.bpf_link_update(fd, program.fd, null) === 0) return fd;
  }
  bpf.bpf_link_detach(fd);
  libc().close(fd);
  try {
    unlinkSync(pinPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new DatapathError(
        'EATTACH',
        `${ctx}: remove stale pin ${pinPath}: ${(err as Error).message}`,
        err,
      );
    }
  }
  return undefined;
}

class TcxLink implements TcLink {
  readonly mode = 'tcx';
  readonly programId: number;
  #fd: number;
  #detaching: Promise<void> | undefined;

  constructor(
    readonly ifname: string,
    readonly ifindex: number,
    readonly direction: TcDirection,
    fd: number,
    readonly pinPath: string | undefined,
  ) {
    this.#fd = fd;
    this.programId = linkFdInfo(fd)?.progId ?? 0;
  }

  close(): void {
    if (this.#fd < 0 || this.#detaching !== undefined) return;
    const fd = this.#fd;
    this.#fd = -1;
    this.#detached(fd, libbpf().bpf_link_detach(fd));
  }

  closeAsync(): Promise<void> {
    if (this.#fd < 0) return this.#detaching ?? Promise.resolve();
    if (this.#detaching !== undefined) return this.#detaching;
    const fd = this.#fd;
    // The fd stays open until the worker is done with it: a closed number may name another file.
    this.#detaching = libbpfAsync()
      .bpf_link_detach(fd)
      // koffi could not make the call on a worker thread: detach here.
      .catch(() => libbpf().bpf_link_detach(fd))
      .then((r) => {
        this.#fd = -1;
        this.#detached(fd, r);
      });
    return this.#detaching;
  }

  release(): void {
    if (this.pinPath === undefined) {
      this.close();
      return;
    }
    if (this.#fd >= 0 && this.#detaching === undefined) {
      // The pin still holds the link: closing the fd costs nothing.
      libc().close(this.#fd);
      this.#fd = -1;
    }
    // The last reference goes with the pin: the kernel detaches the link on its workqueue.
    this.#unpin();
  }

  /** Closes the fd after bpf_link_detach answered `r`, removes the pin; throws for a failed detach. */
  #detached(fd: number, r: number): void {
    libc().close(fd);
    this.#unpin();
    // A link whose interface went away is already detached.
    if (r < 0 && ![ENOENT, ENODEV, ENOLINK].includes(-r)) {
      throw syscallFailure(`detach tc ${this.direction} ${this.ifname}`, 'bpf_link_detach', r, {
        code: 'EDETACH',
      });
    }
  }

  #unpin(): void {
    if (this.pinPath === undefined) return;
    try {
      unlinkSync(this.pinPath);
    } catch {
      // already gone: nothing to remove
    }
  }
}

function attachClsact(
  program: Program,
  ifname: string,
  ifindex: number,
  direction: TcDirection,
  opts: AttachOptions,
  ctx: string,
): TcLink {
  const bpf = libbpf();
  const hook = tcHook(ifindex, direction === 'ingress' ? BPF_TC_INGRESS : BPF_TC_EGRESS);
  const r = bpf.bpf_tc_hook_create(hook);
  if (r < 0 && -r !== EEXIST)
    throw syscallFailure(`${ctx}: create clsact qdisc`, 'bpf_tc_hook_create', r, { code: 'EATTACH' });
  const handle = opts.handle ?? 1;
  const priority = opts.priority ?? 1;
  const o = tcOpts({ progFd: program.fd, flags: BPF_TC_F_REPLACE, handle, priority });
  const ra = bpf.bpf_tc_attach(hook, o);
  if (ra < 0) throw syscallFailure(ctx, 'bpf_tc_attach', ra, { code: 'EATTACH' });
  const progId = new DataView(o.buffer).getUint32(TC_OPTS_PROG_ID, true);
  return new ClsactLink(ifname, ifindex, direction, hook, handle, priority, progId);
}

class ClsactLink implements TcLink {
  readonly mode = 'clsact';
  readonly pinPath = undefined;
  #open = true;

  constructor(
    readonly ifname: string,
    readonly ifindex: number,
    readonly direction: TcDirection,
    private readonly hook: Uint8Array,
    private readonly handle: number,
    private readonly priority: number,
    readonly programId: number,
  ) {}

  closeAsync(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.close();
      resolve();
    });
  }

  release(): void {
    this.close();
  }

  /**
   * Removes the filter, if it is still this program's (a restarted agent may have replaced it at the
   * same handle and priority). The clsact qdisc stays: other tools' filters may hang off it, and an
   * empty clsact qdisc costs nothing on the packet path.
   */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    const bpf = libbpf();
    const q = tcOpts({ handle: this.handle, priority: this.priority });
    const rq = bpf.bpf_tc_query(this.hook, q);
    if (rq < 0) {
      if ([ENOENT, ENODEV, EINVAL].includes(-rq)) return;
      throw syscallFailure(`detach tc ${this.direction} ${this.ifname}`, 'bpf_tc_query', rq, {
        code: 'EDETACH',
      });
    }
    if (new DataView(q.buffer).getUint32(TC_OPTS_PROG_ID, true) !== this.programId) return;
    const rd = bpf.bpf_tc_detach(this.hook, tcOpts({ handle: this.handle, priority: this.priority }));
    if (rd < 0 && ![ENOENT, ENODEV].includes(-rd)) {
      throw syscallFailure(`detach tc ${this.direction} ${this.ifname}`, 'bpf_tc_detach', rd, {
        code: 'EDETACH',
      });
    }
  }
}
