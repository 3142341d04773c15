/**
 * netobserv-ebpf-agent's TC flow program (bench/anchors/netobserv-tc-flow.o, see the README there),
 * loaded to be measured against in the same run. Never loaded outside benchmarks.
 */
import { join } from 'node:path';
import { ObjectSpec, type Collection } from '../src/datapath/index.js';

const BPF_PROG_TYPE_SCHED_CLS = 3;
/** The programs the comparisons run; everything else in the object (kprobes, fentry) stays unloaded. */
const TC_PROGRAMS = ['tc_ingress_flow_parse', 'tcx_ingress_flow_parse'];

export function loadNetobserv(root: string): Collection {
  const spec = ObjectSpec.open(join(root, 'bench', 'anchors', 'netobserv-tc-flow.o'));
  try {
    for (const name of spec.programNames()) {
      const tc = TC_PROGRAMS.includes(name);
      spec.setAutoload(name, tc);
      if (tc) spec.setProgramType(name, BPF_PROG_TYPE_SCHED_CLS);
    }
    spec.clearPinPaths();
  } catch (err) {
    spec.close();
    throw err;
  }
  return spec.load();
}
