/**
 * The drop program of bpf/drops.o on the kfree_skb tracepoint (tp_btf), and the TypeScript side
 * of bpf/drops.h. The program shares the flow object's flow_maps (the fd is reused at load, no
 * second map), counts drops of known flows into double-buffered drop maps keyed by the flow key
 * (drained with the flow maps, see FlowMaps), and every drop by reason in drop_reasons.
 *
 * Reason names come from the running kernel's BTF (`enum skb_drop_reason` in
 * /sys/kernel/btf/vmlinux), read once at open: the enum grows with every kernel release, and a
 * table compiled in would misname reasons on the next one.
 */
import koffi from 'koffi';
import { SyscallError, describeErrno } from '../../errors.js';
import { DatapathError } from '../errors.js';
import { FlowMaps } from './maps.js';
import type { FlowRecord } from '../../records/flow.js';
import {
  FLOW_KEY,
  FLOW_VALUE,
  FLOW_VALUE_STRIDE,
  decodeFlowMapBatch,
  type FlowEviction,
  type NetnsLabeler,
} from './types.js';
import { struct, u64, viewOf } from '../layout.js';
import { lastErrno, libbpf, libc } from '../libbpf.js';
import type { DrainResult } from '../map.js';
import type { Collection } from '../object.js';
import { loadTracingOnFlowMaps } from '../tracing.js';

export const DROP_VALUE = struct('drop_value', 32, {
  packets: [0, 8],
  bytes: [8, 8],
  last_drop_ns: [16, 8],
  reason: [24, 4],
  tcp_state: [28, 1],
  _pad0: [29, 3],
});

export const DROP_REASON_COUNT = struct('drop_reason_count', 32, {
  packets: [0, 8],
  bytes: [8, 8],
  unmatched_packets: [16, 8],
  unmatched_bytes: [24, 8],
});

/** Every struct of bpf/drops.h, for layout checks against the object's BTF. */
export const DROP_LAYOUTS = [DROP_VALUE, DROP_REASON_COUNT] as const;

/** Entries of drop_reasons; reasons at or past the last slot count there (see drops.h). */
export const DROP_REASON_SLOTS = 512;
export const DROP_REASON_OTHER = DROP_REASON_SLOTS - 1;

export const DROP_MAP_NAMES = ['drop_map_a', 'drop_map_b'] as const;
export const DROP_MAPS_OUTER = 'drop_maps';
export const DROP_PROGRAM = 'drops_kfree_skb';
/** The tracepoint the program attaches to, as its section names it. */
export const DROP_TRACEPOINT = 'kfree_skb';

/**
 * TCP states by skc_state (include/net/tcp_states.h, stable since 2.6 and mirrored in the BPF
 * UAPI as BPF_TCP_*), as `ss` shows them.
 */
const TCP_STATE_NAMES = [
  '',
  'ESTABLISHED',
  'SYN_SENT',
  'SYN_RECV',
  'FIN_WAIT1',
  'FIN_WAIT2',
  'TIME_WAIT',
  'CLOSE',
  'CLOSE_WAIT',
  'LAST_ACK',
  'LISTEN',
  'CLOSING',
  'NEW_SYN_RECV',
  'BOUND_INACTIVE',
];

/** The name of a TCP state number; undefined for 0 (no socket). */
export function tcpStateName(state: number): string | undefined {
  if (state === 0) return undefined;
  return TCP_STATE_NAMES[state] ?? `STATE_${state}`;
}

const BTF_KIND_ENUM = 6;
const BTF_TYPE_SIZE = 12;
const BTF_ENUM_SIZE = 8;
const REASON_PREFIXES = ['SKB_DROP_REASON_', 'SKB_'];

/**
 * enum skb_drop_reason of the running kernel, value -> name without the SKB_DROP_REASON_ (or
 * SKB_) prefix, as the kernel's own kfree_skb trace output prints it: NETFILTER_DROP, NO_SOCKET.
 * Throws ENOBTF when the kernel has no BTF or no such enum.
 */
