/**
 * The smoothed-RTT program of bpf/rtt.o on the tcp_probe tracepoint (tp_btf). It shares the flow
 * object's flow_maps (the fd is reused at load, no second map) and writes the kernel's smoothed
 * RTT of the receiving socket into the ingress flow of each sampled segment (flow_value srtt_us,
 * srtt_min_us), which the flow maps' eviction then carries (src/datapath/flow/latency.ts).
 */
import { sumPerCpu } from '../layout.js';
import { libc } from '../libbpf.js';
import type { Collection } from '../object.js';
import { loadTracingOnFlowMaps } from '../tracing.js';

export const RTT_PROGRAM = 'rtt_tcp_probe';
export const RTT_TRACEPOINT = 'tcp_probe';

export interface RttProbeOptions {
  objectPath: string;
  /** fd of the flow object's flow_maps. */
  flowMapsFd: number;
  /** The tp_btf tracepoint to attach to; default tcp_probe. */
  tracepoint?: string;
}

/** Samples the program put on a flow, and samples on no flow of the flow map, since it loaded. */
export interface RttProbeCounts {
  matched: number;
  unmatched: number;
}

/** The smoothed-RTT program loaded and attached; close() detaches it. */
export class RttProbe {
  readonly #collection: Collection;
  #linkFd: number;

  private constructor(collection: Collection, linkFd: number) {
    this.#collection = collection;
    this.#linkFd = linkFd;
  }

  /** Throws (ELOAD with the missing hook named, EVERIFIER, EATTACH) when the kernel lacks it. */
  static open(options: RttProbeOptions): RttProbe {
    const { collection, linkFd: fd } = loadTracingOnFlowMaps({
      objectPath: options.objectPath,
      program: RTT_PROGRAM,
      ...(options.tracepoint !== undefined ? { tracepoint: options.tracepoint } : {}),
      defaultTracepoint: RTT_TRACEPOINT,
      flowMapsFd: options.flowMapsFd,
    });
    return new RttProbe(collection, fd);
  }

  counts(): RttProbeCounts {
    const map = this.#collection.map('rtt_counters');
    const read = (index: number): number => {
      const key = new Uint8Array(4);
      new DataView(key.buffer).setUint32(0, index, true);
      const value = map.lookup(key);
      return value === undefined ? 0 : sumPerCpu(value);
    };
    return { matched: read(0), unmatched: read(1) };
  }

  close(): void {
    if (this.#linkFd >= 0) {
      libc().close(this.#linkFd);
      this.#linkFd = -1;
    }
    this.#collection.close();
  }
}
