import { Observable, asyncScheduler, type OperatorFunction, type SchedulerLike } from 'rxjs';
import type { ComponentContext, TransformModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import {
  MAX_OBSERVED_INTERFACES,
  flowInterface,
  type FlowBatch,
  type FlowRecord,
  type ObservedInterface,
} from '../records/flow.js';
import { FlowKey, OperatorError, TEXT_ADDRESSES, badRecordError } from '../records/flow-key.js';

export type DedupeMode = 'none' | 'first_come';

export interface DedupeOptions {
  mode: DedupeMode;
  /** A flow not seen for longer than this is forgotten, with the interface it was first seen on. */
  expireMs: number;
  /** Pass copies from other interfaces on, marked `duplicate: true`, instead of dropping them. */
  justMark: boolean;
  /**
   * Give the records of a flow seen on more than one (interface, direction) the list of them,
   * `observedInterfaces` (see FlowRecord). Off by default.
   */
  observedInterfaces?: boolean;
  counters: StageCounters;
  /** Its clock (`now()`) ages the entries; asyncScheduler by default. */
  scheduler?: SchedulerLike;
  /** Names the stage in error messages. */
  id?: string;
}

/** Set in a slot's meta word when the slot holds an entry (key metas use bits 0-26). */
const OCCUPIED = 1 << 30;
/** Set in a slot's meta word when the flow was first seen egress (flowDirection 1). */
const FIRST_EGRESS = 1 << 29;
/**
 * Set in a slot's meta word when the flow was first seen in a namespace (`networkNamespace`),
 * kept in `firstNamespaces`: an ifindex names an interface only within its namespace, and under
 * `netns: all` every pod's eth0 may be ifindex 2.
 */
const FIRST_IN_NAMESPACE = 1 << 28;
/** The bits of a slot's meta word that are not the key's. */
const NOT_KEY = FIRST_EGRESS | FIRST_IN_NAMESPACE;
const META_KEY = ~(OCCUPIED | NOT_KEY);

/**
 * The (interface, direction) pairs a flow was seen on, kept once there are two: `pairs` holds
 * `interface * 2 + direction` of each entry of `items`, in the same order.
 */
interface Observed {
  pairs: number[];
  items: ObservedInterface[];
}

/** The entry of observedInterfaces for an interface and direction, under the direction's IPFIX name. */
function observedEntry(iface: number, direction: number, name: string | undefined): ObservedInterface {
  const e: ObservedInterface =
    direction === 1
      ? { egressInterface: iface, flowDirection: 1 }
      : { ingressInterface: iface, flowDirection: 0 };
  if (name !== undefined) e.interfaceName = name;
  return e;
}
/** Int32 words per slot: src, dst, ports, meta | OCCUPIED, vni, first interface, then last seen as a float64. */
const SLOT_WORDS = 8;
const MIN_SLOTS = 2048;

/**
 * The flows of one dedupe generation: key (without interface), the interface the flow was first
 * seen on, and when it was last seen, all inline in one 32-byte slot of an open-addressing table
 * (linear probing, load factor at most 3/4). Why not FlowTable's index + entry layout: this table
 * holds every flow of the last `expire_ms` (tens of thousands), far more than fits in cache, and
 * a lookup that touches one cache line instead of two is most of dedupe's cost; for the same
 * reason the load factor is higher than FlowTable's (a probe that runs on reads the next slots of
 * a line already fetched, while a bigger table misses more). Entries are never removed one by one,
 * only all at once (`clear`), so no tombstones are needed.
 */
export class SeenTable {
  /** Number of entries. */
  size = 0;
  private mask: number;
  private words: Int32Array;
  private times: Float64Array;
  /** Text addresses (IPv6, non-canonical IPv4) by slot; empty until such a flow is seen. */
  private sources: string[] = [];
  private destinations: string[] = [];
  /** The pairs of flows seen on more than one (interface, direction), by slot; sparse. */
  private observedBySlot: (Observed | undefined)[] = [];
  /** The namespace of the first interface of FIRST_IN_NAMESPACE slots; sparse. */
  private firstNamespaces: string[] = [];
  /** Times the table grew, which moves entries to other slots. */
  resizes = 0;
  private readonly minSlots: number;
  private readonly scratch = new FlowKey(false);

  /** @param expectedEntries entries to allocate for up front; the table grows past it when needed */
  constructor(expectedEntries = 1024) {
    this.minSlots = slotsFor(expectedEntries);
    this.mask = this.minSlots - 1;
    this.words = new Int32Array(this.minSlots * SLOT_WORDS);
    this.times = new Float64Array(this.words.buffer);
  }

  /** Entries the table holds before it grows. */
  get capacity(): number {
    return ((this.mask + 1) >>> 2) * 3;
  }

  /**
   * The slot of `k`'s flow if present (>= 0), else the bitwise complement of the empty slot where
   * `insert` would put it (< 0). `k` must have been read without interface.
   */
  find(k: FlowKey): number {
    const w = this.words;
    const mask = this.mask;
    const meta = k.meta | OCCUPIED;
    let i = k.hash & mask;
    for (;;) {
      const b = i * SLOT_WORDS;
      const m = w[b + 3]!;
      if (m === 0) return ~i;
      if (
        (m & ~NOT_KEY) === meta &&
        w[b]! === k.src &&
        w[b + 1]! === k.dst &&
        w[b + 2]! === k.ports &&
        w[b + 4]! === k.vni &&
        ((meta & TEXT_ADDRESSES) === 0 ||
          (this.sources[i] === k.srcText && this.destinations[i] === k.dstText))
      ) {
        return i;
      }
      i = (i + 1) & mask;
    }
  }

  /**
   * Adds `k`'s flow at `free` (what `find` returned for it) and returns its slot, which differs
   * from `~free` when the table had to grow.
   */
  insert(
    k: FlowKey,
    free: number,
    firstInterface: number,
    lastSeen: number,
    firstDirection = 0,
    firstNamespace?: string,
  ): number {
    let slot = ~free;
    if (this.size >= this.capacity) {
      this.resize((this.mask + 1) * 2);
      slot = ~this.find(k);
    }
    this.size++;
    this.put(slot, k, firstInterface, lastSeen, firstDirection, undefined, firstNamespace);
    return slot;
  }

  /** The interface the flow in `slot` was first seen on. */
  firstInterface(slot: number): number {
    return this.words[slot * SLOT_WORDS + 5]!;
  }

  /** The namespace of the interface the flow in `slot` was first seen on; undefined: the agent's. */
  firstNamespace(slot: number): string | undefined {
    return (this.words[slot * SLOT_WORDS + 3]! & FIRST_IN_NAMESPACE) === 0
      ? undefined
      : this.firstNamespaces[slot];
  }

  /** The direction (flowDirection) the flow in `slot` was first seen in. */
  firstDirection(slot: number): 0 | 1 {
    return (this.words[slot * SLOT_WORDS + 3]! & FIRST_EGRESS) === 0 ? 0 : 1;
  }

  /** The pairs the flow in `slot` was seen on, once there are two or more. */
  observed(slot: number): Observed | undefined {
    return this.observedBySlot[slot];
  }

  setObserved(slot: number, observed: Observed | undefined): void {
    if (observed !== undefined) this.observedBySlot[slot] = observed;
  }

  /**
   * Notes that the flow in `slot` was seen on `iface` in `direction`, with interface name `name`
   * if the record has one: starts its list (with the first pair) when this is another pair, adds
   * the pair when new (up to MAX_OBSERVED_INTERFACES), and gives an entry without a name this one.
   * Entries are replaced, never changed: records hold copies of the list.
   */
  observe(slot: number, iface: number, direction: number, name: string | undefined): void {
    const pair = iface * 2 + direction;
    let o = this.observedBySlot[slot];
    if (o === undefined) {
      const first = this.firstInterface(slot) >>> 0;
      const firstDirection = this.firstDirection(slot);
      if (first === iface >>> 0 && firstDirection === direction) return;
      o = this.observedBySlot[slot] = {
        pairs: [first * 2 + firstDirection],
        items: [observedEntry(first, firstDirection, undefined)],
      };
    }
    const at = o.pairs.indexOf(pair);
    if (at < 0) {
      if (o.pairs.length >= MAX_OBSERVED_INTERFACES) return;
      o.pairs.push(pair);
      o.items.push(observedEntry(iface, direction, name));
    } else if (name !== undefined && o.items[at]!.interfaceName === undefined) {
      o.items[at] = observedEntry(iface, direction, name);
    }
  }

  /** When the flow in `slot` was last seen (scheduler time). */
  lastSeen(slot: number): number {
    return this.times[slot * (SLOT_WORDS / 2) + 3]!;
  }

  setLastSeen(slot: number, time: number): void {
    this.times[slot * (SLOT_WORDS / 2) + 3] = time;
  }

  /** Empties the table; shrinks it back when the last fill used a small part of a grown table. */
  clear(): void {
    const used = this.size;
    this.size = 0;
    if (this.mask + 1 > this.minSlots && used * 16 < this.mask + 1) {
      this.allocate(Math.max(this.minSlots, slotsFor(used)));
    } else {
      this.words.fill(0);
    }
    this.sources = [];
    this.destinations = [];
    this.observedBySlot = [];
    this.firstNamespaces = [];
  }

  private put(
    slot: number,
    k: FlowKey,
    firstInterface: number,
    lastSeen: number,
    firstDirection: number,
    observed: Observed | undefined,
    firstNamespace: string | undefined,
  ): void {
    const w = this.words;
    const b = slot * SLOT_WORDS;
    w[b] = k.src;
    w[b + 1] = k.dst;
    w[b + 2] = k.ports;
    w[b + 3] =
      k.meta |
      OCCUPIED |
      (firstDirection === 1 ? FIRST_EGRESS : 0) |
      (firstNamespace === undefined ? 0 : FIRST_IN_NAMESPACE);
    w[b + 4] = k.vni;
    w[b + 5] = firstInterface;
    this.times[slot * (SLOT_WORDS / 2) + 3] = lastSeen;
    if ((k.meta & TEXT_ADDRESSES) !== 0) {
      this.sources[slot] = k.srcText;
      this.destinations[slot] = k.dstText;
    }
    if (observed !== undefined) this.observedBySlot[slot] = observed;
    if (firstNamespace !== undefined) this.firstNamespaces[slot] = firstNamespace;
  }

  private allocate(slots: number): void {
    this.mask = slots - 1;
    this.words = new Int32Array(slots * SLOT_WORDS);
    this.times = new Float64Array(this.words.buffer);
  }

  private resize(slots: number): void {
    const oldWords = this.words;
    const oldTimes = this.times;
    const oldSources = this.sources;
    const oldDestinations = this.destinations;
    const oldObserved = this.observedBySlot;
    const oldNamespaces = this.firstNamespaces;
    const oldSlots = this.mask + 1;
    this.allocate(slots);
    this.resizes++;
    this.sources = [];
    this.destinations = [];
    this.observedBySlot = [];
    this.firstNamespaces = [];
    const k = this.scratch;
    for (let i = 0; i < oldSlots; i++) {
      const b = i * SLOT_WORDS;
      if (oldWords[b + 3] === 0) continue;
      k.src = oldWords[b]!;
      k.dst = oldWords[b + 1]!;
      k.ports = oldWords[b + 2]!;
      k.meta = oldWords[b + 3]! & META_KEY;
      k.vni = oldWords[b + 4]!;
      k.iface = 0;
      k.srcText = oldSources[i] ?? '';
      k.dstText = oldDestinations[i] ?? '';
      k.rehash();
      this.put(
        ~this.find(k),
        k,
        oldWords[b + 5]!,
        oldTimes[i * (SLOT_WORDS / 2) + 3]!,
        (oldWords[b + 3]! & FIRST_EGRESS) === 0 ? 0 : 1,
        oldObserved[i],
        (oldWords[b + 3]! & FIRST_IN_NAMESPACE) === 0 ? undefined : oldNamespaces[i],
      );
    }
  }
}

/** Slots for `entries` at a load factor of at most 3/4: a power of two. */
function slotsFor(entries: number): number {
  let n = MIN_SLOTS;
  while (n * 3 < entries * 4) n *= 2;
  return n;
}

/**
 * Keeps each flow from the first interface it was seen on. A router sees one packet twice,
 * ingress on eth0 and egress on eth1: both records have the same flow key once interface and
 * direction are left out, and only the records from the interface that reported the flow first
 * pass. The others are dropped (counted with reason `dedupe_duplicate`) or, with `justMark`,
 * passed with `duplicate: true`. Any record of a flow, from whatever interface, keeps its entry
 * alive; an entry not refreshed for more than `expireMs` is forgotten, so the next record of that
 * flow registers its own interface as the first. Mode `none` passes everything.
 *
 * The key leaves out the VLAN ids and the network namespace too, which account keys on: one
 * packet is seen tagged on a trunk and untagged on its VLAN subinterface (or under another tag
 * past a bridge that translates VLANs or pushes an 802.1ad tag), and in two namespaces as it
 * crosses a veth, so keying on them would pass every copy. The price: flows of overlapping
 * address spaces, the same 5-tuple on two VLANs or in two namespaces, reported by different
 * interfaces, are taken for copies of one flow. Where that happens (VRFs over VLANs, namespaces
 * with the same addresses), do not dedupe, or run a pipeline per address space. The interface a
 * flow was first seen on, though, is its ifindex within its namespace: under `netns: all` every
 * pod's eth0 may be ifindex 2, and a packet from one pod to another is not counted twice for it.
 * (`observedInterfaces` lists ifindex and direction only.)
 *
 * Expiry is exact and needs no timer: entries live in two generations, each spanning `expireMs`
 * of the scheduler's clock; a generation is dropped whole once everything in it is older than
 * `expireMs`, and an entry found in the older generation is checked against its last-seen time.
 * Memory is thus bounded by the flows seen in the last 2 x `expireMs`.
 *
 * With `observedInterfaces`, an entry also keeps every (interface, direction) its flow was seen on
 * once there are two or more (at most MAX_OBSERVED_INTERFACES, in a side list by slot that goes
 * with its generation, so within the same bound), and each record of such a flow gets a copy of
 * the list as it stands after its batch: the record dedupe keeps names the interfaces of the copies
 * it dropped, as netobserv's `Interfaces` does. A list is never shortened while its entry lives.
 *
 * Records are marked in place; batches with nothing dropped are passed on as they are, and a batch
 * left empty is not emitted.
 *
 * @example
 * ```ts
 * const counters = ledger.stage('dd', 'dedupe');
 * flows$.pipe(dedupe({ mode: 'first_come', expireMs: 10_000, justMark: false, counters })).subscribe(sink);
 * // [A on eth0, A on eth1, B on eth1] -> [A on eth0, B on eth1]; dropped.dedupe_duplicate = 1
 * ```
 */
export function dedupe(options: DedupeOptions): OperatorFunction<FlowBatch, FlowBatch> {
  const stage = `dedupe ${options.id ?? ''}`.trimEnd();
  const { mode, expireMs, justMark, counters } = options;
  const listing = options.observedInterfaces === true;
  if (mode !== 'none' && mode !== 'first_come') {
    throw new OperatorError(
      'EBADCONFIG',
      `${stage}: mode must be 'none' or 'first_come', got '${String(mode)}'`,
    );
  }
  if (!(expireMs > 0) || !Number.isFinite(expireMs)) {
    throw new OperatorError('EBADCONFIG', `${stage}: expire_ms must be > 0, got ${expireMs}`);
  }
  const scheduler = options.scheduler ?? asyncScheduler;

  if (mode === 'none') {
    return (source) =>
      new Observable<FlowBatch>((subscriber) =>
        source.subscribe({
          next(batch) {
            counters.addReceived(batch.length);
            counters.addSent(batch.length);
            subscriber.next(batch);
          },
          error: (err: unknown) => subscriber.error(err),
          complete: () => subscriber.complete(),
        }),
      );
  }

  return (source) =>
    new Observable<FlowBatch>((subscriber) => {
      let current = new SeenTable(1024);
      let previous = new SeenTable(1024);
      let generationStart = scheduler.now();
      const key = new FlowKey(false);
      /** The slot of each record of the batch in hand. */
      let slots = new Int32Array(1024);

      const rotate = (now: number): void => {
        const emptied = previous;
        previous = current;
        current = emptied;
        current.clear();
        // Everything in the generation just retired was last seen before `generationStart +
        // expireMs`; if that is more than expireMs ago, it is all expired too.
        if (now - generationStart >= 2 * expireMs) previous.clear();
        generationStart = now;
      };

      return source.subscribe({
        next(batch) {
          counters.addReceived(batch.length);
          let i = 0;
          let kept: FlowRecord[] | undefined;
          let duplicates = 0;
          let listed = false;
          const n = batch.length;
          if (listing && slots.length < n) slots = new Int32Array(Math.max(n, slots.length * 2));
          let resizes = 0;
          try {
            const now = scheduler.now();
            if (now - generationStart >= expireMs) rotate(now);
            resizes = current.resizes;
            for (; i < n; i++) {
              const r = batch[i]!;
              const iface = flowInterface(r);
              const ifindex = iface | 0;
              const direction = r.flowDirection;
              const netns = r.networkNamespace;
              let s = current.find(key.read(r));
              let first: number;
              let firstNetns: string | undefined;
              if (s >= 0) {
                first = current.firstInterface(s);
                firstNetns = current.firstNamespace(s);
                current.setLastSeen(s, now);
                // The common case, a flow seen on one interface in one direction, costs one compare.
                if (
                  first !== ifindex ||
                  current.firstDirection(s) !== direction ||
                  current.observed(s) !== undefined
                )
                  current.observe(s, iface, direction, r.interfaceName);
              } else {
                const p = previous.size === 0 ? -1 : previous.find(key);
                // Entries of the current generation are never expired; those of the previous one may be.
                if (p >= 0 && now - previous.lastSeen(p) <= expireMs) {
                  first = previous.firstInterface(p);
                  firstNetns = previous.firstNamespace(p);
                  s = current.insert(key, s, first, now, previous.firstDirection(p), firstNetns);
                  if (listing) {
                    current.setObserved(s, previous.observed(p));
                    current.observe(s, iface, direction, r.interfaceName);
                  }
                } else {
                  first = ifindex;
                  firstNetns = netns;
                  s = current.insert(key, s, first, now, direction, netns);
                }
              }
              if (listing) {
                slots[i] = s;
                if (!listed && current.observed(s) !== undefined) listed = true;
              }
              // The interface is its ifindex in its namespace: ifindex 2 in two namespaces is two.
              if (first === ifindex && firstNetns === netns) {
                kept?.push(r);
              } else {
                duplicates++;
                if (justMark) r.duplicate = true;
                else kept ??= batch.slice(0, i);
              }
            }
            // Records of flows seen on several interfaces carry the list as it is after the whole
            // batch: a copy, since the list grows on.
            if (listed) {
              // Slots hold until the table grows; then the entries are looked up again.
              const moved = current.resizes !== resizes;
              for (let j = 0; j < n; j++) {
                const r = batch[j]!;
                const o = current.observed(moved ? current.find(key.read(r)) : slots[j]!);
                if (o !== undefined) r.observedInterfaces = o.items.slice();
              }
            }
          } catch (err) {
            // Nothing of this batch is sent: copies found so far are duplicates, the rest is lost.
            const dropped = justMark ? 0 : duplicates;
            counters.addDropped('dedupe_duplicate', dropped);
            counters.addDropped('shutdown', batch.length - dropped);
            subscriber.error(badRecordError(stage, batch, i, err));
            return;
          }
          const out = kept ?? batch;
          if (!justMark) counters.addDropped('dedupe_duplicate', duplicates);
          counters.addSent(out.length);
          if (out.length > 0) subscriber.next(out);
        },
        error: (err: unknown) => subscriber.error(err),
        complete: () => subscriber.complete(),
      });
    });
}

export interface DedupeConfig {
  /** `firstCome` is the firewall design's spelling of `first_come`. */
  mode: DedupeMode | 'firstCome';
  expire_ms: number;
  just_mark: boolean;
  observed_interfaces?: boolean;
}

const dedupeModule: TransformModule<DedupeConfig> = {
  type: 'dedupe',
  kind: 'transform',
  description: 'keeps each flow from the first interface it was seen on; drops or marks copies from others',
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      mode: {
        type: 'string',
        enum: ['none', 'first_come', 'firstCome'],
        default: 'first_come',
        description:
          "'first_come' (or its alias 'firstCome') keeps a flow from the first interface that reported it; 'none' passes all",
      },
      expire_ms: {
        type: 'integer',
        minimum: 1,
        maximum: 2147483647,
        default: 10000,
        description: 'a flow not seen for longer than this is forgotten, in milliseconds',
      },
      just_mark: {
        type: 'boolean',
        default: false,
        description: 'pass copies from other interfaces with duplicate: true instead of dropping them',
      },
      observed_interfaces: {
        type: 'boolean',
        default: false,
        description:
          "records of a flow seen on more than one (interface, direction) carry them all as observedInterfaces: [{ingressInterface or egressInterface, flowDirection, interfaceName?}], the first one first, at most 16 (rxflow's own field; netobserv's Interfaces)",
      },
    },
  },
  example: { mode: 'first_come', expire_ms: 10000, just_mark: false },
  build(config: DedupeConfig, context: ComponentContext) {
    const options: DedupeOptions = {
      mode: config.mode === 'firstCome' ? 'first_come' : config.mode,
      expireMs: config.expire_ms,
      justMark: config.just_mark,
      observedInterfaces: config.observed_interfaces === true,
      counters: context.counters,
      id: context.id,
    };
    if (context.scheduler) options.scheduler = context.scheduler;
    return dedupe(options);
  },
};

export default dedupeModule;