export function readDropReasonNames(): Map<number, string> {
  const bpf = libbpf();
  const btf = bpf.btf__load_vmlinux_btf();
  if (btf === null) {
    const errno = lastErrno();
    throw new DatapathError(
      'ENOBTF',
      `read drop reasons from the kernel btf: ${describeErrno(errno)}; a kernel built with CONFIG_DEBUG_INFO_BTF has /sys/kernel/btf/vmlinux`,
      new SyscallError('btf__load_vmlinux_btf', errno),
    );
  }
  try {
    const id = bpf.btf__find_by_name_kind(btf, 'skb_drop_reason', BTF_KIND_ENUM);
    if (id < 0) {
      throw new DatapathError(
        'ENOBTF',
        'read drop reasons from the kernel btf: no enum skb_drop_reason (linux 5.17 or later has it)',
      );
    }
    const t = bpf.btf__type_by_id(btf, id)!;
    const vlen = new Uint32Array(koffi.view(t, BTF_TYPE_SIZE))[1]! & 0xffff;
    const raw = koffi.view(t, BTF_TYPE_SIZE + vlen * BTF_ENUM_SIZE);
    const entries = new DataView(raw, BTF_TYPE_SIZE);
    const names = new Map<number, string>();
    for (let i = 0; i < vlen; i++) {
      let name = bpf.btf__name_by_offset(btf, entries.getUint32(i * BTF_ENUM_SIZE, true)) ?? '';
      const value = entries.getUint32(i * BTF_ENUM_SIZE + 4, true);
      // Bookkeeping values of the enum, not reasons a packet is freed for.
      if (name === 'SKB_DROP_REASON_MAX' || name.startsWith('SKB_DROP_REASON_SUBSYS_')) continue;
      const prefix = REASON_PREFIXES.find((p) => name.startsWith(p));
      if (prefix) name = name.slice(prefix.length);
      if (!names.has(value)) names.set(value, name);
    }
    return names;
  } finally {
    bpf.btf__free(btf);
  }
}

/** The drops of one flow over an eviction, merged over CPUs. */
export interface FlowDrops {
  packets: number;
  bytes: number;
  /** Kernel monotonic ns of the latest drop. */
  lastDropNs: number;
  /** enum skb_drop_reason of the latest drop. */
  reason: number;
  /** skc_state of the socket at the latest drop; 0 without one (or not TCP). */
  tcpState: number;
}

export interface DropBatch {
  /** By the 56 key bytes as hex (flowKeyHex). */
  byKey: Map<string, FlowDrops>;
  /** The drained keys, `count` of FLOW_KEY.size bytes; `index` of an entry says which. */
  keys: Uint8Array;
  index: Map<string, number>;
}

const HEX2 = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** The bytes of the struct flow_key at offset as hex: the join key of flows and their drops. */
export function flowKeyHex(keys: Uint8Array, offset: number): string {
  let s = '';
  for (let i = 0; i < FLOW_KEY.size; i++) s += HEX2[keys[offset + i]!];
  return s;
}

const V_PACKETS = DROP_VALUE.fields.packets.offset;
const V_BYTES = DROP_VALUE.fields.bytes.offset;
const V_LAST = DROP_VALUE.fields.last_drop_ns.offset;
const V_REASON = DROP_VALUE.fields.reason.offset;
const V_TCP_STATE = DROP_VALUE.fields.tcp_state.offset;
/** Bytes of one CPU's drop_value in a per-CPU value buffer. */
export const DROP_VALUE_STRIDE = Math.ceil(DROP_VALUE.size / 8) * 8;

/** Merges the per-CPU values of a drained drop map; the latest drop names reason and state. */
export function decodeDropBatch(batch: DrainResult, valueBufferSize: number): DropBatch {
  const byKey = new Map<string, FlowDrops>();
  const index = new Map<string, number>();
  const cpus = valueBufferSize / DROP_VALUE_STRIDE;
  const vv = viewOf(batch.values);
  for (let i = 0; i < batch.count; i++) {
    const base = i * valueBufferSize;
    const d: FlowDrops = { packets: 0, bytes: 0, lastDropNs: -1, reason: 0, tcpState: 0 };
    for (let c = 0; c < cpus; c++) {
      const v = base + c * DROP_VALUE_STRIDE;
      const p = u64(vv, v + V_PACKETS);
      if (p === 0) continue;
      d.packets += p;
      d.bytes += u64(vv, v + V_BYTES);
      const last = u64(vv, v + V_LAST);
      if (last > d.lastDropNs) {
        d.lastDropNs = last;
        d.reason = vv.getUint32(v + V_REASON, true);
        d.tcpState = batch.values[v + V_TCP_STATE]!;
      }
    }
    if (d.packets === 0) continue;
    const hex = flowKeyHex(batch.keys, i * FLOW_KEY.size);
    byKey.set(hex, d);
    index.set(hex, i);
  }
  return { byKey, keys: batch.keys.slice(0, batch.count * FLOW_KEY.size), index };
}

