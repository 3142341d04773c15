import { isIP } from 'node:net';
import { Observable, type OperatorFunction } from 'rxjs';
import type { ComponentContext, TransformModule } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import { InterfaceWatcher, interfaceAddress, type InterfaceNames } from '../net/interfaces.js';
import { namespaceNames } from '../net/namespace-names.js';
import { flowInterface, type FlowBatch } from '../records/flow.js';
import { OperatorError, badRecordError } from '../records/flow-key.js';

/** The interfaceName of a record whose ifindex no interface of the host has. */
export const UNKNOWN_INTERFACE = 'unknown';

export interface DecorateOptions {
  counters: StageCounters;
  /**
   * Makes the ifindex -> name lookup of one subscription; its `close()` runs on teardown. The
   * module passes a factory of `InterfaceWatcher`s; tests and benchmarks pass a fixed table.
   */
  interfaces: () => InterfaceNames;
  exporterIPv4Address?: string;
  exporterIPv6Address?: string;
  /** Names the stage in error messages. */
  id?: string;
}

/**
 * Adds `interfaceName` (the current name of the record's interface, `ingressInterface` or on an
 * egress record `egressInterface`, or 'unknown'; for a record with `networkNamespace`, the name in
 * that namespace, as the ebpf_flows source following it last listed its links) and the agent's
 * address as `exporterIPv4Address` or `exporterIPv6Address`. Records are updated in place
 * (no copy per record) and batches passed on as they are. The name table is looked up once per
 * run of records with the same ifindex, never with a syscall; a throwing lookup errors the output.
 *
 * @example
 * ```ts
 * const counters = ledger.stage('dec', 'decorate');
 * flows$.pipe(decorate({ counters, interfaces: () => InterfaceWatcher.open({ logger }),
 *   exporterIPv4Address: '10.0.0.7' })).subscribe(sink);
 * // { ingressInterface: 2, ... } -> { ingressInterface: 2, interfaceName: 'eth0', exporterIPv4Address: '10.0.0.7', ... }
 * ```
 */
export function decorate(options: DecorateOptions): OperatorFunction<FlowBatch, FlowBatch> {
  const stage = `decorate ${options.id ?? ''}`.trimEnd();
  const { counters, exporterIPv4Address: v4, exporterIPv6Address: v6 } = options;

  return (source) =>
    new Observable<FlowBatch>((subscriber) => {
      let names: InterfaceNames;
      try {
        names = options.interfaces();
      } catch (err) {
        subscriber.error(err);
        return;
      }
      const sub = source.subscribe({
        next(batch) {
          counters.addReceived(batch.length);
          let i = 0;
          try {
            // Records of a batch mostly share a few interfaces: look each run up once.
            let lastIndex = -1;
            let lastNs: string | undefined;
            let lastName = UNKNOWN_INTERFACE;
            for (; i < batch.length; i++) {
              const r = batch[i]!;
              const ifindex = flowInterface(r);
              const ns = r.networkNamespace;
              if (ifindex !== lastIndex || ns !== lastNs) {
                // A record counted in another namespace is named from that namespace's links, as
                // the source that follows it listed them; without such a table, from `names`.
                const table = ns === undefined ? undefined : namespaceNames(ns);
                lastName = (table ? table.get(ifindex) : names.name(ifindex)) ?? UNKNOWN_INTERFACE;
                lastIndex = ifindex;
                lastNs = ns;
              }
              r.interfaceName = lastName;
              if (v4 !== undefined) r.exporterIPv4Address = v4;
              if (v6 !== undefined) r.exporterIPv6Address = v6;
            }
          } catch (err) {
            counters.addDropped('shutdown', batch.length);
            subscriber.error(
              batch[i] === null || typeof batch[i] !== 'object' ? badRecordError(stage, batch, i, err) : err,
            );
            return;
          }
          counters.addSent(batch.length);
          subscriber.next(batch);
        },
        error: (err: unknown) => subscriber.error(err),
        complete: () => subscriber.complete(),
      });
      return () => {
        sub.unsubscribe();
        names.close();
      };
    });
}

