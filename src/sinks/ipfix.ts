/**
 * `ipfix`: exports flow records to an IPFIX collector (RFC 7011) over UDP or TCP, so the tools
 * IPFIX users already run (nfdump, pmacct, goflow2, Wireshark) read rxflow's flows. Records are
 * encoded on IANA elements; with `enterprise_number` set they also carry rxflow's own fields (RTT,
 * DNS, drop reason, TCP state, network namespace), which IANA has no elements for, as
 * enterprise-specific elements under that number. Templates, what each carries and rxflow's
 * element ids are in ipfix/encode.ts.
 *
 * UDP: every message fits one datagram of max_message_bytes (default 1472 bytes to an IPv4
 * collector, 1452 to an IPv6 one: an Ethernet path MTU of 1500 less the IP and UDP headers).
 * Templates go out in the first message and again every template_refresh_ms and every
 * template_refresh_messages messages, since a collector that starts late (or restarts) learns them
 * only from a refresh. A record counts as exported when the kernel took its datagram; UDP says
 * nothing of the way after that, and the collector tells losses from the sequence numbers.
 *
 * TCP: one session; templates at its start, the withdrawal of every template before it ends at
 * shutdown. While the collector cannot be reached the sink reconnects (backing off from
 * reconnect_backoff_ms to 30 s) and holds up to buffer_max_records; the pipeline's buffer in front
 * of the sink applies when_full beyond it (newer ones dropped as `sink_buffer_full`, or the sources
 * held). A message counts as exported once the socket has written it; a message whose
 * write failed goes out again, re-encoded, on the next session (its bytes never reached the
 * collector whole, and a collector drops a torn message). What the kernel had written but the
 * collector never read when a session breaks cannot be known over TCP. A collector that is down
 * holds up neither the end of the input nor a stop: what is still held at the drain deadline (10 s
 * after the input ended by itself) counts as `shutdown`.
 *
 * Sequence numbers count the data records sent before each message, per observation domain and
 * (for TCP) per session, as RFC 7011 section 3.1 defines.
 */
import dgram from 'node:dgram';
import { lookup } from 'node:dns/promises';
import net from 'node:net';
import { asyncScheduler, type Observable, type SchedulerLike } from 'rxjs';
import type {
  ComponentContext,
  HealthReporter,
  JsonSchema,
  Sink,
  SinkModule,
  WhenFull,
} from '../component.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import type { FlowBatch, FlowRecord } from '../records/flow.js';
import { messageOf } from '../errors.js';
import { bufferOptions, bufferSettings, type BufferSettings } from './buffer.js';
import { SinkInput, throughBuffer } from './consume.js';
import { SinkError } from './errors.js';
import { MAX_MESSAGE_BYTES, MESSAGE_HEADER_BYTES, MessageBuilder, templateSetBytes } from './ipfix/encode.js';
import { rxflowElementsText } from '../records/rxflow-elements.js';
import { beforeDeadline } from '../delivery/deadline.js';
import { LossLog } from '../delivery/loss-log.js';

export type IpfixTransport = 'udp' | 'tcp';

export interface IpfixSinkConfig {
  /** host:port of the collector; an IPv6 address in brackets: [2001:db8::1]:4739. */
  collector: string;
  transport?: IpfixTransport;
  observation_domain_id?: number;
  max_message_bytes?: number;
  template_refresh_ms?: number;
  template_refresh_messages?: number;
  buffer_max_records?: number;
  when_full?: Exclude<WhenFull, 'drop_oldest'>;
  reconnect_backoff_ms?: number;
  /** A Private Enterprise Number: rxflow's own fields go out as its elements; unset, IANA elements only. */
  enterprise_number?: number;
}

/** What the sink runs with: the defaults filled in; no default for these. */
type Resolved = Required<Omit<IpfixSinkConfig, 'max_message_bytes' | 'when_full' | 'enterprise_number'>> & {
  max_message_bytes?: number;
  enterprise_number?: number;
};