export interface DropReasonCount {
  reason: number;
  name: string;
  packets: number;
  bytes: number;
  /** Drops on no flow of the flow map (unknown flow, not IP, or the drop map full). */
  unmatchedPackets: number;
  unmatchedBytes: number;
}

export interface DropsOptions {
  /** bpf/drops.o. */
  objectPath: string;
  /** The flow object's flow_maps (FlowMaps.outer.fd): drops are matched against its flows. */
  flowMapsFd: number;
  /** Another tracepoint than kfree_skb (a test makes the hook unavailable this way). */
  tracepoint?: string;
  /** Capacity of each drop map (flows with drops per eviction). */
  maxEntries?: number;
}

/** The drop program loaded and attached to kfree_skb; close() detaches it and frees the maps. */
export class DropsDatapath {
  readonly maps: FlowMaps;
  readonly reasonNames: Map<number, string>;
  readonly #collection: Collection;
  readonly #reasons;
  readonly #slots: number[];
  #linkFd: number;

  private constructor(collection: Collection, linkFd: number, reasonNames: Map<number, string>) {
    this.#collection = collection;
    this.#linkFd = linkFd;
    this.reasonNames = reasonNames;
    this.maps = new FlowMaps(collection, { maps: DROP_MAP_NAMES, outer: DROP_MAPS_OUTER });
    this.#reasons = collection.map('drop_reasons');
    // Only the slots a drop can count in: the kernel's reasons, and the one for the rest.
    this.#slots = [...reasonNames.keys()].filter((r) => r < DROP_REASON_OTHER).sort((a, b) => a - b);
    this.#slots.push(DROP_REASON_OTHER);
  }

  /**
   * Reads the reason names, loads bpf/drops.o on the flow maps and attaches it. Throws ENOBTF
   * without the kernel's enum, ELOAD (or EVERIFIER) when the kernel has no such tracepoint or
   * refuses the program, EATTACH when it will not attach it.
   */
  static open(options: DropsOptions): DropsDatapath {
    const names = readDropReasonNames();
    const maxEntries = options.maxEntries;
    const { collection, linkFd: fd } = loadTracingOnFlowMaps({
      objectPath: options.objectPath,
      program: DROP_PROGRAM,
      ...(options.tracepoint !== undefined ? { tracepoint: options.tracepoint } : {}),
      defaultTracepoint: DROP_TRACEPOINT,
      flowMapsFd: options.flowMapsFd,
      prepare: (spec) => {
        if (maxEntries === undefined) return;
        for (const m of DROP_MAP_NAMES) spec.setMaxEntries(m, maxEntries);
        spec.setInnerMaxEntries(DROP_MAPS_OUTER, maxEntries);
      },
    });
    try {
      return new DropsDatapath(collection, fd, names);
    } catch (err) {
      libc().close(fd);
      collection.close();
      throw err;
    }
  }

  /** The kernel's name of a drop reason; `reason <n>` for one the enum does not have. */
  reasonName(reason: number): string {
    return this.reasonNames.get(reason) ?? `reason ${reason}`;
  }

  /** Swaps the drop maps (an RCU grace period on a worker thread) and drains the one left. */
  async evictAsync(): Promise<DropBatch> {
    const map = await this.maps.swapAsync();
    return decodeDropBatch(map.drain(), map.valueBufferSize);
  }

  /** swap and drain on the calling thread (see FlowMaps.swap). */
  evict(): DropBatch {
    const map = this.maps.swap();
    return decodeDropBatch(map.drain(), map.valueBufferSize);
  }

