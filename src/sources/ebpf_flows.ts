import { join } from 'node:path';
import {
  Observable,
  ReplaySubject,
  Subject,
  asyncScheduler,
  merge,
  tap,
  throttleTime,
  type MonoTypeOperatorFunction,
  type SchedulerLike,
} from 'rxjs';
import { beforeDeadline } from '../delivery/deadline.js';
import { msOption, type ComponentContext, type JsonSchema, type SourceModule } from '../component.js';
import {
  FLOW_FEATURE_DNS,
  FLOW_FEATURE_DNS_NAME,
  FLOW_FEATURE_RTT,
  FlowDatapath,
  monotonicToWallClockOffsetMs,
  type KernelCounters,
} from '../datapath/flow/index.js';
import type { DropReason, StageCounters } from '../ledger.js';
import { account } from '../records/account.js';
import type { Logger } from '../logger.js';
import type { FlowBatch, FlowRecord } from '../records/flow.js';
import { mapTracer } from './map-tracer.js';
import { ringbufTracer } from './ringbuf-tracer.js';
import { INSTANCE_PATTERN } from '../datapath/instance.js';
import { InterfaceMatcher } from '../net/interface-match.js';
import { followLinks } from './follow-links.js';
import type { LinkFollower } from './link-follower.js';

export interface EbpfFlowsConfig {
  /** Names, globs (`veth*`) and regular expressions (`/^rxv/`). */
  interfaces: string[];
  exclude_interfaces?: string[];
  /** An `ip netns` name, a path, or `all`. */
  netns?: string;
  netns_rescan_interval_ms: number;
  directions: ('ingress' | 'egress')[];
  attach_mode: 'auto' | 'tcx' | 'clsact';
  instance: string;
  pin_root: string;
  object_path?: string;
  cache_max_flows: number;
  ringbuf_size_bytes: number;
  sampling: number;
  eviction_interval_ms: number;
  ringbuf_drain_interval_ms: number;
  flush_on_map_full: boolean;
  min_flush_interval_ms: number;
  log_interval_ms: number;
  account_max_entries: number;
  account_evict_timeout_ms: number;
  drops: boolean;
  drops_hook: string;
  drops_max_flows: number;
  rtt: boolean;
  rtt_hook: string;
  dns: boolean;
  dns_port: number;
  dns_query_name: boolean;
  dns_query_name_max_flows: number;
}

/** Kernel counters that are losses, and the ledger reason each is reported under. */
const KERNEL_LOSSES: [keyof KernelCounters, DropReason][] = [
  ['RB_RESERVE_FAILED', 'ringbuf_reserve_failed'],
  ['PARSE_FAILED', 'parse_failed'],
  ['SAMPLED_OUT', 'sampled_out'],
  ['PARSE_LIMIT', 'beyond_parser_limits'],
  ['NON_IP', 'non_ip'],
];

/**
 * Reports kernel-side losses (packets that would have become single-packet records) into the
 * source's counters as received-and-dropped, as deltas since the last call.
 */
function reportKernelLosses(dp: FlowDatapath, counters: StageCounters): void {
  const deltas = dp.counterDeltas();
  for (const [name, reason] of KERNEL_LOSSES) {
    const delta = deltas[name];
    if (delta > 0) {
      counters.addReceived(delta);
      counters.addDropped(reason, delta);
    }
  }
}

/**
 * Turns drops on, or warns once naming the hook the kernel lacks; the flows run either way. Returns
 * a reporter that logs drops on no flow of the flow map, by reason, as deltas since its last call.
 */
function enableDrops(dp: FlowDatapath, config: EbpfFlowsConfig, logger: Logger): (() => void) | undefined {
  if (!config.drops) return undefined;
  try {
    dp.enableDrops({ tracepoint: config.drops_hook, maxEntries: config.drops_max_flows });
  } catch (err) {
    logger.warn(
      { err, hook: `tp_btf/${config.drops_hook}` },
      `drops off: the drop program cannot run on tp_btf/${config.drops_hook} of this kernel (${(err as Error).message}); flows are counted without drops`,
    );
    return undefined;
  }
  logger.info({ hook: `tp_btf/${config.drops_hook}` }, 'drop program attached');
  return () => {
    const unmatched = dp.unmatchedDropDeltas();
    if (Object.keys(unmatched).length > 0)
      logger.info({ unmatched }, 'packet drops on no flow of the flow map, by kernel reason');
  };
}