const DEFAULTS = {
  transport: 'udp',
  observation_domain_id: 1,
  template_refresh_ms: 60_000,
  template_refresh_messages: 1_000,
  buffer_max_records: 100_000,
  reconnect_backoff_ms: 500,
} as const satisfies Partial<IpfixSinkConfig>;

const MAX_BACKOFF_MS = 30_000;
/** close() with no deadline (the input ended by itself) waits this long for a collector. */
const CLOSE_TIMEOUT_MS = 10_000;
const LOSS_LOG_INTERVAL_MS = 10_000;
/** An Ethernet path MTU less the IPv4 (20) or IPv6 (40) header and UDP's 8. */
const UDP_MESSAGE_BYTES = { 4: 1472, 6: 1452 } as const;
const DAY_MS = 86_400_000;

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['collector'],
  properties: {
    collector: {
      type: 'string',
      minLength: 3,
      maxLength: 300,
      description: 'The collector as host:port; an IPv6 address in brackets, e.g. [2001:db8::1]:4739.',
    },
    transport: {
      enum: ['udp', 'tcp'],
      default: DEFAULTS.transport,
      description:
        'udp: one datagram per message, templates refreshed; tcp: one session, reconnected, records held while it is down.',
    },
    observation_domain_id: {
      type: 'integer',
      minimum: 0,
      maximum: 4_294_967_295,
      default: DEFAULTS.observation_domain_id,
      description: 'Observation domain id in every message header; sequence numbers are kept per domain.',
    },
    max_message_bytes: {
      type: 'integer',
      minimum: 512,
      maximum: MAX_MESSAGE_BYTES,
      description:
        'Largest message. Default: udp 1472 to an IPv4 collector and 1452 to an IPv6 one (an Ethernet path MTU); tcp 65535.',
    },
    template_refresh_ms: {
      type: 'integer',
      minimum: 1_000,
      maximum: DAY_MS,
      default: DEFAULTS.template_refresh_ms,
      description: 'udp: templates are sent again at least this often.',
    },
    template_refresh_messages: {
      type: 'integer',
      minimum: 1,
      maximum: 1_000_000,
      default: DEFAULTS.template_refresh_messages,
      description: 'udp: templates are sent again at least every this many messages.',
    },
    ...bufferOptions({
      maxRecords: DEFAULTS.buffer_max_records,
      maximum: 10_000_000,
      choices: ['drop_newest', 'block'],
      held: 'waiting to be sent',
    }),
    reconnect_backoff_ms: {
      type: 'integer',
      minimum: 10,
      maximum: MAX_BACKOFF_MS,
      default: DEFAULTS.reconnect_backoff_ms,
      description: 'tcp: first wait before reconnecting; doubles on each failure up to 30 s.',
    },
    enterprise_number: {
      type: 'integer',
      minimum: 1,
      maximum: 4_294_967_295,
      description:
        "A Private Enterprise Number (IANA's registry) under which records also carry rxflow's own fields, which IANA has no elements for: " +
        `${rxflowElementsText()}. ` +
        "Templates then take ids 512-516. rxflow has no number of its own: use your organisation's, and the same on the collector (an rxflow ipfix source reads them back with the same number). Unset: IANA elements only.",
    },
  },
};

/** host:port or [v6]:port into its parts; undefined when it is neither. */
export function parseCollector(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1] ?? m[2]!, port };
}

/** Where a message's records end in the queue: batch index and record index; and those it left out. */
interface Taken {
  batches: number;
  head: number;
  records: number;
  bad: Set<FlowRecord> | undefined;
}

/** Sends finished messages; one at a time, so the encoder's buffer is free again when it resolves. */
interface Transport {
  /** Resolves once the message is handed to the kernel, rejects when it was not. */
  send(message: Buffer): Promise<void>;
  close(): void;
}

class UdpTransport implements Transport {
  private readonly socket: dgram.Socket;

  constructor(
    family: 4 | 6,
    private readonly address: string,
    private readonly port: number,
  ) {
    this.socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    // A send error is reported to the send callback; this only keeps an ICMP error from throwing.
    this.socket.on('error', () => undefined);
  }

