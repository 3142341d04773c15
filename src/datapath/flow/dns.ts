/**
 * DNS latency measured by the TC flow programs (FLOW_FEATURE_DNS, bpf/flow.c dns_latency): a
 * query to the DNS port waits in flow_dns_pending under its response's flow and transaction id;
 * the response that finds it puts the latency, the id and the response code on its own flow
 * (struct flow_value dns_*), which the flow maps' eviction then carries like the counters.
 *
 * The offsets are those of FLOW_VALUE (src/datapath/flow/types.ts, checked against the object's
 * BTF); kept here as numbers so the decoder can import this module without a cycle.
 */
import type { FlowRecord } from '../../records/flow.js';

/** Bit of flow_config.features (bpf/flow.h): DNS latency, id and rcode on the flows. */
export const FLOW_FEATURE_DNS = 2;

export const V_DNS_LATENCY_US = 116;
export const V_DNS_ID = 120;
export const V_DNS_RCODE = 122;
export const V_DNS_ANSWERED_US = 124;

const LE = true;

/**
 * Names of the DNS response codes a header can carry (RCODE, 4 bits; IANA DNS parameters, RFC
 * 1035, 2136, 8490): the attribute values of the OTel histogram, 16 at most.
 */
export const DNS_RCODE_NAMES: readonly string[] = [
  'NOERROR',
  'FORMERR',
  'SERVFAIL',
  'NXDOMAIN',
  'NOTIMP',
  'REFUSED',
  'YXDOMAIN',
  'YXRRSET',
  'NXRRSET',
  'NOTAUTH',
  'NOTZONE',
  'DSOTYPENI',
  'RCODE12',
  'RCODE13',
  'RCODE14',
  'RCODE15',
];

/**
 * Sets the DNS fields of `rec` from the `cpus` per-CPU slots of one flow at `base` (`stride`
 * apart): those of the query answered last (dns_answered_us, 32 bits of microseconds: compared
 * modulo 2^32, right for answers less than 35 minutes apart).
 */
export function addDns(rec: FlowRecord, vv: DataView, base: number, cpus: number, stride: number): void {
  let slot = -1;
  let answered = 0;
  for (let c = 0; c < cpus; c++) {
    const v = base + c * stride;
    if (vv.getUint32(v + V_DNS_LATENCY_US, LE) === 0) continue;
    const at = vv.getInt32(v + V_DNS_ANSWERED_US, LE);
    if (slot < 0 || ((at - answered) | 0) > 0) {
      slot = v;
      answered = at;
    }
  }
  if (slot < 0) return;
  rec.dnsLatencyMicroseconds = vv.getUint32(slot + V_DNS_LATENCY_US, LE);
  rec.dnsTransactionId = vv.getUint16(slot + V_DNS_ID, LE);
  rec.dnsResponseCode = vv.getUint8(slot + V_DNS_RCODE);
}
