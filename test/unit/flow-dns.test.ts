/** The DNS fields of a flow from its per-CPU slots: those of the query answered last. */
import { describe, expect, it } from 'vitest';
import {
  addDns,
  V_DNS_ANSWERED_US,
  V_DNS_ID,
  V_DNS_LATENCY_US,
  V_DNS_RCODE,
} from '../../src/datapath/flow/dns.js';
import { FLOW_VALUE_STRIDE } from '../../src/datapath/flow/types.js';
import type { FlowRecord } from '../../src/records/flow.js';

/** Per-CPU slots: [latency us, id, rcode, answered us] each, latency 0 for a slot without DNS. */
function slots(values: [number, number, number, number][]): DataView {
  const vv = new DataView(new ArrayBuffer(values.length * FLOW_VALUE_STRIDE));
  values.forEach(([latency, id, rcode, answered], c) => {
    const v = c * FLOW_VALUE_STRIDE;
    vv.setUint32(v + V_DNS_LATENCY_US, latency, true);
    vv.setUint16(v + V_DNS_ID, id, true);
    vv.setUint8(v + V_DNS_RCODE, rcode);
    vv.setUint32(v + V_DNS_ANSWERED_US, answered >>> 0, true);
  });
  return vv;
}

function dnsOf(vv: DataView): Partial<FlowRecord> {
  const rec = {} as FlowRecord;
  addDns(rec, vv, 0, vv.byteLength / FLOW_VALUE_STRIDE, FLOW_VALUE_STRIDE);
  return rec;
}

describe('addDns', () => {
  it('takes the slot answered last, whatever the CPU order', () => {
    const vv = slots([
      [900, 1, 0, 5_000],
      [0, 0, 0, 0],
      [700, 2, 3, 9_000],
      [800, 3, 2, 7_000],
    ]);
    expect(dnsOf(vv)).toEqual({ dnsLatencyMicroseconds: 700, dnsTransactionId: 2, dnsResponseCode: 3 });
  });

  it('orders answer times across the 32-bit wrap', () => {
    const vv = slots([
      [900, 1, 0, 0xffff_fff0],
      [700, 2, 3, 0x10],
    ]);
    expect(dnsOf(vv).dnsTransactionId).toBe(2);
  });

  it('sets nothing without an answered query', () => {
    expect(dnsOf(slots([[0, 0, 0, 0]]))).toEqual({});
  });
});
