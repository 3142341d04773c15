import { existsSync, mkdirSync, readFileSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatapathError, syscallFailure } from './errors.js';
import {
  BPF_TCX_EGRESS,
  BPF_TCX_INGRESS,
  BPF_TC_EGRESS,
  BPF_TC_F_REPLACE,
  BPF_TC_INGRESS,
  TC_OPTS_PROG_ID,
  libbpf,
  libc,
  tcHook,
  tcOpts,
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
  if (pinPath !== undefined) {
    try {
      mkdirSync(dirname(pinPath), { recursive: true, mode: 0o700 });
    } catch (err) {
      bpf.bpf_link_detach(fd);
      libc().close(fd);
      throw new DatapathError(
        'EATTACH',
        `${ctx}: create ${dirname(pinPath)}: ${(err as Error).message}`,
        err,
      );
    }
    const r = bpf.bpf_obj_pin(fd, pinPath);
    if (r < 0) {
      bpf.bpf_link_detach(fd);
      libc().close(fd);
      throw syscallFailure(`${ctx}: pin link at ${pinPath}`, 'bpf_obj_pin', r, { code: 'EATTACH' });
    }
  }
  return new TcxLink(ifname, ifindex, direction, fd, pinPath);
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
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    const r = libbpf().bpf_link_detach(fd);
    libc().close(fd);
    if (this.pinPath !== undefined) {
      try {
        unlinkSync(this.pinPath);
      } catch {
        // already gone: nothing to remove
      }
    }
    // A link whose interface went away is already detached.
    if (r < 0 && ![ENOENT, ENODEV, ENOLINK].includes(-r)) {
      throw syscallFailure(`detach tc ${this.direction} ${this.ifname}`, 'bpf_link_detach', r, {
        code: 'EDETACH',
      });
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
