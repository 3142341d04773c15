/**
 * `ipfix`: a collector. Flow records that routers, switches and probes (softflowd, nProbe,
 * pmacct, rxflow's own `ipfix` sink) export over UDP, as IPFIX (RFC 7011) or NetFlow v9 (RFC
 * 3954), told apart per datagram by its version. Each record becomes a FlowRecord (see
 * src/sources/ipfix/decode.ts for the mapping), so every operator and sink applies.
 *
 * Templates are kept per exporter (address and port), observation domain (v9: source id) and
 * template id, and expire `template_timeout_ms` after the exporter last sent them; IPFIX template
 * withdrawals remove them at once. Options data records are read for systemInitTimeMilliseconds
 * (the base of flowStart/EndSysUpTime) and the sampling interval (samplingInterval, or the PSAMP
 * samplingPacketInterval and samplingPacketSpace), which the domain's records then carry; other
 * options are skipped. With `enterprise_number`, rxflow's own elements under that number (what
 * rxflow's ipfix sink writes with the same number: RTT, DNS, drop reason, TCP state, network
 * namespace) are read into their fields; other enterprise-specific elements are skipped.
 *
 * The ledger counts, as received and dropped:
 * - `parse_failed`, one per datagram or set that cannot be read (not IPFIX or v9, a set or record
 *   running past its end, data whose template is unknown, expired or withdrawn, a template whose
 *   elements have impossible lengths): how many records it held cannot be known;
 * - `upstream_lost`, records the exporter sent that never arrived, from the sequence numbers of
 *   each domain. IPFIX numbers data records, so the count is exact (softflowd numbers them after
 *   the message rather than before it; that is learned from the first messages). NetFlow v9
 *   numbers export packets: each missing packet counts one. A message next to one that could not
 *   be read whole is not checked, and a number behind the expected one (reordering, an exporter
 *   restart) counts nothing. Datagrams the socket itself drops (its receive buffer full while the
 *   pipeline is busy; see receive_buffer_bytes) show up here too, as the gaps they leave.
 * Both are logged at most every 10 s with the last cause. Nothing here throws into the pipeline
 * but a socket that cannot listen.
 *
 * Datagrams are decoded as they arrive, straight off the receive buffer; their records are emitted
 * as one batch per turn of the event loop. On stop$ the socket is closed, the last batch emitted
 * and the source completes.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { Observable } from 'rxjs';
import { msOption, type ComponentContext, type JsonSchema, type SourceModule } from '../component.js';
import type { FlowBatch, FlowRecord } from '../records/flow.js';
import { LossLog } from '../delivery/loss-log.js';
import { messageOf } from '../errors.js';
import { SourceError } from './errors.js';
import { IpfixDecoder, newExporter, newReport, type Exporter } from './ipfix/decode.js';
import { rxflowElementsText } from '../records/rxflow-elements.js';

export interface IpfixConfig {
  /** Address to listen on: an IPv4 or IPv6 literal; `::` takes both families. */
  address: string;
  port: number;
  template_timeout_ms: number;
  receive_buffer_bytes: number;
  /** The Private Enterprise Number rxflow's own elements come under; unset, they are skipped. */
  enterprise_number?: number;
}

const DEFAULTS = {
  address: '0.0.0.0',
  port: 4739,
  template_timeout_ms: 1_800_000,
  receive_buffer_bytes: 4_194_304,
} as const satisfies Omit<IpfixConfig, 'enterprise_number'>;

const LOSS_LOG_INTERVAL_MS = 10_000;
/** How often expired templates and idle exporters are forgotten (at most; sooner for short timeouts). */
const SWEEP_INTERVAL_MS = 60_000;

