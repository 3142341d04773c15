import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import dedupeModule, { dedupe, type DedupeOptions } from '../../../src/operators/dedupe.js';
import { StageCounters } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { Ledger } from '../../../src/ledger.js';
import {
  flowRecordProblem,
  type FlowBatch,
  type FlowRecord,
  type ObservedInterface,
} from '../../../src/records/flow.js';
import { flowRecord } from '../../fixtures/records.js';

/**
 * dedupe's observedInterfaces: the (interface, direction) pairs of a flow seen on several
 * interfaces, carried by its records. Virtual time throughout: the generations age on the
 * TestScheduler's clock.
 */

function rec(p: Partial<FlowRecord> = {}): FlowRecord {
  return flowRecord({
    destinationIPv4Address: '10.0.1.1',
    destinationTransportPort: 80,
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 1000,
    flowEndMilliseconds: 1000,
    ...p,
  });
}

/** A router forwarding one packet: ingress on eth0 (2), egress on eth1 (3). */
const onEth0 = (p: Partial<FlowRecord> = {}) => rec({ ingressInterface: 2, flowDirection: 0, ...p });
const onEth1 = (p: Partial<FlowRecord> = {}) => rec({ ingressInterface: 3, flowDirection: 1, ...p });

const IN2: ObservedInterface = { ingressInterface: 2, flowDirection: 0 };
const OUT3: ObservedInterface = { egressInterface: 3, flowDirection: 1 };

const with_ = (r: FlowRecord, observedInterfaces: ObservedInterface[], p: Partial<FlowRecord> = {}) => ({
  ...r,
  ...p,
  observedInterfaces,
});

function testScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

const options = (counters: StageCounters, p: Partial<DedupeOptions> = {}): DedupeOptions => ({
  mode: 'first_come',
  expireMs: 1000,
  justMark: false,
  observedInterfaces: true,
  counters,
  ...p,
});

