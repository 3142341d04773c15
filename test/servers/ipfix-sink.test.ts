/**
 * The ipfix sink against independent readers: nfcapd collects what it sends and nfdump reads it
 * back, tshark decodes the same bytes off loopback. Every flow the sink was handed must come back
 * with its exact packets, bytes, addresses, ports and interface, or be counted in the ledger.
 */
import { Subject } from 'rxjs';
import { afterAll, describe, expect, it } from 'vitest';
import type { HealthReporter } from '../../src/component.js';
import { Ledger } from '../../src/ledger.js';
import { silentLogger } from '../../src/logger.js';
import type { FlowBatch, FlowRecord } from '../../src/records/flow.js';
import { IpfixSink, type IpfixSinkConfig } from '../../src/sinks/ipfix.js';
import { cleanup } from '../fixtures/cleanup.js';
import { RXFLOW_ELEMENTS } from '../../src/records/rxflow-elements.js';
import { Nfcapd, TsharkCapture, tcpToUdp, type NfdumpFlow } from '../fixtures/ipfix.js';
import { freePort } from '../fixtures/nats.js';
import { flowRecord, withRxflowFields } from '../fixtures/records.js';

afterAll(() => cleanup.runAll());

const T0 = 1_765_000_000_000;

/** Record i: one of IPv4, IPv6, layer 2 and IPv4 in VXLAN, ingress or egress, its own ports and counts. */
function record(i: number): FlowRecord {
  const kind = i % 4;
  const base = flowRecord({
    sourceTransportPort: 1024 + (i % 60_000),
    destinationTransportPort: 1 + Math.floor(i / 60_000),
    protocolIdentifier: i % 3 === 0 ? 17 : 6,
    tcpControlBits: i % 3 === 0 ? 0 : 0x12,
    packetDeltaCount: 1 + (i % 97),
    octetDeltaCount: 64 * (1 + (i % 97)) + i,
    layer2OctetDeltaCount: 82 * (1 + (i % 97)) + i,
    dot1qVlanId: 1 + (i % 4094),
    ...(i % 3 === 1 ? { dot1qCustomerVlanId: 4094 - (i % 4094) } : {}),
    flowStartMilliseconds: T0 + i,
    flowEndMilliseconds: T0 + i + 1500,
    ingressInterface: 2 + (i % 5),
    flowDirection: i % 2 === 0 ? 0 : 1,
    flowEndReason: 1,
    sourceMacAddress: '02:00:00:00:00:01',
    destinationMacAddress: `02:00:00:00:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`,
  });
  if (kind === 1) {
    delete base.sourceIPv4Address;
    delete base.destinationIPv4Address;
    return {
      ...base,
      ipVersion: 6,
      sourceIPv6Address: '2001:db8::1',
      destinationIPv6Address: `fd00::${(i & 0xffff).toString(16)}`,
      ethernetType: 0x86dd,
    };
  }
  if (kind === 2) {
    delete base.sourceIPv4Address;
    delete base.destinationIPv4Address;
    return {
      ...base,
      ipVersion: 0,
      ethernetType: 0x0806,
      protocolIdentifier: 0,
      sourceTransportPort: 0,
      destinationTransportPort: 0,
      tcpControlBits: 0,
    };
  }
  if (kind === 3) return { ...base, encapsulationType: 'vxlan', virtualNetworkIdentifier: 4242 };
  return base;
}

interface Harness {
  sink: IpfixSink;
  input: Subject<FlowBatch>;
  ledger: Ledger;
  consumed: Promise<void>;
  health: string[];
}

/** A sink consuming a Subject, once it has subscribed (after resolving the collector's address). */
async function startSink(config: IpfixSinkConfig): Promise<Harness> {
  const ledger = new Ledger();
  const counters = ledger.stage('ipfix', 'ipfix', 'sink');
  const health: string[] = [];
  const reporter: HealthReporter = {
    degraded: (reason) => health.push(`degraded: ${reason}`),
    healthy: () => health.push('healthy'),
  };
  const sink = new IpfixSink(config, {
    id: 'ipfix',
    logger: silentLogger(),
    ledger,
    counters,
    health: reporter,
  });
  const input = new Subject<FlowBatch>();
  const consumed = sink.consume(input);
  await expect.poll(() => input.observed).toBe(true);
  return { sink, input, ledger, consumed, health };
}

function feed(h: Harness, records: FlowRecord[], batch = 500): void {
  for (let i = 0; i < records.length; i += batch) h.input.next(records.slice(i, i + batch));
}

interface UdpRun {
  h: Harness;
  nfcapd: Nfcapd;
  capture: TsharkCapture;
  /** What nfdump read. */
  flows: NfdumpFlow[];
}