/**
 * Turns the handshake RTT on, and the kernel's smoothed RTT where the tracepoint loads: a kernel
 * without it gets one warning naming what is missing, and the handshake RTT runs alone.
 */
function enableRtt(dp: FlowDatapath, config: EbpfFlowsConfig, logger: Logger): void {
  if (!config.rtt) return;
  dp.setFeatures(dp.features | FLOW_FEATURE_RTT);
  const hook = `tp_btf/${config.rtt_hook}`;
  try {
    dp.enableRttProbe({ tracepoint: config.rtt_hook });
  } catch (err) {
    logger.warn(
      { err, hook },
      `smoothed rtt off: the rtt program cannot run on ${hook} of this kernel (${(err as Error).message}); flows get the handshake rtt only`,
    );
    return;
  }
  logger.info({ hook }, 'rtt program attached');
}

/**
 * Turns DNS latency on, and the query names with dns_query_name (which needs the pairing, so it
 * turns dns on as well). Returns a reporter that logs the answers of the last eviction that got
 * no name (the name map was full, or the question was not a name: see DnsNames).
 */
function enableDns(dp: FlowDatapath, config: EbpfFlowsConfig, logger: Logger): (() => void) | undefined {
  const names = config.dns_query_name;
  if (!config.dns && !names) return undefined;
  dp.setFeatures(dp.features | FLOW_FEATURE_DNS | (names ? FLOW_FEATURE_DNS_NAME : 0), config.dns_port);
  if (!names) return undefined;
  return () => {
    const { missed, unreadable } = dp.dnsNames!.missDelta();
    if (missed > 0)
      logger.warn(
        { missed, dns_query_name_max_flows: config.dns_query_name_max_flows },
        `dns answers without their query name: ${missed} in the last eviction; the kernel held at most dns_query_name_max_flows names between evictions; raise it or lower eviction_interval_ms`,
      );
    if (unreadable > 0)
      logger.info(
        { unreadable },
        'dns answers whose question held no readable name, recorded without dnsQueryName',
      );
  };
}

/**
 * Before the final read of the flow maps at stop: detaches every link (off the event loop, one
 * grace period each), so that no packet is counted after the read. While the pipeline drains,
 * waits at most half the time left, which leaves the rest to the sinks; links still attached then
 * are read with the maps as they are, and what they count after is not read (logged).
 */
async function detachBeforeFinalRead(
  follower: LinkFollower,
  context: ComponentContext,
  scheduler: SchedulerLike,
  logger: Logger,
): Promise<void> {
  const links = follower.tcLinks().length;
  const detached = follower.closeAsync();
  const left = context.drainLeft?.();
  if (left === undefined) {
    await detached;
    return;
  }
  if ((await beforeDeadline(detached, left / 2, scheduler)) === 'late') {
    logger.warn(
      { links, waited_ms: Math.round(left / 2) },
      'final read of the flow maps before every link was detached (half the drain time left was spent); packets the remaining links count from now on are not read',
    );
  }
}

function countInto(counters: StageCounters): MonoTypeOperatorFunction<FlowBatch> {
  return tap((batch) => {
    counters.addReceived(batch.length);
    counters.addSent(batch.length);
  });
}

/**
 * Flows from the kernel: loads bpf/flow.o, attaches it to the interfaces on TC, and emits the map
 * tracer's flows merged with the ring buffer's single-packet flows aggregated by `account`.
 */