describe('dedupe observedInterfaces', () => {
  it('the record kept names the interface of the copy dropped in the same batch, both directions', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      const source = cold<FlowBatch>('a', { a: [onEth0(), onEth1(), onEth0({ sourceTransportPort: 5 })] });
      expectObservable(source.pipe(dedupe(options(counters)))).toBe('a', {
        a: [with_(onEth0(), [IN2, OUT3]), onEth0({ sourceTransportPort: 5 })],
      });
    });
  });

  it('keeps the list across batches within expire_ms, and forgets it with the flow', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      // a: eth0 alone at 0 (no list yet). b: the eth1 copy at 500, dropped: the list starts. c:
      // eth0 at 1000 carries it. d: eth0 at 4000, after a silence of more than 2 x expire_ms: a new
      // flow, seen on one interface, no list.
      const source = cold<FlowBatch>('a 499ms b 499ms c 2999ms d', {
        a: [onEth0()],
        b: [onEth1()],
        c: [onEth0({ packetDeltaCount: 2 })],
        d: [onEth0({ packetDeltaCount: 3 })],
      });
      expectObservable(source.pipe(dedupe(options(counters)))).toBe('a 999ms c 2999ms d', {
        a: [onEth0()],
        c: [with_(onEth0(), [IN2, OUT3], { packetDeltaCount: 2 })],
        d: [onEth0({ packetDeltaCount: 3 })],
      });
    });
  });

  it('carries the list from the older generation when the flow is seen again', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      // The generation turns at 1000; c at 1400 finds the flow (last seen at 600) in the older one.
      const source = cold<FlowBatch>('a 599ms b 799ms c', {
        a: [onEth0()],
        b: [onEth1()],
        c: [onEth0({ packetDeltaCount: 2 })],
      });
      expectObservable(source.pipe(dedupe(options(counters)))).toBe('a 1399ms c', {
        a: [onEth0()],
        c: [with_(onEth0(), [IN2, OUT3], { packetDeltaCount: 2 })],
      });
    });
  });

  it('with just_mark every copy passes, marked, and each carries the list', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      const source = cold<FlowBatch>('a', { a: [onEth0(), onEth1(), rec({ ingressInterface: 4 })] });
      const IN4: ObservedInterface = { ingressInterface: 4, flowDirection: 0 };
      expectObservable(source.pipe(dedupe(options(counters, { justMark: true })))).toBe('a', {
        a: [
          with_(onEth0(), [IN2, OUT3, IN4]),
          with_(onEth1(), [IN2, OUT3, IN4], { duplicate: true }),
          with_(rec({ ingressInterface: 4 }), [IN2, OUT3, IN4], { duplicate: true }),
        ],
      });
    });
  });

  it('names interfaces as the records did, takes egressInterface on egress records, lists at most 16', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      // 20 more interfaces, egress, named; the first record had no name, a later one of its pair does.
      const copies = Array.from({ length: 20 }, (_, k) =>
        rec({
          ingressInterface: 2,
          egressInterface: 10 + k,
          flowDirection: 1,
          interfaceName: `veth${k}`,
        } as never),
      );
      const source = cold<FlowBatch>('a 9ms b', {
        a: [onEth0(), ...copies],
        b: [onEth0({ interfaceName: 'eth0', packetDeltaCount: 2 })],
      });
      const listed: ObservedInterface[] = [
        IN2,
        ...Array.from({ length: 15 }, (_, k) => ({
          egressInterface: 10 + k,
          flowDirection: 1 as const,
          interfaceName: `veth${k}`,
        })),
      ];
      expectObservable(source.pipe(dedupe(options(counters)))).toBe('a 9ms b', {
        a: [with_(onEth0(), listed)],
        b: [
          with_(onEth0(), [{ ...IN2, interfaceName: 'eth0' }, ...listed.slice(1)], {
            interfaceName: 'eth0',
            packetDeltaCount: 2,
          }),
        ],
      });
      expect(listed).toHaveLength(16);
    });
    // What was emitted in the first batch was not changed by the second.
  });

  it('a copy emitted earlier keeps its list as it was: later pairs go to later records only', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      const source = cold<FlowBatch>('a 9ms b', {
        a: [onEth0(), onEth1()],
        b: [onEth0({ packetDeltaCount: 2 }), rec({ ingressInterface: 4 })],
      });
      expectObservable(source.pipe(dedupe(options(counters)))).toBe('a 9ms b', {
        a: [with_(onEth0(), [IN2, OUT3])],
        b: [with_(onEth0(), [IN2, OUT3, { ingressInterface: 4, flowDirection: 0 }], { packetDeltaCount: 2 })],
      });
    });
  });

  it('is off by default: no record gets the field', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const counters = new StageCounters('dd', 'dedupe');
      const source = cold<FlowBatch>('a', { a: [onEth0(), onEth1()] });
      expectObservable(source.pipe(dedupe(options(counters, { observedInterfaces: undefined })))).toBe('a', {
        a: [onEth0()],
      });
    });
  });

  it('the pipeline option observed_interfaces turns it on', () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const ledger = new Ledger();
      const op = dedupeModule.build(
        { mode: 'first_come', expire_ms: 1000, just_mark: false, observed_interfaces: true },
        { id: 'dd', logger: silentLogger(), ledger, counters: ledger.stage('dd', 'dedupe') },
      );
      const source = cold<FlowBatch>('a', { a: [onEth0(), onEth1()] });
      expectObservable(source.pipe(op)).toBe('a', { a: [with_(onEth0(), [IN2, OUT3])] });
    });
  });
});

describe('observedInterfaces in flowRecordProblem (file_replay, kafka_consumer)', () => {
  const now = 1_800_000_000_000;
  const withList = (list: unknown) => ({ ...flowRecord(), observedInterfaces: list });

  it('takes the list dedupe writes', () => {
    expect(flowRecordProblem(withList([IN2, { ...OUT3, interfaceName: 'eth1' }]), now)).toBeUndefined();
  });

  it.each([
    ['not an array', { a: 1 }, 'observedInterfaces is not an array'],
    ['an entry not an object', [1], 'observedInterfaces[0] is not an object'],
    ['no direction', [{ ingressInterface: 2 }], 'observedInterfaces[0].flowDirection is not 0 or 1'],
    [
      'the other direction name',
      [IN2, { ingressInterface: 3, flowDirection: 1 }],
      'observedInterfaces[1].egressInterface is not a number',
    ],
    [
      'an interface out of range',
      [{ ingressInterface: 2 ** 32, flowDirection: 0 }],
      'observedInterfaces[0].ingressInterface is not an integer from 0 to 4294967295: 4294967296',
    ],
    [
      'a control character in a name',
      [{ ...IN2, interfaceName: 'eth\n0' }],
      'observedInterfaces[0].interfaceName holds a control character: "eth\\n0"',
    ],
    [
      'another field',
      [{ ...IN2, vlanId: 3 }],
      'observedInterfaces[0] has fields other than flowDirection, ingressInterface and interfaceName',
    ],
    ['17 entries', Array.from({ length: 17 }, () => IN2), 'observedInterfaces has more than 16 entries'],
  ])('refuses %s', (_, list, message) => {
    expect(flowRecordProblem(withList(list), now)).toBe(message);
  });
});
