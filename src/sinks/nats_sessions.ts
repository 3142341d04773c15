/**
 * `nats_sessions`: the YAML component of an HA node (src/ha/node.ts): its options, checked and
 * turned into the node's. The node replicates a firewall's sessions to a NATS JetStream KV bucket
 * for HA, and on start loads every session of the bucket into this node's kernel session map
 * before it reports ready (a readiness file and/or GET /ready). Its input is a `firewall_sessions` source of the same
 * firewall (instance, pin_root).
 *
 * Creates and deletes are written at once; updates of a session within coalesce_ms become one
 * write; up to max_in_flight writes are in flight. A full sync every sync_interval_ms compares the
 * kernel map with the bucket and repairs both ways (see src/ha/sync.ts for who wins), and one runs
 * after every reconnect. On close everything pending is written (up to shutdown_timeout_ms).
 *
 * With `watch` (the default) the sink also watches the bucket from the revision the boot load read
 * and writes other nodes' changes into this node's kernel map as they arrive (src/ha/watch.ts), so
 * a standby holds the active node's newest sessions when it takes over, not only those of its
 * boot. The watch goes on after a reconnect from the last revision it received, and stops on close.
 *
 * A whole node of an HA pair is pipelines/firewall-ha.yaml; in short:
 *
 * ```yaml
 * sources:
 *   sessions: {type: firewall_sessions, instance: edge}
 * sinks:
 *   ha:
 *     type: nats_sessions
 *     inputs: [sessions]
 *     servers: ['nats://nats-1:4222']
 *     bucket: rxflow_sessions
 *     node_id: ${HOSTNAME}
 *     instance: edge
 *     ready_listen: 0.0.0.0:9109
 * ```
 */
import { hostname } from 'node:os';
import type { Observable, Subscription } from 'rxjs';
import {
  msOption,
  type ComponentContext,
  type JsonSchema,
  type Sink,
  type SinkModule,
} from '../component.js';
import { firewallPinDir } from '../datapath/firewall/index.js';
import { validNodeId } from '../ha/codec.js';
import { HaError } from '../ha/errors.js';
import type { BucketOptions, NatsConnectOptions } from '../ha/kv.js';
import { FirewallHaNode, type FirewallHaNodeOptions } from '../ha/node.js';
import type { NodeReplicationStatus } from '../ha/replication.js';
import type { FlowBatch } from '../records/flow.js';
import { SinkError } from './errors.js';
import { INSTANCE_PATTERN } from '../datapath/instance.js';

export interface NatsSessionsConfig {
  servers: string[];
  bucket?: string;
  replicas?: 1 | 3 | 5;
  history?: number;
  ttl_ms?: number;
  node_id?: string;
  credentials_file?: string;
  user?: string;
  password?: string;
  token?: string;
  tls?: {
    ca_file?: string;
    cert_file?: string;
    key_file?: string;
    server_name?: string;
    insecure_skip_verify?: boolean;
  };
  request_timeout_ms?: number;
  reconnect_wait_ms?: number;
  ping_interval_ms?: number;
  coalesce_ms?: number;
  sync_interval_ms?: number;
  sync_tolerance_ms?: number;
  max_in_flight?: number;
  retry_ms?: number;
  stale_after_ms?: number;
  shutdown_timeout_ms?: number;
  instance?: string;
  pin_root?: string;
  netns?: string;
  load_on_start?: boolean;
  load_max_age_ms?: number;
  watch?: boolean;
  ready_file?: string;
  ready_listen?: string;
}

const DEFAULTS = {
  bucket: 'rxflow_sessions',
  replicas: 1,
  history: 1,
  ttl_ms: 0,
  request_timeout_ms: 5000,
  reconnect_wait_ms: 1000,
  ping_interval_ms: 10_000,
  coalesce_ms: 500,
  sync_interval_ms: 30_000,
  sync_tolerance_ms: 1000,
  max_in_flight: 1024,
  retry_ms: 1000,
  shutdown_timeout_ms: 30_000,
  instance: 'default',
  pin_root: '/sys/fs/bpf',
  load_on_start: true,
  watch: true,
} as const satisfies Partial<NatsSessionsConfig>;

const ms = (description: string, dflt: number | undefined, minimum = 0): JsonSchema =>
  msOption(description, dflt, minimum);

