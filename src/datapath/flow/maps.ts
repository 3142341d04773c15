/**
 * The double-buffered flow maps of bpf/flow.o. The programs count into whichever of flow_map_a and
 * flow_map_b slot 0 of the array-of-maps flow_maps names. They update an entry in place after
 * looking it up, so deleting from that map while they run loses the increments that land between
 * a batch's copy and its delete. An eviction therefore first points the slot at the other map, and
 * only then drains the map no program can reach: the kernel returns from an update of a map-in-map
 * after synchronize_rcu(), once every program that may have read the old slot has finished.
 *
 * That wait is milliseconds of a blocked thread. swap() spends them on the calling thread;
 * swapAsync() spends them on a worker thread of the libuv pool, so the event loop runs meanwhile.
 */
import { DatapathError, syscallFailure } from '../errors.js';
import { libbpfAsync } from '../libbpf.js';
import { readMapInfo, type BpfMap, type DrainOptions, type DrainResult } from '../map.js';
import type { Collection, ObjectSpec } from '../object.js';

/** The two flow maps, in the order of FlowMaps.maps. */
export const FLOW_MAP_NAMES = ['flow_map_a', 'flow_map_b'] as const;
/** The array-of-maps whose slot 0 is the flow map the programs count into. */
export const FLOW_MAPS_OUTER = 'flow_maps';

/** Sizes both flow maps and the inner-map template of flow_maps alike (call before load). */
export function setFlowMapMaxEntries(spec: ObjectSpec, maxEntries: number): ObjectSpec {
  for (const name of FLOW_MAP_NAMES) spec.setMaxEntries(name, maxEntries);
  return spec.setInnerMaxEntries(FLOW_MAPS_OUTER, maxEntries);
}

/** The flow maps of a loaded (or pin-reused) flow object, and the swap that makes eviction safe. */
export class FlowMaps {
  readonly maps: readonly [BpfMap, BpfMap];
  /**
   * Nanoseconds the last swap took, mostly the RCU grace period; for swapAsync() from the call to
   * its completion, which includes any wait for a free worker thread.
   */
  lastSwapNs = 0;
  readonly #outer: BpfMap;
  readonly #ids: readonly [number, number];
  readonly #slot = new Uint8Array(4);
  readonly #value = new Uint8Array(4);
  #active: 0 | 1;
  // Set while swapAsync() or evictAsync() runs: a second swap meanwhile would point the programs
  // back at the map being drained.
  #busy = false;

  /**
   * `names` serves another pair of double-buffered maps of the same shape (the drop maps of
   * bpf/drops.o); by default the flow maps.
   */
  constructor(
    collection: Collection,
    names: { maps: readonly [string, string]; outer: string } = {
      maps: FLOW_MAP_NAMES,
      outer: FLOW_MAPS_OUTER,
    },
  ) {
    this.maps = [collection.map(names.maps[0]), collection.map(names.maps[1])];
    this.#outer = collection.map(names.outer);
    this.#ids = [
      readMapInfo(this.maps[0].fd, `read map ${names.maps[0]}`).id,
      readMapInfo(this.maps[1].fd, `read map ${names.maps[1]}`).id,
    ];
    this.#active = this.#readActive();
  }

  /** The array-of-maps whose slot 0 names the map the programs count into. */
  get outer(): BpfMap {
    return this.#outer;
  }

  /** The map the programs count into now. Reading it races with them; drain via evict(). */
  get active(): BpfMap {
    return this.maps[this.#active];
  }

  /**
   * Points the programs at the other map and returns the one they counted into, once no program
   * can still be writing to it. Blocks the thread for an RCU grace period (milliseconds).
   */
  swap(): BpfMap {
    this.#checkIdle('swap');
    const previous = this.#active;
    const next = previous === 0 ? 1 : 0;
    new DataView(this.#value.buffer).setUint32(0, this.maps[next].fd, true);
    const t0 = process.hrtime.bigint();
    this.#outer.update(this.#slot, this.#value);
    this.lastSwapNs = Number(process.hrtime.bigint() - t0);
    this.#active = next;
    return this.maps[previous];
  }

  /**
   * swap() with the update of flow_maps on a worker thread: resolves with the map the programs
   * left once none can still be writing to it. Until it settles, any other swap or eviction of
   * these maps throws (code EBUSY); drain the map it returns before the next swap.
   */
  async swapAsync(): Promise<BpfMap> {
    this.#checkIdle('swap');
    this.#busy = true;
    try {
      return await this.#swapAsync();
    } finally {
      this.#busy = false;
    }
  }

  /** swap(), then reads and deletes every flow of the map the programs left (see BpfMap.drain). */
  evict(opts: DrainOptions = {}): DrainResult {
    return this.swap().drain(opts);
  }

  /** evict() with the swap off the event loop (see swapAsync); the drain runs on the JS thread. */
  async evictAsync(opts: DrainOptions = {}): Promise<DrainResult> {
    this.#checkIdle('evict');
    this.#busy = true;
    try {
      const map = await this.#swapAsync();
      return map.drain(opts);
    } finally {
      this.#busy = false;
    }
  }

  async #swapAsync(): Promise<BpfMap> {
    if (this.#outer.closed) {
      throw new DatapathError(
        'ECLOSED',
        `update map ${this.#outer.name}: the map was closed; load the object again`,
      );
    }
    const previous = this.#active;
    const next = previous === 0 ? 1 : 0;
    const value = new Uint8Array(4);
    new DataView(value.buffer).setUint32(0, this.maps[next].fd, true);
    const t0 = process.hrtime.bigint();
    const r = await libbpfAsync().bpf_map_update_elem(this.#outer.fd, this.#slot, value, 0);
    this.lastSwapNs = Number(process.hrtime.bigint() - t0);
    if (r < 0) throw syscallFailure(`update map ${this.#outer.name}`, 'bpf_map_update_elem', r);
    this.#active = next;
    return this.maps[previous];
  }

  #checkIdle(op: string): void {
    if (this.#busy) {
      throw new DatapathError(
        'EBUSY',
        `${op} ${this.#outer.name}: an asynchronous swap is still running; wait for it to settle first`,
      );
    }
  }

  #readActive(): 0 | 1 {
    const value = this.#outer.lookup(this.#slot);
    if (value === undefined) {
      // Only an outside hand can empty the slot; the programs spill to the ring buffer meanwhile.
      new DataView(this.#value.buffer).setUint32(0, this.maps[0].fd, true);
      this.#outer.update(this.#slot, this.#value);
      return 0;
    }
    // Userspace reads a map-in-map slot as the id of the map it holds.
    const id = new DataView(value.buffer, value.byteOffset).getUint32(0, true);
    const index = this.#ids.indexOf(id);
    if (index < 0) {
      throw new DatapathError(
        'EMAP',
        `read map ${this.#outer.name}: slot 0 holds map id ${id}, neither ${this.maps[0].name} (${this.#ids[0]}) ` +
          `nor ${this.maps[1].name} (${this.#ids[1]}); remove the stale pins of this instance and start again`,
      );
    }
    return index as 0 | 1;
  }
}
