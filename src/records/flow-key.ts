/**
 * Flow identity for the operators that key on it (account, dedupe): a record's key fields read
 * into numbers, and an open-addressing table that finds a flow by them.
 *
 * Why not a `Map<string, ...>` keyed by a concatenated string: building the string, flattening
 * and hashing it cost several hundred ns a record here (bench/operators.bench.ts measures both),
 * and the key strings live as long as the entry. Reading IPv4 addresses into ints and comparing
 * the key words on a hash match is exact (no collision can merge two flows), allocates nothing
 * per record and keeps the lookups to one or two cache lines.
 */
import { RxflowError } from '../errors.js';
import { ipv4ToUint32 } from '../net/address.js';
import { flowInterface, readIPv4Words, type FlowRecord } from './flow.js';

/** An error of an operator: `code` names the failure, `cause` carries the underlying error. */
export class OperatorError extends RxflowError {
  override readonly name = 'OperatorError';
}

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

function mixString(h: number, s: string): number {
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), FNV_PRIME);
  return h;
}

/** murmur3's finaliser, so the low bits (the table index) depend on every input bit. */
function finish(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

// A layer-2 flow (ipVersion 0) is keyed, as in the kernel, by its MACs and ethertype: the MACs
// stand for the addresses (their text never equals an IP address's) and the ethertype for the
// ports it does not have.
function sourceOf(r: FlowRecord): string {
  return r.ipVersion === 4
    ? r.sourceIPv4Address!
    : r.ipVersion === 0
      ? r.sourceMacAddress
      : r.sourceIPv6Address!;
}

function destinationOf(r: FlowRecord): string {
  return r.ipVersion === 4
    ? r.destinationIPv4Address!
    : r.ipVersion === 0
      ? r.destinationMacAddress
      : r.destinationIPv6Address!;
}

function portsOf(r: FlowRecord): number {
  if (r.ipVersion === 0) return r.ethernetType;
  return (r.sourceTransportPort << 16) | (r.destinationTransportPort & 0xffff);
}

/** Protocol, ICMP type and code, tunnel type in one int: what the kernel's flow key has besides ports. */
function metaOf(r: FlowRecord): number {
  const icmpType = (r.ipVersion === 4 ? r.icmpTypeIPv4 : r.icmpTypeIPv6) ?? 0;
  const icmpCode = (r.ipVersion === 4 ? r.icmpCodeIPv4 : r.icmpCodeIPv6) ?? 0;
  const tunnel = r.encapsulationType === undefined ? 0 : r.encapsulationType === 'vxlan' ? 1 : 2;
  return (
    (r.protocolIdentifier & 0xff) | ((icmpType & 0xff) << 8) | ((icmpCode & 0xff) << 16) | (tunnel << 24)
  );
}

/** Set in `meta` when the addresses are compared as text (IPv6, or IPv4 not written canonically). */
export const TEXT_ADDRESSES = 1 << 26;
/** Set in `meta` (key with interface) when the record has a VLAN id: `vlans` holds them. */
const TAGGED = 1 << 27;
/** Set in `meta` (key with interface) when the record has `networkNamespace`: `netns` holds it. */
const IN_NAMESPACE = 1 << 28;
/** The meta bits that send a hash match to compare more than the slot's words. */
const OFF_SLOT = TEXT_ADDRESSES | TAGGED | IN_NAMESPACE;

/**
 * A hash of a namespace name from its length and four of its characters: the last three and the
 * middle one, where names tell namespaces apart (`net:[<inode>]` in its last digits, `cni-<uuid>`
 * everywhere, `ip netns` names mostly at the end). Hashing every character (or a Map of the
 * hashes) cost 25-30 ns a record on 40-character names, this about 10 (CPU time, records as in
 * bench/operators.bench.ts key_flow_table_labelled). Names that differ elsewhere only share a
 * hash, which is where a lookup starts: the table compares the names themselves.
 */
function namespaceHash(s: string): number {
  const n = s.length;
  if (n < 4) return mixString(FNV_OFFSET ^ n, s);
  let h = Math.imul(FNV_OFFSET ^ n, FNV_PRIME) ^ s.charCodeAt(n - 1);
  h = Math.imul(h, FNV_PRIME) ^ s.charCodeAt(n - 2);
  h = Math.imul(h, FNV_PRIME) ^ s.charCodeAt(n - 3);
  return Math.imul(h, FNV_PRIME) ^ s.charCodeAt(n >> 1);
}

/** The VLAN ids of a record in one int, 0 when untagged: outer (S-) id low, customer (C-) id high. */
function vlansOf(r: FlowRecord): number {
  return ((r.dot1qVlanId ?? 0) & 0xffff) | (((r.dot1qCustomerVlanId ?? 0) & 0xffff) << 16);
}

/**
 * The key fields of one record, read once and reused for every table the record is looked up in.
 * One instance per operator subscription: reading a record allocates nothing.
 */
export class FlowKey {
  hash = 0;
  src = 0;
  dst = 0;
  ports = 0;
  meta = 0;
  vni = 0;
  /** Interface and direction in one int (ifindex is below 2^31 on Linux); 0 without interface. */
  iface = 0;
  /** VLAN ids (see vlansOf), when `meta` has TAGGED; 0 otherwise. */
  vlans = 0;
  srcText = '';
  dstText = '';
  /** `networkNamespace`, when `meta` has IN_NAMESPACE. */
  netns = '';
  /**
   * Whether the last `read` parsed IPv4 text into `src`/`dst` (no words were attached): the
   * caller may attach them to the record for the next stage.
   */
  parsed = false;

  /**
   * @param withInterface key on where the flow was counted too: interface, direction, VLAN ids and
   * network namespace (account, which merges only what the kernel's flow map would), or not
   * (dedupe, which takes copies of one packet seen at several places for one flow)
   */
  constructor(readonly withInterface: boolean) {}

  /**
   * Reads `r`'s key. IPv4 addresses become numbers, taken from the words attached to the record
   * (`attachIPv4Words`) or else parsed from canonical text, so a lookup compares ints only and a
   * table entry holds no string; other addresses are hashed and compared as text. Throws a
   * TypeError for a record without its addresses.
   */
  read(r: FlowRecord): this {
    const ports = portsOf(r);
    let meta = metaOf(r);
    const vni = (r.virtualNetworkIdentifier ?? 0) | 0;
    let iface = 0;
    let vlans = 0;
    if (this.withInterface) {
      iface = (flowInterface(r) * 2 + r.flowDirection) | 0;
      // Two VLANs of a trunk, or two namespaces whose interfaces share an ifindex (every fresh
      // veth peer is 2), often carry the same 5-tuple: the kernel keeps them apart, so must we.
      // A record without them (untagged, in the agent's namespace) pays three loads and compares.
      vlans = vlansOf(r) | 0;
      if (vlans !== 0) meta |= TAGGED;
      const ns = r.networkNamespace;
      if (ns !== undefined) {
        meta |= IN_NAMESPACE;
        this.netns = ns;
      }
    }
    let parsed = false;
    if (r.ipVersion !== 4 || !readIPv4Words(r, this)) {
      const src = r.ipVersion === 4 ? ipv4ToUint32(r.sourceIPv4Address!) : -1;
      const dst = r.ipVersion === 4 ? ipv4ToUint32(r.destinationIPv4Address!) : -1;
      if (src >= 0 && dst >= 0) {
        this.src = src | 0;
        this.dst = dst | 0;
        parsed = true;
      } else {
        meta |= TEXT_ADDRESSES;
        this.src = 0;
        this.dst = 0;
        this.srcText = sourceOf(r);
        this.dstText = destinationOf(r);
      }
    }
    this.ports = ports;
    this.meta = meta;
    this.vni = vni;
    this.iface = iface;
    this.vlans = vlans;
    this.rehash();
    this.parsed = parsed;
    return this;
  }

  /** Sets `hash` from the key fields (after they were set one by one, e.g. from a table's words). */
  rehash(): void {
    let src = this.src;
    let dst = this.dst;
    if ((this.meta & TEXT_ADDRESSES) !== 0) {
      src = mixString(FNV_OFFSET, this.srcText);
      dst = mixString(FNV_OFFSET, this.dstText);
    }
    // A sum of products by distinct odd constants, then a full avalanche: the products are
    // independent (cheaper than chaining a mix per word), two keys that differ in one word never
    // collide, and the finaliser makes the low bits (the table index) depend on every input bit.
    let h = (Math.imul(src, 0x9e3779b1) + Math.imul(dst, 0x85ebca77)) | 0;
    h = (h + Math.imul(this.ports, 0xc2b2ae3d)) | 0;
    h = (h + Math.imul(this.meta, 0x27d4eb2f)) | 0;
    h = (h + Math.imul(this.vni, 0x165667b1)) | 0;
    h = (h + Math.imul(this.iface, 0xd3a2646d)) | 0;
    h = (h + Math.imul(this.vlans, 0x2545f491)) | 0;
    // The namespace is hashed only when there is one.
    if ((this.meta & IN_NAMESPACE) !== 0) h = (h + Math.imul(namespaceHash(this.netns), 0x61c88647)) | 0;
    this.hash = finish(h);
  }
}

/**
 * A readable key of the same fields `FlowKey` reads, for logs and tests; too slow for the hot
 * path.
 */
export function flowKeyString(r: FlowRecord, withInterface = true): string {
  const base = `${sourceOf(r)}:${r.sourceTransportPort}>${destinationOf(r)}:${r.destinationTransportPort}/${
    r.protocolIdentifier
  } meta=${metaOf(r)} vni=${r.virtualNetworkIdentifier ?? 0}`;
  if (!withInterface) return base;
  const vlans = vlansOf(r);
  const vlan = vlans === 0 ? '' : ` vlan=${vlans & 0xffff}.${vlans >>> 16}`;
  const netns = r.networkNamespace === undefined ? '' : ` netns=${JSON.stringify(r.networkNamespace)}`;
  return `${base} if=${flowInterface(r)} dir=${r.flowDirection}${vlan}${netns}`;
}

/**
 * Why a record cannot be keyed or counted, or undefined if it can. Called on the error path only,
 * to turn a TypeError deep in a hot loop into a message that names the field.
 */
export function recordProblem(r: unknown): string | undefined {
  if (typeof r !== 'object' || r === null) return `the record is ${r === null ? 'null' : typeof r}`;
  const rec = r as Partial<Record<keyof FlowRecord, unknown>>;
  if (rec.ipVersion === 0) {
    for (const field of ['sourceMacAddress', 'destinationMacAddress'] as const) {
      if (typeof rec[field] !== 'string') return `${field} is missing for a layer-2 flow`;
    }
  } else if (rec.ipVersion !== 4 && rec.ipVersion !== 6) {
    return `ipVersion is ${String(rec.ipVersion)}, not 0, 4 or 6`;
  } else {
    const v = rec.ipVersion === 4 ? 'IPv4' : 'IPv6';
    for (const field of [`source${v}Address`, `destination${v}Address`] as const) {
      if (typeof rec[field] !== 'string') return `${field} is missing for an IPv${rec.ipVersion} flow`;
    }
  }
  const numeric = [
    'sourceTransportPort',
    'destinationTransportPort',
    'protocolIdentifier',
    'flowDirection',
    'packetDeltaCount',
    'octetDeltaCount',
    'flowStartMilliseconds',
    'flowEndMilliseconds',
    'tcpControlBits',
  ] as const;
  for (const field of numeric) {
    if (typeof rec[field] !== 'number') return `${field} is ${typeof rec[field]}, not a number`;
  }
  return undefined;
}

/** The error a stage reports for a record it cannot handle. */
export function badRecordError(
  stage: string,
  batch: readonly unknown[],
  index: number,
  cause?: unknown,
): OperatorError {
  const problem = recordProblem(batch[index]) ?? (cause instanceof Error ? cause.message : String(cause));
  return new OperatorError(
    'EBADRECORD',
    `${stage}: bad record at index ${index} of a batch of ${batch.length}: ${problem}; fix the source that produced it`,
    { cause },
  );
}

const MIN_SLOTS = 64;

function slotsFor(entries: number): number {
  let n = MIN_SLOTS;
  while (n < entries * 2) n *= 2;
  return n;
}

/** Set in a slot's meta word when the slot holds an entry (key metas use bits 0-28). */
const OCCUPIED = 1 << 30;
/** Int32 words per slot: src, dst, ports, meta | OCCUPIED, vni, iface, entry index, hash. */
const SLOT_WORDS = 8;

/**
 * An insert-only open-addressing table of flows (linear probing, load factor at most 1/2), with
 * entries numbered in insertion order so callers keep per-entry data in parallel arrays. It is
 * emptied as a whole (`clear`) rather than entry by entry, which is what account needs: it empties
 * the table on every eviction.
 *
 * A slot holds the whole key beside the entry's index (32 bytes, half a cache line), so a lookup
 * touches one cache line of the table, not a slot and then a separate key row. Text addresses
 * (IPv6) are kept by reference in two side arrays; IPv4 entries keep no string and so no record
 * data alive. So are the rarer key fields, VLAN ids and network namespace, by entry: a flag in
 * the meta word says the entry has them, so an untagged flow in the agent's namespace never reads
 * them and the slot stays 32 bytes; a flagged one compares them exactly on a hash match.
 */
export class FlowTable {
  /** Number of entries. */
  size = 0;
  private mask: number;
  private slots: Int32Array;
  /** The slot of each entry, in insertion order. */
  private entrySlots: Int32Array;
  private sources: string[] = [];
  private destinations: string[] = [];
  /** VLAN ids of each TAGGED entry (stale for the others). */
  private vlans: Int32Array;
  /** Network namespace of each IN_NAMESPACE entry; sparse. */
  private namespaces: string[] = [];
  private readonly minEntries: number;
  /** Slots of the first allocation: the table never shrinks below it. */
  private readonly minSlots: number;

  /** @param expectedEntries capacity to allocate up front; the table grows past it when needed */
  constructor(expectedEntries = 1024) {
    this.minEntries = Math.max(16, expectedEntries);
    const slots = slotsFor(this.minEntries);
    this.minSlots = slots;
    this.mask = slots - 1;
    this.slots = new Int32Array(slots * SLOT_WORDS);
    this.entrySlots = new Int32Array(slots >>> 1);
    this.vlans = new Int32Array(slots >>> 1);
  }

  /** Entries the table holds before it grows. */
  get capacity(): number {
    return (this.mask + 1) >>> 1;
  }

  /** The entry index of `k`'s flow, or -1. */
  find(k: FlowKey): number {
    const s = this.slots;
    const mask = this.mask;
    const meta = k.meta | OCCUPIED;
    let i = k.hash & mask;
    for (;;) {
      const b = i * SLOT_WORDS;
      const m = s[b + 3]!;
      if (m === 0) return -1;
      if (
        m === meta &&
        s[b]! === k.src &&
        s[b + 1]! === k.dst &&
        s[b + 2]! === k.ports &&
        s[b + 4]! === k.vni &&
        s[b + 5]! === k.iface
      ) {
        const e = s[b + 6]!;
        if ((meta & OFF_SLOT) === 0 || this.sameOffSlot(e, k)) return e;
      }
      i = (i + 1) & mask;
    }
  }

  /** Whether entry `e` has `k`'s key fields kept outside the slot (`k.meta` flags which). */
  private sameOffSlot(e: number, k: FlowKey): boolean {
    const meta = k.meta;
    return (
      ((meta & TEXT_ADDRESSES) === 0 ||
        (this.sources[e] === k.srcText && this.destinations[e] === k.dstText)) &&
      ((meta & TAGGED) === 0 || this.vlans[e] === k.vlans) &&
      ((meta & IN_NAMESPACE) === 0 || this.namespaces[e] === k.netns)
    );
  }

  /** Adds `k`'s flow (which must not be present) and returns its entry index. */
  insert(k: FlowKey): number {
    if (this.size === this.capacity) this.resize((this.mask + 1) * 2);
    const e = this.size++;
    const s = this.slots;
    const mask = this.mask;
    let i = k.hash & mask;
    while (s[i * SLOT_WORDS + 3] !== 0) i = (i + 1) & mask;
    const b = i * SLOT_WORDS;
    s[b] = k.src;
    s[b + 1] = k.dst;
    s[b + 2] = k.ports;
    s[b + 3] = k.meta | OCCUPIED;
    s[b + 4] = k.vni;
    s[b + 5] = k.iface;
    s[b + 6] = e;
    s[b + 7] = k.hash;
    this.entrySlots[e] = i;
    if ((k.meta & OFF_SLOT) !== 0) {
      if ((k.meta & TEXT_ADDRESSES) !== 0) {
        this.sources[e] = k.srcText;
        this.destinations[e] = k.dstText;
      }
      if ((k.meta & TAGGED) !== 0) this.vlans[e] = k.vlans;
      if ((k.meta & IN_NAMESPACE) !== 0) this.namespaces[e] = k.netns;
    }
    return e;
  }

  /** Empties the table; shrinks it back when the last fill used a small part of a grown table. */
  clear(): void {
    const used = this.size;
    this.size = 0;
    // Compared with the first allocation (not minEntries, which it may exceed after rounding up),
    // or a light fill would reallocate a table of the same size on every clear.
    if (this.mask + 1 > this.minSlots && used * 8 < this.capacity) {
      this.allocate(slotsFor(Math.max(this.minEntries, used * 2)));
      this.resized(this.capacity);
    } else {
      // Only the slots in use are dirty: zeroing those beats refilling the whole table.
      const s = this.slots;
      const entrySlots = this.entrySlots;
      for (let e = 0; e < used; e++) s[entrySlots[e]! * SLOT_WORDS + 3] = 0;
    }
    // Release the address and namespace strings, so a cleared table keeps no record data alive.
    this.sources = [];
    this.destinations = [];
    this.namespaces = [];
  }

  /** Called with the new entry capacity whenever the table grows or shrinks. */
  protected resized(_entries: number): void {}

  private allocate(slots: number): void {
    this.mask = slots - 1;
    this.slots = new Int32Array(slots * SLOT_WORDS);
    this.entrySlots = new Int32Array(slots >>> 1);
    this.vlans = new Int32Array(slots >>> 1);
  }

  private resize(slots: number): void {
    const old = this.slots;
    const oldEntrySlots = this.entrySlots;
    const oldVlans = this.vlans;
    this.allocate(slots);
    this.vlans.set(oldVlans.subarray(0, this.size));
    const s = this.slots;
    const mask = this.mask;
    for (let e = 0; e < this.size; e++) {
      const from = oldEntrySlots[e]! * SLOT_WORDS;
      let i = old[from + 7]! & mask;
      while (s[i * SLOT_WORDS + 3] !== 0) i = (i + 1) & mask;
      s.set(old.subarray(from, from + SLOT_WORDS), i * SLOT_WORDS);
      this.entrySlots[e] = i;
    }
    this.resized(this.capacity);
  }
}
