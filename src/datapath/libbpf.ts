/**
 * The raw koffi binding to the system's libbpf.so.1 (1.1 ABI) and the few libc calls the datapath
 * needs. Signatures follow /usr/include/bpf/libbpf.h and bpf.h. Opaque libbpf objects are native
 * pointers (BigInt); buffers are passed as Uint8Array/Uint32Array, which koffi hands to C without a
 * copy. libbpf returns negative errno from int functions and NULL plus errno from pointer functions.
 *
 * Option structs are built by hand in byte buffers (see the *Opts helpers below) so their layout is
 * visible next to the header it mirrors; each starts with `size_t sz`, which libbpf checks.
 */
import koffi, { type LibraryHandle, type TypeObject } from 'koffi';
import { callOnWorker, libcLibrary } from '../native.js';
import type { Logger } from '../logger.js';
import { DatapathError } from './errors.js';

export type Ptr = bigint;

export interface Libbpf {
  // libbpf.h: objects
  bpf_object__open_file(path: string, opts: Uint8Array | null): Ptr | null;
  bpf_object__load(obj: Ptr): number;
  bpf_object__close(obj: Ptr): void;
  bpf_object__next_program(obj: Ptr, prev: Ptr | null): Ptr | null;
  bpf_object__next_map(obj: Ptr, prev: Ptr | null): Ptr | null;
  bpf_object__find_program_by_name(obj: Ptr, name: string): Ptr | null;
  bpf_object__find_map_by_name(obj: Ptr, name: string): Ptr | null;
  bpf_object__btf(obj: Ptr): Ptr | null;
  // programs
  bpf_program__name(prog: Ptr): string;
  bpf_program__fd(prog: Ptr): number;
  bpf_program__type(prog: Ptr): number;
  bpf_program__set_log_buf(prog: Ptr, buf: Ptr | null, size: number): number;
  bpf_program__set_log_level(prog: Ptr, level: number): number;
  bpf_program__set_attach_target(prog: Ptr, attachProgFd: number, attachFuncName: string | null): number;
  bpf_program__set_type(prog: Ptr, type: number): number;
  bpf_program__set_autoload(prog: Ptr, autoload: boolean): number;
  // maps
  bpf_map__name(map: Ptr): string;
  bpf_map__fd(map: Ptr): number;
  bpf_map__type(map: Ptr): number;
  bpf_map__key_size(map: Ptr): number;
  bpf_map__value_size(map: Ptr): number;
  bpf_map__max_entries(map: Ptr): number;
  bpf_map__map_flags(map: Ptr): number;
  bpf_map__is_internal(map: Ptr): boolean;
  bpf_map__set_max_entries(map: Ptr, n: number): number;
  bpf_map__inner_map(map: Ptr): Ptr | null;
  bpf_map__set_inner_map_fd(map: Ptr, fd: number): number;
  bpf_map__set_pin_path(map: Ptr, path: string | null): number;
  bpf_map__reuse_fd(map: Ptr, fd: number): number;
  // bpf.h: map syscalls
  bpf_map_create(
    type: number,
    name: string | null,
    keySize: number,
    valueSize: number,
    maxEntries: number,
    opts: Uint8Array | null,
  ): number;
  bpf_map_lookup_elem(fd: number, key: Uint8Array, value: Uint8Array): number;
  bpf_map_update_elem(fd: number, key: Uint8Array, value: Uint8Array, flags: number): number;
  bpf_map_delete_elem(fd: number, key: Uint8Array): number;
  bpf_map_get_next_key(fd: number, key: Uint8Array | null, next: Uint8Array): number;
  bpf_map_lookup_batch(
    fd: number,
    inBatch: Uint8Array | null,
    outBatch: Uint8Array,
    keys: Uint8Array,
    values: Uint8Array,
    count: Uint32Array,
    opts: Uint8Array | null,
  ): number;
  bpf_map_lookup_and_delete_batch(
    fd: number,
    inBatch: Uint8Array | null,
    outBatch: Uint8Array,
    keys: Uint8Array,
    values: Uint8Array,
    count: Uint32Array,
    opts: Uint8Array | null,
  ): number;
  // bpf.h: objects, links, test runs
  bpf_obj_pin(fd: number, path: string): number;
  bpf_obj_get(path: string): number;
  bpf_obj_get_info_by_fd(fd: number, info: Uint8Array, infoLen: Uint32Array): number;
  bpf_link_create(progFd: number, targetFd: number, attachType: number, opts: Uint8Array | null): number;
  bpf_link_detach(linkFd: number): number;
  bpf_link_update(linkFd: number, newProgFd: number, opts: Uint8Array | null): number;
  bpf_prog_test_run_opts(progFd: number, opts: Uint8Array): number;
  /** Attaches a tp_btf program (name null) or a raw tracepoint; closing the fd detaches it. */
  bpf_raw_tracepoint_open(name: string | null, progFd: number): number;
  /** BPF_ENABLE_STATS: run time statistics of every program while the returned fd is open. */
  bpf_enable_stats(type: number): number;
  // libbpf.h: TC
  bpf_tc_hook_create(hook: Uint8Array): number;
  bpf_tc_hook_destroy(hook: Uint8Array): number;
  bpf_tc_attach(hook: Uint8Array, opts: Uint8Array): number;
  bpf_tc_detach(hook: Uint8Array, opts: Uint8Array): number;
  bpf_tc_query(hook: Uint8Array, opts: Uint8Array): number;
  // libbpf.h: ring buffer (the callback path, kept as a baseline for the mmap reader)
  ring_buffer__new(mapFd: number, sampleCb: Ptr, ctx: Ptr | null, opts: Uint8Array | null): Ptr | null;
  ring_buffer__consume(rb: Ptr): number;
  ring_buffer__free(rb: Ptr): void;
  // btf.h
  btf__parse(path: string, ext: null): Ptr | null;
  btf__load_vmlinux_btf(): Ptr | null;
  btf__free(btf: Ptr): void;
  btf__find_by_name_kind(btf: Ptr, name: string, kind: number): number;
  btf__type_by_id(btf: Ptr, id: number): Ptr | null;
  btf__name_by_offset(btf: Ptr, offset: number): string | null;
  btf__resolve_size(btf: Ptr, id: number): number | bigint;
  // misc
  libbpf_num_possible_cpus(): number;
}

