import { existsSync, mkdirSync, rmSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import koffi from 'koffi';
import { SyscallError, describeErrno, errnoName } from '../errors.js';
import { DatapathError, syscallFailure } from './errors.js';
import {
  TEST_RUN_DATA_SIZE_OUT,
  TEST_RUN_DURATION,
  TEST_RUN_RETVAL,
  clearLibbpfWarnings,
  lastErrno,
  libbpf,
  libbpfWarnings,
  libc,
  mapCreateOpts,
  testRunOpts,
  type Ptr,
} from './libbpf.js';
import { BpfMap, readMapInfo } from './map.js';

const BPF_FS_MAGIC = 0xcafe4a11;
/** Per-program verifier log buffer. The kernel keeps the tail when the log is longer. */
const VERIFIER_LOG_SIZE = 1 << 20;
const VERIFIER_LOG_TAIL_LINES = 20;

export interface LoadOptions {
  /**
   * e.g. /sys/fs/bpf/rxflow-<instance>: every map is pinned by name at <pinDir>/maps/<name>, and a
   * map already pinned there (by an earlier run of the same instance) is reused with its contents.
   * libbpf's internal maps (.rodata, .bss) are never pinned: they carry this object's constants.
   */
  pinDir?: string;
  /**
   * Maps of this object that are to be another's, by name: the fd of the map to use (libbpf's
   * bpf_map__reuse_fd). No map is created for them, and they are never pinned by this object.
   */
  reuseMaps?: Record<string, number>;
  /**
   * Maps of this object created anew on every load and never pinned, by name: state that need not
   * outlive the process and is sized per run, so a pin left by a run with another size cannot
   * refuse the load.
   */
  unpinned?: readonly string[];
}

/** The parsed ELF (bpf_object__open_file): programs and maps by name, editable before load. */
export class ObjectSpec {
  readonly path: string;
  #obj: Ptr | null;
  readonly #innerMaxEntries = new Map<string, number>();

  private constructor(path: string, obj: Ptr) {
    this.path = path;
    this.#obj = obj;
  }

  static open(path: string): ObjectSpec {
    if (!existsSync(path)) {
      throw new DatapathError(
        'EOBJMISSING',
        `open bpf object ${path}: no such file; run 'bash scripts/setup.sh' to build it`,
      );
    }
    const obj = libbpf().bpf_object__open_file(path, null);
    if (obj === null) {
      const errno = lastErrno();
      throw new DatapathError(
        'EOBJOPEN',
        `open bpf object ${path}: not a bpf object libbpf can read: ${describeErrno(errno)}; ` +
          `rebuild it with 'bash scripts/setup.sh'`,
        new SyscallError('bpf_object__open_file', errno),
      );
    }
    return new ObjectSpec(path, obj);
  }

  programNames(): string[] {
    const obj = this.#live('list programs of');
    const bpf = libbpf();
    const names: string[] = [];
    for (
      let p = bpf.bpf_object__next_program(obj, null);
      p !== null;
      p = bpf.bpf_object__next_program(obj, p)
    ) {
      names.push(bpf.bpf_program__name(p));
    }
    return names;
  }

  mapNames(): string[] {
    const obj = this.#live('list maps of');
    const bpf = libbpf();
    const names: string[] = [];
    for (let m = bpf.bpf_object__next_map(obj, null); m !== null; m = bpf.bpf_object__next_map(obj, m)) {
      names.push(bpf.bpf_map__name(m));
    }
    return names;
  }

  setMaxEntries(map: string, n: number): this {
    const obj = this.#live('set max entries of');
    const m = libbpf().bpf_object__find_map_by_name(obj, map);
    if (m === null) throw notFound(this.path, 'map', map, this.mapNames());
    const r = libbpf().bpf_map__set_max_entries(m, n);
    if (r < 0)
      throw syscallFailure(`set max entries of map ${map} in ${this.path}`, 'bpf_map__set_max_entries', r);
    return this;
  }

  /**
   * Sets max_entries of the inner-map template of a map-of-maps (`outer`): the map the kernel
   * checks every map stored in `outer` against. libbpf 1.1 cannot resize the template it builds
   * from the `__array(values, ...)` definition (bpf_map__set_max_entries dereferences the object
   * the template lacks), so load() creates one of that definition with this size and hands it over
   * with bpf_map__set_inner_map_fd.
   */
  setInnerMaxEntries(outer: string, n: number): this {
    const obj = this.#live('set inner max entries of');
    const bpf = libbpf();
    const m = bpf.bpf_object__find_map_by_name(obj, outer);
    if (m === null) throw notFound(this.path, 'map', outer, this.mapNames());
    if (bpf.bpf_map__inner_map(m) === null) {
      throw new DatapathError(
        'EARG',
        `set inner max entries of map ${outer} in ${this.path}: not a map of maps with an inner map definition; use setMaxEntries()`,
      );
    }
    if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) {
      throw new DatapathError(
        'EARG',
        `set inner max entries of map ${outer} in ${this.path}: must be an integer >= 1, got ${n}`,
      );
    }
    this.#innerMaxEntries.set(outer, n);
    return this;
  }

  /**
   * Points a tracing program (tp_btf, fentry) at another kernel function or tracepoint than its
   * section names (bpf_program__set_attach_target); the load fails if the kernel has no such hook.
   */
  setAttachTarget(program: string, target: string): this {
    const obj = this.#live('set attach target of');
    const bpf = libbpf();
    const p = bpf.bpf_object__find_program_by_name(obj, program);
    if (p === null) {
      throw new DatapathError('ENOTFOUND', `${this.path}: no program named '${program}'`);
    }
    const r = bpf.bpf_program__set_attach_target(p, 0, target);
    if (r < 0) {
      throw syscallFailure(
        `set attach target of ${program} in ${this.path} to ${target}`,
        'bpf_program__set_attach_target',
        r,
        {
          code: 'ELOAD',
          ...(errnoName(r) === 'ESRCH'
            ? { hint: `the kernel's btf has no function or tracepoint named ${target}` }
            : {}),
        },
      );
    }
    return this;
  }

  /**
   * Sets the program type of `program` (bpf_program__set_type): for an object whose section names
   * libbpf does not map to a type, such as the legacy `classifier/...` of TC programs.
   */
  setProgramType(program: string, type: number): this {
    const p = this.#program(program, 'set program type of');
    const r = libbpf().bpf_program__set_type(p, type);
    if (r < 0)
      throw syscallFailure(`set program type of ${program} in ${this.path}`, 'bpf_program__set_type', r);
    return this;
  }

  /** Whether load() loads `program` (bpf_program__set_autoload); a program left out is never verified. */
  setAutoload(program: string, autoload: boolean): this {
    const p = this.#program(program, 'set autoload of');
    const r = libbpf().bpf_program__set_autoload(p, autoload);
    if (r < 0)
      throw syscallFailure(`set autoload of ${program} in ${this.path}`, 'bpf_program__set_autoload', r);
    return this;
  }

  /** Pins none of the object's maps, whatever pinning their definitions ask for. */
  clearPinPaths(): this {
    const obj = this.#live('clear pin paths of');
    const bpf = libbpf();
    for (let m = bpf.bpf_object__next_map(obj, null); m !== null; m = bpf.bpf_object__next_map(obj, m)) {
      const r = bpf.bpf_map__set_pin_path(m, null);
      if (r < 0)
        throw syscallFailure(
          `clear pin path of map ${bpf.bpf_map__name(m)} in ${this.path}`,
          'bpf_map__set_pin_path',
          r,
        );
    }
    return this;
  }

  #program(name: string, op: string): Ptr {
    const obj = this.#live(op);
    const p = libbpf().bpf_object__find_program_by_name(obj, name);
    if (p === null) throw notFound(this.path, 'program', name, this.programNames());
    return p;
  }

  /**
   * Creates the maps (or reuses pinned ones), loads every program, and hands the object over to
   * the returned Collection: the spec cannot be loaded twice.
   */
  load(opts: LoadOptions = {}): Collection {
    const obj = this.#live('load');
    const bpf = libbpf();
    const ctx = `load ${this.path}`;
    if (opts.pinDir !== undefined) this.#preparePins(obj, opts.pinDir, new Set(opts.unpinned));
    for (const [name, fd] of Object.entries(opts.reuseMaps ?? {})) {
      const m = bpf.bpf_object__find_map_by_name(obj, name);
      const r = m === null ? -2 : bpf.bpf_map__reuse_fd(m, fd);
      if (r < 0) {
        this.#dispose();
        throw syscallFailure(`${ctx}: reuse map ${name}`, 'bpf_map__reuse_fd', r, { code: 'ELOAD' });
      }
    }

    const logs: { name: string; buf: Ptr }[] = [];
    const templates: number[] = [];
    try {
      try {
        for (const [outer, n] of this.#innerMaxEntries) templates.push(innerTemplate(obj, outer, n, ctx));
      } catch (err) {
        this.#dispose();
        throw err;
      }
      for (
        let p = bpf.bpf_object__next_program(obj, null);
        p !== null;
        p = bpf.bpf_object__next_program(obj, p)
      ) {
        const buf = koffi.alloc('char', VERIFIER_LOG_SIZE) as Ptr;
        koffi.encode(buf, 'char', 0);
        logs.push({ name: bpf.bpf_program__name(p), buf });
        bpf.bpf_program__set_log_buf(p, buf, VERIFIER_LOG_SIZE);
      }
      clearLibbpfWarnings();
      const r = bpf.bpf_object__load(obj);
      if (r < 0) {
        // libbpf stops at the first program the kernel refuses and retries it with logging on,
        // so the one non-empty log is the culprit.
        const failed = logs.filter((l) => koffi.decode(l.buf, 'char') !== 0).pop();
        const err = failed
          ? verifierError(ctx, failed.name, koffi.decode(failed.buf, 'char', -1) as string, r)
          : loadError(ctx, r);
        this.#dispose();
        throw err;
      }
    } finally {
      // libbpf only reads the buffers during load; clear its pointers before freeing them.
      if (this.#obj !== null) {
        for (
          let p = bpf.bpf_object__next_program(obj, null);
          p !== null;
          p = bpf.bpf_object__next_program(obj, p)
        ) {
          bpf.bpf_program__set_log_buf(p, null, 0);
        }
      }
      for (const l of logs) koffi.free(l.buf);
      // The outer maps hold their own copy of the template's definition once created.
      for (const fd of templates) libc().close(fd);
    }
    this.#obj = null;
    return new Collection(this.path, obj, opts.pinDir);
  }

  /** Releases the parsed object; only needed when it is never loaded. Idempotent. */
  close(): void {
    this.#dispose();
  }

  #dispose(): void {
    if (this.#obj !== null) {
      libbpf().bpf_object__close(this.#obj);
      this.#obj = null;
    }
  }

  #live(op: string): Ptr {
    if (this.#obj === null) {
      throw new DatapathError(
        'ECLOSED',
        `${op} ${this.path}: the object spec was loaded or closed; open it again`,
      );
    }
    return this.#obj;
  }

  #preparePins(obj: Ptr, pinDir: string, unpinned: ReadonlySet<string>): void {
    const bpf = libbpf();
    const mapDir = `${pinDir}/maps`;
    requireBpffs(mapDir, `pin maps of ${this.path} under ${pinDir}`);
    try {
      mkdirSync(mapDir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new DatapathError(
        'ELOAD',
        `pin maps of ${this.path}: create ${mapDir}: ${(err as Error).message}`,
        err,
      );
    }
    for (let m = bpf.bpf_object__next_map(obj, null); m !== null; m = bpf.bpf_object__next_map(obj, m)) {
      if (bpf.bpf_map__is_internal(m)) continue;
      const name = bpf.bpf_map__name(m);
      if (unpinned.has(name)) continue;
      const path = `${mapDir}/${name}`;
      if (existsSync(path)) checkPinned(path, name, m);
      const r = bpf.bpf_map__set_pin_path(m, path);
      if (r < 0)
        throw syscallFailure(`pin map ${name} at ${path}`, 'bpf_map__set_pin_path', r, { code: 'ELOAD' });
    }
  }
}

