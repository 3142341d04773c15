/**
 * What the flow program does when it cannot count a packet in the map: a full map sends
 * single-packet flows to the ring buffer, a full ring buffer counts them as lost, and 1-in-N
 * sampling set at run time skips packets and counts what it skipped. Every packet is accounted
 * for exactly, by the map, the ring buffer or a counter.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ObjectSpec, RingBufferReader, type Collection } from '../../src/datapath/index.js';
import {
  FLOW_CTR,
  FLOW_PASS,
  FLOW_EVENT,
  FLOW_EVENT_MAP_FULL,
  decodeFlowEvent,
  decodeFlowMapBatch,
  encodeFlowConfig,
  flowEventReason,
  sumPerCpuCounter,
  type FlowCounterName,
} from '../../src/datapath/flow/types.js';
import { FLOW_MAP_NAMES, FlowMaps, setFlowMapMaxEntries } from '../../src/datapath/flow/maps.js';
import type { FlowRecord } from '../../src/records/flow.js';
import { ETH_IPV4, buildBpf, ethernet, flowObject, ipv4, kernelSkipReason, udp } from './flow-packets.js';

const skipReason = kernelSkipReason();

/** An IPv4 UDP frame whose source port tells the flows apart. */
const frame = (srcPort: number): Uint8Array =>
  ethernet({ type: ETH_IPV4 }, ipv4({ src: '10.9.8.7', dst: '10.6.5.4', proto: 17 }, udp(srcPort, 53)));

function counters(coll: Collection): Record<FlowCounterName, number> {
  const map = coll.map('flow_counters');
  const out = {} as Record<FlowCounterName, number>;
  for (const [name, index] of Object.entries(FLOW_CTR)) {
    if (name === 'MAX') continue;
    const key = new Uint8Array(4);
    new DataView(key.buffer).setUint32(0, index, true);
    out[name as FlowCounterName] = sumPerCpuCounter(map.lookup(key)!);
  }
  return out;
}

const zero: Record<FlowCounterName, number> = {
  PACKETS: 0,
  SAMPLED_OUT: 0,
  PARSE_FAILED: 0,
  MAP_FULL: 0,
  MAP_UPDATE_FAILED: 0,
  RB_RESERVE_FAILED: 0,
  NON_IP: 0,
  PARSE_LIMIT: 0,
};

function readEvents(reader: RingBufferReader): { reasons: number[]; records: FlowRecord[] } {
  const reasons: number[] = [];
  const records: FlowRecord[] = [];
  reader.drain((view, offset, length) => {
    expect(length).toBe(FLOW_EVENT.size);
    reasons.push(flowEventReason(view, offset));
    records.push(decodeFlowEvent(view, offset, length, 0));
  });
  return { reasons, records };
}

