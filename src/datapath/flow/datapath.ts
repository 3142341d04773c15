/**
 * The flow program of bpf/flow.o run for one agent instance: load and pin, attach, sampling, the
 * kernel's counters, and eviction, which swaps the double-buffered flow maps (maps.ts), drains and
 * decodes the map the programs left (types.ts) and, with drops on, adds the drops the kfree_skb
 * program counted on those flows (drops.ts). Components build on FlowDatapath alone.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  DatapathError,
  ObjectSpec,
  RingBufferReader,
  attachTc,
  type BpfMap,
  type Collection,
  type DrainResult,
  type Program,
  type TcDirection,
  type TcLink,
} from '../index.js';
import {
  FLOW_CTR,
  FLOW_EVENT_MAP_FULL,
  FLOW_KEY,
  decodeFlowEvent,
  decodeFlowMapBatch,
  encodeFlowConfig,
  flowEventReason,
  monotonicNowNs,
  sumPerCpuCounter,
  type FlowCounterName,
  type FlowEviction,
  type NetnsLabeler,
} from './types.js';
import { FlowMaps, setFlowMapMaxEntries } from './maps.js';
import { DropsDatapath, attachDrops, type DropBatch } from './drops.js';
import { RttProbe } from './rtt.js';
import { DnsNames, FLOW_FEATURE_DNS_NAME } from './dns-names.js';
import { withNetns } from '../../net/netns.js';
import { bpfObjectPath } from '../../paths.js';
import type { FlowRecord } from '../../records/flow.js';
import { INSTANCE_RULE, InstanceLock, isInstanceName } from '../instance.js';
import { requireBpffs } from '../object.js';

export interface FlowDatapathOptions {
  /** Interfaces to attach to, by name, in `netns` or the agent's own network namespace. */
  interfaces: string[];
  /** A network namespace (`ip netns` name or /proc/<pid>/ns/net path) holding the interfaces. */
  netns?: string;
  directions?: TcDirection[];
  attachMode?: 'auto' | 'tcx' | 'clsact';
  /** Maps and links are pinned under <pinRoot>/rxflow-<instance>, so instances never collide. */
  instance?: string;
  pinRoot?: string;
  /** Capacity of the kernel flow map; beyond it packets go to the ring buffer. */
  maxFlows?: number;
  /** Ring buffer data size: a power of two and a multiple of the page size. */
  ringbufBytes?: number;
  /** 1-in-N packet sampling; 0 or 1 counts every packet. */
  sampling?: number;
  /**
   * Capacity of the DNS query-name map (flows with an answered query between two evictions);
   * unset, names cannot be turned on (FLOW_FEATURE_DNS_NAME) and the map takes one entry.
   */
  dnsQueryNames?: number;
  objectPath?: string;
}

export type KernelCounters = Record<FlowCounterName, number>;

/** How an eviction sets flowEndReason (see FlowEviction in types.ts). */
export interface EvictOptions {
  /**
   * A flow whose last packet is at least this old when the programs leave its map ends by idle
   * timeout (flowEndReason 1), a younger one by active timeout (2). Default 0: all idle.
   */
  idleMs?: number;
  /** The final eviction at shutdown: flows without FIN/RST end forced (4). */
  forced?: boolean;
}

/** The LRU map of DNS query names (bpf/flow.c), created per run at the size asked for. */
const DNS_NAMES_MAP = 'flow_dns_names';

const COUNTER_NAMES = Object.keys(FLOW_CTR).filter((n) => n !== 'MAX') as FlowCounterName[];

function evictionOf(nowNs: number, options: EvictOptions): FlowEviction {
  return { nowNs, idleNs: (options.idleMs ?? 0) * 1e6, forced: options.forced === true };
}

/**
 * The flow programs loaded, attached and pinned for one agent instance. Owns the collection and
 * the links; close() detaches everything and, unless asked to keep them, removes the pins.
 */
