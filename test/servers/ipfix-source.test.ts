import { spawn } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { Subject, from, type Subscription } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { Ledger, type StageCounters } from '../../src/ledger.js';
import { loadPipeline } from '../../src/pipeline/load.js';
import { flowRecordProblem, type FlowRecord } from '../../src/records/flow.js';
import ipfixSinkModule from '../../src/sinks/ipfix.js';
import ipfixModule, { type IpfixConfig } from '../../src/sources/ipfix.js';
import { IpfixDecoder, newExporter, newReport } from '../../src/sources/ipfix/decode.js';
import {
  be,
  ipfixMessage,
  ipv4,
  ipv6,
  mac,
  optionsTemplateRecord,
  set,
  templateRecord,
  v9OptionsTemplateRecord,
  v9Packet,
  variable,
  type Field,
} from '../fixtures/ipfix-messages.js';
import { rxflowFieldsOf, variedFlowRecord, withRxflowFields } from '../fixtures/records.js';

/**
 * The ipfix source on a real UDP socket, fed datagrams the test writes byte by byte: what each
 * decodes to, record for record, and what the ledger and the log say of every datagram that is
 * garbage, truncated, early, withdrawn or after a gap.
 */

const EXPORT_S = 1_780_000_000;
const PEN = 29305;

// IPFIX template 256: IPv4 with ms times, both interfaces, MACs, an enterprise element and a
// variable-length one (interfaceName) that the source skips.
const T_V4 = 256;
const V4_FIELDS: Field[] = [
  { ie: 8, length: 4 },
  { ie: 12, length: 4 },
  { ie: 7, length: 2 },
  { ie: 11, length: 2 },
  { ie: 4, length: 1 },
  { ie: 6, length: 1 },
  { ie: 195, length: 1 },
  { ie: 1, length: 8 },
  { ie: 2, length: 8 },
  { ie: 152, length: 8 },
  { ie: 153, length: 8 },
  { ie: 10, length: 4 },
  { ie: 14, length: 4 },
  { ie: 61, length: 1 },
  { ie: 136, length: 1 },
  { ie: 100, length: 4, enterprise: PEN },
  { ie: 82, length: 0xffff },
  { ie: 56, length: 6 },
  { ie: 80, length: 6 },
];

function v4Data(i: number, longName = false): { bytes: Buffer; record: FlowRecord } {
  const start = 1_780_000_000_000 + i * 10;
  const bytes = Buffer.concat([
    ipv4(`10.1.0.${i}`),
    ipv4('192.0.2.80'),
    be(40000 + i, 2),
    be(443, 2),
    be(6, 1),
    be(0x1b, 1),
    be(46, 1),
    be(1500 * i + 60, 8),
    be(i + 1, 8),
    be(start, 8),
    be(start + 5000, 8),
    be(3, 4),
    be(7, 4),
    be(1, 1),
    be(3, 1),
    be(0xdeadbeef, 4),
    variable(Buffer.from(longName ? 'x'.repeat(300) : `eth${i}`), longName),
    mac('02:00:00:00:00:0a'),
    mac('02:00:00:00:00:0b'),
  ]);
  const record = {
    ipVersion: 4,
    sourceTransportPort: 40000 + i,
    destinationTransportPort: 443,
    protocolIdentifier: 6,
    octetDeltaCount: 1500 * i + 60,
    packetDeltaCount: i + 1,
    flowStartMilliseconds: start,
    flowEndMilliseconds: start + 5000,
    tcpControlBits: 0x1b,
    ipDiffServCodePoint: 46,
    ingressInterface: 3,
    egressInterface: 7,
    flowDirection: 1,
    sourceMacAddress: '02:00:00:00:00:0a',
    destinationMacAddress: '02:00:00:00:00:0b',
    ethernetType: 0x0800,
    sourceIPv4Address: `10.1.0.${i}`,
    destinationIPv4Address: '192.0.2.80',
    exporterIPv4Address: '127.0.0.1',
    flowEndReason: 3,
  } as FlowRecord;
  return { bytes, record };
}

// IPFIX template 257: IPv6 ICMP, reduced-size counters, times in seconds, ToS instead of DSCP.
const T_V6 = 257;
const V6_FIELDS: Field[] = [
  { ie: 27, length: 16 },
  { ie: 28, length: 16 },
  { ie: 4, length: 1 },
  { ie: 139, length: 2 },
  { ie: 1, length: 4 },
  { ie: 2, length: 4 },
  { ie: 150, length: 4 },
  { ie: 151, length: 4 },
  { ie: 5, length: 1 },
];

function v6Data(i: number): { bytes: Buffer; record: FlowRecord } {
  const bytes = Buffer.concat([
    ipv6(`2001:db8::${i}`),
    ipv6('2001:db8:0:1::1'),
    be(58, 1),
    be((128 << 8) | 0, 2),
    be(104 * i, 4),
    be(i, 4),
    be(EXPORT_S - 60, 4),
    be(EXPORT_S - 1, 4),
    be(0xb8, 1),
  ]);
  const record = {
    ipVersion: 6,
    sourceTransportPort: 0,
    destinationTransportPort: 0,
    protocolIdentifier: 58,
    octetDeltaCount: 104 * i,
    packetDeltaCount: i,
    flowStartMilliseconds: (EXPORT_S - 60) * 1000,
    flowEndMilliseconds: (EXPORT_S - 1) * 1000,
    tcpControlBits: 0,
    ipDiffServCodePoint: 46,
    ingressInterface: 0,
    flowDirection: 0,
    sourceMacAddress: '00:00:00:00:00:00',
    destinationMacAddress: '00:00:00:00:00:00',
    ethernetType: 0x86dd,
    sourceIPv6Address: `2001:db8::${i}`,
    destinationIPv6Address: '2001:db8:0:1::1',
    icmpTypeIPv6: 128,
    icmpCodeIPv6: 0,
    exporterIPv4Address: '127.0.0.1',
  } as FlowRecord;
  return { bytes, record };
}

