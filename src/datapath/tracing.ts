/**
 * Loading a tracing program (tp_btf) that shares the flow object's flow_maps, and attaching it:
 * the drop program (flow/drops.ts) and the smoothed-RTT program (flow/rtt.ts).
 */
import { syscallFailure } from './errors.js';
import { libbpf } from './libbpf.js';
import { ObjectSpec, type Collection } from './object.js';

export interface TracingLoadOptions {
  objectPath: string;
  /** The program to attach. */
  program: string;
  /** The tp_btf tracepoint, when not the one its section names. */
  tracepoint?: string;
  /** The one its section names, for messages. */
  defaultTracepoint: string;
  /** fd of the flow object's flow_maps. */
  flowMapsFd: number;
  /** Changes to the spec before load (map sizes). */
  prepare?: (spec: ObjectSpec) => void;
}

/**
 * Loads the object on the flow maps and attaches `program` to its tracepoint; returns the loaded
 * collection and the link fd (close it to detach). Throws ELOAD (with the missing hook named),
 * EVERIFIER or EATTACH; nothing is left loaded then.
 */
export function loadTracingOnFlowMaps(options: TracingLoadOptions): {
  collection: Collection;
  linkFd: number;
} {
  const spec = ObjectSpec.open(options.objectPath);
  let collection: Collection;
  try {
    if (options.tracepoint !== undefined) spec.setAttachTarget(options.program, options.tracepoint);
    options.prepare?.(spec);
    collection = spec.load({ reuseMaps: { flow_maps: options.flowMapsFd } });
  } catch (err) {
    spec.close();
    throw err;
  }
  const linkFd = libbpf().bpf_raw_tracepoint_open(null, collection.program(options.program).fd);
  if (linkFd < 0) {
    collection.close();
    throw syscallFailure(
      `attach ${options.program} to tracepoint ${options.tracepoint ?? options.defaultTracepoint}`,
      'bpf_raw_tracepoint_open',
      linkFd,
      { code: 'EATTACH' },
    );
  }
  return { collection, linkFd };
}
