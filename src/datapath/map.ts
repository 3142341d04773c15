import { DatapathError, syscallFailure } from './errors.js';
import {
  BPF_ANY,
  BPF_EXIST,
  BPF_MAP_TYPE_ARRAY,
  BPF_MAP_TYPE_LRU_PERCPU_HASH,
  BPF_MAP_TYPE_PERCPU_ARRAY,
  BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
  BPF_MAP_TYPE_PERCPU_HASH,
  BPF_NOEXIST,
  libbpf,
  libc,
  mapBatchOpts,
} from './libbpf.js';

const ENOENT = 2;
const E2BIG = 7;
const EEXIST = 17;
const EINVAL = 22;
const ENOSPC = 28;
const EOPNOTSUPP = 95;
const ENOTSUPP = 524;

let cpus = 0;

/** Number of possible CPUs: the stride count of per-CPU values (not the online count). */
export function possibleCpus(): number {
  if (cpus === 0) {
    const n = libbpf().libbpf_num_possible_cpus();
    if (n <= 0) throw syscallFailure('count possible cpus', 'libbpf_num_possible_cpus', n, { code: 'EMAP' });
    cpus = n;
  }
  return cpus;
}

export function isPerCpuType(type: number): boolean {
  return (
    type === BPF_MAP_TYPE_PERCPU_HASH ||
    type === BPF_MAP_TYPE_PERCPU_ARRAY ||
    type === BPF_MAP_TYPE_LRU_PERCPU_HASH ||
    type === BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
  );
}

/** What the kernel says about a map fd (struct bpf_map_info, first fields). */
export interface MapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

/* struct bpf_map_info: type@0 id@4 key_size@8 value_size@12 max_entries@16 map_flags@20 name[16]@24 */
export function readMapInfo(fd: number, context: string): MapInfo {
  const info = new Uint8Array(88);
  const len = new Uint32Array([info.length]);
  const r = libbpf().bpf_obj_get_info_by_fd(fd, info, len);
  if (r < 0) throw syscallFailure(context, 'bpf_obj_get_info_by_fd', r, { code: 'EMAP' });
  const v = new DataView(info.buffer);
  const nameBytes = info.subarray(24, 40);
  const nul = nameBytes.indexOf(0);
  return {
    type: v.getUint32(0, true),
    id: v.getUint32(4, true),
    keySize: v.getUint32(8, true),
    valueSize: v.getUint32(12, true),
    maxEntries: v.getUint32(16, true),
    flags: v.getUint32(20, true),
    name: Buffer.from(nameBytes.subarray(0, nul < 0 ? 16 : nul)).toString('latin1'),
  };
}

export interface DrainResult {
  count: number;
  /** count keys, key i at i * keySize. */
  keys: Uint8Array;
  /** count values, value i at i * valueBufferSize (per-CPU: CPU-major within the value). */
  values: Uint8Array;
}

export interface DrainOptions {
  /** Entries per lookup_and_delete_batch call (default 4096); grown when a hash bucket needs more. */
  batchSize?: number;
  /** Stop after this many entries (default: max entries of the map). */
  max?: number;
  /** 'batch' fails where the kernel lacks batch ops; 'auto' falls back to 'iterate'. */
  mode?: 'auto' | 'batch' | 'iterate';
}

export interface MapDescriptor {
  name: string;
  fd: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

/**
 * A loaded BPF map. Keys and values are raw bytes in the kernel's layout; per-CPU maps take and
 * return all CPUs' copies at once (valueBufferSize bytes). Maps of a Collection are closed with it;
 * maps from BpfMap.openPinned() own their fd and are closed with close().
 */
export class BpfMap {
  readonly name: string;
  readonly fd: number;
  readonly type: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly perCpu: boolean;
  /** Bytes per CPU in a per-CPU value: valueSize rounded up to 8 (valueSize for other maps). */
  readonly perCpuStride: number;
  /** per-CPU maps: value buffers are valueSize rounded up to 8, times possibleCpus(), CPU-major. */
  readonly valueBufferSize: number;

