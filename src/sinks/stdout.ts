/**
 * `stdout`: prints flow records, one per line, as JSON (IPFIX names) or as a compact text line
 * for people:
 *
 *   2023-11-14T22:13:21.000Z eth0 ingress tcp 10.0.0.1:40000 -> 10.0.0.2:443 packets=3 bytes=1500 flags=SYN,ACK
 *
 * Each batch is one write. When the reader of stdout is slower than the flows (a pager, a slow
 * pipe), up to buffer_max_records wait for it; the pipeline's buffer in front of the sink applies
 * when_full to what arrives beyond that (src/sinks/buffer.ts). A closed pipe (EPIPE) is logged once, and from then on
 * records count as `sink_failed` instead of crashing the process.
 */
import type { Writable } from 'node:stream';
import { asyncScheduler, type Observable } from 'rxjs';
import type { ComponentContext, JsonSchema, Sink, SinkModule, WhenFull } from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import { flowInterface, type FlowBatch, type FlowRecord } from '../records/flow.js';
import { messageOf } from '../errors.js';
import { bufferOptions, bufferSettings, type BufferSettings } from './buffer.js';
import { SinkInput, throughBuffer } from './consume.js';
import { LossLog } from '../delivery/loss-log.js';

export type StdoutFormat = 'json' | 'text';

export interface StdoutSinkConfig {
  format?: StdoutFormat;
  buffer_max_records?: number;
  when_full?: Exclude<WhenFull, 'drop_oldest'>;
}

type Resolved = Required<Omit<StdoutSinkConfig, 'when_full'>>;

const DEFAULTS = { format: 'json', buffer_max_records: 100_000 } as const satisfies StdoutSinkConfig;

const LOSS_LOG_INTERVAL_MS = 10_000;

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    format: {
      enum: ['json', 'text'],
      default: DEFAULTS.format,
      description: 'json: one JSON object per line with IPFIX names; text: a compact line for people.',
    },
    ...bufferOptions({
      maxRecords: DEFAULTS.buffer_max_records,
      maximum: 16777216,
      choices: ['drop_newest', 'block'],
      held: 'waiting for a slow reader',
    }),
  },
};

const PROTOCOL_NAMES: Record<number, string> = {
  1: 'icmp',
  6: 'tcp',
  17: 'udp',
  47: 'gre',
  58: 'icmpv6',
  132: 'sctp',
};
const TCP_FLAGS = ['FIN', 'SYN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR'] as const;

function endpoint(address: string | undefined, port: number, v6: boolean, withPort: boolean): string {
  const a = address ?? '?';
  if (!withPort) return a;
  return v6 ? `[${a}]:${port}` : `${a}:${port}`;
}

function tcpFlags(bits: number): string {
  const names: string[] = [];
  for (let i = 0; i < TCP_FLAGS.length; i++) if (bits & (1 << i)) names.push(TCP_FLAGS[i]!);
  return names.join(',');
}

/** "100", or "100.200" for QinQ (outer id, then the customer id). */
function vlanText(r: FlowRecord): string {
  return r.dot1qCustomerVlanId === undefined
    ? String(r.dot1qVlanId)
    : `${r.dot1qVlanId}.${r.dot1qCustomerVlanId}`;
}

/**
 * The text format's line for a record, without the newline. bytes= is octetDeltaCount (IP octets)
 * for an IP flow and layer2OctetDeltaCount (frame octets) for a layer-2 flow, which has no IP.
 */