  send(message: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.send(message, this.port, this.address, (err) => (err ? reject(err) : resolve()));
    });
  }

  close(): void {
    this.socket.close();
  }
}

/** Turns records into messages and keeps the sequence numbers and template schedule of one stream. */
class Exporter {
  readonly builder: MessageBuilder;
  sequence = 0;
  private messagesSinceTemplates = 0;
  private templatesAt = Number.NEGATIVE_INFINITY;
  /** The last message held the templates alone: the next goes without them, whatever is due. */
  private templatesAlone = false;

  constructor(
    maxBytes: number,
    private readonly config: Resolved,
    private readonly scheduler: SchedulerLike,
  ) {
    this.builder = new MessageBuilder(maxBytes, config.enterprise_number);
  }

  /** A new stream (a TCP session): sequence from 0, templates first. */
  restart(): void {
    this.sequence = 0;
    this.templatesAt = Number.NEGATIVE_INFINITY;
    this.templatesAlone = false;
  }

  /** Starts a message; templates go first when due. */
  begin(): void {
    const now = this.scheduler.now();
    const due =
      !this.templatesAlone &&
      (this.messagesSinceTemplates >= this.config.template_refresh_messages ||
        now - this.templatesAt >= this.config.template_refresh_ms);
    this.builder.begin(due);
    if (due) {
      this.templatesAt = now;
      this.messagesSinceTemplates = 0;
    }
    this.messagesSinceTemplates++;
  }

  /** Completes the message; the sequence moves past its records. */
  finish(): Buffer {
    const seconds = Math.floor(Date.now() / 1000);
    const message = this.builder.finish(seconds, this.sequence, this.config.observation_domain_id);
    this.templatesAlone = this.builder.records === 0;
    this.sequence = (this.sequence + this.builder.records) % 2 ** 32;
    return message;
  }

  /** A message that withdraws every template. */
  withdrawal(): Buffer {
    this.builder.withdrawal();
    return this.builder.finish(
      Math.floor(Date.now() / 1000),
      this.sequence,
      this.config.observation_domain_id,
    );
  }
}

export class IpfixSink implements Sink {
  private readonly config: Resolved;
  private readonly counters: StageCounters;
  private readonly logger: Logger;
  private readonly losses: LossLog;
  private readonly scheduler: SchedulerLike;
  private readonly health: HealthReporter | undefined;
  private readonly context: ComponentContext;
  private readonly buffer: BufferSettings;
  private readonly target: { host: string; port: number };
  /** Records waiting, oldest first; `head` is the first not yet sent of queue[0]. */
  private readonly queue: FlowBatch[] = [];
  private head = 0;
  private pending = 0;
  private exporter: Exporter | undefined;
  private udp: UdpTransport | undefined;
  private tcp: TcpSession | undefined;
  private pump: Promise<void> = Promise.resolve();
  private pumping = false;
  private wake: (() => void) | undefined;
  private idle: Promise<void> = Promise.resolve();
  private settleIdle: (() => void) | undefined;
  private readonly input = new SinkInput();
  private closed: Promise<void> | undefined;
  private stopping = false;

  constructor(config: IpfixSinkConfig, context: ComponentContext) {
    this.config = { ...DEFAULTS, ...config };
    this.context = context;
    this.buffer = bufferSettings(this.config);
    this.counters = context.counters;
    this.logger = context.logger;
    this.scheduler = context.scheduler ?? asyncScheduler;
    this.health = context.health;
    const target = parseCollector(config.collector);
    if (!target) {
      throw new SinkError(
        'ECONFIG',
        `ipfix sink: collector '${config.collector}' is not host:port (an IPv6 address in brackets: [2001:db8::1]:4739)`,
      );
    }
    this.target = target;
    this.losses = new LossLog(
      this.logger,
      `ipfix sink ${config.collector}: records dropped`,
      LOSS_LOG_INTERVAL_MS,
      this.scheduler,
    );
  }