export interface Libc {
  mmap(addr: null, length: number, prot: number, flags: number, fd: number, offset: number): Ptr;
  munmap(addr: Ptr, length: number): number;
  close(fd: number): number;
  dup(fd: number): number;
  if_nametoindex(name: string): number;
  sysconf(name: number): number | bigint;
}

export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x1;
export const MAP_FAILED = 0xffffffffffffffffn;
const SC_PAGESIZE = 30;

// enum bpf_map_type (uapi/linux/bpf.h)
export const BPF_MAP_TYPE_HASH = 1;
export const BPF_MAP_TYPE_ARRAY = 2;
export const BPF_MAP_TYPE_PERCPU_HASH = 5;
export const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
export const BPF_MAP_TYPE_LRU_HASH = 9;
export const BPF_MAP_TYPE_LRU_PERCPU_HASH = 10;
export const BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21;
export const BPF_MAP_TYPE_RINGBUF = 27;

// enum bpf_attach_type: libbpf 1.1's headers predate TCX (kernel 6.6), the numbers are stable uapi.
export const BPF_TCX_INGRESS = 46;
export const BPF_TCX_EGRESS = 47;
// enum bpf_link_type
export const BPF_LINK_TYPE_TCX = 11;

// enum bpf_tc_attach_point / bpf_tc_flags (libbpf.h)
export const BPF_TC_INGRESS = 1;
export const BPF_TC_EGRESS = 2;
export const BPF_TC_F_REPLACE = 1;

// map update flags
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

/* struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; } = 24 bytes */
export function mapBatchOpts(elemFlags = 0, flags = 0): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, 24n, true);
  v.setBigUint64(8, BigInt(elemFlags), true);
  v.setBigUint64(16, BigInt(flags), true);
  return b;
}

/* struct bpf_map_create_opts { size_t sz; __u32 btf_fd, btf_key_type_id, btf_value_type_id,
 * btf_vmlinux_value_type_id, inner_map_fd, map_flags; __u64 map_extra; __u32 numa_node, map_ifindex; }
 * = 48 bytes, map_flags@28 */
export function mapCreateOpts(mapFlags = 0): Uint8Array {
  const b = new Uint8Array(48);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, 48n, true);
  v.setUint32(28, mapFlags, true);
  return b;
}

/* struct bpf_tc_hook { size_t sz; int ifindex; enum attach_point; __u32 parent; size_t :0; } = 24 */
export function tcHook(ifindex: number, attachPoint: number, parent = 0): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, 24n, true);
  v.setInt32(8, ifindex, true);
  v.setUint32(12, attachPoint, true);
  v.setUint32(16, parent, true);
  return b;
}

/* struct bpf_tc_opts { size_t sz; int prog_fd; __u32 flags, prog_id, handle, priority; size_t :0; } = 32 */
export const TC_OPTS_PROG_ID = 16;
export function tcOpts(o: { progFd?: number; flags?: number; handle: number; priority: number }): Uint8Array {
  const b = new Uint8Array(32);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, 32n, true);
  v.setInt32(8, o.progFd ?? 0, true);
  v.setUint32(12, o.flags ?? 0, true);
  v.setUint32(20, o.handle, true);
  v.setUint32(24, o.priority, true);
  return b;
}

/* struct bpf_test_run_opts: sz@0 data_in@8 data_out@16 data_size_in@24 data_size_out@28 ctx_in@32
 * ctx_out@40 ctx_size_in@48 ctx_size_out@52 retval@56 repeat@60 duration@64 flags@68 cpu@72
 * batch_size@76 = 80 bytes */
export const TEST_RUN_OPTS_SIZE = 80;
export const TEST_RUN_DATA_SIZE_OUT = 28;
export const TEST_RUN_RETVAL = 56;
export const TEST_RUN_DURATION = 64;
export function testRunOpts(o: {
  dataIn: Ptr;
  sizeIn: number;
  dataOut: Ptr;
  sizeOut: number;
  repeat: number;
}): Uint8Array {
  const b = new Uint8Array(TEST_RUN_OPTS_SIZE);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(TEST_RUN_OPTS_SIZE), true);
  v.setBigUint64(8, o.dataIn, true);
  v.setBigUint64(16, o.dataOut, true);
  v.setUint32(24, o.sizeIn, true);
  v.setUint32(28, o.sizeOut, true);
  v.setInt32(60, o.repeat, true);
  return b;
}

/**
 * libbpf calls run on a worker thread of the libuv pool (koffi's `.async`), for the few that wait
 * in the kernel long enough to stall the event loop. Each resolves with what the C function
 * returned (negative errno on failure) and rejects only when koffi could not make the call.
 */
export interface LibbpfAsync {
  /**
   * bpf_map_update_elem with key and value copied to native memory for the length of the call:
   * a typed array hands C a pointer into memory JS still owns, which koffi allows only while the
   * call runs on the JS thread.
   */
  bpf_map_update_elem(fd: number, key: Uint8Array, value: Uint8Array, flags: number): Promise<number>;
  /** Detaching a TCX link waits for an RCU grace period (about 13 ms), under the rtnl lock. */
  bpf_link_detach(linkFd: number): Promise<number>;
}

interface Bound {
  bpf: Libbpf;
  bpfAsync: LibbpfAsync;
  libc: Libc;
  sampleFn: TypeObject;
}

let bound: Bound | undefined;