export class FlowDatapath {
  readonly pinDir: string;
  /** The two flow maps the programs count into in turn; evictFlows() swaps and drains them. */
  readonly flowMaps: FlowMaps;
  readonly events: RingBufferReader;
  readonly links: TcLink[] = [];
  /** Names the namespace of evicted flows (see NetnsLabeler); unset, records carry none. */
  labeler: NetnsLabeler | undefined;
  /** The drop program, once enableDrops() loaded it: evictions then carry drops on the flows. */
  drops: DropsDatapath | undefined;
  /** The smoothed-RTT program, once enableRttProbe() loaded it. */
  rttProbe: RttProbe | undefined;
  /** DNS query names, when the datapath was opened with room for them (dnsQueryNames). */
  readonly dnsNames: DnsNames | undefined;
  readonly #collection: Collection;
  readonly #counters: BpfMap;
  readonly #config: BpfMap;
  readonly #dnsNameMap: BpfMap;
  #sampling = 0;
  #features = 0;
  #dnsPort = 0;
  readonly #netns: string | undefined;
  // A killed agent may have left flows in either map (it may even have died between a swap and
  // its drain), so the first eviction of this process drains both.
  #drainedBoth = false;
  #closed = false;
  #lock: InstanceLock | undefined;
  // Set from the start of evictFlowsAsync() until its last drain: the swap runs on a worker thread
  // and its drain in a later job, and nothing may swap or close the maps in between.
  #evicting = false;
  // close() during an asynchronous swap: the worker may not have entered the syscall yet, so the
  // map fds stay open until it settles (a closed fd number can be reused by any file meanwhile).
  #closeDeferred = false;
  #countersSeen: KernelCounters | undefined;
  readonly #unmatchedSeen = new Map<string, number>();

  private constructor(collection: Collection, pinDir: string, netns: string | undefined, dnsNames: boolean) {
    this.#collection = collection;
    this.#dnsNameMap = collection.map(DNS_NAMES_MAP);
    this.dnsNames = dnsNames ? new DnsNames() : undefined;
    this.#netns = netns;
    this.pinDir = pinDir;
    this.flowMaps = new FlowMaps(collection);
    this.#counters = collection.map('flow_counters');
    this.#config = collection.map('flow_config');
    this.events = new RingBufferReader(collection.map('flow_events'));
  }

  /**
   * Loads bpf/flow.o, pins its maps and attaches it to every interface and direction asked for.
   * One agent per instance: while another process holds the instance, this throws EINSTANCEBUSY
   * naming it and touches nothing. A failed start removes what it created; the pins a killed agent
   * left (flows not yet read) stay for the next start.
   */
  static open(options: FlowDatapathOptions): FlowDatapath {
    const instance = options.instance ?? 'default';
    if (!isInstanceName(instance)) {
      throw new DatapathError('EARG', `flow datapath: instance '${instance}' ${INSTANCE_RULE}`);
    }
    const pinDir = join(options.pinRoot ?? '/sys/fs/bpf', `rxflow-${instance}`);
    const objectPath = options.objectPath ?? bpfObjectPath('flow');
    requireBpffs(pinDir, `pin maps of ${objectPath} under ${pinDir}`);
    const lock = InstanceLock.acquire(pinDir, `instance '${instance}'`);
    // Nothing pinned yet: whatever this start pins is its own, and a failure removes it all.
    const fresh =
      lock.created || !existsSync(join(pinDir, 'maps')) || readdirSync(join(pinDir, 'maps')).length === 0;
    try {
      const dp = FlowDatapath.#openLocked(options, pinDir, objectPath);
      dp.#lock = lock;
      return dp;
    } catch (err) {
      if (fresh) rmSync(pinDir, { recursive: true, force: true });
      lock.release();
      throw err;
    }
  }

