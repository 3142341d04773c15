/**
 * Every component type a pipeline file can name. Adding a component: import its module and list
 * it below. The YAML `type` is the module's file name.
 */
import type { ComponentModule } from '../component.js';
import account from '../operators/account.js';
import decorate from '../operators/decorate.js';
import dedupe from '../operators/dedupe.js';
import limit_capacity from '../operators/limit_capacity.js';
import kafka from '../sinks/kafka.js';
import ebpf_flows from '../sources/ebpf_flows.js';
import { ComponentRegistry } from './component-registry.js';

export const modules: readonly ComponentModule[] = [
  // sources (src/sources/)
  ebpf_flows,
  // transforms (src/operators/)
  account,
  decorate,
  dedupe,
  limit_capacity,
  // sinks (src/sinks/)
  kafka,
];

let registry: ComponentRegistry | undefined;

/** The registry of the modules above, made on first use. */
export function defaultRegistry(): ComponentRegistry {
  registry ??= new ComponentRegistry(modules);
  return registry;
}
