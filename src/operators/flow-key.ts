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
import type { FlowRecord } from '../records.js';

/** An error of an operator: `code` names the failure, `cause` carries the underlying error. */
export class OperatorError extends Error {
  override readonly name = 'OperatorError';
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/**
 * The address as an unsigned 32-bit number if `s` is a canonical dotted quad ("10.0.0.1": four
 * decimal octets, no leading zeros), else -1. Canonical text and number map one to one, so
 * comparing the numbers is comparing the strings.
 */
export function ipv4ToUint32(s: string): number {
  const n = s.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      // A leading zero ("01") would give a second spelling of the same address.
      if (digits > 0 && octet === 0) return -1;
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return -1;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + octet;
}

function mixString(h: number, s: string): number {
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), FNV_PRIME);
  return h;
}

/** One round of murmur3's body: mixes a 32-bit word into the hash. */
function mixWord(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  h ^= Math.imul(k, 0x1b873593);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
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

function sourceOf(r: FlowRecord): string {
  return r.ipVersion === 4 ? r.sourceIPv4Address! : r.sourceIPv6Address!;
}

function destinationOf(r: FlowRecord): string {
  return r.ipVersion === 4 ? r.destinationIPv4Address! : r.destinationIPv6Address!;
}

function portsOf(r: FlowRecord): number {
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
const TEXT_ADDRESSES = 1 << 26;

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
  srcText = '';
  dstText = '';

  /** @param withInterface key on interface and direction too (account) or not (dedupe) */
  constructor(readonly withInterface: boolean) {}

  /**
   * Reads `r`'s key. Canonical IPv4 addresses become numbers, so a lookup compares ints only and
   * a table entry holds no string; other addresses are hashed and compared as text. Throws a
   * TypeError for a record without its addresses.
   */
  read(r: FlowRecord): this {
    const ports = portsOf(r);
    let meta = metaOf(r);
    const vni = (r.virtualNetworkIdentifier ?? 0) | 0;
    const iface = this.withInterface ? (r.ingressInterface * 2 + r.flowDirection) | 0 : 0;
    let src = -1;
    let dst = -1;
    if (r.ipVersion === 4) {
      src = ipv4ToUint32(r.sourceIPv4Address!);
      dst = ipv4ToUint32(r.destinationIPv4Address!);
    }
    let h: number;
    if (src >= 0 && dst >= 0) {
      h = mixWord(mixWord(FNV_OFFSET, src | 0), dst | 0);
      this.src = src | 0;
      this.dst = dst | 0;
      this.srcText = '';
      this.dstText = '';
    } else {
      meta |= TEXT_ADDRESSES;
      const srcText = sourceOf(r);
      const dstText = destinationOf(r);
      h = mixString(mixString(FNV_OFFSET, srcText) ^ 0x7c, dstText);
      this.src = 0;
      this.dst = 0;
      this.srcText = srcText;
      this.dstText = dstText;
    }
    h = mixWord(mixWord(mixWord(mixWord(h, ports), meta), vni), iface);
    this.hash = finish(h);
    this.ports = ports;
    this.meta = meta;
    this.vni = vni;
    this.iface = iface;
    return this;
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
  return withInterface ? `${base} if=${r.ingressInterface} dir=${r.flowDirection}` : base;
}

/**
 * Why a record cannot be keyed or counted, or undefined if it can. Called on the error path only,
 * to turn a TypeError deep in a hot loop into a message that names the field.
 */
export function recordProblem(r: unknown): string | undefined {
  if (typeof r !== 'object' || r === null) return `the record is ${r === null ? 'null' : typeof r}`;
  const rec = r as Partial<Record<keyof FlowRecord, unknown>>;
  if (rec.ipVersion !== 4 && rec.ipVersion !== 6) return `ipVersion is ${String(rec.ipVersion)}, not 4 or 6`;
  const v = rec.ipVersion === 4 ? 'IPv4' : 'IPv6';
  for (const field of [`source${v}Address`, `destination${v}Address`] as const) {
    if (typeof rec[field] !== 'string') return `${field} is missing for an IPv${rec.ipVersion} flow`;
  }
  const numeric = [
    'sourceTransportPort',
    'destinationTransportPort',
    'protocolIdentifier',
    'ingressInterface',
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

/** Int32 words per entry: hash, src, dst, ports, meta, vni, iface, spare. */
const STRIDE = 8;

/**
 * An insert-only open-addressing table of flows (linear probing, load factor at most 1/2), with
 * entries numbered in insertion order so callers keep per-entry data in parallel arrays. It is
 * emptied as a whole (`clear`) rather than entry by entry, which is what both its users need:
 * account empties it on every eviction, dedupe drops a whole generation at a time.
 *
 * A slot holds the entry's hash beside its index, so a probe that misses touches one array; an
 * entry's key words sit together in one cache line. Text addresses (IPv6) are kept by reference
 * in two side arrays; IPv4 entries keep no string and so no record data alive.
 */
export class FlowTable {
  /** Number of entries. */
  size = 0;
  private slotMask: number;
  /** Per slot: entry index + 1 (0 when empty), then the entry's hash. */
  private slots: Int32Array;
  private keys: Int32Array;
  private sources: string[] = [];
  private destinations: string[] = [];
  private readonly minEntries: number;

  /** @param expectedEntries capacity to allocate up front; the table grows past it when needed */
  constructor(expectedEntries = 1024) {
    this.minEntries = Math.max(16, expectedEntries);
    const slots = slotsFor(this.minEntries);
    this.slotMask = slots - 1;
    this.slots = new Int32Array(slots * 2);
    this.keys = new Int32Array((slots >>> 1) * STRIDE);
  }

  /** Entries the table holds before it grows. */
  get capacity(): number {
    return this.keys.length / STRIDE;
  }

  /** The entry index of `k`'s flow, or -1. */
  find(k: FlowKey): number {
    const slots = this.slots;
    const keys = this.keys;
    const mask = this.slotMask;
    const h = k.hash;
    let i = h & mask;
    for (;;) {
      const e = slots[2 * i]! - 1;
      if (e < 0) return -1;
      if (slots[2 * i + 1] === h) {
        const b = e * STRIDE;
        if (
          keys[b + 1] === k.src &&
          keys[b + 2] === k.dst &&
          keys[b + 3] === k.ports &&
          keys[b + 4] === k.meta &&
          keys[b + 5] === k.vni &&
          keys[b + 6] === k.iface &&
          ((k.meta & TEXT_ADDRESSES) === 0 ||
            (this.sources[e] === k.srcText && this.destinations[e] === k.dstText))
        ) {
          return e;
        }
      }
      i = (i + 1) & mask;
    }
  }

  /** Adds `k`'s flow (which must not be present) and returns its entry index. */
  insert(k: FlowKey): number {
    if (this.size === this.capacity) this.resize((this.slotMask + 1) * 2);
    const e = this.size++;
    const keys = this.keys;
    const b = e * STRIDE;
    keys[b] = k.hash;
    keys[b + 1] = k.src;
    keys[b + 2] = k.dst;
    keys[b + 3] = k.ports;
    keys[b + 4] = k.meta;
    keys[b + 5] = k.vni;
    keys[b + 6] = k.iface;
    this.sources[e] = k.srcText;
    this.destinations[e] = k.dstText;
    this.place(e, k.hash);
    return e;
  }

  private place(e: number, h: number): void {
    const slots = this.slots;
    const mask = this.slotMask;
    let i = h & mask;
    while (slots[2 * i] !== 0) i = (i + 1) & mask;
    slots[2 * i] = e + 1;
    slots[2 * i + 1] = h;
  }

  /** Empties the table; shrinks it back when the last fill used a small part of a grown table. */
  clear(): void {
    const used = this.size;
    this.size = 0;
    if (this.capacity > this.minEntries && used * 8 < this.capacity) {
      this.resize(slotsFor(Math.max(this.minEntries, used * 2)));
    } else {
      this.slots.fill(0);
    }
    // Release the address strings, so a cleared table keeps no record data alive.
    this.sources.length = 0;
    this.destinations.length = 0;
  }

  /** Called with the new entry capacity whenever the table grows or shrinks. */
  protected resized(_entries: number): void {}

  private resize(slots: number): void {
    const entries = slots >>> 1;
    const keys = new Int32Array(entries * STRIDE);
    keys.set(this.keys.subarray(0, Math.min(this.size, entries) * STRIDE));
    this.keys = keys;
    this.slots = new Int32Array(slots * 2);
    this.slotMask = slots - 1;
    for (let e = 0; e < this.size; e++) this.place(e, keys[e * STRIDE]!);
    this.resized(entries);
  }
}
