/**
 * Latency measured by the flow programs (bpf/flow.h): the TCP handshake RTT the TC programs time
 * (FLOW_FEATURE_RTT), and the kernel's smoothed RTT bpf/rtt.c samples on tcp_probe. Both sit in
 * struct flow_value, so the flow maps' double buffering carries them with the counters.
 *
 * The offsets are those of FLOW_VALUE (src/datapath/flow/types.ts, checked against the object's
 * BTF); kept here as numbers so the decoder can import this module without a cycle.
 */
import type { FlowRecord } from '../../records/flow.js';
import { addDns, V_DNS_LATENCY_US } from './dns.js';

/** Bits of flow_config.features (bpf/flow.h). */
export const FLOW_FEATURE_RTT = 1;

export const V_HANDSHAKE_RTT_US = 104;
export const V_SRTT_MIN_US = 108;
export const V_SRTT_US = 112;
/** struct flow_value's size rounded up to 8: the distance between two CPUs' slots. */
export const FLOW_VALUE_STRIDE_BYTES = 128;

const LE = true;

/** Non-zero when the flow_value slot at v carries any latency figure. */
export function latencyWord(vv: DataView, v: number): number {
  return (
    vv.getUint32(v + V_HANDSHAKE_RTT_US, LE) |
    vv.getUint32(v + V_SRTT_US, LE) |
    vv.getUint32(v + V_DNS_LATENCY_US, LE)
  );
}

/**
 * Sets the latency fields of `rec` from the `cpus` per-CPU slots of one flow at `base`
 * (FLOW_VALUE_STRIDE apart). Minimums are over every slot; the latest values are those of the
 * slot `latest` (the CPU that counted the flow's last packet) when it has one, else the largest.
 */
export function addLatency(rec: FlowRecord, vv: DataView, base: number, cpus: number, latest: number): void {
  let handshake = 0;
  let srttMin = 0;
  let srtt = 0;
  for (let c = 0; c < cpus; c++) {
    const v = base + c * FLOW_VALUE_STRIDE_BYTES;
    const h = vv.getUint32(v + V_HANDSHAKE_RTT_US, LE);
    if (h > handshake) handshake = h;
    const m = vv.getUint32(v + V_SRTT_MIN_US, LE);
    if (m !== 0 && (srttMin === 0 || m < srttMin)) srttMin = m;
    const s = vv.getUint32(v + V_SRTT_US, LE);
    if (s > srtt) srtt = s;
  }
  const h = latest >= 0 ? vv.getUint32(latest + V_HANDSHAKE_RTT_US, LE) : 0;
  if (h !== 0) handshake = h;
  const s = latest >= 0 ? vv.getUint32(latest + V_SRTT_US, LE) : 0;
  if (s !== 0) srtt = s;
  if (handshake !== 0) rec.tcpHandshakeRttMicroseconds = handshake;
  if (srtt !== 0) {
    rec.tcpSmoothedRttMicroseconds = srtt;
    rec.tcpSmoothedRttMinMicroseconds = srttMin === 0 ? srtt : srttMin;
  }
  addDns(rec, vv, base, cpus, FLOW_VALUE_STRIDE_BYTES);
}