/**
 * Sends `records` through a sink with `options` to nfcapd over UDP (IPv6 with `family` 6), under a
 * capture; returns once the sink is closed and the capture has seen all it sent.
 */
async function overUdp(
  records: FlowRecord[],
  options: Omit<IpfixSinkConfig, 'collector'>,
  family: 4 | 6 = 4,
): Promise<UdpRun> {
  const nfcapd = await Nfcapd.start(family);
  const capture = await TsharkCapture.start(`udp port ${nfcapd.port}`);
  const host = family === 6 ? '[::1]' : '127.0.0.1';
  const h = await startSink({ collector: `${host}:${nfcapd.port}`, ...options });
  feed(h, records);
  h.input.complete();
  await h.consumed;
  await h.sink.close();
  await capture.stop();
  const flows = await nfcapd.stop();
  nfcapd.remove();
  return { h, nfcapd, capture, flows };
}

const isoMs = (ms: number): string => new Date(ms).toISOString().slice(0, 23);

/** What nfdump must print for `r`: the fields the records and nfdump both carry. */
function expected(r: FlowRecord): Partial<NfdumpFlow> {
  const egress = r.flowDirection === 1;
  const out: Partial<NfdumpFlow> = {
    in_packets: r.packetDeltaCount,
    in_bytes: r.octetDeltaCount,
    proto: r.protocolIdentifier,
    src_port: r.sourceTransportPort,
    dst_port: r.destinationTransportPort,
    input_snmp: egress ? 0 : r.ingressInterface,
    output_snmp: egress ? r.ingressInterface : 0,
    direction: r.flowDirection,
    in_src_mac: r.sourceMacAddress,
    in_dst_mac: r.destinationMacAddress,
  };
  if (r.ipVersion === 4) {
    out.src4_addr = r.sourceIPv4Address;
    out.dst4_addr = r.destinationIPv4Address;
  } else if (r.ipVersion === 6) {
    out.src6_addr = r.sourceIPv6Address;
    out.dst6_addr = r.destinationIPv6Address;
  }
  return out;
}

function pick(f: NfdumpFlow, like: Partial<NfdumpFlow>): Partial<NfdumpFlow> {
  const out: Partial<NfdumpFlow> = {};
  for (const k of Object.keys(like) as (keyof NfdumpFlow)[]) (out as Record<string, unknown>)[k] = f[k];
  return out;
}

/** nfdump's flows matched one to one with the records (by destination MAC, unique per record). */
function expectSameFlows(flows: NfdumpFlow[], records: FlowRecord[]): void {
  expect(flows.length).toBe(records.length);
  const byMac = new Map(flows.map((f) => [`${f.in_dst_mac}/${f.src_port}`, f]));
  expect(byMac.size).toBe(records.length);
  for (const r of records) {
    const f = byMac.get(`${r.destinationMacAddress}/${r.sourceTransportPort}`);
    expect(f, JSON.stringify(r)).toBeDefined();
    const want = expected(r);
    expect(pick(f!, want)).toEqual(want);
    expect(f!.first).toBe(isoMs(r.flowStartMilliseconds).replace('Z', ''));
  }
}

/** The sink sent every record, nfcapd saw them all without a sequence error, nfdump reads each exactly. */
function expectEveryFlow(h: Harness, nfcapd: Nfcapd, flows: NfdumpFlow[], records: FlowRecord[]): void {
  const n = records.length;
  expect(h.ledger.totals().stages[0]).toMatchObject({ received: n, sent: n, dropped: {}, inFlight: 0 });
  expect(nfcapd.output).toContain(`Flows: ${n},`);
  expect(nfcapd.output).toContain('Sequence Errors: 0, Bad Packets: 0');
  expectSameFlows(flows, records);
}