  /** Resolves the collector's address first: a name that does not resolve fails here. */
  async consume(input: Observable<FlowBatch>): Promise<void> {
    const refused = this.input.claim('ipfix sink', this.closed !== undefined);
    if (refused) throw refused;
    let resolved: { address: string; family: number };
    try {
      resolved = await lookup(this.target.host);
    } catch (err) {
      throw new SinkError(
        'ERESOLVE',
        `ipfix sink: cannot resolve collector '${this.target.host}': ${messageOf(err)}; check the name or give an address`,
        { cause: err },
      );
    }
    const family = resolved.family === 6 ? 6 : 4;
    const maxBytes =
      this.config.max_message_bytes ??
      (this.config.transport === 'udp' ? UDP_MESSAGE_BYTES[family] : MAX_MESSAGE_BYTES);
    const tooSmall = messageRoomProblem(maxBytes, this.config.enterprise_number);
    if (tooSmall !== undefined) throw new SinkError('ECONFIG', `ipfix sink: ${tooSmall}`);
    this.exporter = new Exporter(maxBytes, this.config, this.scheduler);
    if (this.config.transport === 'udp') {
      this.udp = new UdpTransport(family, resolved.address, this.target.port);
    } else {
      this.tcp = new TcpSession(
        resolved.address,
        this.target.port,
        this.config.reconnect_backoff_ms,
        this.logger,
        {
          connected: () => {
            this.exporter!.restart();
            this.health?.healthy();
            this.kick();
          },
          failed: (err) =>
            this.health?.degraded(
              `ipfix collector ${this.config.collector} unreachable: ${messageOf(err)}; records are held up to buffer_max_records`,
            ),
        },
      );
    }
    return this.input.start(
      throughBuffer(input, this.context, this.buffer, this),
      (batch) => this.accept(batch),
      () => this.flush(),
    );
  }

  /**
   * Resolves when every record accepted so far is sent or counted, or (TCP) when there is no
   * session: a collector that is down holds up neither the input's end nor a stop; close() gives
   * it until the deadline.
   */
  flush(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return this.tcp ? Promise.race([this.idle, this.tcp.down()]) : this.idle;
  }

  /** Without a deadline, waits up to CLOSE_TIMEOUT_MS for what is held to go out. */
  close(timeoutMs = CLOSE_TIMEOUT_MS): Promise<void> {
    this.closed ??= (async () => {
      this.input.stop();
      await beforeDeadline(this.pending === 0 ? Promise.resolve() : this.idle, timeoutMs, this.scheduler);
      this.stopping = true;
      // Past the deadline a write may be waiting on a collector that does not read: end it.
      if (this.pending > 0) this.tcp?.close();
      this.wake?.();
      await this.pump;
      this.dropQueued('shutdown', 'not sent before the shutdown deadline');
      if (this.tcp) {
        if (this.tcp.connected && this.exporter)
          await this.tcp.send(this.exporter.withdrawal()).catch(() => undefined);
        this.tcp.close();
      }
      this.udp?.close();
      this.losses.close();
      this.input.end();
    })();
    return this.closed;
  }

  private accept(batch: FlowBatch): void {
    if (batch.length === 0) return;
    if (this.pending === 0) this.idle = new Promise((resolve) => (this.settleIdle = resolve));
    this.pending += batch.length;
    this.queue.push(batch);
    this.kick();
  }

  private kick(): void {
    if (this.wake) {
      const wake = this.wake;
      this.wake = undefined;
      wake();
    }
    if (!this.pumping && this.exporter) {
      this.pumping = true;
      this.pump = this.run().finally(() => (this.pumping = false));
    }
  }