/**
 * Throws ENOBPFFS unless `dir` is, or would be created, on a bpf filesystem: the nearest existing
 * ancestor decides, so nothing is created on the wrong filesystem.
 */
export function requireBpffs(dir: string, context: string): void {
  let d = dir;
  while (!existsSync(d)) {
    const up = dirname(d);
    if (up === d) break;
    d = up;
  }
  let type = 0;
  try {
    type = Number(statfsSync(d).type);
  } catch {
    type = 0;
  }
  if (type !== BPF_FS_MAGIC) {
    throw new DatapathError(
      'ENOBPFFS',
      `${context}: ${d} is not on a bpf filesystem; mount it with 'mount -t bpf bpf /sys/fs/bpf' and pin under /sys/fs/bpf`,
    );
  }
}

function checkPinned(path: string, name: string, m: Ptr): void {
  const bpf = libbpf();
  const fd = bpf.bpf_obj_get(path);
  if (fd < 0) throw syscallFailure(`reuse pinned map ${path}`, 'bpf_obj_get', fd, { code: 'ELOAD' });
  try {
    const have = readMapInfo(fd, `reuse pinned map ${path}`);
    const want = {
      type: bpf.bpf_map__type(m),
      keySize: bpf.bpf_map__key_size(m),
      valueSize: bpf.bpf_map__value_size(m),
      maxEntries: bpf.bpf_map__max_entries(m),
    };
    const diffs = (Object.keys(want) as (keyof typeof want)[])
      .filter((k) => have[k] !== want[k])
      .map((k) => `${k} ${have[k]} pinned, ${want[k]} in the object`);
    if (diffs.length > 0) {
      throw new DatapathError(
        'EPINMISMATCH',
        `reuse pinned map ${name} at ${path}: ${diffs.join(', ')}; ` +
          `remove the stale pin with 'rm ${path}' (its entries are lost) or use another instance name`,
      );
    }
  } finally {
    libc().close(fd);
  }
}

