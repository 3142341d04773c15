import { Writable } from 'node:stream';
import { Subject, from } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { ComponentContext } from '../../../src/component.js';
import { Ledger } from '../../../src/ledger.js';
import { silentLogger } from '../../../src/logger.js';
import { ComponentRegistry } from '../../../src/pipeline/component-registry.js';
import type { FlowBatch, FlowRecord } from '../../../src/records/flow.js';
import stdoutModule, { StdoutSink, textLine } from '../../../src/sinks/stdout.js';

function record(extra: Partial<FlowRecord> = {}): FlowRecord {
  return {
    ipVersion: 4,
    sourceIPv4Address: '10.0.0.1',
    destinationIPv4Address: '10.0.0.2',
    sourceTransportPort: 40000,
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 1500,
    packetDeltaCount: 3,
    flowStartMilliseconds: 1_700_000_000_000,
    flowEndMilliseconds: 1_700_000_001_000,
    tcpControlBits: 0x12,
    ipDiffServCodePoint: 0,
    ingressInterface: 2,
    flowDirection: 0,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: '02:00:00:00:00:02',
    ethernetType: 0x0800,
    interfaceName: 'eth0',
    ...extra,
  };
}

/** A stream that keeps what it is given; with `hold`, write callbacks wait for release(). */
class Collector extends Writable {
  readonly chunks: string[] = [];
  hold = false;
  private held: (() => void)[] = [];

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.chunks.push(chunk.toString('utf8'));
    if (this.hold) this.held.push(() => callback());
    else callback();
  }

  release(): void {
    this.hold = false;
    for (const done of this.held.splice(0)) done();
  }
}

function context(): ComponentContext {
  const ledger = new Ledger();
  return { id: 'out', logger: silentLogger(), ledger, counters: ledger.stage('out', 'stdout', 'sink') };
}