  /** Sends messages while records wait; waits for a session when TCP has none. */
  private async run(): Promise<void> {
    const exporter = this.exporter!;
    while (this.pending > 0 && !this.stopping) {
      if (this.tcp && !this.tcp.connected) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      exporter.begin();
      const taken = this.fill(exporter.builder);
      if (taken.records === 0) {
        // The next record has long strings and did not fit beside the templates: they go alone,
        // and it in the next message. Otherwise everything looked at was unencodable, and counted.
        if (exporter.builder.hasTemplates) await this.sendTemplatesAlone(exporter);
        continue;
      }
      const message = exporter.finish();
      try {
        await (this.tcp ?? this.udp!).send(message);
        this.consumeSent(taken);
        this.counters.addSent(taken.records);
      } catch (err) {
        if (this.tcp) {
          // Not written whole: the records go out again, re-encoded, on the next session.
          this.tcp.broken(err);
          this.requeue(taken);
          continue;
        }
        this.consumeSent(taken);
        this.counters.addDropped('sink_failed', taken.records);
        this.losses.add('sink_failed', taken.records, messageOf(err));
      }
      this.settle(taken.records);
    }
  }

  /** Sends the message of templates alone; a TCP session it fails on is over, as for any message. */
  private async sendTemplatesAlone(exporter: Exporter): Promise<void> {
    try {
      await (this.tcp ?? this.udp!).send(exporter.finish());
    } catch (err) {
      this.tcp?.broken(err);
      if (!this.tcp) this.logger.debug({ err: messageOf(err) }, 'ipfix sink: templates not sent');
    }
  }

  /**
   * Encodes queued records from the head into the builder's message without removing them;
   * returns how far it got. Records that cannot be encoded are counted and skipped.
   */
  private fill(builder: MessageBuilder): Taken {
    let b = 0;
    let i = this.head;
    let bad: Set<FlowRecord> | undefined;
    outer: for (; b < this.queue.length; b++, i = 0) {
      const batch = this.queue[b]!;
      for (; i < batch.length; i++) {
        const added = builder.add(batch[i]!);
        if (added === 0) break outer;
        if (added < 0) {
          (bad ??= new Set()).add(batch[i]!);
          this.logger.debug({ record: batch[i] }, 'ipfix sink: record cannot be encoded');
        }
      }
    }
    const taken: Taken = { batches: b, head: i, records: builder.records, bad };
    if (bad !== undefined) {
      this.counters.addDropped('sink_failed', bad.size);
      this.losses.add(
        'sink_failed',
        bad.size,
        "a record cannot be encoded as IPFIX (an address, MAC or value out of its element's range, or a record too long for a message)",
      );
      this.settle(bad.size);
      // Only unencodable records were looked at: take them off the queue now.
      if (builder.records === 0) this.consumeSent(taken);
    }
    return taken;
  }

  /** Puts what a failed message carried back at the front of the queue, without its unencodable records. */
  private requeue(taken: Taken): void {
    const again: FlowRecord[] = [];
    let i = this.head;
    for (let b = 0; b <= taken.batches && b < this.queue.length; b++, i = 0) {
      const batch = this.queue[b]!;
      const end = b === taken.batches ? taken.head : batch.length;
      for (; i < end; i++) if (!taken.bad?.has(batch[i]!)) again.push(batch[i]!);
    }
    this.consumeSent(taken);
    if (this.head > 0) {
      this.queue[0] = this.queue[0]!.slice(this.head);
      this.head = 0;
    }
    this.queue.unshift(again);
  }

  /** Removes what fill() encoded from the queue. */
  private consumeSent(taken: Taken): void {
    this.queue.splice(0, taken.batches);
    this.head = taken.head;
    if (this.queue.length > 0 && this.head >= this.queue[0]!.length) {
      this.queue.shift();
      this.head = 0;
    }
  }

  private settle(records: number): void {
    this.pending -= records;
    if (this.pending === 0) this.settleIdle?.();
  }

  private dropQueued(reason: 'shutdown', cause: string): void {
    if (this.pending === 0) return;
    const n = this.pending;
    this.queue.length = 0;
    this.head = 0;
    this.counters.addDropped(reason, n);
    this.losses.add(reason, n, cause);
    this.settle(n);
  }
}