const schema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['servers'],
  properties: {
    servers: {
      type: 'array',
      minItems: 1,
      items: { type: 'string', minLength: 1 },
      description: 'NATS servers, e.g. nats://nats-1:4222 (tls:// for TLS).',
    },
    bucket: {
      type: 'string',
      pattern: '^[-_a-zA-Z0-9]+$',
      default: DEFAULTS.bucket,
      description:
        'KV bucket of the sessions; created when missing. Every node of an HA group uses the same one.',
    },
    replicas: {
      enum: [1, 3, 5],
      default: DEFAULTS.replicas,
      description: 'Copies of the bucket in a JetStream cluster.',
    },
    history: {
      type: 'integer',
      minimum: 1,
      maximum: 64,
      default: DEFAULTS.history,
      description: 'Revisions kept per session key (1 is enough for failover).',
    },
    ttl_ms: ms(
      'The server removes keys not written for this long; 0 keeps them until deleted. Set above the session idle timeout.',
      DEFAULTS.ttl_ms,
    ),
    node_id: {
      type: 'string',
      pattern: '^[-_.:a-zA-Z0-9]{0,128}$',
      description:
        "This node's id, written into every value; default (or empty) the host name. Unique per node.",
    },
    credentials_file: { type: 'string', description: 'A NATS .creds file (JWT and NKey seed).' },
    user: { type: 'string', description: 'User name; needs password.' },
    password: { type: 'string', description: 'Password of user; never logged or printed.' },
    password_file: {
      type: 'string',
      minLength: 1,
      description: 'A file holding the password (one trailing newline is ignored), instead of password.',
    },
    token: { type: 'string', description: 'Authentication token; never logged or printed.' },
    token_file: {
      type: 'string',
      minLength: 1,
      description: 'A file holding the token (one trailing newline is ignored), instead of token.',
    },
    tls: {
      type: 'object',
      additionalProperties: false,
      description: 'TLS to the servers. Files are PEM.',
      properties: {
        ca_file: { type: 'string', description: 'CA certificates to trust instead of the system ones.' },
        cert_file: { type: 'string', description: 'Client certificate, for mutual TLS; needs key_file.' },
        key_file: { type: 'string', description: 'Private key of cert_file.' },
        server_name: { type: 'string', description: 'Name to verify the server certificate against.' },
        insecure_skip_verify: {
          type: 'boolean',
          default: false,
          description: 'Accept any server certificate.',
        },
      },
    },
    request_timeout_ms: ms('Time the server has to acknowledge a write.', DEFAULTS.request_timeout_ms, 1),
    reconnect_wait_ms: ms(
      'Wait between attempts to (re)connect; reconnects never give up.',
      DEFAULTS.reconnect_wait_ms,
      1,
    ),
    ping_interval_ms: ms(
      'Client ping interval; a cut network is noticed after two unanswered pings.',
      DEFAULTS.ping_interval_ms,
      100,
    ),
    coalesce_ms: ms('Updates of one session within this window become one write.', DEFAULTS.coalesce_ms),
    sync_interval_ms: ms(
      'Period of the full sync of the kernel map with the bucket.',
      DEFAULTS.sync_interval_ms,
      100,
    ),
    sync_tolerance_ms: ms(
      'A KV copy whose last-seen lags the kernel by more than this is rewritten by the sync.',
      DEFAULTS.sync_tolerance_ms,
    ),
    max_in_flight: {
      type: 'integer',
      minimum: 1,
      maximum: 65536,
      default: DEFAULTS.max_in_flight,
      description: 'Writes in flight at once.',
    },
    retry_ms: ms('Pause after a failed write before writing again.', DEFAULTS.retry_ms, 1),
    stale_after_ms: ms(
      "Delete other nodes' keys that are not local and were last seen longer ago than this (e.g. the idle timeout plus a margin); unset: never.",
      undefined,
      1,
    ),
    shutdown_timeout_ms: ms('On close, how long to wait for pending writes.', DEFAULTS.shutdown_timeout_ms),
    instance: {
      type: 'string',
      pattern: INSTANCE_PATTERN,
      default: DEFAULTS.instance,
      description:
        "The firewall instance given to 'rxflow firewall load' (as in the firewall_sessions source).",
    },
    pin_root: {
      type: 'string',
      default: DEFAULTS.pin_root,
      description: 'The bpffs mount the firewall is pinned under.',
    },
    netns: {
      type: 'string',
      description:
        "Network namespace of the firewall's devices, to name interfaces for a peer ('ip netns' name); unset or empty: this process's.",
    },
    load_on_start: {
      type: 'boolean',
      default: DEFAULTS.load_on_start,
      description: 'Load every session of the bucket into the kernel before reporting ready.',
    },
    load_max_age_ms: ms('Do not load sessions last seen longer ago than this.', undefined, 1),
    watch: {
      type: 'boolean',
      default: DEFAULTS.watch,
      description:
        "Watch the bucket and write other nodes' session changes into this node's kernel map as they arrive (a hot standby), by the full sync's rules: this node's own writes are ignored and never written back, and a session its own traffic saw more recently keeps its state. Off: other nodes' sessions reach the kernel only on start.",
    },
    ready_file: { type: 'string', description: 'Written once ready, removed when not ready.' },
    ready_listen: {
      type: 'string',
      pattern: '^\\S+:[0-9]{1,5}$',
      description: 'host:port serving GET /ready (503 until ready, then 200) and GET /status (JSON).',
    },
  },
};