/** Creates a template of the inner map definition of `outer` with `n` entries and sets it on `outer`. */
function innerTemplate(obj: Ptr, outer: string, n: number, ctx: string): number {
  const bpf = libbpf();
  const m = bpf.bpf_object__find_map_by_name(obj, outer)!;
  const inner = bpf.bpf_map__inner_map(m)!;
  const fd = bpf.bpf_map_create(
    bpf.bpf_map__type(inner),
    bpf.bpf_map__name(inner).slice(0, 15),
    bpf.bpf_map__key_size(inner),
    bpf.bpf_map__value_size(inner),
    n,
    mapCreateOpts(bpf.bpf_map__map_flags(inner)),
  );
  if (fd < 0) throw syscallFailure(`${ctx}: create inner map template of ${outer}`, 'bpf_map_create', fd);
  const r = bpf.bpf_map__set_inner_map_fd(m, fd);
  if (r < 0) {
    libc().close(fd);
    throw syscallFailure(`${ctx}: set inner map of ${outer}`, 'bpf_map__set_inner_map_fd', r, {
      code: 'ELOAD',
    });
  }
  return fd;
}

function notFound(path: string, kind: 'program' | 'map', name: string, names: string[]): DatapathError {
  return new DatapathError(
    'ENOTFOUND',
    `${path}: no ${kind} named '${name}'; the object has ${kind}s: ${names.join(', ') || '(none)'}`,
  );
}

