import { describe, expect, it } from 'vitest';
import { DROP_VALUE, attachDrops, decodeDropBatch } from '../../src/datapath/flow/drops.js';
import { FLOW_KEY, FLOW_VALUE_STRIDE, decodeFlowMapBatch } from '../../src/datapath/flow/types.js';
import { encodeKey, encodeValue, type FlowKeyFields } from '../fixtures/flow-map.js';
import { flowRecordProblem } from '../../src/records/flow.js';

const key = (srcPort: number, more: Partial<FlowKeyFields> = {}): FlowKeyFields => ({
  ipVersion: 4,
  srcIp: '192.0.2.1',
  dstIp: '192.0.2.2',
  ifIndex: 3,
  vni: 0,
  srcPort,
  dstPort: 7002,
  ethType: 0x0800,
  protocol: 6,
  direction: 0,
  icmpType: 0,
  icmpCode: 0,
  tunnelType: 0,
  netns: 4026531840,
  ...more,
});

const value = (packets: number) =>
  encodeValue({
    packets,
    bytes: packets * 100,
    firstSeenNs: 1_000_000_000,
    lastSeenNs: 2_000_000_000,
    cookie: '0000000000000000',
    outerSrcIp: '::',
    outerDstIp: '::',
    outerSrcPort: 0,
    outerDstPort: 0,
    tcpFlags: 0x18,
    dscp: 0,
    srcMac: '02:00:00:00:00:01',
    dstMac: '02:00:00:00:00:02',
    sampling: 0,
  });

/** A two-CPU drop map entry per key: [packets, bytes, last ns, reason, tcp state] per CPU. */
function dropBatch(
  entries: { port: number; key?: Partial<FlowKeyFields>; cpus: [number, number, number, number, number][] }[],
) {
  const stride = Math.ceil(DROP_VALUE.size / 8) * 8;
  const keys = new Uint8Array(entries.length * FLOW_KEY.size);
  const values = new Uint8Array(entries.length * 2 * stride);
  const v = new DataView(values.buffer);
  entries.forEach((e, i) => {
    keys.set(encodeKey(key(e.port, e.key)), i * FLOW_KEY.size);
    e.cpus.forEach(([packets, bytes, last, reason, state], c) => {
      const o = (i * 2 + c) * stride;
      v.setBigUint64(o, BigInt(packets), true);
      v.setBigUint64(o + 8, BigInt(bytes), true);
      v.setBigUint64(o + 16, BigInt(last), true);
      v.setUint32(o + 24, reason, true);
      values[o + 28] = state;
    });
  });
  return decodeDropBatch({ count: entries.length, keys, values }, 2 * stride);
}

const OFFSET_MS = 1_700_000_000_000;
const names = (r: number) => ({ 3: 'NO_SOCKET', 12: 'NETFILTER_DROP' })[r] ?? `reason ${r}`;