  static #openLocked(options: FlowDatapathOptions, pinDir: string, objectPath: string): FlowDatapath {
    const spec = ObjectSpec.open(objectPath);
    let collection: Collection;
    try {
      if (options.maxFlows !== undefined) setFlowMapMaxEntries(spec, options.maxFlows);
      if (options.ringbufBytes !== undefined) spec.setMaxEntries('flow_events', options.ringbufBytes);
      spec.setMaxEntries(DNS_NAMES_MAP, options.dnsQueryNames ?? 1);
      collection = spec.load({ pinDir, unpinned: [DNS_NAMES_MAP, 'flow_dns_name_scratch'] });
    } catch (err) {
      spec.close();
      throw err;
    }
    let dp: FlowDatapath;
    try {
      dp = new FlowDatapath(collection, pinDir, options.netns, options.dnsQueryNames !== undefined);
    } catch (err) {
      collection.close();
      throw err;
    }
    try {
      dp.setSampling(options.sampling ?? 0);
      withNetns(options.netns, () => {
        for (const ifname of options.interfaces) {
          for (const direction of options.directions ?? ['ingress', 'egress']) {
            const program = collection.program(direction === 'ingress' ? 'flow_ingress' : 'flow_egress');
            dp.links.push(
              attachTc(program, ifname, direction, {
                mode: options.attachMode ?? 'auto',
                pinPath: join(pinDir, 'links', `tc-${ifname}-${direction}`),
              }),
            );
          }
        }
      });
    } catch (err) {
      // The caller removes the pins if this start made them.
      try {
        dp.close({ keepPins: true });
      } catch {
        // The first failure is the one to report.
      }
      throw err;
    }
    return dp;
  }

  /** The flow program of a direction, to attach to links this datapath does not hold itself. */
  program(direction: TcDirection): Program {
    return this.#collection.program(direction === 'ingress' ? 'flow_ingress' : 'flow_egress');
  }

  /**
   * Loads bpf/drops.o on this datapath's flow maps and attaches it to kfree_skb; from the next
   * eviction on, flows carry their drops. Throws (ENOBTF, ELOAD, EVERIFIER, EATTACH) when the
   * kernel lacks what it needs; the flows keep running either way.
   */
  enableDrops(opts: { objectPath?: string; tracepoint?: string; maxEntries?: number } = {}): DropsDatapath {
    if (this.drops) return this.drops;
    this.drops = DropsDatapath.open({
      objectPath: opts.objectPath ?? bpfObjectPath('drops'),
      flowMapsFd: this.flowMaps.outer.fd,
      ...(opts.tracepoint !== undefined ? { tracepoint: opts.tracepoint } : {}),
      ...(opts.maxEntries !== undefined ? { maxEntries: opts.maxEntries } : {}),
    });
    return this.drops;
  }

  /**
   * Loads bpf/rtt.o on this datapath's flow maps and attaches it to tcp_probe: from then on, flows
   * carry the kernel's smoothed RTT. Throws (ELOAD, EVERIFIER, EATTACH) when the kernel lacks the
   * hook; the flows keep running either way.
   */
  enableRttProbe(opts: { objectPath?: string; tracepoint?: string } = {}): RttProbe {
    this.rttProbe ??= RttProbe.open({
      objectPath: opts.objectPath ?? bpfObjectPath('rtt'),
      flowMapsFd: this.flowMaps.outer.fd,
      ...(opts.tracepoint !== undefined ? { tracepoint: opts.tracepoint } : {}),
    });
    return this.rttProbe;
  }

  /** Sets 1-in-N sampling at run time. */
  setSampling(sampling: number): void {
    if (!Number.isInteger(sampling) || sampling < 0 || sampling > 0xffffffff) {
      throw new DatapathError('EARG', `flow datapath: sampling must be an integer >= 0, got ${sampling}`);
    }
    this.#sampling = sampling;
    this.#writeConfig();
  }

  /**
   * Sets what the flow programs measure besides counting (FLOW_FEATURE_* of flow/latency.ts and
   * flow/dns.ts) and, for FLOW_FEATURE_DNS, the DNS servers' port (0: 53).
   */
  setFeatures(features: number, dnsPort = this.#dnsPort): void {
    if ((features & FLOW_FEATURE_DNS_NAME) !== 0 && this.dnsNames === undefined) {
      throw new DatapathError(
        'EARG',
        'flow datapath: dns query names need room for them; open the datapath with dnsQueryNames',
      );
    }
    this.#features = features;
    this.#dnsPort = dnsPort;
    this.#writeConfig();
  }

  /** The FLOW_FEATURE_* bits set. */
  get features(): number {
    return this.#features;
  }

  #writeConfig(): void {
    const config = { sampling: this.#sampling, features: this.#features, dnsPort: this.#dnsPort };
    this.#config.update(new Uint8Array(4), encodeFlowConfig(config));
  }

  /**
   * Moves the programs to the other flow map, then reads and deletes every flow of the map they
   * left (batch ops), merging per-CPU values: no packet counted in the kernel is missed. Blocks for
   * an RCU grace period per swap (see FlowMaps.swap). The first call drains both maps, so a flow
   * left in each by a killed agent comes out as two records whose deltas add up.
   * `offsetMs` converts kernel monotonic time to wall-clock milliseconds.
   */
  evictFlows(offsetMs: number, options: EvictOptions = {}): FlowRecord[] {
    this.#checkEvict();
    const records = this.#evictOne(offsetMs, options);
    if (!this.#drainedBoth) {
      try {
        for (const r of this.#evictOne(offsetMs, options)) records.push(r);
        this.#drainedBoth = true;
      } catch {
        // The flows drained above are out of the kernel already: hand them over, and try the other
        // map again next time, where a lasting failure throws from the first swap, before any drain.
      }
    }
    return records;
  }

  /**
   * evictFlows() with each swap on a worker thread (FlowMaps.swapAsync), so the event loop runs
   * during the grace period; drain and decode run on the JS thread as in evictFlows(). One at a
   * time: a call, sync or async, while one runs throws (code EBUSY). After close() it resolves
   * with what it had drained before the close, and leaves the rest in the kernel map (kept pins
   * let the next agent drain it).
   */
  async evictFlowsAsync(offsetMs: number, options: EvictOptions = {}): Promise<FlowRecord[]> {
    this.#checkEvict();
    this.#evicting = true;
    try {
      const records = await this.#evictOneAsync(offsetMs, options);
      if (!this.#drainedBoth && !this.#closed) {
        try {
          for (const r of await this.#evictOneAsync(offsetMs, options)) records.push(r);
          this.#drainedBoth = !this.#closed;
        } catch {
          // As in evictFlows(): hand over what is out of the kernel, try the other map next time.
        }
      }
      return records;
    } finally {
      this.#evicting = false;
      if (this.#closeDeferred) {
        this.drops?.close();
        this.rttProbe?.close();
        this.#collection.close();
      }
    }
  }

  #checkEvict(): void {
    if (this.#closed) {
      throw new DatapathError('ECLOSED', 'evict flows: the flow datapath was closed; open it again');
    }
    if (this.#evicting) {
      throw new DatapathError(
        'EBUSY',
        'evict flows: an asynchronous eviction is still running; wait for it to settle first',
      );
    }
  }

  #evictOne(offsetMs: number, options: EvictOptions): FlowRecord[] {
    const map = this.flowMaps.swap();
    // After the swap no program counts into this map: the flows' idle time is measured from now.
    const nowNs = monotonicNowNs();
    const batch = map.drain();
    const eviction = evictionOf(nowNs, options);
    const { records, indexes } = this.#decodeDrained(batch, map.valueBufferSize, offsetMs, eviction);
    // Swapped after the flow maps: a drop between the two swaps lands on a flow of the new flow
    // map, and comes out here without its packets (attachDrops).
    const drops = this.drops?.evict();
    if (drops === undefined || drops.byKey.size === 0) return records;
    return this.#withDrops(records, indexes, batch.keys, drops, offsetMs, eviction);
  }

  /**
   * The records of a drained flow map (`indexes[i]`: the batch entry of records[i]), with the DNS
   * query names, when on, drained after it and put on them.
   */
  #decodeDrained(
    batch: DrainResult,
    valueBufferSize: number,
    offsetMs: number,
    eviction: FlowEviction,
  ): { records: FlowRecord[]; indexes: number[] } {
    const indexes: number[] = [];
    const records =
      batch.count === 0
        ? []
        : decodeFlowMapBatch(batch, valueBufferSize, offsetMs, eviction, this.labeler, indexes);
    if (this.dnsNames !== undefined) {
      const names = this.#dnsNameMap;
      this.dnsNames.attach(records, indexes, batch.keys, names.drain(), names.valueBufferSize);
    }
    return { records, indexes };
  }

  /** The records of a drained flow map with the drops of their flows, and the drops on no flow. */
  #withDrops(
    records: FlowRecord[],
    indexes: number[],
    keys: Uint8Array,
    drops: DropBatch,
    offsetMs: number,
    eviction: FlowEviction,
  ): FlowRecord[] {
    const dp = this.drops!;
    return attachDrops(
      records,
      indexes,
      keys,
      drops,
      (r) => dp.reasonName(r),
      offsetMs,
      eviction,
      this.labeler,
    );
  }

  async #evictOneAsync(offsetMs: number, options: EvictOptions): Promise<FlowRecord[]> {
    const map = await this.flowMaps.swapAsync();
    const nowNs = monotonicNowNs();
    // Closed during the swap: nobody would receive the flows, so they stay in the map.
    if (this.#closed) return [];
    const batch = map.drain();
    // Decoded before the drop swap: the next drain of this map would reuse the key buffer.
    const eviction = evictionOf(nowNs, options);
    const { records, indexes } = this.#decodeDrained(batch, map.valueBufferSize, offsetMs, eviction);
    if (!this.drops) return records;
    const keys = batch.keys.slice(0, batch.count * FLOW_KEY.size);
    const drops = await this.drops.evictAsync();
    if (this.#closed && drops.byKey.size === 0) return records;
    return this.#withDrops(records, indexes, keys, drops, offsetMs, eviction);
  }

  /** The kernel's loss and activity counters, summed over CPUs, since the maps were created. */
  counters(): KernelCounters {
    const out = {} as KernelCounters;
    const key = new Uint8Array(4);
    const kv = new DataView(key.buffer);
    for (const name of COUNTER_NAMES) {
      kv.setUint32(0, FLOW_CTR[name], true);
      const value = this.#counters.lookup(key);
      out[name] = value ? sumPerCpuCounter(value) : 0;
    }
    return out;
  }

  /**
   * How much each of counters() grew since the last call of this method (the first call: since
   * the maps were created, which may be before this process if it reuses pins).
   */
  counterDeltas(): KernelCounters {
    const now = this.counters();
    const out = {} as KernelCounters;
    for (const name of COUNTER_NAMES) out[name] = now[name] - (this.#countersSeen?.[name] ?? 0);
    this.#countersSeen = now;
    return out;
  }

  /**
   * Packets the drop program counted on no flow of the flow map since the last call of this
   * method, by the kernel's reason name; only reasons that grew, none while drops are off.
   */
  unmatchedDropDeltas(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const c of this.drops?.reasonCounts() ?? []) {
      const delta = c.unmatchedPackets - (this.#unmatchedSeen.get(c.name) ?? 0);
      this.#unmatchedSeen.set(c.name, c.unmatchedPackets);
      if (delta > 0) out[c.name] = delta;
    }
    return out;
  }

  /**
   * Decodes one flow_events record (as events.drain hands it over) into `out`, labelled as the
   * evictions label theirs; true when the kernel spilled it because the flow map was full.
   */
  decodeEvent(view: DataView, offset: number, length: number, offsetMs: number, out: FlowRecord[]): boolean {
    out.push(decodeFlowEvent(view, offset, length, offsetMs, this.labeler));
    return flowEventReason(view, offset) === FLOW_EVENT_MAP_FULL;
  }

  /**
   * Detaches every link and closes the maps; removes the pins unless keepPins. Idempotent. During
   * an evictFlowsAsync() the maps close when it settles.
   */
  close(opts: { keepPins?: boolean } = {}): void {
    if (this.#closed) return;
    this.#closed = true;
    let first: Error | undefined;
    // clsact filters are found by ifindex, which resolves in the namespace they were attached in.
    try {
      withNetns(this.#netns, () => {
        for (const link of this.links.splice(0)) {
          try {
            link.close();
          } catch (err) {
            first ??= err instanceof Error ? err : new Error(String(err));
          }
        }
      });
    } catch (err) {
      // The namespace is gone (and its interfaces with it): the maps and pins are released anyway.
      first ??= err instanceof Error ? err : new Error(String(err));
    }
    this.events.close();
    if (this.#evicting) {
      this.#closeDeferred = true;
    } else {
      this.drops?.close();
      this.rttProbe?.close();
      this.#collection.close();
    }
    if (!opts.keepPins) this.#collection.unpin();
    this.#lock?.release();
    this.#lock = undefined;
    if (first) throw first;
  }
}