function verifierError(ctx: string, program: string, log: string, r: number): DatapathError {
  const lines = log.trimEnd().split('\n');
  const tail = lines.slice(-VERIFIER_LOG_TAIL_LINES).join('\n');
  const e = new DatapathError(
    'EVERIFIER',
    `${ctx}: the verifier rejected program '${program}'; fix the program, the log ends with:\n${tail}`,
    new SyscallError('bpf_object__load', Math.abs(r)),
  );
  return Object.assign(e, { program, verifierLog: log });
}

function loadError(ctx: string, r: number): DatapathError {
  const warnings = libbpfWarnings();
  // libbpf words the reason (which map, which section) in its log, not in the return code.
  const detail = warnings.length > 0 ? ` (libbpf: ${warnings[warnings.length - 1]})` : '';
  if (errnoName(r) === 'EPERM') return syscallFailure(ctx, 'bpf_object__load', r);
  return syscallFailure(`${ctx}${detail}`, 'bpf_object__load', r, { code: 'ELOAD' });
}

export interface TestRunResult {
  retval: number;
  /** Per run, kernel-measured. */
  durationNs: number;
  dataOut: Uint8Array;
}

/** A loaded program; its fd lives as long as its Collection. */
export class Program {
  readonly name: string;
  readonly fd: number;
  readonly type: number;
  #closed = false;