interface Resolved {
  nats: NatsConnectOptions;
  bucket: BucketOptions;
  nodeId: string;
  config: NatsSessionsConfig & Required<Pick<NatsSessionsConfig, keyof typeof DEFAULTS>>;
  readyListen: { host: string; port: number } | undefined;
}

function resolve(config: NatsSessionsConfig): Resolved {
  const c = { ...DEFAULTS, ...config };
  const nodeId = c.node_id === undefined || c.node_id === '' ? hostname() : c.node_id;
  if (!validNodeId(nodeId)) {
    throw new SinkError(
      'EBADCONFIG',
      `nats_sessions sink: node id '${nodeId}' has characters a key cannot hold; set node_id to letters, digits, '-', '_', '.' or ':'`,
    );
  }
  const auth = [c.credentials_file, c.user, c.token].filter((x) => x !== undefined).length;
  if (auth > 1) {
    throw new SinkError(
      'EBADCONFIG',
      'nats_sessions sink: give one of credentials_file, user/password or token',
    );
  }
  if ((c.user === undefined) !== (c.password === undefined)) {
    throw new SinkError(
      'EBADCONFIG',
      'nats_sessions sink: user and password go together; give both or neither',
    );
  }
  if (c.tls?.cert_file !== undefined && c.tls.key_file === undefined) {
    throw new SinkError('EBADCONFIG', 'nats_sessions sink: tls.cert_file needs tls.key_file');
  }
  const nats: NatsConnectOptions = {
    servers: c.servers,
    name: `rxflow ${nodeId}`,
    connectTimeoutMs: c.request_timeout_ms,
    reconnectWaitMs: c.reconnect_wait_ms,
    pingIntervalMs: c.ping_interval_ms,
  };
  if (c.credentials_file !== undefined) nats.credentialsFile = c.credentials_file;
  if (c.user !== undefined) nats.user = c.user;
  if (c.password !== undefined) nats.password = c.password;
  if (c.token !== undefined) nats.token = c.token;
  if (c.tls !== undefined) {
    const tls: NonNullable<NatsConnectOptions['tls']> = {};
    if (c.tls.ca_file !== undefined) tls.caFile = c.tls.ca_file;
    if (c.tls.cert_file !== undefined) tls.certFile = c.tls.cert_file;
    if (c.tls.key_file !== undefined) tls.keyFile = c.tls.key_file;
    if (c.tls.server_name !== undefined) tls.serverName = c.tls.server_name;
    if (c.tls.insecure_skip_verify !== undefined) tls.insecureSkipVerify = c.tls.insecure_skip_verify;
    nats.tls = tls;
  }
  let readyListen: Resolved['readyListen'];
  if (c.ready_listen !== undefined) {
    const colon = c.ready_listen.lastIndexOf(':');
    const port = Number(c.ready_listen.slice(colon + 1));
    if (port > 65535) {
      throw new SinkError('EBADCONFIG', `nats_sessions sink: ready_listen port ${port} is above 65535`);
    }
    readyListen = { host: c.ready_listen.slice(0, colon).replace(/^\[|\]$/g, ''), port };
  }
  return {
    nats,
    bucket: {
      bucket: c.bucket,
      replicas: c.replicas,
      history: c.history,
      ttlMs: c.ttl_ms,
      requestTimeoutMs: c.request_timeout_ms,
    },
    nodeId,
    config: c,
    readyListen,
  };
}

export class NatsSessionsSink implements Sink {
  private readonly resolved: Resolved;
  private readonly abort = new AbortController();
  private node: FirewallHaNode | undefined;
  private subscription: Subscription | undefined;
  private endConsume: (() => void) | undefined;
  private consuming = false;
  private closed: Promise<void> | undefined;

  constructor(
    config: NatsSessionsConfig,
    private readonly context: ComponentContext,
  ) {
    this.resolved = resolve(config);
    // For firewall_metrics: the live status at each of its samples.
    context.replication?.offer(this.resolved.config.instance, () => this.status());
  }