describe('attachDrops', () => {
  it('merges CPUs, names the latest drop, and gives a drop-only flow a record of its own', () => {
    const flowKeys = new Uint8Array(2 * FLOW_KEY.size);
    flowKeys.set(encodeKey(key(1000)), 0);
    flowKeys.set(encodeKey(key(1001)), FLOW_KEY.size);
    const flowValues = new Uint8Array(2 * FLOW_VALUE_STRIDE);
    flowValues.set(value(5), 0);
    flowValues.set(value(7), FLOW_VALUE_STRIDE);
    const indexes: number[] = [];
    const records = decodeFlowMapBatch(
      { count: 2, keys: flowKeys, values: flowValues },
      FLOW_VALUE_STRIDE,
      OFFSET_MS,
      undefined,
      undefined,
      indexes,
    );
    const drops = dropBatch([
      // Port 1001: on two CPUs, the later drop (CPU 1) names reason and state.
      {
        port: 1001,
        cpus: [
          [2, 120, 5_000, 3, 0],
          [1, 60, 9_000, 12, 1],
        ],
      },
      // Port 1002: no flow record in this eviction.
      {
        port: 1002,
        cpus: [
          [4, 240, 3_000_000_000, 12, 1],
          [0, 0, 0, 0, 0],
        ],
      },
    ]);
    const eviction = { nowNs: 10_000_000_000, idleNs: 5_000_000_000, forced: false };
    const out = attachDrops(records, indexes, flowKeys, drops, names, OFFSET_MS, eviction);
    const view = out.map((r) => ({
      port: r.sourceTransportPort,
      packets: r.packetDeltaCount,
      dropped: r.droppedPacketDeltaCount,
      droppedBytes: r.droppedOctetDeltaCount,
      reason: r.dropReason,
      tcpState: r.tcpState,
    }));
    expect(view).toEqual([
      {
        port: 1000,
        packets: 5,
        dropped: undefined,
        droppedBytes: undefined,
        reason: undefined,
        tcpState: undefined,
      },
      {
        port: 1001,
        packets: 7,
        dropped: 3,
        droppedBytes: 180,
        reason: 'NETFILTER_DROP',
        tcpState: 'ESTABLISHED',
      },
      {
        port: 1002,
        packets: 0,
        dropped: 4,
        droppedBytes: 240,
        reason: 'NETFILTER_DROP',
        tcpState: 'ESTABLISHED',
      },
    ]);
    // The drop-only record is a whole record, timed at its latest drop.
    const only = out[2]!;
    expect([only.octetDeltaCount, only.flowStartMilliseconds, only.flowEndMilliseconds]).toEqual([
      0,
      OFFSET_MS + 3000,
      OFFSET_MS + 3000,
    ]);
    expect(out.map((r) => flowRecordProblem(r, OFFSET_MS + 10_000))).toEqual([
      undefined,
      undefined,
      undefined,
    ]);
  });

  it('gives a drop-only record the interface of its direction, its VLANs and a flowEndReason', () => {
    const drops = dropBatch([
      {
        port: 2000,
        key: { direction: 1, ifIndex: 9, vlanId: 100, innerVlanId: 7 },
        cpus: [
          [1, 64, 8_000_000_000, 12, 0],
          [0, 0, 0, 0, 0],
        ],
      },
      {
        port: 2001,
        cpus: [
          [1, 64, 1_000_000_000, 12, 0],
          [0, 0, 0, 0, 0],
        ],
      },
    ]);
    const eviction = { nowNs: 10_000_000_000, idleNs: 5_000_000_000, forced: false };
    const out = attachDrops([], [], new Uint8Array(0), drops, names, OFFSET_MS, eviction);
    const view = (r: (typeof out)[number]) => ({
      port: r.sourceTransportPort,
      flowDirection: r.flowDirection,
      ingressInterface: r.ingressInterface,
      egressInterface: r.egressInterface,
      dot1qVlanId: r.dot1qVlanId,
      dot1qCustomerVlanId: r.dot1qCustomerVlanId,
      layer2OctetDeltaCount: r.layer2OctetDeltaCount,
      flowEndReason: r.flowEndReason,
    });
    expect(out.map(view)).toEqual([
      // Last drop 2 s before the eviction, within the idle time: active timeout.
      {
        port: 2000,
        flowDirection: 1,
        ingressInterface: undefined,
        egressInterface: 9,
        dot1qVlanId: 100,
        dot1qCustomerVlanId: 7,
        layer2OctetDeltaCount: 0,
        flowEndReason: 2,
      },
      // Last drop 9 s before: idle timeout.
      {
        port: 2001,
        flowDirection: 0,
        ingressInterface: 3,
        egressInterface: undefined,
        dot1qVlanId: undefined,
        dot1qCustomerVlanId: undefined,
        layer2OctetDeltaCount: 0,
        flowEndReason: 1,
      },
    ]);
    // At shutdown the same drops end forced.
    const final = attachDrops(
      [],
      [],
      new Uint8Array(0),
      dropBatch([
        {
          port: 2002,
          cpus: [
            [1, 64, 1, 12, 0],
            [0, 0, 0, 0, 0],
          ],
        },
      ]),
      names,
      OFFSET_MS,
      {
        ...eviction,
        forced: true,
      },
    );
    expect(final.map((r) => r.flowEndReason)).toEqual([4]);
  });
});