// IPFIX template 258 with times relative to systemInitTimeMilliseconds, which options template 259
// sends along with PSAMP 1-in-10 sampling.
const T_UP = 258;
const UP_FIELDS: Field[] = [
  { ie: 8, length: 4 },
  { ie: 12, length: 4 },
  { ie: 4, length: 1 },
  { ie: 7, length: 2 },
  { ie: 11, length: 2 },
  { ie: 1, length: 4 },
  { ie: 2, length: 4 },
  { ie: 22, length: 4 },
  { ie: 21, length: 4 },
];
const T_OPT = 259;
const OPT_FIELDS: Field[] = [
  { ie: 149, length: 4 },
  { ie: 160, length: 8 },
  { ie: 305, length: 4 },
  { ie: 306, length: 4 },
];
const SYSTEM_INIT_MS = 1_779_990_000_000;

const template = (id: number, fields: Field[]): Buffer => set(2, templateRecord(id, fields));
const withdrawal = (id: number): Buffer => set(2, templateRecord(id, []));
const dataSet = (id: number, ...records: Buffer[]): Buffer => set(id, Buffer.concat(records));
const msg = (sequence: number, ...sets: Buffer[]): Buffer =>
  ipfixMessage({ exportTimeS: EXPORT_S, sequence, domain: 1 }, ...sets);

// --------------------------------------------------------------------------------------------

interface Running {
  config: IpfixConfig;
  records: FlowRecord[];
  counters: StageCounters;
  logs: Record<string, unknown>[];
  stop$: Subject<void>;
  subscription: Subscription;
  done: Promise<void>;
}

const running: Running[] = [];
const sockets: Socket[] = [];

afterEach(() => {
  for (const r of running.splice(0)) r.subscription.unsubscribe();
  for (const s of sockets.splice(0)) s.close();
});