describe.skipIf(skipReason !== '')(`flow program limits ${skipReason}`, () => {
  let coll: Collection | undefined;
  let reader: RingBufferReader | undefined;

  beforeAll(() => buildBpf());

  afterEach(() => {
    reader?.close();
    reader = undefined;
    coll?.close();
    coll = undefined;
  });

  it('a 16-entry map takes 16 of 100 flows; the other 84 go to the ring buffer as MAP_FULL', () => {
    coll = setFlowMapMaxEntries(ObjectSpec.open(flowObject), 16).load();
    const ingress = coll.program('flow_ingress');
    const flowMaps = new FlowMaps(coll);
    expect(FLOW_MAP_NAMES.map((name) => coll!.map(name).maxEntries)).toStrictEqual([16, 16]);
    const evict = () => {
      const batch = flowMaps.evict();
      return decodeFlowMapBatch(batch, flowMaps.maps[0].valueBufferSize, 0);
    };
    reader = new RingBufferReader(coll.map('flow_events'));

    for (let p = 1000; p < 1100; p++) expect(ingress.testRun(frame(p)).retval).toBe(FLOW_PASS);

    const inMap = evict();
    const { reasons, records: events } = readEvents(reader);
    expect(inMap).toHaveLength(16);
    expect(events).toHaveLength(84);
    expect(reasons).toStrictEqual(new Array<number>(84).fill(FLOW_EVENT_MAP_FULL));
    // Every flow exactly once, in the map or on the ring buffer, each a single packet.
    const ports = [...inMap, ...events].map((r) => r.sourceTransportPort).sort((a, b) => a - b);
    expect(ports).toStrictEqual(Array.from({ length: 100 }, (_, i) => 1000 + i));
    const len = frame(0).length;
    for (const r of [...inMap, ...events]) {
      expect([
        r.packetDeltaCount,
        r.octetDeltaCount,
        r.layer2OctetDeltaCount,
        r.protocolIdentifier,
        r.destinationTransportPort,
      ]).toStrictEqual([1, len - 14, len, 17, 53]);
    }
    expect(events.every((r) => r.flowEndReason === 5)).toBe(true);
    // Map flows end by timeout (idle: decoded without an eviction time), never lack of resources.
    expect(inMap.every((r) => r.flowEndReason === 1)).toBe(true);
    expect(counters(coll)).toStrictEqual({ ...zero, PACKETS: 100, MAP_FULL: 84 });

    // Known flows still count in the map while it is full. The eviction moved the program to the
    // other map, just as small: 16 new flows fit, the 17th spills.
    for (let p = 1000; p < 1016; p++) ingress.testRun(frame(p));
    for (let p = 1000; p < 1016; p++) ingress.testRun(frame(p), { repeat: 2 });
    ingress.testRun(frame(2000));
    const again = evict();
    expect(again.map((r) => r.packetDeltaCount)).toStrictEqual(new Array<number>(16).fill(3));
    expect(readEvents(reader).records.map((r) => r.sourceTransportPort)).toStrictEqual([2000]);
    expect(counters(coll)).toStrictEqual({ ...zero, PACKETS: 100 + 16 * 3 + 1, MAP_FULL: 85 });
  });

  it('sizes inner-map templates of maps of maps only', () => {
    const spec = ObjectSpec.open(flowObject);
    try {
      expect(() => spec.setInnerMaxEntries('flow_events', 16)).toThrow(
        `set inner max entries of map flow_events in ${flowObject}: not a map of maps with an inner map definition; use setMaxEntries()`,
      );
    } finally {
      spec.close();
    }
  });

  it('a full ring buffer counts what neither the map nor the ring buffer took', () => {
    // One page of ring: records are an 8-byte header plus the 160-byte event, so 24 fit in 4096.
    coll = setFlowMapMaxEntries(ObjectSpec.open(flowObject), 4).setMaxEntries('flow_events', 4096).load();
    const ingress = coll.program('flow_ingress');
    reader = new RingBufferReader(coll.map('flow_events'));
    const fit = Math.floor(4096 / (8 + FLOW_EVENT.size));

    for (let p = 0; p < 100; p++) ingress.testRun(frame(p));
    expect(counters(coll)).toStrictEqual({
      ...zero,
      PACKETS: 100,
      MAP_FULL: fit,
      RB_RESERVE_FAILED: 96 - fit,
    });
    expect(readEvents(reader).records.map((r) => r.sourceTransportPort)).toStrictEqual(
      Array.from({ length: fit }, (_, i) => 4 + i),
    );

    // Reading made room again.
    ingress.testRun(frame(500));
    expect(readEvents(reader).records.map((r) => r.sourceTransportPort)).toStrictEqual([500]);
    expect(counters(coll)).toStrictEqual({
      ...zero,
      PACKETS: 101,
      MAP_FULL: fit + 1,
      RB_RESERVE_FAILED: 96 - fit,
    });
  });

  it('1-in-N sampling set at run time: counted + SAMPLED_OUT = packets seen, exactly', () => {
    coll = ObjectSpec.open(flowObject).load();
    const ingress = coll.program('flow_ingress');
    const flowMaps = new FlowMaps(coll);
    const evict = () => decodeFlowMapBatch(flowMaps.evict(), flowMaps.maps[0].valueBufferSize, 0);
    const config = coll.map('flow_config');
    const key0 = new Uint8Array(4);
    const f = frame(7);

    config.update(key0, encodeFlowConfig({ sampling: 4 }));
    ingress.testRun(f, { repeat: 4000 });
    const sampled = evict();
    const c1 = counters(coll);
    expect(sampled).toHaveLength(1);
    const counted = sampled[0]!.packetDeltaCount;
    // 1 in 4 as PSAMP: one packet counted, three skipped.
    expect([sampled[0]!.samplingPacketInterval, sampled[0]!.samplingPacketSpace]).toEqual([1, 3]);
    expect(sampled[0]!.layer2OctetDeltaCount).toBe(counted * f.length);
    expect(sampled[0]!.octetDeltaCount).toBe(counted * (f.length - 14));
    expect(c1).toStrictEqual({ ...zero, PACKETS: 4000, SAMPLED_OUT: 4000 - counted });
    // 1 in 4 kept: 1000 expected, standard deviation about 27; these bounds are 10 deviations wide.
    expect(counted).toBeGreaterThan(730);
    expect(counted).toBeLessThan(1270);

    // Back to every packet, without reloading.
    config.update(key0, encodeFlowConfig({ sampling: 1 }));
    ingress.testRun(f, { repeat: 500 });
    const all = evict();
    expect(
      all.map((r) => [r.packetDeltaCount, r.samplingPacketInterval, r.samplingPacketSpace]),
    ).toStrictEqual([[500, undefined, undefined]]);
    expect(counters(coll)).toStrictEqual({ ...c1, PACKETS: 4500 });
  });
});
