import { networkInterfaces } from 'node:os';
import { Subject, from } from 'rxjs';
import { describe, expect, it } from 'vitest';
import decorateModule, {
  UNKNOWN_INTERFACE,
  decorate,
  resolveAgentAddress,
} from '../../../src/operators/decorate.js';
import { OperatorError } from '../../../src/records/flow-key.js';
import { Ledger, StageCounters } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import type { InterfaceNames } from '../../../src/net/interfaces.js';
import { setNamespaceNames } from '../../../src/net/namespace-names.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';
import { flowRecord } from '../../fixtures/records.js';

function rec(p: Partial<FlowRecord> = {}): FlowRecord {
  return flowRecord({
    octetDeltaCount: 100,
    packetDeltaCount: 1,
    flowStartMilliseconds: 0,
    flowEndMilliseconds: 0,
    ...p,
  });
}

/** A fixed ifindex -> name table that counts lookups and closes. */
function fixedNames(table: Map<number, string>) {
  const stats = { made: 0, closed: 0, lookups: 0 };
  const factory = (): InterfaceNames => {
    stats.made++;
    return {
      name: (ifindex) => {
        stats.lookups++;
        return table.get(ifindex);
      },
      close: () => stats.closed++,
    };
  };
  return { factory, stats };
}

describe('decorate', () => {
  it('names a record of another namespace from the links of that namespace, where a source follows it', () => {
    const counters = new StageCounters('dec', 'decorate');
    const { factory } = fixedNames(new Map([[2, 'eth0']]));
    setNamespaceNames('rxdec-blue', new Map([[2, 'veth-blue']]));
    const input = [
      rec(),
      rec({ networkNamespace: 'rxdec-blue' }),
      rec({ networkNamespace: 'rxdec-blue', ingressInterface: 3 }),
      // No source follows this one: decorate's own table answers, as before namespaces were marked.
      rec({ networkNamespace: 'rxdec-unfollowed' }),
    ];
    const out: FlowBatch[] = [];
    from([input])
      .pipe(decorate({ counters, interfaces: factory }))
      .subscribe((b) => out.push(b));
    expect(out[0]!.map((r) => r.interfaceName)).toEqual(['eth0', 'veth-blue', UNKNOWN_INTERFACE, 'eth0']);
  });

  it('adds the interface name and the agent address in place, looking each run of ifindexes up once', () => {
    const counters = new StageCounters('dec', 'decorate');
    const { factory, stats } = fixedNames(
      new Map([
        [2, 'eth0'],
        [3, 'eth1'],
      ]),
    );
    const input = [
      rec(),
      rec({ sourceTransportPort: 1 }),
      rec({ ingressInterface: 3 }),
      rec({ ingressInterface: 9 }),
      rec(),
    ];
    const out: FlowBatch[] = [];
    let completed = false;
    from([input])
      .pipe(decorate({ counters, interfaces: factory, exporterIPv4Address: '192.0.2.7' }))
      .subscribe({ next: (b) => out.push(b), complete: () => (completed = true) });
    expect(completed).toBe(true);
    expect(out).toHaveLength(1);
    expect(out[0]).toBe(input);
    expect(out[0]).toEqual([
      rec({ interfaceName: 'eth0', exporterIPv4Address: '192.0.2.7' }),
      rec({ sourceTransportPort: 1, interfaceName: 'eth0', exporterIPv4Address: '192.0.2.7' }),
      rec({ ingressInterface: 3, interfaceName: 'eth1', exporterIPv4Address: '192.0.2.7' }),
      rec({ ingressInterface: 9, interfaceName: UNKNOWN_INTERFACE, exporterIPv4Address: '192.0.2.7' }),
      rec({ interfaceName: 'eth0', exporterIPv4Address: '192.0.2.7' }),
    ]);
    expect(stats).toEqual({ made: 1, closed: 1, lookups: 4 });
    expect(counters.snapshot()).toEqual({
      id: 'dec',
      type: 'decorate',
      received: 5,
      sent: 5,
      dropped: {},
      inFlight: 0,
    });
  });

  it('sets exporterIPv6Address for an IPv6 agent and nothing when no agent address is configured', () => {
    const counters = new StageCounters('dec', 'decorate');
    const { factory } = fixedNames(new Map([[2, 'eth0']]));
    const out: FlowBatch[] = [];
    from([[rec()]])
      .pipe(decorate({ counters, interfaces: factory, exporterIPv6Address: 'fd00::7' }))
      .subscribe((b) => out.push(b));
    from([[rec()]])
      .pipe(decorate({ counters, interfaces: factory }))
      .subscribe((b) => out.push(b));
    expect(out).toEqual([
      [rec({ interfaceName: 'eth0', exporterIPv6Address: 'fd00::7' })],
      [rec({ interfaceName: 'eth0' })],
    ]);
    expect(out[1]![0]).not.toHaveProperty('exporterIPv4Address');
  });

  it('makes one name table per subscription and closes it on unsubscribe', () => {
    const counters = new StageCounters('dec', 'decorate');
    const { factory, stats } = fixedNames(new Map());
    const input = new Subject<FlowBatch>();
    const op = input.pipe(decorate({ counters, interfaces: factory }));
    const a = op.subscribe();
    const b = op.subscribe();
    expect(stats).toMatchObject({ made: 2, closed: 0 });
    a.unsubscribe();
    expect(stats).toMatchObject({ made: 2, closed: 1 });
    b.unsubscribe();
    expect(stats).toMatchObject({ made: 2, closed: 2 });
  });

  it('turns a throwing name lookup into an error notification, and a null record into a bad-record error', () => {
    const counters = new StageCounters('dec', 'decorate');
    const failure = new Error('lookup failed');
    let error: unknown;
    from([[rec(), rec()]])
      .pipe(
        decorate({
          counters,
          interfaces: () => ({
            name: () => {
              throw failure;
            },
            close: () => undefined,
          }),
        }),
      )
      .subscribe({ error: (e: unknown) => (error = e) });
    expect(error).toBe(failure);
    expect(counters.snapshot()).toMatchObject({
      received: 2,
      sent: 0,
      dropped: { shutdown: 2 },
      inFlight: 0,
    });

    const { factory } = fixedNames(new Map());
    from([[rec(), null as unknown as FlowRecord]])
      .pipe(decorate({ counters, interfaces: factory, id: 'd1' }))
      .subscribe({ error: (e: unknown) => (error = e) });
    expect(error).toBeInstanceOf(OperatorError);
    expect((error as OperatorError).message).toBe(
      'decorate d1: bad record at index 1 of a batch of 2: the record is null; fix the source that produced it',
    );
  });

  it('errors the subscription when the name table cannot be made', () => {
    const counters = new StageCounters('dec', 'decorate');
    const failure = new Error('no sysfs');
    let error: unknown;
    from([[rec()]])
      .pipe(
        decorate({
          counters,
          interfaces: () => {
            throw failure;
          },
        }),
      )
      .subscribe({ error: (e: unknown) => (error = e) });
    expect(error).toBe(failure);
    expect(counters.snapshot()).toMatchObject({ received: 0, sent: 0 });
  });
});