async function waitFor(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The kernel's view of the IPv4 UDP socket bound to 127.0.0.1:`port` (/proc/net/udp). */
function udpSocket(port: number): { rxQueue: number; drops: number } {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const line = readFileSync('/proc/net/udp', 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((f) => f[1] === local);
  if (line === undefined) throw new Error(`no UDP socket on 127.0.0.1:${port}`);
  return { rxQueue: parseInt(line[4]!.split(':')[1]!, 16), drops: Number(line[12]) };
}

async function freeUdpPort(family: 'udp4' | 'udp6', address: string): Promise<number> {
  const s = createSocket(family);
  await new Promise<void>((resolve) => s.bind(0, address, resolve));
  const { port } = s.address();
  await new Promise<void>((resolve) => s.close(resolve));
  return port;
}

async function start(options: Partial<IpfixConfig> = {}): Promise<Running> {
  const address = options.address ?? '127.0.0.1';
  const config: IpfixConfig = {
    address,
    port: await freeUdpPort(address.includes(':') ? 'udp6' : 'udp4', address === '::' ? '::' : address),
    template_timeout_ms: 1_800_000,
    receive_buffer_bytes: 1 << 20,
    ...options,
  };
  const ledger = new Ledger();
  const counters = ledger.stage('collector', 'ipfix', 'source');
  const logs: Record<string, unknown>[] = [];
  const logger = pino(
    { level: 'debug' },
    { write: (line: string) => logs.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const stop$ = new Subject<void>();
  const records: FlowRecord[] = [];
  let finish!: () => void;
  let fail!: (err: unknown) => void;
  const done = new Promise<void>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  const subscription = ipfixModule
    .build(config, { id: 'collector', logger, ledger, counters, stop$ })
    .subscribe({ next: (batch) => records.push(...batch), complete: finish, error: fail });
  const r: Running = { config, records, counters, logs, stop$, subscription, done };
  running.push(r);
  await waitFor('the source to listen', () => logs.some((l) => l.msg === 'ipfix source: listening'));
  return r;
}

/** A socket an exporter sends from (its port is part of the exporter's identity). */
async function exporter(family: 'udp4' | 'udp6' = 'udp4'): Promise<(datagram: Buffer) => Promise<void>> {
  const s = createSocket(family);
  sockets.push(s);
  await new Promise<void>((resolve) => s.bind(0, family === 'udp4' ? '127.0.0.1' : '::1', resolve));
  return (datagram) =>
    new Promise<void>((resolve, reject) =>
      s.send(datagram, currentPort, family === 'udp4' ? '127.0.0.1' : '::1', (err) =>
        err ? reject(err) : resolve(),
      ),
    );
}
let currentPort = 0;

/** Sends the datagrams in order and waits until the source has counted `received` in all. */
async function feed(
  r: Running,
  send: (d: Buffer) => Promise<void>,
  received: number,
  ...datagrams: Buffer[]
): Promise<void> {
  currentPort = r.config.port;
  for (const d of datagrams) {
    await send(d);
    // One at a time, so their order is the order sent on loopback.
    await new Promise((resolve) => setImmediate(resolve));
  }
  await waitFor(`${received} records counted`, () => r.counters.received >= received);
  // What the source holds until the end of this turn of its event loop is in flight.
  await waitFor('records emitted', () => r.counters.snapshot().inFlight === 0);
}

const lossLogs = (r: Running): Record<string, unknown>[] =>
  r.logs.filter((l) => l.msg === 'ipfix source: records lost or unreadable');

/**
 * What IPFIX carries of a record rxflow's ipfix sink sent, on the IANA elements: the interface as
 * ingressInterface (10) on an ingress record, egressInterface (14) on an egress one; nothing of
 * interfaceName or tunnels.
 */
function ianaView(s: FlowRecord): Record<string, unknown> {
  const e: Record<string, unknown> = {
    ipVersion: s.ipVersion,
    sourceTransportPort: s.sourceTransportPort,
    destinationTransportPort: s.destinationTransportPort,
    protocolIdentifier: s.protocolIdentifier,
    octetDeltaCount: s.octetDeltaCount,
    packetDeltaCount: s.packetDeltaCount,
    flowStartMilliseconds: s.flowStartMilliseconds,
    flowEndMilliseconds: s.flowEndMilliseconds,
    tcpControlBits: s.tcpControlBits,
    ipDiffServCodePoint: s.ipDiffServCodePoint,
    ingressInterface: s.flowDirection === 0 ? s.ingressInterface : 0,
    flowDirection: s.flowDirection,
    sourceMacAddress: s.sourceMacAddress,
    destinationMacAddress: s.destinationMacAddress,
    ethernetType: s.ethernetType,
    exporterIPv4Address: '127.0.0.1',
  };
  if (s.flowDirection === 1) e.egressInterface = s.egressInterface ?? s.ingressInterface;
  // Every template carries the wire octets and both VLAN ids; 0 is no tag.
  e.layer2OctetDeltaCount = s.layer2OctetDeltaCount ?? 0;
  if (s.dot1qVlanId) e.dot1qVlanId = s.dot1qVlanId;
  if (s.dot1qCustomerVlanId) e.dot1qCustomerVlanId = s.dot1qCustomerVlanId;
  // Every template carries the drops too; 0 is none.
  if (s.droppedPacketDeltaCount || s.droppedOctetDeltaCount) {
    e.droppedPacketDeltaCount = s.droppedPacketDeltaCount ?? 0;
    e.droppedOctetDeltaCount = s.droppedOctetDeltaCount ?? 0;
  }
  for (const k of [
    'sourceIPv4Address',
    'destinationIPv4Address',
    'sourceIPv6Address',
    'destinationIPv6Address',
    'icmpTypeIPv4',
    'icmpCodeIPv4',
    'flowEndReason',
  ] as const)
    if (s[k] !== undefined) e[k] = s[k];
  return e;
}

/** RFC 5612: the enterprise number for documentation. */
const RXFLOW_PEN = 32473;

/** Sends `records` to 127.0.0.1:`port` through rxflow's ipfix sink, with `enterprise_number` if given. */
async function exportTo(port: number, records: FlowRecord[], enterpriseNumber?: number): Promise<void> {
  const ledger = new Ledger();
  const sink = ipfixSinkModule.build(
    { collector: `127.0.0.1:${port}`, enterprise_number: enterpriseNumber },
    {
      id: 'export',
      logger: pino({ level: 'silent' }),
      ledger,
      counters: ledger.stage('export', 'ipfix', 'sink'),
    },
  );
  await sink.consume(from([records.slice(0, 100), records.slice(100)]));
  await sink.close();
  expect(ledger.totals().stages[0]).toMatchObject({ sent: records.length, dropped: {} });
}

describe('ipfix source', () => {
  it('decodes IPFIX templates and data into exact records: fields, reduced sizes, variable and enterprise elements skipped', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    const b = v4Data(2, true);
    const c = v6Data(3);
    await feed(
      r,
      send,
      3,
      msg(0, template(T_V4, V4_FIELDS), template(T_V6, V6_FIELDS), dataSet(T_V4, a.bytes, b.bytes)),
      msg(2, dataSet(T_V6, c.bytes)),
    );
    expect(r.records).toEqual([a.record, b.record, c.record]);
    expect(r.counters.snapshot()).toMatchObject({ received: 3, sent: 3, dropped: {}, inFlight: 0 });
    r.stop$.next();
    await r.done;
  });

  it('dates sysUpTime records by the options record systemInitTimeMilliseconds and carries its sampling interval', async () => {
    const r = await start();
    const send = await exporter();
    const options = Buffer.concat([be(1, 4), be(SYSTEM_INIT_MS, 8), be(1, 4), be(9, 4)]);
    const up = Buffer.concat([
      ipv4('10.2.0.1'),
      ipv4('10.2.0.2'),
      be(17, 1),
      be(5353, 2),
      be(53, 2),
      be(300, 4),
      be(2, 4),
      be(1000, 4),
      be(4000, 4),
    ]);
    await feed(
      r,
      send,
      1,
      msg(
        0,
        set(3, optionsTemplateRecord(T_OPT, 1, OPT_FIELDS)),
        template(T_UP, UP_FIELDS),
        dataSet(T_OPT, options),
        dataSet(T_UP, up),
      ),
    );
    expect(r.records).toEqual([
      {
        ipVersion: 4,
        sourceTransportPort: 5353,
        destinationTransportPort: 53,
        protocolIdentifier: 17,
        octetDeltaCount: 300,
        packetDeltaCount: 2,
        flowStartMilliseconds: SYSTEM_INIT_MS + 1000,
        flowEndMilliseconds: SYSTEM_INIT_MS + 4000,
        tcpControlBits: 0,
        ipDiffServCodePoint: 0,
        ingressInterface: 0,
        flowDirection: 0,
        sourceMacAddress: '00:00:00:00:00:00',
        destinationMacAddress: '00:00:00:00:00:00',
        ethernetType: 0x0800,
        sourceIPv4Address: '10.2.0.1',
        destinationIPv4Address: '10.2.0.2',
        exporterIPv4Address: '127.0.0.1',
        samplingInterval: 10,
      },
    ]);
    // The options record is not a flow: nothing counted for it.
    expect(r.counters.snapshot()).toMatchObject({ received: 1, sent: 1, dropped: {} });
  });

  it('decodes NetFlow v9: times from sysUptime and unix seconds, options template sampling, ICMP in the port', async () => {
    const r = await start();
    const send = await exporter();
    const fields: Field[] = [
      { ie: 8, length: 4 },
      { ie: 12, length: 4 },
      { ie: 22, length: 4 },
      { ie: 21, length: 4 },
      { ie: 1, length: 4 },
      { ie: 2, length: 4 },
      { ie: 10, length: 2 },
      { ie: 7, length: 2 },
      { ie: 11, length: 2 },
      { ie: 4, length: 1 },
      { ie: 60, length: 1 },
    ];
    const data = Buffer.concat([
      ipv4('10.3.0.1'),
      ipv4('10.3.0.2'),
      be(90_000, 4),
      be(95_500, 4),
      be(252, 4),
      be(3, 4),
      be(2, 2),
      be(0, 2),
      be(0x0800, 2),
      be(1, 1),
      be(4, 1),
    ]);
    const header = { count: 4, sysUptimeMs: 100_000, unixSecs: EXPORT_S, sequence: 7, sourceId: 5 };
    await feed(
      r,
      send,
      1,
      v9Packet(
        header,
        set(
          0,
          Buffer.concat([
            be(300, 2),
            be(fields.length, 2),
            ...fields.map((f) => Buffer.concat([be(f.ie, 2), be(f.length, 2)])),
          ]),
        ),
        set(
          1,
          v9OptionsTemplateRecord(
            301,
            [{ ie: 2, length: 4 }],
            [
              { ie: 34, length: 4 },
              { ie: 35, length: 1 },
            ],
          ),
          16,
        ),
        set(301, Buffer.concat([be(2, 4), be(100, 4), be(2, 1)]), 12),
        set(300, data, 32),
      ),
    );
    expect(r.records).toEqual([
      {
        ipVersion: 4,
        sourceTransportPort: 0,
        destinationTransportPort: 0x0800,
        protocolIdentifier: 1,
        octetDeltaCount: 252,
        packetDeltaCount: 3,
        flowStartMilliseconds: EXPORT_S * 1000 - 10_000,
        flowEndMilliseconds: EXPORT_S * 1000 - 4_500,
        tcpControlBits: 0,
        ipDiffServCodePoint: 0,
        ingressInterface: 2,
        flowDirection: 0,
        sourceMacAddress: '00:00:00:00:00:00',
        destinationMacAddress: '00:00:00:00:00:00',
        ethernetType: 0x0800,
        sourceIPv4Address: '10.3.0.1',
        destinationIPv4Address: '10.3.0.2',
        icmpTypeIPv4: 8,
        icmpCodeIPv4: 0,
        exporterIPv4Address: '127.0.0.1',
        samplingInterval: 100,
      },
    ]);
    expect(r.counters.snapshot()).toMatchObject({ received: 1, sent: 1, dropped: {} });
  });

  it('counts garbage datagrams as parse_failed, logs them, and keeps decoding', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    const good = msg(0, template(T_V4, V4_FIELDS), dataSet(T_V4, a.bytes));
    const garbage = [
      Buffer.from('hello, collector'), // version 0x6865
      Buffer.from([0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), // NetFlow v5
      Buffer.from([0]), // one byte
      good.subarray(0, 10), // IPFIX header cut short
      Buffer.concat([good.subarray(0, 2), be(good.length + 40, 2), good.subarray(4)]), // length past the datagram
      Buffer.alloc(0), // empty
    ];
    await feed(r, send, garbage.length, ...garbage);
    // Garbage does not make an exporter: nothing is kept for it.
    const newExporters = (): unknown[] => r.logs.filter((l) => l.msg === 'ipfix source: new exporter');
    expect(newExporters()).toEqual([]);
    await feed(r, send, garbage.length + 1, good);
    expect(newExporters()).toHaveLength(1);
    expect(r.records).toEqual([a.record]);
    expect(r.counters.snapshot()).toMatchObject({
      received: garbage.length + 1,
      sent: 1,
      dropped: { parse_failed: garbage.length },
      inFlight: 0,
    });
    // The first loss is logged at once with its cause; the rest are summed for the next interval.
    expect(lossLogs(r)[0]).toMatchObject({
      level: 40,
      dropped: { parse_failed: 1 },
      cause: 'not an IPFIX or NetFlow v9 datagram (version 26725)',
    });
    r.stop$.next();
    await r.done;
    expect(lossLogs(r).reduce((n, l) => n + (l.dropped as { parse_failed: number }).parse_failed, 0)).toBe(
      garbage.length,
    );
  });

  it('keeps the records before a truncated set or record and counts the rest once', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    const b = v4Data(2);
    const whole = dataSet(T_V4, a.bytes);
    const cut = dataSet(T_V4, b.bytes);
    // A set whose length runs past the message.
    const runsPast = Buffer.concat([cut.subarray(0, 2), be(cut.length + 8, 2), cut.subarray(4)]);
    // A record whose variable-length field says more bytes than its set holds.
    const longField = Buffer.from(b.bytes);
    const at = b.bytes.length - 12 - 5; // the length byte of "eth2" in front of the MACs
    longField[at] = 200;
    await feed(
      r,
      send,
      4,
      msg(0, template(T_V4, V4_FIELDS), whole, runsPast),
      msg(1, dataSet(T_V4, a.bytes, longField)),
    );
    expect(r.records).toEqual([a.record, a.record]);
    expect(r.counters.snapshot()).toMatchObject({ received: 4, sent: 2, dropped: { parse_failed: 2 } });
    expect(lossLogs(r)[0]).toMatchObject({
      cause: `IPFIX from 127.0.0.1: set 256 of ${cut.length + 8} bytes runs past its message of ${16 + template(T_V4, V4_FIELDS).length + whole.length + cut.length} bytes`,
    });
  });

  it('drops a record with a value out of its range, as every record from outside, and keeps its neighbours', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    // Protocol sent in two bytes (reduced-size encoding allows it) holding 300.
    const wide = V4_FIELDS.map((f) => (f.ie === 4 ? { ie: 4, length: 2 } : f));
    const at = 4 + 4 + 2 + 2;
    const widen = (bytes: Buffer, protocol: number): Buffer =>
      Buffer.concat([bytes.subarray(0, at), be(protocol, 2), bytes.subarray(at + 1)]);
    await feed(
      r,
      send,
      3,
      msg(0, template(T_V4, wide), dataSet(T_V4, widen(a.bytes, 6), widen(a.bytes, 300), widen(a.bytes, 6))),
    );
    expect(r.records).toEqual([a.record, a.record]);
    expect(r.counters.snapshot()).toMatchObject({ received: 3, sent: 2, dropped: { parse_failed: 1 } });
    expect(lossLogs(r)[0]).toMatchObject({
      cause:
        'IPFIX from 127.0.0.1: a record of template 256: protocolIdentifier is not an integer from 0 to 255: 300',
    });
  });

  it('counts data before its template as parse_failed, then decodes it once the template comes', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    await feed(r, send, 1, msg(0, dataSet(T_V4, a.bytes, a.bytes)));
    expect(r.records).toEqual([]);
    await feed(r, send, 2, msg(2, template(T_V4, V4_FIELDS), dataSet(T_V4, a.bytes)));
    expect(r.records).toEqual([a.record]);
    expect(r.counters.snapshot()).toMatchObject({ received: 2, sent: 1, dropped: { parse_failed: 1 } });
    expect(lossLogs(r)[0]).toMatchObject({
      cause: 'IPFIX from 127.0.0.1: data set of template 256, which is unknown',
    });
  });

  it('forgets a withdrawn template, and all of them on an all-templates withdrawal', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    const c = v6Data(2);
    await feed(
      r,
      send,
      2,
      msg(
        0,
        template(T_V4, V4_FIELDS),
        template(T_V6, V6_FIELDS),
        dataSet(T_V4, a.bytes),
        dataSet(T_V6, c.bytes),
      ),
    );
    // Template 256 withdrawn mid-stream: its data is no longer read, 257's still is.
    await feed(r, send, 4, msg(2, withdrawal(T_V4)), msg(2, dataSet(T_V4, a.bytes), dataSet(T_V6, c.bytes)));
    expect(r.records).toEqual([a.record, c.record, c.record]);
    // Template id 2 with no fields withdraws every (non-options) template of the domain.
    await feed(r, send, 5, msg(3, withdrawal(2)), msg(3, dataSet(T_V6, c.bytes)));
    await feed(r, send, 6, msg(3, template(T_V6, V6_FIELDS), dataSet(T_V6, c.bytes)));
    expect(r.records).toEqual([a.record, c.record, c.record, c.record]);
    expect(r.counters.snapshot()).toMatchObject({ received: 6, sent: 4, dropped: { parse_failed: 2 } });
    expect(lossLogs(r)[0]).toMatchObject({
      cause: 'IPFIX from 127.0.0.1: data set of template 256, which is withdrawn',
    });
    const debug = r.logs.filter((l) => l.msg === 'ipfix source: templates');
    expect(debug.map((l) => [l.learned, l.withdrawn])).toEqual([
      [2, 0],
      [0, 1],
      [0, 1],
      [1, 0],
    ]);
  });

  it('counts an IPFIX sequence gap in records as upstream_lost, and nothing for reordering', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    const two = dataSet(T_V4, a.bytes, a.bytes);
    await feed(r, send, 2, msg(100, template(T_V4, V4_FIELDS), two));
    await feed(r, send, 4, msg(102, two)); // as expected
    await feed(r, send, 11, msg(109, two)); // 105 to 108 never came: 5 records
    await feed(r, send, 13, msg(50, two)); // behind: reordered or restarted, not a loss
    await feed(r, send, 15, msg(52, two)); // expected again after the reset
    expect(r.records).toHaveLength(10);
    expect(r.counters.snapshot()).toMatchObject({ received: 15, sent: 10, dropped: { upstream_lost: 5 } });
    expect(lossLogs(r)[0]).toMatchObject({
      dropped: { upstream_lost: 5 },
      cause: 'IPFIX from 127.0.0.1: sequence number 109, 5 records missing before it',
    });
  });

  it('learns softflowd-style IPFIX sequence numbers (records sent including the message): no false loss, a real gap counted', async () => {
    const r = await start();
    const send = await exporter();
    const a = v4Data(1);
    const records = (n: number): Buffer => dataSet(T_V4, ...Array<Buffer>(n).fill(a.bytes));
    await feed(r, send, 2, msg(2, template(T_V4, V4_FIELDS), records(2)));
    await feed(r, send, 4, msg(4, records(2))); // either style would expect 4
    await feed(r, send, 5, msg(5, records(1))); // only softflowd's: RFC 7011 would expect 6
    await feed(r, send, 8, msg(6, records(1)), msg(8, records(2)));
    await feed(r, send, 12, msg(12, records(2))); // 9 and 10 never came
    expect(r.records).toHaveLength(10);
    expect(r.counters.snapshot()).toMatchObject({ received: 12, sent: 10, dropped: { upstream_lost: 2 } });
  });

  it('accounts for every record of a burst its socket buffer cannot hold: decoded or upstream_lost', async () => {
    const r = await start({ receive_buffer_bytes: 65536 });
    const MESSAGES = 3000;
    const PER = 10;
    // An exporter in another process: a burst while this one's event loop is blocked, so the
    // socket's receive buffer overflows, then one last message once told.
    const child = spawn(
      process.execPath,
      [
        '-e',
        `
const dgram = require('node:dgram');
const s = dgram.createSocket('udp4');
const rec = Buffer.from([10, 0, 0, 1, 10, 0, 0, 2, 0, 0, 0, 7]);
const tpl = Buffer.from([0, 2, 0, 20, 1, 0, 0, 3, 0, 8, 0, 4, 0, 12, 0, 4, 0, 2, 0, 4]);
const message = (seq) => {
  const data = Buffer.concat([Buffer.from([1, 0, 0, 4 + rec.length * ${PER}]), ...Array(${PER}).fill(rec)]);
  const h = Buffer.alloc(16);
  h.writeUInt16BE(10, 0);
  h.writeUInt16BE(16 + tpl.length + data.length, 2);
  h.writeUInt32BE(${EXPORT_S}, 4);
  h.writeUInt32BE(seq * ${PER}, 8);
  return Buffer.concat([h, tpl, data]);
};
let step = 0;
process.stdin.on('data', () => {
  if (step++ === 0) {
    let done = 0;
    for (let i = 0; i < ${MESSAGES}; i++)
      s.send(message(i), ${r.config.port}, '127.0.0.1', () => {
        if (++done === ${MESSAGES}) console.log('sent');
      });
  } else {
    s.send(message(${MESSAGES}), ${r.config.port}, '127.0.0.1', () => process.exit(0));
  }
});
console.log('ready');
`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    let said = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (said += text));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    await waitFor('the exporter to start', () => said.includes('ready'));
    child.stdin.write('go\n');
    // Blocked: nothing is read from the socket while the burst arrives.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
    await waitFor('the burst sent', () => said.includes('sent'));
    // Whatever the socket kept is read at once; then the last message, which shows the gaps.
    await waitFor('the socket drained', () => udpSocket(r.config.port).rxQueue === 0);
    child.stdin.write('last\n');
    await exited;
    const total = (MESSAGES + 1) * PER;
    await waitFor(`${total} records accounted for`, () => r.counters.received >= total, 10_000);
    await waitFor('records emitted', () => r.counters.snapshot().inFlight === 0);
    const lost = r.counters.dropped.get('upstream_lost') ?? 0;
    // The kernel's count of datagrams it dropped on the socket, 10 records each.
    const { drops } = udpSocket(r.config.port);
    expect(drops).toBeGreaterThan(0);
    expect(lost).toBe(drops * PER);
    expect(r.records.length + lost).toBe(total);
    expect(r.counters.snapshot()).toMatchObject({ received: total, sent: r.records.length, inFlight: 0 });
  });

  it('counts a NetFlow v9 sequence gap in export packets, per source id', async () => {
    const r = await start();
    const send = await exporter();
    const fields = [be(300, 2), be(2, 2), be(8, 2), be(4, 2), be(12, 2), be(4, 2)];
    const tpl = set(0, Buffer.concat(fields));
    const data = set(300, Buffer.concat([ipv4('10.0.0.1'), ipv4('10.0.0.2')]));
    const packet = (sequence: number, sourceId: number, ...sets: Buffer[]): Buffer =>
      v9Packet({ count: 1, sysUptimeMs: 1000, unixSecs: EXPORT_S, sequence, sourceId }, ...sets);
    await feed(r, send, 2, packet(1, 1, tpl, data), packet(1, 2, tpl, data));
    await feed(r, send, 4, packet(2, 1, data), packet(2, 2, data));
    await feed(r, send, 7, packet(5, 1, data)); // packets 3 and 4 of source 1 lost
    await feed(r, send, 8, packet(3, 2, data)); // source 2 is whole
    expect(r.records).toHaveLength(6);
    expect(r.counters.snapshot()).toMatchObject({ received: 8, sent: 6, dropped: { upstream_lost: 2 } });
    expect(lossLogs(r)[0]).toMatchObject({
      cause: 'NetFlow v9 from 127.0.0.1: sequence number 5, 2 export packets missing before it',
    });
  });

  it('keeps templates per exporter port: another exporter on the same address has to send its own', async () => {
    const r = await start();
    const first = await exporter();
    const second = await exporter();
    const a = v4Data(1);
    await feed(r, first, 1, msg(0, template(T_V4, V4_FIELDS), dataSet(T_V4, a.bytes)));
    await feed(r, second, 2, msg(0, dataSet(T_V4, a.bytes)));
    expect(r.records).toEqual([a.record]);
    expect(r.counters.snapshot()).toMatchObject({ received: 2, sent: 1, dropped: { parse_failed: 1 } });
  });

  it('listens on IPv6 and, on "::", takes IPv4 exporters too, each with its own exporter address', async () => {
    const r = await start({ address: '::' });
    const send6 = await exporter('udp6');
    const send4 = await exporter('udp4');
    const a = v4Data(1);
    const m = msg(0, template(T_V4, V4_FIELDS), dataSet(T_V4, a.bytes));
    await feed(r, send6, 1, m);
    await feed(r, send4, 2, m);
    const { exporterIPv4Address: _, ...rest } = a.record;
    expect(r.records).toEqual([{ ...rest, exporterIPv6Address: '::1' }, a.record]);
  });

  it("reads what rxflow's ipfix sink writes: every IANA field of every record (drops too), IPv4, IPv6 and tunnelled", async () => {
    const r = await start();
    const sent = Array.from({ length: 300 }, (_, i) => {
      const rec = variedFlowRecord(i);
      if (i % 7 === 1) rec.flowEndReason = 2;
      if (rec.ipVersion === 4 && i % 13 === 6)
        Object.assign(rec, { protocolIdentifier: 1, icmpTypeIPv4: 8, icmpCodeIPv4: 0 });
      if (i % 9 === 5) Object.assign(rec, { droppedPacketDeltaCount: i, droppedOctetDeltaCount: i * 60 });
      return rec;
    });
    await exportTo(r.config.port, sent);
    await waitFor('every record', () => r.records.length >= sent.length);
    const expected = sent.map(ianaView);
    expect(r.records).toEqual(expected);
    expect(r.counters.snapshot()).toMatchObject({ received: sent.length, sent: sent.length, dropped: {} });
  });

  it("with the sink's enterprise_number reads rxflow's own fields back into equal records; under another number or none, the IANA fields alone", async () => {
    const same = await start({ enterprise_number: RXFLOW_PEN });
    const other = await start({ enterprise_number: RXFLOW_PEN + 1 });
    const none = await start();
    const sent = Array.from({ length: 300 }, (_, i) => withRxflowFields(variedFlowRecord(i), i));
    for (const r of [same, other, none]) await exportTo(r.config.port, sent, RXFLOW_PEN);
    for (const r of [same, other, none]) {
      await waitFor('every record', () => r.records.length >= sent.length);
      expect(r.counters.snapshot()).toMatchObject({ received: 300, sent: 300, dropped: {} });
    }
    expect(same.records).toEqual(sent.map((s) => ({ ...ianaView(s), ...rxflowFieldsOf(s) })));
    expect(other.records).toEqual(sent.map(ianaView));
    expect(none.records).toEqual(sent.map(ianaView));
  });

  it('fails with the address when the port is taken', async () => {
    const r = await start();
    const ledger = new Ledger();
    const errors: unknown[] = [];
    ipfixModule
      .build(r.config, {
        id: 'second',
        logger: pino({ level: 'silent' }),
        ledger,
        counters: ledger.stage('second', 'ipfix', 'source'),
      })
      .subscribe({ error: (err) => errors.push(err) });
    await waitFor('the error', () => errors.length > 0);
    expect(errors[0]).toMatchObject({
      name: 'SourceError',
      code: 'EBIND',
      message: `ipfix source udp 127.0.0.1:${r.config.port}: cannot listen: bind EADDRINUSE 127.0.0.1:${r.config.port}; choose a free address and port, or stop what holds it`,
    });
  });
});