  #closed = false;
  readonly #ownsFd: boolean;
  #batchUnsupported = false;
  // Reused by drain(): one set per map, grown on demand, so a steady drain allocates nothing big.
  #drainKeys = new Uint8Array(0);
  #drainValues = new Uint8Array(0);
  #batchIn: Uint8Array;
  #batchOut: Uint8Array;
  #count = new Uint32Array(1);
  #batchOpts = mapBatchOpts();
  #iterCur: Uint8Array;
  #iterNext: Uint8Array;
  #iterValue: Uint8Array;

  /** Internal: maps come from Collection.map() or BpfMap.openPinned(). */
  constructor(d: MapDescriptor, ownsFd = false) {
    this.name = d.name;
    this.fd = d.fd;
    this.type = d.type;
    this.keySize = d.keySize;
    this.valueSize = d.valueSize;
    this.maxEntries = d.maxEntries;
    this.perCpu = isPerCpuType(d.type);
    this.perCpuStride = this.perCpu ? (d.valueSize + 7) & ~7 : d.valueSize;
    this.valueBufferSize = this.perCpu ? this.perCpuStride * possibleCpus() : d.valueSize;
    this.#ownsFd = ownsFd;
    // Hash maps use a u32 bucket cursor, other maps a key.
    this.#batchIn = new Uint8Array(Math.max(8, d.keySize));
    this.#batchOut = new Uint8Array(Math.max(8, d.keySize));
    this.#iterCur = new Uint8Array(d.keySize);
    this.#iterNext = new Uint8Array(d.keySize);
    this.#iterValue = new Uint8Array(this.valueBufferSize);
  }