/** One TCP session to the collector at a time, reconnected with backoff while the sink runs. */
class TcpSession {
  connected = false;
  /** Settles when the current session ends (or at once while there is none). */
  private ended: Promise<void> = Promise.resolve();
  private endSession: (() => void) | undefined;
  private socket: net.Socket | undefined;
  private backoff: number;
  private timer: NodeJS.Timeout | undefined;
  private closing = false;
  private failures = 0;

  constructor(
    private readonly address: string,
    private readonly port: number,
    private readonly firstBackoffMs: number,
    private readonly logger: Logger,
    private readonly events: { connected: () => void; failed: (err: unknown) => void },
  ) {
    this.backoff = firstBackoffMs;
    this.connect();
  }

  send(message: Buffer): Promise<void> {
    const socket = this.socket;
    if (!socket || !this.connected) return Promise.reject(new Error('not connected'));
    return new Promise((resolve, reject) => {
      socket.write(message, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Settles when there is no session: at once now, or when the current one ends. */
  down(): Promise<void> {
    return this.connected ? this.ended : Promise.resolve();
  }

  /** A write failed: this session is over. */
  broken(err: unknown): void {
    if (this.socket) this.lost(err);
  }

  close(): void {
    this.closing = true;
    clearTimeout(this.timer);
    const socket = this.socket;
    this.socket = undefined;
    socket?.end(() => socket.destroy());
    this.connected = false;
  }

  private connect(): void {
    if (this.closing) return;
    const socket = net.connect({ host: this.address, port: this.port });
    socket.setNoDelay(true);
    this.socket = socket;
    socket.once('connect', () => {
      this.connected = true;
      this.ended = new Promise((resolve) => (this.endSession = resolve));
      this.backoff = this.firstBackoffMs;
      if (this.failures > 0)
        this.logger.info({ failures: this.failures }, 'ipfix sink: collector reachable again');
      this.failures = 0;
      this.events.connected();
    });
    socket.on('error', (err) => this.lost(err));
    socket.on('close', () => this.lost(new Error('connection closed by the collector')));
  }

  private lost(err: unknown): void {
    const socket = this.socket;
    if (!socket) return;
    this.socket = undefined;
    this.connected = false;
    this.endSession?.();
    socket.removeAllListeners();
    socket.on('error', () => undefined);
    socket.destroy();
    if (this.closing) return;
    if (this.failures++ === 0) {
      this.logger.warn(
        { err: messageOf(err) },
        'ipfix sink: collector unreachable; records are held and the sink reconnects',
      );
    }
    this.events.failed(err);
    this.timer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
  }
}

/** Room a message keeps for a record beside the templates. */
const RECORD_ROOM_BYTES = 200;

/**
 * Why messages of `maxBytes` cannot carry the templates (rxflow's own elements too with
 * `enterprise`) and a record; undefined when they can.
 */
function messageRoomProblem(maxBytes: number, enterprise: number | undefined): string | undefined {
  const templates = templateSetBytes(enterprise);
  const least = MESSAGE_HEADER_BYTES + templates + RECORD_ROOM_BYTES;
  if (maxBytes >= least) return undefined;
  return `max_message_bytes ${maxBytes} cannot hold the templates (${templates} bytes${enterprise === undefined ? '' : ' with enterprise_number'}) and a record; raise it to ${least} or more`;
}

const ipfixModule: SinkModule<IpfixSinkConfig> = {
  type: 'ipfix',
  kind: 'sink',
  buffered: true,
  description:
    "Exports flow records to an IPFIX collector (RFC 7011) over UDP or TCP, on IANA elements, and rxflow's own fields under enterprise_number if set.",
  schema,
  example: { collector: '127.0.0.1:4739', transport: 'udp' },
  check(config) {
    // The default sizes (an Ethernet path MTU, or 65535) hold every template set.
    if (config.max_message_bytes === undefined) return [];
    const problem = messageRoomProblem(config.max_message_bytes, config.enterprise_number);
    return problem === undefined ? [] : [{ option: 'max_message_bytes', message: problem }];
  },
  build(config: IpfixSinkConfig, context: ComponentContext): Sink {
    return new IpfixSink(config, context);
  },
};

export default ipfixModule;