export function textLine(r: FlowRecord): string {
  if (r.ipVersion === 0) {
    return `${new Date(r.flowEndMilliseconds).toISOString()} ${r.interfaceName ?? `if${flowInterface(r)}`} ${
      r.flowDirection === 1 ? 'egress' : 'ingress'
    } ethertype=0x${r.ethernetType.toString(16).padStart(4, '0')} ${r.sourceMacAddress} -> ${r.destinationMacAddress} packets=${r.packetDeltaCount} bytes=${
      r.layer2OctetDeltaCount ?? r.octetDeltaCount
    }${r.dot1qVlanId === undefined ? '' : ` vlan=${vlanText(r)}`}`;
  }
  const v6 = r.ipVersion === 6;
  const icmp = r.protocolIdentifier === 1 || r.protocolIdentifier === 58;
  const src = endpoint(v6 ? r.sourceIPv6Address : r.sourceIPv4Address, r.sourceTransportPort, v6, !icmp);
  const dst = endpoint(
    v6 ? r.destinationIPv6Address : r.destinationIPv4Address,
    r.destinationTransportPort,
    v6,
    !icmp,
  );
  let line = `${new Date(r.flowEndMilliseconds).toISOString()} ${r.interfaceName ?? `if${flowInterface(r)}`} ${
    r.flowDirection === 1 ? 'egress' : 'ingress'
  } ${PROTOCOL_NAMES[r.protocolIdentifier] ?? `proto${r.protocolIdentifier}`} ${src} -> ${dst} packets=${r.packetDeltaCount} bytes=${r.octetDeltaCount}`;
  if (icmp) {
    const type = v6 ? r.icmpTypeIPv6 : r.icmpTypeIPv4;
    const code = v6 ? r.icmpCodeIPv6 : r.icmpCodeIPv4;
    if (type !== undefined) line += ` type=${type} code=${code ?? 0}`;
  }
  if (r.protocolIdentifier === 6 && r.tcpControlBits !== 0) line += ` flags=${tcpFlags(r.tcpControlBits)}`;
  if (r.dot1qVlanId !== undefined) line += ` vlan=${vlanText(r)}`;
  if (r.encapsulationType !== undefined)
    line += ` ${r.encapsulationType} vni=${r.virtualNetworkIdentifier ?? 0}`;
  if (r.duplicate === true) line += ' duplicate';
  return line;
}

export class StdoutSink implements Sink {
  private readonly config: Resolved;
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly losses: LossLog;
  private readonly context: ComponentContext;
  private readonly buffer: BufferSettings;
  private tail: Promise<void> = Promise.resolve();
  private broken: Error | undefined;
  private readonly input = new SinkInput();
  private closed: Promise<void> | undefined;
  private readonly onError = (err: Error): void => {
    if (this.broken) return;
    this.broken = err;
    this.logger.error({ err }, `stdout sink: cannot write: ${err.message}; records are dropped from now on`);
  };

  constructor(
    config: StdoutSinkConfig,
    context: ComponentContext,
    private readonly out: Writable = process.stdout,
  ) {
    this.config = { ...DEFAULTS, ...config };
    this.context = context;
    this.buffer = bufferSettings(this.config);
    this.counters = context.counters;
    this.logger = context.logger;
    this.losses = new LossLog(
      this.logger,
      'stdout sink: records dropped',
      LOSS_LOG_INTERVAL_MS,
      context.scheduler ?? asyncScheduler,
    );
  }

  consume(input: Observable<FlowBatch>): Promise<void> {
    const refused = this.input.claim('stdout sink', this.closed !== undefined);
    if (refused) return Promise.reject(refused);
    // Without a listener an EPIPE would be thrown as an uncaught 'error' event.
    this.out.on('error', this.onError);
    return this.input.start(
      throughBuffer(input, this.context, this.buffer, this),
      (batch) => this.accept(batch),
      () => this.flush(),
    );
  }

  flush(): Promise<void> {
    return this.tail;
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      this.input.stop();
      await this.tail;
      this.out.off('error', this.onError);
      this.losses.close();
      this.input.end();
    })();
    return this.closed;
  }

  private accept(batch: FlowBatch): void {
    if (batch.length === 0) return;
    const format = this.config.format === 'json' ? (r: FlowRecord) => JSON.stringify(r) : textLine;
    let text = '';
    for (const r of batch) text += `${format(r)}\n`;
    this.tail = this.tail.then(() => this.write(text, batch.length));
  }

  private async write(text: string, records: number): Promise<void> {
    try {
      if (this.broken) throw this.broken;
      // One write at a time, each waiting for the stream to take the previous one: the backlog of
      // a slow reader stays here, bounded and counted, not in the stream's unbounded buffer.
      await new Promise<void>((resolve, reject) => {
        this.out.write(text, (err) => (err ? reject(err) : resolve()));
      });
      this.counters.addSent(records);
    } catch (err) {
      this.counters.addDropped('sink_failed', records);
      this.losses.add('sink_failed', records, messageOf(err));
    }
  }
}

const stdoutModule: SinkModule<StdoutSinkConfig> = {
  type: 'stdout',
  kind: 'sink',
  buffered: true,
  description: 'Prints flow records to standard output, as JSON lines or compact text.',
  schema,
  example: { format: 'text' },
  build(config: StdoutSinkConfig, context: ComponentContext): Sink {
    return new StdoutSink(config, context);
  },
};

export default stdoutModule;