/** Flow records from exporters over UDP (see the module comment). */
export function ipfixSource(config: IpfixConfig, context: ComponentContext): Observable<FlowBatch> {
  const resolved = { ...DEFAULTS, ...config };
  const { counters, logger } = context;
  const where = `udp ${isIPv6(resolved.address) ? `[${resolved.address}]` : resolved.address}:${resolved.port}`;
  return new Observable<FlowBatch>((subscriber) => {
    const report = newReport();
    const decoder = new IpfixDecoder(resolved.template_timeout_ms, report, resolved.enterprise_number);
    const exporters = new Map<string, Exporter>();
    const losses = new LossLog(
      logger,
      'ipfix source: records lost or unreadable',
      LOSS_LOG_INTERVAL_MS,
      context.scheduler,
    );
    let pending: FlowRecord[] = [];
    let flushing: NodeJS.Immediate | undefined;
    let closed = false;

    const flush = (): void => {
      flushing = undefined;
      if (pending.length === 0) return;
      const batch = pending;
      pending = [];
      counters.addSent(batch.length);
      subscriber.next(batch);
    };

    const onMessage = (msg: Buffer, rinfo: RemoteInfo): void => {
      const key = `${rinfo.address}|${rinfo.port}`;
      let exporter = exporters.get(key);
      const known = exporter !== undefined;
      exporter ??= newExporter(rinfo.address);
      const before = pending.length;
      decoder.decode(msg, exporter, Date.now(), pending);
      // Kept only once it sent a message header: garbage from ever new ports leaves nothing behind.
      if (!known && exporter.domains.size > 0) {
        exporters.set(key, exporter);
        logger.info({ exporter: exporter.address, port: rinfo.port }, 'ipfix source: new exporter');
      }
      const decoded = pending.length - before;
      const { failed, lost } = report;
      counters.addReceived(decoded + failed + lost);
      if (failed > 0) {
        counters.addDropped('parse_failed', failed);
        losses.add('parse_failed', failed, report.failure);
        report.failed = 0;
        report.failure = undefined;
      }
      if (lost > 0) {
        counters.addDropped('upstream_lost', lost);
        losses.add('upstream_lost', lost, report.loss);
        report.lost = 0;
        report.loss = undefined;
      }
      if (report.templatesLearned + report.templatesWithdrawn > 0) {
        logger.debug(
          {
            exporter: exporter.address,
            learned: report.templatesLearned,
            withdrawn: report.templatesWithdrawn,
          },
          'ipfix source: templates',
        );
        report.templatesLearned = 0;
        report.templatesWithdrawn = 0;
      }
      if (pending.length > 0 && flushing === undefined) flushing = setImmediate(flush);
    };

    let socket: Socket;
    try {
      socket = createSocket({ type: isIPv6(resolved.address) ? 'udp6' : 'udp4', ipv6Only: false });
    } catch (err) {
      subscriber.error(new SourceError('EBIND', `ipfix source ${where}: ${messageOf(err)}`, { cause: err }));
      return;
    }
    const sweeping = setInterval(
      () => {
        const removed = decoder.sweep(exporters, Date.now());
        if (removed > 0)
          logger.info({ removed, exporters: exporters.size }, 'ipfix source: idle exporters forgotten');
      },
      Math.min(resolved.template_timeout_ms, SWEEP_INTERVAL_MS),
    );
    sweeping.unref();
    const close = (): void => {
      if (closed) return;
      closed = true;
      clearInterval(sweeping);
      socket.off('message', onMessage);
      socket.close();
      if (flushing !== undefined) clearImmediate(flushing);
      losses.close();
    };
    socket.on('message', onMessage);
    socket.on('error', (err) => {
      if (closed) return;
      close();
      subscriber.error(
        new SourceError(
          'EBIND',
          `ipfix source ${where}: cannot listen: ${err.message}; choose a free address and port, or stop what holds it`,
          { cause: err },
        ),
      );
    });
    socket.on('listening', () => {
      try {
        socket.setRecvBufferSize(resolved.receive_buffer_bytes);
      } catch (err) {
        logger.warn({ err }, 'ipfix source: cannot set the receive buffer size; using the system default');
      }
      const bound = socket.address();
      logger.info(
        { address: bound.address, port: bound.port, receive_buffer_bytes: socket.getRecvBufferSize() },
        'ipfix source: listening',
      );
    });
    socket.bind(resolved.port, resolved.address);
    const stopping = context.stop$?.subscribe(() => {
      close();
      flush();
      subscriber.complete();
    });
    return () => {
      stopping?.unsubscribe();
      close();
    };
  });
}

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    address: {
      type: 'string',
      minLength: 1,
      default: DEFAULTS.address,
      description: 'Address to listen on, an IPv4 or IPv6 literal; "::" takes both IPv4 and IPv6 exporters.',
    },
    port: {
      type: 'integer',
      minimum: 0,
      maximum: 65535,
      default: DEFAULTS.port,
      description: 'UDP port exporters send to (IPFIX: 4739; NetFlow v9 exporters often use 2055).',
    },
    template_timeout_ms: msOption(
      'A template not sent again by its exporter for this long is forgotten; its data then counts as parse_failed until it is.',
      DEFAULTS.template_timeout_ms,
      1000,
    ),
    receive_buffer_bytes: {
      type: 'integer',
      minimum: 65536,
      // Linux doubles the value given and holds it in an int: 1 GiB is the most that stays positive.
      maximum: 1_073_741_824,
      default: DEFAULTS.receive_buffer_bytes,
      description:
        'Socket receive buffer (SO_RCVBUF), which holds bursts while the pipeline is busy; the kernel caps it at net.core.rmem_max.',
    },
    enterprise_number: {
      type: 'integer',
      minimum: 1,
      maximum: 4_294_967_295,
      description:
        "The Private Enterprise Number an rxflow ipfix sink's enterprise_number sends rxflow's own fields under (IANA has no elements for them, rxflow no number of its own): its elements are read into the record's fields: " +
        `${rxflowElementsText()}. Other enterprises' elements are skipped. Unset: all enterprise elements are skipped.`,
    },
  },
};

const ipfixModule: SourceModule<IpfixConfig> = {
  type: 'ipfix',
  kind: 'source',
  description:
    'Collects flow records that routers, switches and probes export over UDP, as IPFIX or NetFlow v9.',
  drainsOnStop: true,
  schema,
  example: {
    address: '::',
    port: 4739,
    template_timeout_ms: 1_800_000,
    receive_buffer_bytes: 4_194_304,
  },
  build: ipfixSource,
};

export default ipfixModule;