export interface DecorateConfig {
  /** The agent's address, IPv4 or IPv6. */
  agent_ip?: string;
  /** Take the agent's address from this interface instead. */
  agent_ip_interface?: string;
  /** Which address of `agent_ip_interface`. */
  agent_ip_family?: 4 | 6;
  /** The network namespace whose interfaces the records' ifindexes belong to. */
  netns?: string;
}

/** The exporter address fields the config asks for; reads the interface's address if named. */
export function resolveAgentAddress(
  config: DecorateConfig,
  stage = 'decorate',
): Pick<DecorateOptions, 'exporterIPv4Address' | 'exporterIPv6Address'> {
  if (config.agent_ip !== undefined && config.agent_ip_interface !== undefined) {
    throw new OperatorError('EBADCONFIG', `${stage}: set agent_ip or agent_ip_interface, not both`);
  }
  if (config.agent_ip !== undefined) {
    const family = isIP(config.agent_ip);
    if (family === 0) {
      throw new OperatorError(
        'EBADCONFIG',
        `${stage}: agent_ip '${config.agent_ip}' is not an IP address; write it as 10.0.0.7 or fd00::7`,
      );
    }
    return family === 4 ? { exporterIPv4Address: config.agent_ip } : { exporterIPv6Address: config.agent_ip };
  }
  if (config.agent_ip_interface !== undefined) {
    const family = config.agent_ip_family ?? 4;
    let address: string | undefined;
    try {
      address = interfaceAddress(config.agent_ip_interface, family);
    } catch (err) {
      throw new OperatorError(
        'ENOIFACE',
        `${stage}: agent_ip_interface ${config.agent_ip_interface}: no such interface; check the name with 'ip link'`,
        { cause: err },
      );
    }
    if (address === undefined) {
      throw new OperatorError(
        'ENOADDR',
        `${stage}: agent_ip_interface ${config.agent_ip_interface} has no IPv${family} address; ` +
          `check 'ip -${family} addr show ${config.agent_ip_interface}' or set agent_ip`,
      );
    }
    return family === 4 ? { exporterIPv4Address: address } : { exporterIPv6Address: address };
  }
  return {};
}

const decorateModule: TransformModule<DecorateConfig> = {
  type: 'decorate',
  kind: 'transform',
  description: "adds the interface name and the agent's IP address to every flow record",
  schema: {
    type: 'object',
    additionalProperties: false,
    properties: {
      agent_ip: {
        type: 'string',
        description: "the agent's address (IPv4 or IPv6), set as exporterIPv4Address or exporterIPv6Address",
      },
      agent_ip_interface: {
        type: 'string',
        description: "take the agent's address from this interface instead of agent_ip",
      },
      agent_ip_family: {
        type: 'integer',
        enum: [4, 6],
        default: 4,
        description: 'which address of agent_ip_interface: 4 or 6',
      },
      netns: {
        type: 'string',
        minLength: 1,
        description:
          "name interfaces in this network namespace ('ip netns' name or /proc/<pid>/ns/net path): the netns of an ebpf_flows source that has one; records that carry networkNamespace (ebpf_flows with netns, including 'all') are named in their own namespace whatever this says",
      },
    },
  },
  example: { agent_ip_interface: 'lo', agent_ip_family: 4 },
  build(config: DecorateConfig, context: ComponentContext) {
    const stage = `decorate ${context.id}`;
    const logger: Logger = context.logger;
    return decorate({
      counters: context.counters,
      interfaces: () => InterfaceWatcher.open({ logger, ...(config.netns ? { netns: config.netns } : {}) }),
      id: context.id,
      ...resolveAgentAddress(config, stage),
    });
  },
};

export default decorateModule;