  /** Opens a map pinned on bpffs, e.g. by another agent instance; close() releases it. */
  static openPinned(path: string): BpfMap {
    const fd = libbpf().bpf_obj_get(path);
    if (fd < 0) {
      throw syscallFailure(`open pinned map ${path}`, 'bpf_obj_get', fd, {
        code: 'EMAP',
        hint: Math.abs(fd) === ENOENT ? 'check the instance name and that the agent loaded it' : undefined,
      });
    }
    try {
      const info = readMapInfo(fd, `open pinned map ${path}`);
      return new BpfMap({ ...info, fd }, true);
    } catch (err) {
      libc().close(fd);
      throw err;
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the fd of a map from openPinned(); for a Collection's map it only invalidates this object. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsFd) libc().close(this.fd);
  }

  /** Internal: the owning Collection closed the fd. */
  invalidate(): void {
    this.#closed = true;
  }

  lookup(key: Uint8Array): Uint8Array | undefined {
    const out = new Uint8Array(this.valueBufferSize);
    return this.lookupInto(key, out) ? out : undefined;
  }

  /** lookup() into a caller's buffer of valueBufferSize bytes; false when the key is absent. */
  lookupInto(key: Uint8Array, out: Uint8Array): boolean {
    this.#check('lookup in', key, out);
    const r = libbpf().bpf_map_lookup_elem(this.fd, key, out);
    if (r === 0) return true;
    if (-r === ENOENT) return false;
    throw syscallFailure(`lookup in map ${this.name}`, 'bpf_map_lookup_elem', r, { code: 'EMAP' });
  }

  update(key: Uint8Array, value: Uint8Array, flags: 'any' | 'noexist' | 'exist' = 'any'): void {
    this.#check('update', key, value);
    const f = flags === 'noexist' ? BPF_NOEXIST : flags === 'exist' ? BPF_EXIST : BPF_ANY;
    const r = libbpf().bpf_map_update_elem(this.fd, key, value, f);
    if (r === 0) return;
    const ctx = `update map ${this.name}`;
    switch (-r) {
      case E2BIG:
        throw syscallFailure(ctx, 'bpf_map_update_elem', r, {
          code: 'EMAPFULL',
          hint: `the map holds its max_entries (${this.maxEntries}); raise max_entries or drain it more often`,
        });
      case EEXIST:
        throw syscallFailure(ctx, 'bpf_map_update_elem', r, {
          hint: "the key is present and flags is 'noexist'",
        });
      case ENOENT:
        throw syscallFailure(ctx, 'bpf_map_update_elem', r, {
          hint: "the key is absent and flags is 'exist'",
        });
      default:
        throw syscallFailure(ctx, 'bpf_map_update_elem', r);
    }
  }

  /** Deletes the key; false when it was absent. */
  delete(key: Uint8Array): boolean {
    this.#check('delete from', key);
    const r = libbpf().bpf_map_delete_elem(this.fd, key);
    if (r === 0) return true;
    if (-r === ENOENT) return false;
    throw syscallFailure(`delete from map ${this.name}`, 'bpf_map_delete_elem', r);
  }

  /** Every key, each in its own buffer. Keys the kernel adds or removes meanwhile may be missed. */
  *keys(): Generator<Uint8Array> {
    this.#check('iterate');
    let prev: Uint8Array | null = null;
    for (;;) {
      const next = new Uint8Array(this.keySize);
      const r = libbpf().bpf_map_get_next_key(this.fd, prev, next);
      if (-r === ENOENT) return;
      if (r < 0)
        throw syscallFailure(`iterate map ${this.name}`, 'bpf_map_get_next_key', r, { code: 'EMAP' });
      yield next;
      prev = next;
      this.#check('iterate');
    }
  }

  /**
   * Sum over CPUs of the little-endian u64 at `fieldOffset` of entry `entry` of a value buffer as
   * returned by lookup() (entry 0) or drain(). Exact below 2^53.
   */
  sumPerCpuU64(values: Uint8Array, fieldOffset: number, entry = 0): number {
    const n = this.perCpu ? this.valueBufferSize / this.perCpuStride : 1;
    let o = entry * this.valueBufferSize + fieldOffset;
    if (fieldOffset + 8 > this.valueSize || o + (n - 1) * this.perCpuStride + 8 > values.length) {
      throw new DatapathError(
        'EARG',
        `sum per-cpu field of map ${this.name}: offset ${fieldOffset} outside the value`,
      );
    }
    let sum = 0;
    for (let cpu = 0; cpu < n; cpu++, o += this.perCpuStride) {
      const lo = (values[o]! | (values[o + 1]! << 8) | (values[o + 2]! << 16) | (values[o + 3]! << 24)) >>> 0;
      const hi =
        (values[o + 4]! | (values[o + 5]! << 8) | (values[o + 6]! << 16) | (values[o + 7]! << 24)) >>> 0;
      sum += hi * 4294967296 + lo;
    }
    return sum;
  }

  /**
   * Reads and deletes up to `max` entries in batches (bpf_map_lookup_and_delete_batch), falling back
   * to iterate+lookup+delete where the kernel lacks it. Returns the raw keys and values packed in
   * two buffers: count entries, key i at i*keySize, value i at i*valueBufferSize.
   *
   * The buffers belong to the map and are overwritten by the next drain(): decode or copy what you
   * keep before draining again. This keeps a periodic drain free of large allocations.
   */
  drain(opts: DrainOptions = {}): DrainResult {
    this.#check('drain');
    if (this.type === BPF_MAP_TYPE_ARRAY || this.type === BPF_MAP_TYPE_PERCPU_ARRAY) {
      throw new DatapathError(
        'EARG',
        `drain map ${this.name}: array maps cannot delete entries; read them with lookup() instead`,
      );
    }
    const max = opts.max ?? this.maxEntries;
    const mode = opts.mode ?? 'auto';
    let batchSize = Math.max(1, Math.min(opts.batchSize ?? 4096, max));
    let count = 0;
    if (mode === 'iterate' || (mode === 'auto' && this.#batchUnsupported)) {
      count = this.#drainIterate(max);
    } else {
      const bpf = libbpf();
      let first = true;
      while (count < max) {
        const want = Math.min(batchSize, max - count);
        this.#reserve(count + want);
        this.#count[0] = want;
        const r = bpf.bpf_map_lookup_and_delete_batch(
          this.fd,
          first ? null : this.#batchIn,
          this.#batchOut,
          this.#drainKeys.subarray(count * this.keySize),
          this.#drainValues.subarray(count * this.valueBufferSize),
          this.#count,
          this.#batchOpts,
        );
        const got = this.#count[0];
        const err = -r;
        if (r < 0 && err !== ENOENT && err !== ENOSPC) {
          if (first && (err === EINVAL || err === EOPNOTSUPP || err === ENOTSUPP) && mode === 'auto') {
            this.#batchUnsupported = true;
            count = this.#drainIterate(max);
            break;
          }
          // Entries counted before the error were deleted: hand them back rather than lose them.
          if (count + got > 0 && err !== 14 /* EFAULT: count unreliable */) {
            count += got;
            break;
          }
          throw syscallFailure(`drain map ${this.name}`, 'bpf_map_lookup_and_delete_batch', r, {
            code: err === EINVAL || err === EOPNOTSUPP || err === ENOTSUPP ? 'EMAP' : undefined,
            hint:
              err === EINVAL || err === EOPNOTSUPP || err === ENOTSUPP
                ? "this kernel has no batch operations for this map type; use mode 'auto' or 'iterate'"
                : undefined,
          });
        }
        count += got;
        if (err === ENOENT) break;
        if (err === ENOSPC) {
          // A hash bucket holds more entries than this batch: the kernel returned none and kept
          // its cursor. Retry the same cursor with a bigger batch, unless `max` caps the batch.
          if (want < batchSize) break;
          batchSize *= 2;
          continue;
        }
        first = false;
        const t = this.#batchIn;
        this.#batchIn = this.#batchOut;
        this.#batchOut = t;
      }
    }
    return {
      count,
      keys: this.#drainKeys.subarray(0, count * this.keySize),
      values: this.#drainValues.subarray(0, count * this.valueBufferSize),
    };
  }

  /**
   * Reads up to `max` entries without deleting them, in batches (bpf_map_lookup_batch) or, where the
   * kernel lacks those, by iterating keys. Unlike drain() the buffers are new and the caller's.
   * Entries the kernel adds or deletes meanwhile may or may not be in the result.
   */
  dump(opts: DrainOptions = {}): DrainResult {
    this.#check('dump');
    const max = opts.max ?? this.maxEntries;
    const mode = opts.mode ?? 'auto';
    let batchSize = Math.max(1, Math.min(opts.batchSize ?? 4096, max));
    let cap = Math.min(max, Math.max(batchSize, 64));
    let keys = new Uint8Array(cap * this.keySize);
    let values = new Uint8Array(cap * this.valueBufferSize);
    const grow = (entries: number): void => {
      if (entries <= cap) return;
      while (cap < entries) cap *= 2;
      const k = new Uint8Array(cap * this.keySize);
      k.set(keys);
      const v = new Uint8Array(cap * this.valueBufferSize);
      v.set(values);
      keys = k;
      values = v;
    };
    let count = 0;
    const bpf = libbpf();
    if (mode === 'iterate' || (mode === 'auto' && this.#batchUnsupported)) {
      const value = new Uint8Array(this.valueBufferSize);
      for (const key of this.keys()) {
        if (count >= max) break;
        if (!this.lookupInto(key, value)) continue;
        grow(count + 1);
        keys.set(key, count * this.keySize);
        values.set(value, count * this.valueBufferSize);
        count++;
      }
      return {
        count,
        keys: keys.subarray(0, count * this.keySize),
        values: values.subarray(0, count * this.valueBufferSize),
      };
    }
    let inBatch = new Uint8Array(Math.max(8, this.keySize));
    let outBatch = new Uint8Array(Math.max(8, this.keySize));
    const n = new Uint32Array(1);
    let first = true;
    while (count < max) {
      const want = Math.min(batchSize, max - count);
      grow(count + want);
      n[0] = want;
      const r = bpf.bpf_map_lookup_batch(
        this.fd,
        first ? null : inBatch,
        outBatch,
        keys.subarray(count * this.keySize),
        values.subarray(count * this.valueBufferSize),
        n,
        this.#batchOpts,
      );
      const err = -r;
      if (r < 0 && err !== ENOENT && err !== ENOSPC) {
        if (first && (err === EINVAL || err === EOPNOTSUPP || err === ENOTSUPP) && mode === 'auto') {
          this.#batchUnsupported = true;
          return this.dump({ ...opts, mode: 'iterate' });
        }
        throw syscallFailure(`dump map ${this.name}`, 'bpf_map_lookup_batch', r, { code: 'EMAP' });
      }
      count += n[0];
      if (err === ENOENT) break;
      if (err === ENOSPC) {
        // A hash bucket holds more entries than this batch: retry the same cursor with a bigger one.
        if (want < batchSize) break;
        batchSize *= 2;
        continue;
      }
      first = false;
      const t = inBatch;
      inBatch = outBatch;
      outBatch = t;
    }
    return {
      count,
      keys: keys.subarray(0, count * this.keySize),
      values: values.subarray(0, count * this.valueBufferSize),
    };
  }

  #drainIterate(max: number): number {
    const bpf = libbpf();
    let cur = this.#iterCur;
    let next = this.#iterNext;
    const value = this.#iterValue;
    let count = 0;
    let r = bpf.bpf_map_get_next_key(this.fd, null, cur);
    while (r === 0 && count < max) {
      // Step before deleting: get_next_key of a deleted key restarts at the first bucket, which
      // would make the walk quadratic.
      const rn = bpf.bpf_map_get_next_key(this.fd, cur, next);
      if (rn < 0 && -rn !== ENOENT) {
        throw syscallFailure(`drain map ${this.name}`, 'bpf_map_get_next_key', rn, { code: 'EMAP' });
      }
      const rl = bpf.bpf_map_lookup_elem(this.fd, cur, value);
      if (rl === 0) {
        const rd = bpf.bpf_map_delete_elem(this.fd, cur);
        if (rd === 0) {
          this.#reserve(count + 1);
          this.#drainKeys.set(cur, count * this.keySize);
          this.#drainValues.set(value, count * this.valueBufferSize);
          count++;
        } else if (-rd !== ENOENT) {
          throw syscallFailure(`drain map ${this.name}`, 'bpf_map_delete_elem', rd, { code: 'EMAP' });
        }
      } else if (-rl !== ENOENT) {
        throw syscallFailure(`drain map ${this.name}`, 'bpf_map_lookup_elem', rl, { code: 'EMAP' });
      }
      r = rn;
      const t = cur;
      cur = next;
      next = t;
    }
    this.#iterCur = cur;
    this.#iterNext = next;
    return count;
  }

  #reserve(entries: number): void {
    if (
      entries * this.keySize <= this.#drainKeys.length &&
      entries * this.valueBufferSize <= this.#drainValues.length
    ) {
      return;
    }
    let cap = Math.max(64, this.#drainKeys.length / Math.max(1, this.keySize));
    while (cap < entries) cap *= 2;
    const keys = new Uint8Array(cap * this.keySize);
    keys.set(this.#drainKeys);
    const values = new Uint8Array(cap * this.valueBufferSize);
    values.set(this.#drainValues);
    this.#drainKeys = keys;
    this.#drainValues = values;
  }

  #check(op: string, key?: Uint8Array, value?: Uint8Array): void {
    if (this.#closed) {
      throw new DatapathError('ECLOSED', `${op} map ${this.name}: the map was closed; load the object again`);
    }
    if (key !== undefined && key.length !== this.keySize) {
      throw new DatapathError(
        'EARG',
        `${op} map ${this.name}: key is ${key.length} bytes, the map's are ${this.keySize}`,
      );
    }
    if (value !== undefined && value.length !== this.valueBufferSize) {
      throw new DatapathError(
        'EARG',
        `${op} map ${this.name}: value buffer is ${value.length} bytes, the map needs ${this.valueBufferSize}` +
          (this.perCpu ? ` (${this.perCpuStride} bytes x ${possibleCpus()} possible cpus)` : ''),
      );
    }
  }
}