  /** The replication status, the kernel map compared with the bucket now; undefined until started. */
  status(): Promise<NodeReplicationStatus | undefined> {
    return this.node?.status() ?? Promise.resolve(undefined);
  }

  /**
   * Starts the HA node (connects, loads the bucket into the kernel, reports ready), and only then
   * subscribes to the session events: the firewall_sessions source starts once every sink
   * subscribed, so the events that happen during the load wait in the kernel's ring buffer instead
   * of racing the load.
   */
  async consume(input: Observable<FlowBatch>): Promise<void> {
    if (this.consuming || this.closed !== undefined) {
      throw new SinkError(
        'ECONSUME',
        'nats_sessions sink: consume() was already called or the sink is closed',
      );
    }
    this.consuming = true;
    let node: FirewallHaNode;
    try {
      node = await FirewallHaNode.start(this.nodeOptions());
    } catch (err) {
      // Stopped while still waiting for NATS: not a failure of the pipeline.
      if (this.closed !== undefined && !(err instanceof HaError && err.code === 'EFIREWALL')) return;
      throw err;
    }
    if (this.closed !== undefined) {
      // close() ran during the load and found nothing to close yet.
      await node.close();
      return;
    }
    this.node = node;
    return new Promise<void>((resolveConsume, rejectConsume) => {
      this.endConsume = resolveConsume;
      this.subscription = input.subscribe({
        next: (batch) => node.handle(batch),
        error: (err: unknown) => {
          void this.flush().then(() => rejectConsume(err instanceof Error ? err : new Error(String(err))));
        },
        complete: () => {
          void this.flush().then(resolveConsume);
        },
      });
    });
  }

  flush(): Promise<void> {
    return this.node?.flush() ?? Promise.resolve();
  }

  close(): Promise<void> {
    this.closed ??= (async () => {
      this.abort.abort();
      this.subscription?.unsubscribe();
      if (this.node !== undefined) {
        const flushed = await this.node.close();
        if (!flushed) this.context.logger.warn('nats_sessions sink: closed with session changes not written');
      }
      this.endConsume?.();
    })();
    return this.closed;
  }

  private nodeOptions(): FirewallHaNodeOptions {
    const c = this.resolved.config;
    return {
      name: 'nats_sessions sink',
      pinDir: firewallPinDir(c.instance, c.pin_root),
      netns: c.netns,
      logger: this.context.logger,
      counters: this.context.counters,
      replication: {
        nats: this.resolved.nats,
        bucket: this.resolved.bucket,
        replicator: {
          nodeId: this.resolved.nodeId,
          coalesceMs: c.coalesce_ms,
          syncIntervalMs: c.sync_interval_ms,
          toleranceMs: c.sync_tolerance_ms,
          maxInFlight: c.max_in_flight,
          retryMs: c.retry_ms,
          ...(c.stale_after_ms !== undefined ? { staleAfterMs: c.stale_after_ms } : {}),
          ...(this.context.scheduler ? { scheduler: this.context.scheduler } : {}),
        },
        loadOnStart: c.load_on_start,
        watch: c.watch,
        ...(c.load_max_age_ms !== undefined ? { loadMaxAgeMs: c.load_max_age_ms } : {}),
        readiness: {
          ...(c.ready_file !== undefined ? { file: c.ready_file } : {}),
          ...(this.resolved.readyListen !== undefined ? { listen: this.resolved.readyListen } : {}),
        },
        shutdownTimeoutMs: c.shutdown_timeout_ms,
        signal: this.abort.signal,
      },
    };
  }
}

const natsSessionsModule: SinkModule<NatsSessionsConfig> = {
  type: 'nats_sessions',
  kind: 'sink',
  description:
    "Replicates firewall sessions to a NATS JetStream KV bucket for HA, loads them into the kernel on start, before reporting ready, and keeps applying other nodes' sessions as they change.",
  schema,
  example: {
    servers: ['nats://nats-1:4222', 'nats://nats-2:4222'],
    bucket: 'rxflow_sessions',
    replicas: 3,
    history: 1,
    ttl_ms: 86_400_000,
    node_id: 'fw-a',
    coalesce_ms: 500,
    sync_interval_ms: 30_000,
    instance: 'default',
    ready_listen: '0.0.0.0:9109',
  },
  build(config: NatsSessionsConfig, context: ComponentContext): Sink {
    return new NatsSessionsSink(config, context);
  },
};

export default natsSessionsModule;