function bind(): Bound {
  let lib: LibraryHandle;
  try {
    lib = koffi.load('libbpf.so.1');
  } catch (err) {
    throw new DatapathError(
      'ENOLIBBPF',
      "load libbpf.so.1: library not found; install it with 'bash scripts/setup.sh' (Debian package libbpf1)",
      err,
    );
  }
  const c = libcLibrary();
  const f = (decl: string): unknown => lib.func(decl);
  const bpf = {
    bpf_object__open_file: f('void *bpf_object__open_file(const char *path, const void *opts)'),
    bpf_object__load: f('int bpf_object__load(void *obj)'),
    bpf_object__close: f('void bpf_object__close(void *obj)'),
    bpf_object__next_program: f('void *bpf_object__next_program(void *obj, void *prog)'),
    bpf_object__next_map: f('void *bpf_object__next_map(void *obj, void *map)'),
    bpf_object__find_program_by_name: f(
      'void *bpf_object__find_program_by_name(void *obj, const char *name)',
    ),
    bpf_object__find_map_by_name: f('void *bpf_object__find_map_by_name(void *obj, const char *name)'),
    bpf_object__btf: f('void *bpf_object__btf(void *obj)'),
    bpf_program__name: f('const char *bpf_program__name(void *prog)'),
    bpf_program__fd: f('int bpf_program__fd(void *prog)'),
    bpf_program__type: f('int bpf_program__type(void *prog)'),
    bpf_program__set_log_buf: f('int bpf_program__set_log_buf(void *prog, void *buf, size_t size)'),
    bpf_program__set_attach_target: f(
      'int bpf_program__set_attach_target(void *prog, int attach_prog_fd, const char *attach_func_name)',
    ),
    bpf_program__set_log_level: f('int bpf_program__set_log_level(void *prog, uint32_t level)'),
    bpf_program__set_type: f('int bpf_program__set_type(void *prog, int type)'),
    bpf_program__set_autoload: f('int bpf_program__set_autoload(void *prog, bool autoload)'),
    bpf_map__name: f('const char *bpf_map__name(void *map)'),
    bpf_map__fd: f('int bpf_map__fd(void *map)'),
    bpf_map__type: f('int bpf_map__type(void *map)'),
    bpf_map__key_size: f('uint32_t bpf_map__key_size(void *map)'),
    bpf_map__value_size: f('uint32_t bpf_map__value_size(void *map)'),
    bpf_map__max_entries: f('uint32_t bpf_map__max_entries(void *map)'),
    bpf_map__map_flags: f('uint32_t bpf_map__map_flags(void *map)'),
    bpf_map__is_internal: f('bool bpf_map__is_internal(void *map)'),
    bpf_map__set_max_entries: f('int bpf_map__set_max_entries(void *map, uint32_t max_entries)'),
    bpf_map__inner_map: f('void *bpf_map__inner_map(void *map)'),
    bpf_map__set_inner_map_fd: f('int bpf_map__set_inner_map_fd(void *map, int fd)'),
    bpf_map__set_pin_path: f('int bpf_map__set_pin_path(void *map, const char *path)'),
    bpf_map__reuse_fd: f('int bpf_map__reuse_fd(void *map, int fd)'),
    bpf_map_create: f(
      'int bpf_map_create(int map_type, const char *map_name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, const void *opts)',
    ),
    bpf_map_lookup_elem: f('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
    bpf_map_update_elem: f(
      'int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)',
    ),
    bpf_map_delete_elem: f('int bpf_map_delete_elem(int fd, const void *key)'),
    bpf_map_get_next_key: f('int bpf_map_get_next_key(int fd, const void *key, void *next_key)'),
    bpf_map_lookup_batch: f(
      'int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, const void *opts)',
    ),
    bpf_map_lookup_and_delete_batch: f(
      'int bpf_map_lookup_and_delete_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, const void *opts)',
    ),
    bpf_obj_pin: f('int bpf_obj_pin(int fd, const char *pathname)'),
    bpf_obj_get: f('int bpf_obj_get(const char *pathname)'),
    bpf_obj_get_info_by_fd: f('int bpf_obj_get_info_by_fd(int bpf_fd, void *info, void *info_len)'),
    bpf_link_create: f('int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts)'),
    bpf_link_detach: f('int bpf_link_detach(int link_fd)'),
    bpf_link_update: f('int bpf_link_update(int link_fd, int new_prog_fd, const void *opts)'),
    bpf_prog_test_run_opts: f('int bpf_prog_test_run_opts(int prog_fd, void *opts)'),
    bpf_raw_tracepoint_open: f('int bpf_raw_tracepoint_open(const char *name, int prog_fd)'),
    bpf_enable_stats: f('int bpf_enable_stats(int type)'),
    bpf_tc_hook_create: f('int bpf_tc_hook_create(void *hook)'),
    bpf_tc_hook_destroy: f('int bpf_tc_hook_destroy(void *hook)'),
    bpf_tc_attach: f('int bpf_tc_attach(const void *hook, void *opts)'),
    bpf_tc_detach: f('int bpf_tc_detach(const void *hook, const void *opts)'),
    bpf_tc_query: f('int bpf_tc_query(const void *hook, void *opts)'),
    ring_buffer__new: f('void *ring_buffer__new(int map_fd, void *sample_cb, void *ctx, const void *opts)'),
    ring_buffer__consume: f('int ring_buffer__consume(void *rb)'),
    ring_buffer__free: f('void ring_buffer__free(void *rb)'),
    btf__parse: f('void *btf__parse(const char *path, void *btf_ext)'),
    btf__load_vmlinux_btf: f('void *btf__load_vmlinux_btf()'),
    btf__free: f('void btf__free(void *btf)'),
    btf__find_by_name_kind: f('int btf__find_by_name_kind(void *btf, const char *name, uint32_t kind)'),
    btf__type_by_id: f('void *btf__type_by_id(void *btf, uint32_t id)'),
    btf__name_by_offset: f('const char *btf__name_by_offset(void *btf, uint32_t offset)'),
    btf__resolve_size: f('int64_t btf__resolve_size(void *btf, uint32_t id)'),
    libbpf_num_possible_cpus: f('int libbpf_num_possible_cpus()'),
  } as unknown as Libbpf;
  const libc = {
    mmap: c.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
    munmap: c.func('int munmap(void *addr, size_t length)'),
    close: c.func('int close(int fd)'),
    dup: c.func('int dup(int oldfd)'),
    if_nametoindex: c.func('uint32_t if_nametoindex(const char *ifname)'),
    sysconf: c.func('long sysconf(int name)'),
  } as unknown as Libc;

  const linkDetach = lib.func('int bpf_link_detach(int link_fd)');
  const bpfAsync: LibbpfAsync = {
    bpf_map_update_elem: nativeArgsAsync(
      'bpf_map_update_elem',
      lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
    ),
    bpf_link_detach: (linkFd) => callOnWorker<number>(linkDetach, [linkFd], asyncFailure('bpf_link_detach')),
  };

  const sampleFn = koffi.proto('int rxflow_ring_buffer_sample_fn(void *ctx, void *data, size_t size)');
  installPrint(lib, c);
  return { bpf, bpfAsync, libc, sampleFn };
}

/** The rejection of a call koffi could not make on a worker thread. */
function asyncFailure(name: string): (err: unknown) => DatapathError {
  return (err) =>
    new DatapathError(
      'EASYNC',
      `${name} on a worker thread: koffi could not make the call (${err instanceof Error ? err.message : typeof err}); ` +
        'the datapath runs one such call at a time, so report this as a bug',
      err,
    );
}

/**
 * Wraps a koffi function of shape (int fd, void *a, void *b, uint64_t flags) -> int as a promise.
 * Both buffers are copied into one koffi.alloc block, which does not move and which nothing else
 * touches until the worker thread is done with it; it is freed when the call settles.
 */
function nativeArgsAsync(
  name: string,
  fn: ReturnType<LibraryHandle['func']>,
): (fd: number, a: Uint8Array, b: Uint8Array, flags: number) => Promise<number> {
  const failed = asyncFailure(name);
  return (fd, a, b, flags) => {
    const size = Math.max(1, a.length + b.length);
    const block = koffi.alloc('uint8_t', size) as Ptr;
    const native = new Uint8Array(koffi.view(block, size));
    native.set(a, 0);
    native.set(b, a.length);
    return callOnWorker<number>(fn, [fd, block, block + BigInt(a.length), flags], failed, () =>
      koffi.free(block),
    );
  };
}

/** The bound libbpf; loads libbpf.so.1 on first use (DatapathError ENOLIBBPF if missing). */
export function libbpf(): Libbpf {
  bound ??= bind();
  return bound.bpf;
}

/** The calls of libbpf() that also run off the event loop (see LibbpfAsync). */
export function libbpfAsync(): LibbpfAsync {
  bound ??= bind();
  return bound.bpfAsync;
}

export function libc(): Libc {
  bound ??= bind();
  return bound.libc;
}

/** Pointer type of ring_buffer__new's callback: int (*)(void *ctx, void *data, size_t size). */
export function ringBufferSampleFnPointer(): TypeObject {
  bound ??= bind();
  return koffi.pointer(bound.sampleFn);
}

/** errno of the last failed call made through koffi on this thread. */
export function lastErrno(): number {
  return koffi.errno();
}

let pageSizeCache = 0;
export function pageSize(): number {
  pageSizeCache ||= Number(libc().sysconf(SC_PAGESIZE));
  return pageSizeCache;
}

// libbpf logs through a process-wide print callback, to stderr by default. The datapath routes it
// to a debug logger when one is set, and keeps the last warnings so an error can quote them (libbpf
// says which pinned map it could not reuse, for instance, while the call only returns -EINVAL).
let printLogger: Logger | undefined;
const recentWarnings: string[] = [];
const RECENT_WARNINGS = 16;
// The callback must stay registered for the life of the process: libbpf keeps the pointer.
let printCallback: Ptr | undefined;

function installPrint(lib: LibraryHandle, c: LibraryHandle): void {
  const printFn = koffi.proto('int rxflow_libbpf_print_fn(int level, void *fmt, void *ap)');
  const setPrint = lib.func('void *libbpf_set_print(rxflow_libbpf_print_fn *fn)') as (fn: Ptr) => Ptr | null;
  // On x86-64 and arm64 a va_list parameter is passed as a pointer, so the callback's `ap` can be
  // handed straight to vsnprintf.
  const vsnprintf = c.func('int vsnprintf(void *buf, size_t size, void *fmt, void *ap)') as (
    buf: Uint8Array,
    size: number,
    fmt: Ptr,
    ap: Ptr,
  ) => number;
  const buf = new Uint8Array(2048);
  printCallback = koffi.register((level: number, fmt: Ptr, ap: Ptr): number => {
    const warn = level === 0;
    if (!warn && !printLogger?.isLevelEnabled('debug')) return 0;
    const n = vsnprintf(buf, buf.length, fmt, ap);
    if (n <= 0) return 0;
    const msg = Buffer.from(buf.buffer, 0, Math.min(n, buf.length - 1))
      .toString('utf8')
      .trimEnd();
    if (warn) {
      recentWarnings.push(msg);
      if (recentWarnings.length > RECENT_WARNINGS) recentWarnings.shift();
    }
    printLogger?.debug({ libbpfLevel: ['warn', 'info', 'debug'][level] ?? level }, msg);
    return 0;
  }, koffi.pointer(printFn));
  setPrint(printCallback);
}

/** Routes libbpf's own messages to `logger` at debug level; undefined silences them (the default). */
export function setLibbpfLogger(logger: Logger | undefined): void {
  libbpf();
  printLogger = logger;
}

/** Forgets the warnings libbpf printed so far; call before an operation whose warnings you want. */
export function clearLibbpfWarnings(): void {
  libbpf();
  recentWarnings.length = 0;
}

/** libbpf's warnings since the last clearLibbpfWarnings(), oldest first. */
export function libbpfWarnings(): readonly string[] {
  return recentWarnings;
}
