import { describe, expect, it } from 'vitest';
import {
  flowInterface,
  flowRecordProblem,
  layer2SegmentId,
  type FlowRecord,
} from '../../src/records/flow.js';
import { flowRecord } from '../fixtures/records.js';

/** A record as JSON would give it back: the fixture without the fields named. */
function without(r: FlowRecord, ...names: (keyof FlowRecord)[]): Record<string, unknown> {
  const out: Record<string, unknown> = { ...r };
  for (const n of names) delete out[n];
  return out;
}

describe('flow records by direction', () => {
  const ingress = flowRecord({ ingressInterface: 2, flowDirection: 0 });
  const egress = {
    ...without(ingress, 'ingressInterface'),
    egressInterface: 3,
    flowDirection: 1,
  } as FlowRecord;
  // An egress record as versions before egressInterface wrote it.
  const legacyEgress = flowRecord({ ingressInterface: 4, flowDirection: 1 });

  it('flowInterface is the received-on interface for ingress, the sent-on one for egress', () => {
    expect([flowInterface(ingress), flowInterface(egress), flowInterface(legacyEgress)]).toEqual([2, 3, 4]);
  });

  it('flowRecordProblem wants the interface of the record direction, and reads older egress records', () => {
    expect([flowRecordProblem(ingress), flowRecordProblem(egress), flowRecordProblem(legacyEgress)]).toEqual([
      undefined,
      undefined,
      undefined,
    ]);
    expect(flowRecordProblem(without(ingress, 'ingressInterface'))).toBe('ingressInterface is not a number');
    expect(flowRecordProblem({ ...ingress, egressInterface: 2, ingressInterface: undefined })).toBe(
      'ingressInterface is not a number',
    );
    expect(flowRecordProblem(without(egress, 'egressInterface'))).toBe('egressInterface is not a number');
  });
});

describe('layer2SegmentId', () => {
  it('is 0x01 (VXLAN) in the top byte of 64 bits and the VNI below; none for GENEVE or without a tunnel', () => {
    const vxlan = flowRecord({ encapsulationType: 'vxlan', virtualNetworkIdentifier: 0xabcdef });
    expect(layer2SegmentId(vxlan)).toBe(0x01000000_00abcdefn);
    expect(layer2SegmentId(flowRecord({ encapsulationType: 'geneve', virtualNetworkIdentifier: 5 }))).toBe(
      undefined,
    );
    expect(layer2SegmentId(flowRecord())).toBe(undefined);
  });
});