describe('stdout sink', () => {
  it('prints one JSON object per line, one write per batch', async () => {
    const out = new Collector();
    const ctx = context();
    const a = record();
    const b = record({ sourceTransportPort: 40001, duplicate: true });
    const sink = new StdoutSink({}, ctx, out);
    await sink.consume(from([[a, b], [a]]));
    await sink.close();
    expect(out.chunks).toEqual([`${JSON.stringify(a)}\n${JSON.stringify(b)}\n`, `${JSON.stringify(a)}\n`]);
    expect(ctx.counters.snapshot()).toMatchObject({ received: 3, sent: 3, dropped: {}, inFlight: 0 });
  });

  it('prints a compact text line per record', async () => {
    const records = [
      record(),
      record({
        ipVersion: 6,
        sourceIPv4Address: undefined,
        destinationIPv4Address: undefined,
        sourceIPv6Address: '2001:db8::1',
        destinationIPv6Address: '2001:db8::53',
        protocolIdentifier: 17,
        sourceTransportPort: 5353,
        destinationTransportPort: 53,
        flowDirection: 1,
        interfaceName: undefined,
        // An egress record names the interface it was sent on.
        ingressInterface: undefined,
        egressInterface: 7,
      }),
      record({
        protocolIdentifier: 1,
        sourceTransportPort: 0,
        destinationTransportPort: 0,
        icmpTypeIPv4: 8,
        icmpCodeIPv4: 0,
        tcpControlBits: 0,
      }),
      record({
        encapsulationType: 'vxlan',
        virtualNetworkIdentifier: 42,
        duplicate: true,
        tcpControlBits: 0x01 | 0x10,
      }),
      record({ protocolIdentifier: 132, tcpControlBits: 0 }),
      record({ protocolIdentifier: 17, tcpControlBits: 0, dot1qVlanId: 100 }),
      record({ protocolIdentifier: 17, tcpControlBits: 0, dot1qVlanId: 10, dot1qCustomerVlanId: 20 }),
      // A layer-2 flow has no IP octets: its bytes are the frames'.
      record({
        ipVersion: 0,
        sourceIPv4Address: undefined,
        destinationIPv4Address: undefined,
        protocolIdentifier: 0,
        sourceTransportPort: 0,
        destinationTransportPort: 0,
        tcpControlBits: 0,
        ethernetType: 0x0806,
        octetDeltaCount: 0,
        layer2OctetDeltaCount: 120,
        dot1qVlanId: 7,
      }),
    ];
    expect(records.map(textLine)).toEqual([
      '2023-11-14T22:13:21.000Z eth0 ingress tcp 10.0.0.1:40000 -> 10.0.0.2:443 packets=3 bytes=1500 flags=SYN,ACK',
      '2023-11-14T22:13:21.000Z if7 egress udp [2001:db8::1]:5353 -> [2001:db8::53]:53 packets=3 bytes=1500',
      '2023-11-14T22:13:21.000Z eth0 ingress icmp 10.0.0.1 -> 10.0.0.2 packets=3 bytes=1500 type=8 code=0',
      '2023-11-14T22:13:21.000Z eth0 ingress tcp 10.0.0.1:40000 -> 10.0.0.2:443 packets=3 bytes=1500 flags=FIN,ACK vxlan vni=42 duplicate',
      '2023-11-14T22:13:21.000Z eth0 ingress sctp 10.0.0.1:40000 -> 10.0.0.2:443 packets=3 bytes=1500',
      '2023-11-14T22:13:21.000Z eth0 ingress udp 10.0.0.1:40000 -> 10.0.0.2:443 packets=3 bytes=1500 vlan=100',
      '2023-11-14T22:13:21.000Z eth0 ingress udp 10.0.0.1:40000 -> 10.0.0.2:443 packets=3 bytes=1500 vlan=10.20',
      '2023-11-14T22:13:21.000Z eth0 ingress ethertype=0x0806 02:00:00:00:00:01 -> 02:00:00:00:00:02 packets=3 bytes=120 vlan=7',
    ]);
    const out = new Collector();
    const sink = new StdoutSink({ format: 'text' }, context(), out);
    await sink.consume(from([records.slice(0, 2)]));
    expect(out.chunks).toEqual([`${textLine(records[0]!)}\n${textLine(records[1]!)}\n`]);
  });

  it('holds at most buffer_max_records for a slow reader and drops the rest as sink_buffer_full', async () => {
    const out = new Collector();
    out.hold = true;
    const ctx = context();
    const sink = new StdoutSink({ buffer_max_records: 5 }, ctx, out);
    const input = new Subject<FlowBatch>();
    const consumed = sink.consume(input);
    input.next([record(), record(), record()]);
    input.next([record(), record(), record()]);
    input.next([record(), record(), record()]);
    expect(ctx.counters.snapshot()).toMatchObject({
      received: 9,
      sent: 0,
      dropped: { sink_buffer_full: 4 },
      inFlight: 5,
    });
    input.complete();
    out.release();
    await consumed;
    // The second write is issued after the release, so it does not wait.
    expect(ctx.counters.snapshot()).toMatchObject({
      received: 9,
      sent: 5,
      dropped: { sink_buffer_full: 4 },
      inFlight: 0,
    });
    expect(out.chunks.join('').split('\n').length - 1).toBe(5);
  });

  it('survives a closed pipe: logs once and counts what it cannot write as sink_failed', async () => {
    const broken = new Writable({
      write(_chunk, _encoding, callback) {
        callback(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
      },
    });
    const ctx = context();
    const errors: string[] = [];
    ctx.logger.error = (_obj: unknown, msg?: string) => void errors.push(msg ?? '');
    const sink = new StdoutSink({}, ctx, broken);
    await sink.consume(from([[record()], [record(), record()]]));
    await sink.close();
    expect(ctx.counters.snapshot()).toMatchObject({
      received: 3,
      sent: 0,
      dropped: { sink_failed: 3 },
      inFlight: 0,
    });
    expect(errors).toEqual(['stdout sink: cannot write: write EPIPE; records are dropped from now on']);
  });

  it('has a strict schema with defaults', () => {
    const registry = new ComponentRegistry([stdoutModule]);
    expect(registry.validate(stdoutModule, {})).toMatchObject({
      ok: true,
      config: { format: 'json', buffer_max_records: 100000 },
    });
    expect(
      registry.validate(stdoutModule, stdoutModule.example as unknown as Record<string, unknown>).ok,
    ).toBe(true);
    expect(registry.validate(stdoutModule, { format: 'csv' }).ok).toBe(false);
  });
});
