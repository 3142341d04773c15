/**
 * Every component type a pipeline file can name. Adding a component: import its module and list
 * it below. The YAML `type` is the module's file name.
 */
import type { ComponentModule } from '../component.js';
import account from '../operators/account.js';
import decorate from '../operators/decorate.js';
import dedupe from '../operators/dedupe.js';
import file from '../sinks/file.js';
import ipfix from '../sinks/ipfix.js';
import kafka from '../sinks/kafka.js';
import nats_sessions from '../sinks/nats_sessions.js';
import otel_metrics from '../sinks/otel_metrics.js';
import stdout from '../sinks/stdout.js';
import top from '../sinks/top.js';
import ebpf_flows from '../sources/ebpf_flows.js';
import firewall_audit from '../sources/firewall_audit.js';
import firewall_metrics from '../sources/firewall_metrics.js';
import file_replay from '../sources/file_replay.js';
import firewall_sessions from '../sources/firewall_sessions.js';
import ipfix_source from '../sources/ipfix.js';
import kafka_consumer from '../sources/kafka_consumer.js';
import { ComponentRegistry } from './component-registry.js';

export const modules: readonly ComponentModule[] = [
  // sources (src/sources/)
  ebpf_flows,
  file_replay,
  firewall_audit,
  firewall_metrics,
  firewall_sessions,
  ipfix_source, // type ipfix, as the sink
  kafka_consumer,
  // transforms (src/operators/)
  account,
  decorate,
  dedupe,
  // sinks (src/sinks/)
  file,
  ipfix,
  kafka,
  nats_sessions,
  otel_metrics,
  stdout,
  top,
];

let registry: ComponentRegistry | undefined;

/** The registry of the modules above, made on first use. */
export function defaultRegistry(): ComponentRegistry {
  registry ??= new ComponentRegistry(modules);
  return registry;
}