  /** Internal: programs come from Collection.program(). */
  constructor(name: string, fd: number, type: number) {
    this.name = name;
    this.fd = fd;
    this.type = type;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Internal: the owning Collection closed the fd. */
  invalidate(): void {
    this.#closed = true;
  }

  /** BPF_PROG_TEST_RUN on a __sk_buff context: `data` is a whole frame, starting at Ethernet. */
  testRun(data: Uint8Array, opts: { repeat?: number } = {}): TestRunResult {
    if (this.#closed) {
      throw new DatapathError('ECLOSED', `test run of program ${this.name}: the collection was closed`);
    }
    // The opts struct carries raw pointers, so the frames live in native memory for the call.
    const sizeOut = data.length + 512;
    const inPtr = koffi.alloc('uint8_t', Math.max(1, data.length)) as Ptr;
    const outPtr = koffi.alloc('uint8_t', sizeOut) as Ptr;
    try {
      new Uint8Array(koffi.view(inPtr, data.length)).set(data);
      const opts8 = testRunOpts({
        dataIn: inPtr,
        sizeIn: data.length,
        dataOut: outPtr,
        sizeOut,
        repeat: opts.repeat ?? 1,
      });
      const r = libbpf().bpf_prog_test_run_opts(this.fd, opts8);
      if (r < 0)
        throw syscallFailure(`test run of program ${this.name}`, 'bpf_prog_test_run_opts', r, {
          code: 'ETESTRUN',
        });
      const v = new DataView(opts8.buffer);
      const outLen = Math.min(v.getUint32(TEST_RUN_DATA_SIZE_OUT, true), sizeOut);
      return {
        // TC verdicts are signed (TC_ACT_UNSPEC is -1).
        retval: v.getInt32(TEST_RUN_RETVAL, true),
        durationNs: v.getUint32(TEST_RUN_DURATION, true),
        dataOut: new Uint8Array(koffi.view(outPtr, outLen)).slice(),
      };
    } finally {
      koffi.free(inPtr);
      koffi.free(outPtr);
    }
  }
}

/** The loaded object: programs and maps by name. */
export class Collection {
  readonly path: string;
  /** The pin directory given to load(), if any. */
  readonly pinDir: string | undefined;
  #obj: Ptr | null;
  readonly #programs = new Map<string, Program>();
  readonly #maps = new Map<string, BpfMap>();

  /** Internal: created by ObjectSpec.load(). */
  constructor(path: string, obj: Ptr, pinDir: string | undefined) {
    this.path = path;
    this.#obj = obj;
    this.pinDir = pinDir;
    const bpf = libbpf();
    for (
      let p = bpf.bpf_object__next_program(obj, null);
      p !== null;
      p = bpf.bpf_object__next_program(obj, p)
    ) {
      const name = bpf.bpf_program__name(p);
      this.#programs.set(name, new Program(name, bpf.bpf_program__fd(p), bpf.bpf_program__type(p)));
    }
    for (let m = bpf.bpf_object__next_map(obj, null); m !== null; m = bpf.bpf_object__next_map(obj, m)) {
      const name = bpf.bpf_map__name(m);
      this.#maps.set(
        name,
        new BpfMap({
          name,
          fd: bpf.bpf_map__fd(m),
          type: bpf.bpf_map__type(m),
          keySize: bpf.bpf_map__key_size(m),
          valueSize: bpf.bpf_map__value_size(m),
          maxEntries: bpf.bpf_map__max_entries(m),
        }),
      );
    }
  }

  programNames(): string[] {
    return [...this.#programs.keys()];
  }

  mapNames(): string[] {
    return [...this.#maps.keys()];
  }

  /** Throws DatapathError ENOTFOUND listing the names on a miss. */
  program(name: string): Program {
    this.#live(`find program ${name} in`);
    const p = this.#programs.get(name);
    if (!p) throw notFound(this.path, 'program', name, this.programNames());
    return p;
  }

  /** Throws DatapathError ENOTFOUND listing the names on a miss. */
  map(name: string): BpfMap {
    this.#live(`find map ${name} in`);
    const m = this.#maps.get(name);
    if (!m) throw notFound(this.path, 'map', name, this.mapNames());
    return m;
  }

  /**
   * Closes the program and map fds; idempotent. Pins stay (a restarted agent reuses them), and so
   * do TC links, which hold their own reference to the program until closed.
   */
  close(): void {
    if (this.#obj === null) return;
    for (const p of this.#programs.values()) p.invalidate();
    for (const m of this.#maps.values()) m.invalidate();
    libbpf().bpf_object__close(this.#obj);
    this.#obj = null;
  }

  /** Removes the pin directory and everything pinned under it; works before or after close(). */
  unpin(): void {
    if (this.pinDir === undefined) return;
    rmSync(this.pinDir, { recursive: true, force: true });
  }

  #live(op: string): void {
    if (this.#obj === null) {
      throw new DatapathError(
        'ECLOSED',
        `${op} ${this.path}: the collection was closed; load the object again`,
      );
    }
  }
}