describe('pipelines/ipfix-to-kafka.yaml', () => {
  it('validates as shipped, with no variable set: the collector on [::]:4739, Kafka on 127.0.0.1:9092', async () => {
    const pipeline = await loadPipeline('pipelines/ipfix-to-kafka.yaml', { env: {} });
    expect(pipeline.sources.map((s) => [s.type, s.config])).toEqual([
      [
        'ipfix',
        { address: '::', port: 4739, template_timeout_ms: 1_800_000, receive_buffer_bytes: 4_194_304 },
      ],
    ]);
    expect(
      pipeline.sinks.map((s) => [s.type, (s.config as { bootstrap_servers: string[] }).bootstrap_servers]),
    ).toEqual([['kafka', ['127.0.0.1:9092']]]);
  });
});

describe('ipfix decoder', () => {
  it('expires a template not sent again within the timeout', () => {
    const report = newReport();
    const decoder = new IpfixDecoder(60_000, report);
    const exp = newExporter('192.0.2.1');
    const a = v4Data(1);
    const out: FlowRecord[] = [];
    const now = Date.now();
    decoder.decode(msg(0, template(T_V4, V4_FIELDS), dataSet(T_V4, a.bytes)), exp, now, out);
    decoder.decode(msg(1, dataSet(T_V4, a.bytes)), exp, now + 60_000, out);
    expect(out).toHaveLength(2);
    decoder.decode(msg(2, dataSet(T_V4, a.bytes)), exp, now + 60_001, out);
    expect(out).toHaveLength(2);
    expect(report).toMatchObject({
      failed: 1,
      failure: 'IPFIX from 192.0.2.1: data set of template 256, which is expired',
      lost: 0,
    });
  });

  it('sweeps expired templates, then exporters with nothing left and nothing sent within the timeout', () => {
    const decoder = new IpfixDecoder(60_000, newReport());
    const exporters = new Map([
      ['idle', newExporter('192.0.2.1')],
      ['busy', newExporter('192.0.2.2')],
    ]);
    const out: FlowRecord[] = [];
    decoder.decode(msg(0, template(T_V4, V4_FIELDS)), exporters.get('idle')!, 0, out);
    decoder.decode(msg(0, template(T_V4, V4_FIELDS)), exporters.get('busy')!, 0, out);
    decoder.decode(msg(0), exporters.get('busy')!, 60_001, out);
    expect(decoder.sweep(exporters, 60_001)).toBe(1);
    expect([...exporters.keys()]).toEqual(['busy']);
    // Its template expired all the same; the exporter goes once it has been quiet for the timeout.
    decoder.decode(msg(1, dataSet(T_V4, v4Data(1).bytes)), exporters.get('busy')!, 60_002, out);
    expect(out).toEqual([]);
    expect(decoder.sweep(exporters, 120_003)).toBe(1);
    expect(exporters.size).toBe(0);
  });

  it('never throws on mangled messages, and what it decodes from them are whole flow records', () => {
    let seed = 42;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const a = v4Data(1);
    const c = v6Data(2);
    const valid = [
      msg(
        0,
        template(T_V4, V4_FIELDS),
        template(T_V6, V6_FIELDS),
        dataSet(T_V4, a.bytes, a.bytes),
        dataSet(T_V6, c.bytes),
      ),
      msg(
        3,
        set(3, optionsTemplateRecord(T_OPT, 1, OPT_FIELDS)),
        dataSet(T_OPT, Buffer.alloc(20)),
        withdrawal(2),
      ),
      v9Packet(
        { count: 2, sysUptimeMs: 5000, unixSecs: EXPORT_S, sequence: 1, sourceId: 0 },
        set(0, Buffer.from([1, 44, 0, 3, 0, 8, 0, 4, 0, 12, 0, 4, 0, 2, 0, 4])),
        set(300, Buffer.concat([ipv4('10.0.0.1'), ipv4('10.0.0.2'), be(5, 4)])),
      ),
    ];
    const decoder = new IpfixDecoder(60_000, newReport());
    const exp = newExporter('192.0.2.1');
    let records = 0;
    const now = Date.now();
    for (let i = 0; i < 5000; i++) {
      const m = Buffer.from(valid[rand(valid.length)]!);
      for (let flips = 1 + rand(4); flips > 0; flips--) m[rand(m.length)] = rand(256);
      const cut = rand(3) === 0 ? m.subarray(0, rand(m.length + 1)) : m;
      const out: FlowRecord[] = [];
      expect(() => decoder.decode(cut, exp, now + i, out)).not.toThrow();
      for (const r of out) expect(flowRecordProblem(r, now + i)).toBeUndefined();
      records += out.length;
    }
    // Most flips land in values, not structure: records do come out of the mangled messages.
    expect(records).toBeGreaterThan(1000);
  });

  it('reads layer2OctetDeltaCount (352), dot1qVlanId (243, else vlanId 58) and dot1qCustomerVlanId (245)', () => {
    const report = newReport();
    const decoder = new IpfixDecoder(60_000, report);
    const exp = newExporter('192.0.2.1');
    const fields: Field[] = [
      { ie: 8, length: 4 },
      { ie: 12, length: 4 },
      { ie: 1, length: 4 },
      { ie: 2, length: 4 },
      { ie: 352, length: 8 },
      { ie: 243, length: 2 },
      { ie: 245, length: 2 },
      { ie: 152, length: 8 },
      { ie: 153, length: 8 },
    ];
    // vlanId (58) alone, as NetFlow v9 exporters send it.
    const v58: Field[] = [
      { ie: 8, length: 4 },
      { ie: 12, length: 4 },
      { ie: 58, length: 2 },
      { ie: 152, length: 8 },
    ];
    const start = 1_780_000_000_000;
    const out: FlowRecord[] = [];
    decoder.decode(
      msg(
        0,
        template(300, fields),
        template(301, v58),
        dataSet(
          300,
          Buffer.concat([
            ipv4('10.0.0.1'),
            ipv4('10.0.0.2'),
            be(1000, 4),
            be(10, 4),
            be(1180, 8),
            be(100, 2),
            be(7, 2),
            be(start, 8),
            be(start + 5, 8),
          ]),
          Buffer.concat([
            ipv4('10.0.0.3'),
            ipv4('10.0.0.4'),
            be(200, 4),
            be(2, 4),
            be(228, 8),
            be(0, 2),
            be(0, 2),
            be(start, 8),
            be(start, 8),
          ]),
        ),
        dataSet(301, Buffer.concat([ipv4('10.0.0.5'), ipv4('10.0.0.6'), be(42, 2), be(start, 8)])),
      ),
      exp,
      start + 1000,
      out,
    );
    expect(report).toMatchObject({ failed: 0, lost: 0 });
    expect(
      out.map((r) => [
        r.sourceIPv4Address,
        r.octetDeltaCount,
        r.layer2OctetDeltaCount,
        r.dot1qVlanId,
        r.dot1qCustomerVlanId,
      ]),
    ).toEqual([
      ['10.0.0.1', 1000, 1180, 100, 7],
      ['10.0.0.3', 200, 228, undefined, undefined],
      ['10.0.0.5', 0, undefined, 42, undefined],
    ]);
  });

  it("reads rxflow's elements under its number in any size, as presentElements says or else all but empty strings; skips other enterprises'", () => {
    const report = newReport();
    // Addresses and times, then rxflow's elements.
    const head: Field[] = [8, 12].map((ie) => ({ ie, length: 4 }));
    head.push(...[152, 153].map((ie) => ({ ie, length: 8 })));
    // Without presentElements: the RTT in 2 bytes, the code in 2, a string of fixed length, and
    // elements it does not know: its own id 40, and id 2 of another enterprise.
    const rx = (ie: number, length: number): Field => ({ ie, length, enterprise: RXFLOW_PEN });
    const bare: Field[] = [...head, rx(2, 2), rx(7, 2), rx(8, 0xffff), rx(11, 8), rx(40, 4)];
    bare.push({ ie: 2, length: 4, enterprise: PEN });
    // With it: what it does not mark is absent, whatever the bytes.
    const flagged: Field[] = [...head, rx(1, 4), rx(5, 4), rx(6, 2), rx(9, 0xffff)];
    const start = 1_780_000_000_000;
    const at = (i: number): Buffer =>
      Buffer.concat([ipv4(`10.0.0.${i}`), ipv4('10.0.1.1'), be(start, 8), be(start + 5, 8)]);
    const bareRecord = (i: number, drop: string): Buffer =>
      Buffer.concat([
        at(i),
        be(500 + i, 2),
        be(3, 2),
        variable(Buffer.from(drop)),
        Buffer.from('ns-green'),
        be(77, 4),
        be(99, 4),
      ]);
    const out: FlowRecord[] = [];
    new IpfixDecoder(60_000, report, RXFLOW_PEN).decode(
      msg(
        0,
        template(400, bare),
        template(401, flagged),
        dataSet(400, bareRecord(1, 'NO_SOCKET'), bareRecord(2, ''), bareRecord(3, 'bad\nreason')),
        dataSet(
          401,
          Buffer.concat([
            at(4),
            be((1 << 5) | (1 << 6) | (1 << 9), 4),
            be(730, 4),
            be(0, 2),
            variable(Buffer.from('')),
          ]),
          Buffer.concat([at(5), be(1 << 6, 4), be(730, 4), be(4660, 2), variable(Buffer.from('SYN_SENT'))]),
        ),
      ),
      newExporter('192.0.2.1'),
      start + 1000,
      out,
    );
    const own = (r: FlowRecord): unknown[] => [r.sourceIPv4Address, rxflowFieldsOf(r)];
    expect(out.map(own)).toEqual([
      [
        '10.0.0.1',
        {
          tcpHandshakeRttMicroseconds: 501,
          dnsResponseCode: 3,
          dropReason: 'NO_SOCKET',
          networkNamespace: 'ns-green',
        },
      ],
      ['10.0.0.2', { tcpHandshakeRttMicroseconds: 502, dnsResponseCode: 3, networkNamespace: 'ns-green' }],
      ['10.0.0.4', { dnsLatencyMicroseconds: 730, dnsTransactionId: 0, tcpState: '' }],
      ['10.0.0.5', { dnsTransactionId: 4660 }],
    ]);
    // A string that is no record field's: the record is dropped, as every record from outside.
    expect(report).toMatchObject({
      failed: 1,
      failure:
        'IPFIX from 192.0.2.1: a record of template 400: dropReason holds a control character: "bad\\nreason"',
    });
    // The same messages without the number: the IANA fields alone.
    const plain: FlowRecord[] = [];
    const second = newReport();
    new IpfixDecoder(60_000, second).decode(
      msg(0, template(400, bare), dataSet(400, bareRecord(1, 'NO_SOCKET'), bareRecord(3, 'bad\nreason'))),
      newExporter('192.0.2.1'),
      start + 1000,
      plain,
    );
    expect(plain.map(own)).toEqual([
      ['10.0.0.1', {}],
      ['10.0.0.3', {}],
    ]);
    expect(second.failed).toBe(0);
  });

  it("does not keep a template with one of rxflow's numbers longer than 8 bytes", () => {
    const report = newReport();
    const out: FlowRecord[] = [];
    new IpfixDecoder(60_000, report, RXFLOW_PEN).decode(
      msg(
        0,
        template(402, [
          { ie: 8, length: 4 },
          { ie: 12, length: 4 },
          { ie: 5, length: 9, enterprise: RXFLOW_PEN },
        ]),
      ),
      newExporter('192.0.2.1'),
      0,
      out,
    );
    expect(report).toMatchObject({
      failed: 1,
      failure:
        'IPFIX from 192.0.2.1: template 402 not usable: element 5 of enterprise 32473 (dnsLatencyMicroseconds) has length 9',
    });
  });

  it('does not keep a template whose address element has the wrong length', () => {
    const report = newReport();
    const decoder = new IpfixDecoder(60_000, report);
    const out: FlowRecord[] = [];
    const bad = V4_FIELDS.map((f) => (f.ie === 8 ? { ie: 8, length: 16 } : f));
    decoder.decode(
      msg(0, template(T_V4, bad), dataSet(T_V4, Buffer.alloc(200))),
      newExporter('192.0.2.1'),
      0,
      out,
    );
    expect(out).toEqual([]);
    expect(report).toMatchObject({
      failed: 2,
      failure: 'IPFIX from 192.0.2.1: data set of template 256, which is unknown',
    });
  });
});