describe('resolveAgentAddress', () => {
  it('takes agent_ip as IPv4 or IPv6', () => {
    expect(resolveAgentAddress({ agent_ip: '10.1.2.3' })).toEqual({ exporterIPv4Address: '10.1.2.3' });
    expect(resolveAgentAddress({ agent_ip: 'fd00::3' })).toEqual({ exporterIPv6Address: 'fd00::3' });
    expect(resolveAgentAddress({})).toEqual({});
  });

  it('rejects a bad address and both options at once, saying what to write', () => {
    expect(() => resolveAgentAddress({ agent_ip: '10.1.2' })).toThrow(
      "decorate: agent_ip '10.1.2' is not an IP address; write it as 10.0.0.7 or fd00::7",
    );
    expect(() => resolveAgentAddress({ agent_ip: '10.1.2.3', agent_ip_interface: 'lo' })).toThrow(
      'decorate: set agent_ip or agent_ip_interface, not both',
    );
  });

  it("reads an interface's address of the chosen family", () => {
    expect(resolveAgentAddress({ agent_ip_interface: 'lo', agent_ip_family: 4 })).toEqual({
      exporterIPv4Address: '127.0.0.1',
    });
    const v6 = networkInterfaces().lo?.find((a) => a.family === 'IPv6');
    if (v6) {
      expect(resolveAgentAddress({ agent_ip_interface: 'lo', agent_ip_family: 6 })).toEqual({
        exporterIPv6Address: v6.address,
      });
    } else {
      expect(() =>
        resolveAgentAddress({ agent_ip_interface: 'lo', agent_ip_family: 6 }, 'decorate x'),
      ).toThrow(
        "decorate x: agent_ip_interface lo has no IPv6 address; check 'ip -6 addr show lo' or set agent_ip",
      );
    }
  });

  it('names an unknown interface and tells how to find the right one', () => {
    let error: unknown;
    try {
      resolveAgentAddress({ agent_ip_interface: 'rxopnone0' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(OperatorError);
    expect((error as OperatorError).code).toBe('ENOIFACE');
    expect((error as OperatorError).message).toBe(
      "decorate: agent_ip_interface rxopnone0: no such interface; check the name with 'ip link'",
    );
  });
});

describe('decorate module', () => {
  const registry = new ComponentRegistry([decorateModule]);

  it('validates its example, fills defaults, rejects unknown options and bad families', () => {
    expect(registry.validate(decorateModule, decorateModule.example as never).ok).toBe(true);
    expect(registry.validate(decorateModule, { agent_ip: '10.0.0.1' })).toMatchObject({
      ok: true,
      config: { agent_ip: '10.0.0.1', agent_ip_family: 4 },
    });
    expect(registry.validate(decorateModule, { agent_ip_family: 5 }).ok).toBe(false);
    expect(registry.validate(decorateModule, { agent_address: '10.0.0.1' }).ok).toBe(false);
  });

  it('builds from its example: names from the host table, the address of lo', () => {
    const ledger = new Ledger();
    const counters = ledger.stage('dec', 'decorate');
    const op = decorateModule.build(decorateModule.example, {
      id: 'dec',
      logger: silentLogger(),
      ledger,
      counters,
    });
    const out: FlowBatch[] = [];
    from([[rec({ ingressInterface: 1 })]])
      .pipe(op)
      .subscribe((b) => out.push(b));
    expect(out).toEqual([
      [rec({ ingressInterface: 1, interfaceName: 'lo', exporterIPv4Address: '127.0.0.1' })],
    ]);
    expect(counters.snapshot()).toMatchObject({ received: 1, sent: 1, inFlight: 0 });
  });

  it('fails to build with a config error for an interface without the address family', () => {
    const ledger = new Ledger();
    const counters = ledger.stage('dec', 'decorate');
    expect(() =>
      decorateModule.build(
        { agent_ip_interface: 'rxopnone0' },
        { id: 'dec', logger: silentLogger(), ledger, counters },
      ),
    ).toThrow("decorate dec: agent_ip_interface rxopnone0: no such interface; check the name with 'ip link'");
  });
});