describe('ipfix sink', () => {
  it('UDP: nfdump reads back every record exactly, with no sequence error, and tshark finds nothing malformed', async () => {
    const records = Array.from({ length: 4000 }, (_, i) => record(i));
    const { h, nfcapd, capture, flows } = await overUdp(records, { template_refresh_messages: 50 });

    expectEveryFlow(h, nfcapd, flows, records);

    const { rows, expert } = capture.read(`udp.port==${nfcapd.port},cflow`, [
      'cflow.od_id',
      'cflow.packets',
      'cflow.template_id',
      'udp.length',
    ]);
    expect(expert).toBe('');
    // Every datagram carried domain 1 and fit 1472 bytes; templates came in the first and then every 50th message.
    expect(rows.every((r) => r[0] === '1')).toBe(true);
    expect(Math.max(...rows.map((r) => Number(r[3]) - 8))).toBeLessThanOrEqual(1472);
    const packets = rows.flatMap((r) => (r[1] === '' ? [] : r[1]!.split(',').map(Number)));
    expect(packets.reduce((a, b) => a + b, 0)).toBe(records.reduce((a, r) => a + r.packetDeltaCount, 0));
    const templated = rows.filter((r) => r[2] !== '').length;
    expect(templated).toBe(Math.ceil(rows.length / 50));

    // nfdump 1.7 drops elements 352, 243 and 245: tshark reads them, record by record (every
    // template carries all three, so the per-message lists line up with the destination MACs).
    const layer2 = capture.read(`udp.port==${nfcapd.port},cflow`, [
      'cflow.dstmac',
      'cflow.layer2_octet_delta_count',
      'cflow.dot1q_vlan_id',
      'cflow.dot1q_customer_vlan_id',
    ]);
    const seen = new Map<string, number[]>();
    for (const [macs, octets, vlans, customers] of layer2.rows) {
      if (macs === '') continue;
      const [m, o, v, c] = [macs!, octets!, vlans!, customers!].map((x) => x.split(','));
      expect([o!.length, v!.length, c!.length]).toEqual([m!.length, m!.length, m!.length]);
      m!.forEach((mac, j) => seen.set(mac, [Number(o![j]), Number(v![j]), Number(c![j])]));
    }
    expect(seen.size).toBe(records.length);
    for (const r of records) {
      expect(seen.get(r.destinationMacAddress), r.destinationMacAddress).toEqual([
        r.layer2OctetDeltaCount,
        r.dot1qVlanId,
        r.dot1qCustomerVlanId ?? 0,
      ]);
    }
  });

  it('TCP: a collector that comes up late gets every held record, then the templates are withdrawn', async () => {
    const nfcapd = await Nfcapd.start();
    const port = await freePort();
    const capture = await TsharkCapture.start(`tcp port ${port}`);
    const records = Array.from({ length: 3000 }, (_, i) => record(i));
    // Messages small enough for the bridge to hand nfcapd as datagrams.
    const h = await startSink({
      collector: `127.0.0.1:${port}`,
      transport: 'tcp',
      reconnect_backoff_ms: 50,
      max_message_bytes: 1400,
    });
    feed(h, records.slice(0, 1000));
    // Nothing listens yet: the sink says so, and holds the records.
    await expect.poll(() => h.health[0], { timeout: 10_000 }).toMatch(/^degraded: ipfix collector/);
    expect(h.ledger.totals().stages[0]!.inFlight).toBe(1000);
    // The bridge listens on the port the sink dials, and forwards each message to nfcapd.
    const bridge = await tcpToUdp(nfcapd.port, port);
    await expect.poll(() => h.health.at(-1), { timeout: 10_000 }).toBe('healthy');
    feed(h, records.slice(1000));
    h.input.complete();
    await h.consumed;
    await h.sink.close();
    // The stream has ended at the bridge: everything the sink wrote has crossed loopback.
    await bridge.ended;
    await capture.stop();
    await bridge.close();
    const flows = await nfcapd.stop();
    nfcapd.remove();

    expect(h.ledger.totals().stages[0]).toMatchObject({
      received: 3000,
      sent: 3000,
      dropped: {},
      inFlight: 0,
    });
    expect(nfcapd.output).toContain('Sequence Errors: 0, Bad Packets: 0');
    expectSameFlows(flows, records);
    const { rows, expert } = capture.read(`tcp.port==${port},cflow`, [
      'cflow.template_id',
      'cflow.template_field_count',
    ]);
    expect(expert).toBe('');
    const templates = rows.filter((r) => r[0] !== '');
    // One template set at the session's start (5 templates), then their withdrawal (field count 0).
    expect(templates.map((r) => r[1])).toEqual(['24,24,16,25,25', '0,0,0,0,0']);
  });

  it('TCP: a collector that never answers: at the close deadline what is held counts as shutdown', async () => {
    const port = await freePort();
    const h = await startSink({ collector: `127.0.0.1:${port}`, transport: 'tcp', reconnect_backoff_ms: 50 });
    const records = Array.from({ length: 700 }, (_, i) => record(i));
    feed(h, records);
    await expect.poll(() => h.health.length, { timeout: 10_000 }).toBeGreaterThan(0);
    // The input ends while the collector is down: consume() does not wait for it.
    h.input.complete();
    await h.consumed;
    await h.sink.close(200);
    expect(h.ledger.totals().stages[0]).toMatchObject({
      received: 700,
      sent: 0,
      dropped: { shutdown: 700 },
      inFlight: 0,
    });
  });

  it('UDP to an IPv6 collector: messages fit 1452 bytes and every record arrives', async () => {
    const records = Array.from({ length: 500 }, (_, i) => record(i));
    const { nfcapd, capture, flows } = await overUdp(records, {}, 6);
    expectSameFlows(flows, records);
    const { rows } = capture.read(`udp.port==${nfcapd.port},cflow`, ['udp.length']);
    const lengths = rows.map((r) => Number(r[0]) - 8);
    expect(Math.max(...lengths)).toBeLessThanOrEqual(1452);
    expect(Math.max(...lengths)).toBeGreaterThan(1300);
  });

  it("with enterprise_number: tshark reads rxflow's elements under the number with each record's values, nfdump every IANA field", async () => {
    const records = Array.from({ length: 1000 }, (_, i) => withRxflowFields(record(i), i));
    const options = { enterprise_number: PEN, template_refresh_messages: 40 };
    const { h, nfcapd, capture, flows } = await overUdp(records, options);

    // A collector that does not know the enterprise reads the IANA fields as ever.
    expectEveryFlow(h, nfcapd, flows, records);

    // The templates: 512-516, rxflow's elements 1-11 after the IANA ones, each under the number.
    const { rows, expert } = capture.read(`udp.port==${nfcapd.port},cflow`, [
      'cflow.template_id',
      'cflow.template_ipfix_field_type_enterprise',
      'cflow.template_ipfix_field_pen',
    ]);
    expect(expert).toBe('');
    const templated = rows.filter((r) => r[0] !== '');
    expect(templated.length).toBe(Math.ceil(rows.length / 40));
    const ids = RXFLOW_ELEMENTS.map((e) => e.id);
    for (const [templates, types, pens] of templated) {
      expect(templates).toBe('512,513,514,515,516');
      expect(types).toBe([1, 2, 3, 4, 5].flatMap(() => ids).join(','));
      expect(pens).toBe(
        Array<number>(5 * ids.length)
          .fill(PEN)
          .join(','),
      );
    }

    // Each record, found by its destination MAC: every element's value, 0 or empty where absent.
    const dissected = capture.flows(`udp.port==${nfcapd.port},cflow`);
    expect(dissected.length).toBe(records.length);
    const byMac = new Map(dissected.map((f) => [f.fields.get('cflow.dstmac')![0], f]));
    expect(byMac.size).toBe(records.length);
    for (const r of records) {
      const f = byMac.get(r.destinationMacAddress)!;
      const seen: Record<string, unknown> = {};
      for (const e of RXFLOW_ELEMENTS) {
        const entry = f.enterprise.get(e.id);
        if (entry !== undefined)
          expect(entry.enterprise).toBe('Example Enterprise Number for Documentation Use');
        const bytes = Buffer.from(entry?.hex ?? '', 'hex');
        seen[e.name] = e.type === 'string' ? bytes.toString('utf8') : bytes.readUIntBE(0, e.length);
      }
      expect(seen, r.destinationMacAddress).toEqual(expectedOwn(r));
    }
  });

  it('with enterprise_number and templates in every message: a record too long to share one with them goes in the next, none is lost', async () => {
    // Query names of 640 characters (an escaped name may have up to 1024): one record a message.
    const name = (i: number): string => `${'a'.repeat(62)}.`.repeat(10) + `n${i}`;
    const records = Array.from({ length: 30 }, (_, i) => ({ ...record(4 * i), dnsQueryName: name(i) }));
    const options = { enterprise_number: PEN, template_refresh_messages: 1 };
    const { h, nfcapd, capture, flows } = await overUdp(records, options);
    expectEveryFlow(h, nfcapd, flows, records);
    const names = capture
      .flows(`udp.port==${nfcapd.port},cflow`)
      .map((f) => Buffer.from(f.enterprise.get(10)!.hex, 'hex').toString());
    expect(names.sort()).toEqual(records.map((r) => r.dnsQueryName).sort());
    // The templates alone, then a record without them, and again: 60 datagrams of at most 1472 bytes.
    const { rows, expert } = capture.read(`udp.port==${nfcapd.port},cflow`, [
      'cflow.template_id',
      'udp.length',
    ]);
    expect(expert).toBe('');
    expect(rows.map((r) => (r[0] === '' ? 'record' : 'templates'))).toEqual(
      Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? 'templates' : 'record')),
    );
    expect(Math.max(...rows.map((r) => Number(r[1]) - 8))).toBeLessThanOrEqual(1472);
  });
});

/** RFC 5612: the enterprise number for documentation. */
const PEN = 32473;

/** What each of rxflow's elements carries for `r`: presentElements' bits, the values, 0 or empty. */
function expectedOwn(r: FlowRecord): Record<string, unknown> {
  const fields = r as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  let present = 1 << 1;
  for (const e of RXFLOW_ELEMENTS.slice(1)) {
    if (fields[e.name] !== undefined) present |= 1 << e.id;
    out[e.name] = fields[e.name] ?? (e.type === 'string' ? '' : 0);
  }
  return { presentElements: present, ...out };
}