export function ebpfFlows(config: EbpfFlowsConfig, context: ComponentContext): Observable<FlowBatch> {
  return new Observable<FlowBatch>((subscriber) => {
    const scheduler = context.scheduler ?? asyncScheduler;
    const logger = context.logger;
    const options = {
      // The follower attaches; the datapath only loads and pins.
      interfaces: [],
      directions: config.directions,
      attachMode: config.attach_mode,
      instance: config.instance,
      pinRoot: config.pin_root,
      maxFlows: config.cache_max_flows,
      ringbufBytes: config.ringbuf_size_bytes,
      sampling: config.sampling,
      ...(config.dns_query_name ? { dnsQueryNames: config.dns_query_name_max_flows } : {}),
      ...(config.object_path ? { objectPath: config.object_path } : {}),
    };
    const matcher = InterfaceMatcher.parse(config.interfaces, config.exclude_interfaces ?? []);
    const dp = FlowDatapath.open(options);
    let follower: LinkFollower;
    try {
      follower = followLinks(dp, config, matcher, logger);
    } catch (err) {
      dp.close();
      throw err;
    }
    // The links are attached off the event loop, one after another; the pipeline is ready once
    // they are, and a failure to attach one of them fails the source as it always did.
    const started = follower.opened.then(
      () => {
        if (follower.isClosed()) return;
        logger.info(
          {
            interfaces: config.interfaces,
            netns: config.netns,
            links: follower.attached(),
            pin_dir: dp.pinDir,
          },
          'flow programs attached',
        );
      },
      (err: unknown) => subscriber.error(err),
    );
    context.starting?.(started);
    const counters = context.counters;
    // Only a source outside its own namespace has records to mark.
    dp.labeler = config.netns === undefined ? undefined : follower.labeler;
    const reportUnmatchedDrops = enableDrops(dp, config, logger);
    enableRtt(dp, config, logger);
    const reportDnsNameMisses = enableDns(dp, config, logger);
    const pressure = new Subject<void>();
    const stop$ = context.stop$;
    const offsetMs = monotonicToWallClockOffsetMs();

    // The ring buffer stops after the map's final eviction, not at stop$: packets that spill to it
    // from a full map while that last swap waits for its grace period are drained as well.
    const mapDone = new ReplaySubject<void>(1);
    const mapFlows = mapTracer({
      // The swap waits out an RCU grace period; async, the ring buffer drain, the sinks and the
      // metrics endpoint keep running meanwhile.
      // flowEndReason: idle when the flow's last packet is older than half the interval at the
      // eviction (no packet in its second half), active otherwise; forced on the final one.
      evict: (final) => {
        const evict = async (): Promise<FlowRecord[]> => {
          reportKernelLosses(dp, counters);
          reportUnmatchedDrops?.();
          const records = await dp.evictFlowsAsync(offsetMs, {
            idleMs: config.eviction_interval_ms / 2,
            forced: final,
          });
          // The names this eviction paired: reported now, so the final one's are too.
          reportDnsNameMisses?.();
          return records;
        };
        // The links go first, so the final read holds every packet they counted.
        return final ? detachBeforeFinalRead(follower, context, scheduler, logger).then(evict) : evict();
      },
      evictionIntervalMs: config.eviction_interval_ms,
      // Map pressure (throttled) and a flush on demand (rxflow flush) each evict at once.
      flush$: context.flush$
        ? merge(pressure.pipe(throttleTime(config.min_flush_interval_ms, scheduler)), context.flush$)
        : pressure.pipe(throttleTime(config.min_flush_interval_ms, scheduler)),
      scheduler,
      ...(stop$ ? { stop$ } : {}),
    }).pipe(tap({ complete: () => mapDone.next() }));
    const ringFlows = ringbufTracer({
      drain: (onRecord) => dp.events.drain(onRecord),
      decode: (view, offset, length, out) => dp.decodeEvent(view, offset, length, offsetMs, out),
      drainIntervalMs: config.ringbuf_drain_interval_ms,
      logIntervalMs: config.log_interval_ms,
      logger,
      scheduler,
      ...(config.flush_on_map_full ? { onMapPressure: () => pressure.next() } : {}),
      ...(stop$ ? { stop$: mapDone } : {}),
    }).pipe(
      countInto(counters),
      account({
        maxEntries: config.account_max_entries,
        evictTimeoutMs: config.account_evict_timeout_ms,
        counters: context.ledger.stage(`${context.id}.account`, 'account'),
        scheduler,
        id: `${context.id}.account`,
      }),
    );
    // The source's own counters see the ring-buffer records before aggregation; the inner
    // account stage counts what it merges.
    const sub = merge(mapFlows.pipe(countInto(counters)), ringFlows).subscribe(subscriber);
    return () => {
      sub.unsubscribe();
      pressure.complete();
      const releasing = context.releasing;
      if (releasing === undefined) {
        try {
          follower.close();
        } finally {
          dp.close();
        }
        return;
      }
      // Each TCX detach waits out a grace period in the kernel: they run off the event loop, and
      // the pipeline's drain deadline bounds them (see LinkFollower.closeAsync).
      const done = follower
        .closeAsync()
        .then(() => dp.close())
        .catch((err: unknown) =>
          logger.error({ err, pin_dir: dp.pinDir }, 'closing the flow datapath failed'),
        );
      releasing({
        done,
        atDeadline: () => {
          const links = follower.release();
          if (links === 0) return;
          logger.warn(
            { links, pin_dir: join(dp.pinDir, 'links') },
            'drain deadline reached before every link was detached; the kernel detaches the rest, about 13 ms each, after exit if need be',
          );
        },
      });
    };
  });
}