  /** Drops by reason since the program was loaded, summed over CPUs; reasons with none left out. */
  reasonCounts(): DropReasonCount[] {
    const out: DropReasonCount[] = [];
    const key = new Uint8Array(4);
    const kv = viewOf(key);
    const value = new Uint8Array(this.#reasons.valueBufferSize);
    const vv = viewOf(value);
    const stride = this.#reasons.perCpuStride;
    const cpus = this.#reasons.valueBufferSize / stride;
    for (const r of this.#slots) {
      kv.setUint32(0, r, true);
      if (!this.#reasons.lookupInto(key, value)) continue;
      const c: DropReasonCount = {
        reason: r,
        name: r === DROP_REASON_OTHER ? 'OTHER' : this.reasonName(r),
        packets: 0,
        bytes: 0,
        unmatchedPackets: 0,
        unmatchedBytes: 0,
      };
      for (let i = 0; i < cpus; i++) {
        const o = i * stride;
        c.packets += u64(vv, o + DROP_REASON_COUNT.fields.packets.offset);
        c.bytes += u64(vv, o + DROP_REASON_COUNT.fields.bytes.offset);
        c.unmatchedPackets += u64(vv, o + DROP_REASON_COUNT.fields.unmatched_packets.offset);
        c.unmatchedBytes += u64(vv, o + DROP_REASON_COUNT.fields.unmatched_bytes.offset);
      }
      if (c.packets > 0) out.push(c);
    }
    return out;
  }

  /** The loaded program's id, for bpf_prog_info (run time statistics). */
  get programFd(): number {
    return this.#collection.program(DROP_PROGRAM).fd;
  }

  /** Detaches the program and closes the maps; idempotent. */
  close(): void {
    if (this.#linkFd >= 0) {
      libc().close(this.#linkFd);
      this.#linkFd = -1;
    }
    this.#collection.close();
  }
}

/**
 * Puts the drops of an eviction on the flow records of the same eviction (`indexes[i]` is the
 * batch entry of records[i], from decodeFlowMapBatch), and appends a record for each flow with
 * drops and no record: its packets were counted in the eviction before or after (the flow and drop
 * maps are swapped one after the other), so it carries packetDeltaCount 0 and the drops alone,
 * egressInterface or ingressInterface by its direction as a flow's record, and a flowEndReason from
 * `eviction` and its last drop (idle, active or forced).
 */
export function attachDrops(
  records: FlowRecord[],
  indexes: readonly number[],
  flowKeys: Uint8Array,
  drops: DropBatch,
  names: (reason: number) => string,
  offsetMs: number,
  eviction: FlowEviction,
  labeler?: NetnsLabeler,
): FlowRecord[] {
  const pending = drops.byKey;
  if (pending.size === 0) return records;
  for (let i = 0; i < records.length && pending.size > 0; i++) {
    const hex = flowKeyHex(flowKeys, indexes[i]! * FLOW_KEY.size);
    const d = pending.get(hex);
    if (d === undefined) continue;
    setDrops(records[i]!, d, names);
    pending.delete(hex);
  }
  if (pending.size === 0) return records;
  // A one-CPU flow batch of the left-over keys, decoded as the flow maps are.
  const keys = new Uint8Array(pending.size * FLOW_KEY.size);
  const values = new Uint8Array(pending.size * FLOW_VALUE_STRIDE);
  const vv = viewOf(values);
  const order: FlowDrops[] = [];
  let n = 0;
  for (const [hex, d] of pending) {
    const at = drops.index.get(hex)!;
    keys.set(drops.keys.subarray(at * FLOW_KEY.size, (at + 1) * FLOW_KEY.size), n * FLOW_KEY.size);
    const v = n * FLOW_VALUE_STRIDE;
    vv.setBigUint64(v + FLOW_VALUE.fields.packets.offset, 1n, true);
    vv.setBigUint64(v + FLOW_VALUE.fields.first_seen_ns.offset, BigInt(d.lastDropNs), true);
    vv.setBigUint64(v + FLOW_VALUE.fields.last_seen_ns.offset, BigInt(d.lastDropNs), true);
    order.push(d);
    n++;
  }
  const extra = decodeFlowMapBatch(
    { count: n, keys, values },
    FLOW_VALUE_STRIDE,
    offsetMs,
    eviction,
    labeler,
  );
  for (let i = 0; i < extra.length; i++) {
    const r = extra[i]!;
    r.packetDeltaCount = 0;
    r.octetDeltaCount = 0;
    r.layer2OctetDeltaCount = 0;
    setDrops(r, order[i]!, names);
    records.push(r);
  }
  return records;
}

function setDrops(r: FlowRecord, d: FlowDrops, names: (reason: number) => string): void {
  r.droppedPacketDeltaCount = d.packets;
  r.droppedOctetDeltaCount = d.bytes;
  r.dropReason = names(d.reason);
  const state = r.protocolIdentifier === 6 ? tcpStateName(d.tcpState) : undefined;
  if (state !== undefined) r.tcpState = state;
}