const ms = (description: string, dflt: number): JsonSchema => msOption(description, dflt, 1);

const ebpfFlowsModule: SourceModule<EbpfFlowsConfig> = {
  type: 'ebpf_flows',
  kind: 'source',
  description: 'flows counted by eBPF programs on TC ingress and egress of network interfaces',
  drainsOnStop: true,
  flushesOnDemand: true,
  schema: {
    type: 'object',
    additionalProperties: false,
    required: ['interfaces'],
    properties: {
      interfaces: {
        type: 'array',
        minItems: 1,
        items: { type: 'string', minLength: 1 },
        description:
          'interfaces to attach to: names (eth0), globs (veth*, tap?, eth[0-3]) and regular expressions between slashes (/^rxv/); every matching link that exists and each one created later is attached, links are detached when deleted and followed by ifindex across renames; a plain name must exist at start',
      },
      exclude_interfaces: {
        type: 'array',
        items: { type: 'string', minLength: 1 },
        default: [],
        description:
          'names, globs and regular expressions of interfaces never to attach to, even when interfaces matches',
      },
      netns: {
        type: 'string',
        minLength: 1,
        description:
          "network namespace of the interfaces: an 'ip netns' name, a path such as /proc/<pid>/ns/net, or 'all': every namespace of the host (named ones and those of processes, de-duplicated by inode), followed as they are created and destroyed; records from a namespace other than the agent's carry networkNamespace. Entering another namespace needs CAP_SYS_ADMIN, and seeing those of other users' processes CAP_SYS_PTRACE",
      },
      netns_rescan_interval_ms: ms(
        "with netns 'all', how often /proc is rescanned for namespaces of processes (named ones are watched with inotify)",
        1000,
      ),
      directions: {
        type: 'array',
        minItems: 1,
        uniqueItems: true,
        items: { enum: ['ingress', 'egress'] },
        default: ['ingress', 'egress'],
        description: 'TC hooks to attach to',
      },
      attach_mode: {
        enum: ['auto', 'tcx', 'clsact'],
        default: 'auto',
        description: 'tcx links where the kernel has them (auto), or clsact filters',
      },
      instance: {
        type: 'string',
        pattern: INSTANCE_PATTERN,
        default: 'default',
        description: 'names the bpffs directory <pin_root>/rxflow-<instance>; two agents on a host need two',
      },
      pin_root: { type: 'string', default: '/sys/fs/bpf', description: 'a bpffs mount' },
      object_path: {
        type: 'string',
        description: 'the compiled flow program (default: bpf/flow.o of rxflow)',
      },
      cache_max_flows: {
        type: 'integer',
        minimum: 1,
        maximum: 268435456,
        default: 65536,
        description:
          'capacity of the kernel flow map; beyond it packets spill to the ring buffer. The two flow maps lock entries x (96 bytes x possible CPUs + 52) each; validate refuses more than half the available memory',
      },
      ringbuf_size_bytes: {
        type: 'integer',
        minimum: 4096,
        maximum: 1073741824,
        default: 16777216,
        description:
          'ring buffer size: a power of two and a multiple of the page size, locked in kernel memory',
      },
      sampling: {
        type: 'integer',
        minimum: 0,
        maximum: 4294967295,
        default: 0,
        description: 'count 1 packet in N (0 or 1: every packet)',
      },
      eviction_interval_ms: ms(
        'how often the kernel flow map is read and emptied; a flow without a packet in the second half of it ends by idle timeout (flowEndReason 1), else by active timeout (2). `rxflow flush` reads and empties it at once as well',
        5000,
      ),
      ringbuf_drain_interval_ms: ms('how often the ring buffer is drained', 100),
      flush_on_map_full: {
        type: 'boolean',
        default: true,
        description: 'evict the kernel map early when the ring buffer reports it full',
      },
      min_flush_interval_ms: ms('least time between two early evictions', 500),
      log_interval_ms: ms('how often, at most, ring buffer activity is logged', 10000),
      account_max_entries: {
        type: 'integer',
        minimum: 1,
        maximum: 16777216,
        default: 5000,
        description: 'distinct ring-buffer flows aggregated before they are emitted',
      },
      account_evict_timeout_ms: ms('longest a ring-buffer flow is aggregated before it is emitted', 5000),
      drops: {
        type: 'boolean',
        default: false,
        description:
          "count packets the kernel drops, per flow, with the kernel's reason (a program on the kfree_skb tracepoint): records get droppedPacketDeltaCount, droppedOctetDeltaCount, dropReason and, for TCP, tcpState; drops on no flow of the flow map are logged by reason at each eviction. The flow program's hit path is unchanged; each freed skb costs the drop program (see README). A kernel without the hook gets one warning, and the flows run without drops",
      },
      drops_hook: {
        type: 'string',
        pattern: '^[a-z0-9_]{1,64}$',
        default: 'kfree_skb',
        description: 'the tp_btf tracepoint the drop program attaches to',
      },
      drops_max_flows: {
        type: 'integer',
        minimum: 1,
        maximum: 16777216,
        default: 16384,
        description:
          'flows with drops the kernel holds between two evictions (two maps of entries x (32 bytes x possible CPUs + 60)); drops beyond it are counted by reason only',
      },
      rtt: {
        type: 'boolean',
        default: false,
        description:
          "time TCP handshakes on the interfaces (SYN sent to SYN-ACK received on a client, SYN-ACK sent to ACK received on a server): the ingress flow of the packet that completed one gets tcpHandshakeRttMicroseconds; and, with a program on the tcp_probe tracepoint, the kernel's smoothed RTT of local sockets (what ss -ti shows) on the ingress flow of the segments they receive: tcpSmoothedRttMicroseconds and tcpSmoothedRttMinMicroseconds. Off, it costs the flow program's hit path one test; on, handshake packets cost one more map update or lookup. A kernel without the tracepoint gets one warning, and the handshake RTT runs alone",
      },
      rtt_hook: {
        type: 'string',
        pattern: '^[a-z0-9_]{1,64}$',
        default: 'tcp_probe',
        description: 'the tp_btf tracepoint the smoothed-RTT program attaches to',
      },
      dns: {
        type: 'boolean',
        default: false,
        description:
          'pair DNS queries and responses on the interfaces by transaction id and 5-tuple, over UDP and TCP (dns_port): the flow of a response that answered a query seen (ingress on a client, egress on a server) gets, for the latest one, dnsLatencyMicroseconds (query to response), dnsTransactionId and dnsResponseCode (RCODE). Off, it costs the flow program one test; on, only packets to or from dns_port read the fine clock and the pending-query map (16384 queries, least recently used first out)',
      },
      dns_port: {
        type: 'integer',
        minimum: 1,
        maximum: 65535,
        default: 53,
        description: "the DNS servers' port (UDP and TCP) that dns watches",
      },
      dns_query_name: {
        type: 'boolean',
        default: false,
        description:
          'dns, and the flow of an answered query also gets dnsQueryName, the name it asked for (the question of the response), in DNS presentation form: labels joined by dots, case as on the wire, other octets than printable ASCII as \\DDD. Names wait in a kernel map of their own (dns_query_name_max_flows) until the next eviction, so flows do not grow; only answered responses write it',
      },
      dns_query_name_max_flows: {
        type: 'integer',
        minimum: 1,
        maximum: 1048576,
        default: 4096,
        description:
          'flows with an answered query whose name the kernel holds between two evictions (one map of entries x (260 bytes + 60 bytes of key)); beyond it the oldest names go first, and the answers that lost theirs are logged',
      },
    },
  },
  example: {
    interfaces: ['eth0'],
    exclude_interfaces: [],
    netns_rescan_interval_ms: 1000,
    directions: ['ingress', 'egress'],
    attach_mode: 'auto',
    instance: 'default',
    pin_root: '/sys/fs/bpf',
    cache_max_flows: 65536,
    ringbuf_size_bytes: 16777216,
    sampling: 0,
    eviction_interval_ms: 5000,
    ringbuf_drain_interval_ms: 100,
    flush_on_map_full: true,
    min_flush_interval_ms: 500,
    log_interval_ms: 10000,
    account_max_entries: 5000,
    account_evict_timeout_ms: 5000,
    drops: false,
    drops_hook: 'kfree_skb',
    drops_max_flows: 16384,
    rtt: false,
    rtt_hook: 'tcp_probe',
    dns: false,
    dns_port: 53,
    dns_query_name: false,
    dns_query_name_max_flows: 4096,
  },
  build: ebpfFlows,
};

export default ebpfFlowsModule;
