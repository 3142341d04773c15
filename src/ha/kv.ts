import {
  Events,
  KvWatchInclude,
  connect,
  createInbox,
  credsAuthenticator,
  headers,
  type ConnectionOptions,
  type KV,
  type KvEntry,
  type Msg,
  type NatsConnection,
  type NatsError,
  type QueuedIterator,
  type Subscription,
} from 'nats';
import { readFileSync } from 'node:fs';
import { Subject, type Observable } from 'rxjs';
import type { Logger } from '../logger.js';
import { redactUrls } from '../redact.js';
import { HaError, messageOf } from './errors.js';

/** How to reach NATS. At most one of credentials file, user/password and token. */
export interface NatsConnectOptions {
  servers: string[];
  /** Client name shown by the server's monitoring. */
  name?: string;
  /** A NATS .creds file (JWT and NKey seed). */
  credentialsFile?: string;
  user?: string;
  password?: string;
  token?: string;
  tls?: {
    caFile?: string;
    certFile?: string;
    keyFile?: string;
    serverName?: string;
    insecureSkipVerify?: boolean;
  };
  /** Time to establish a connection; default 5000. */
  connectTimeoutMs?: number;
  /** Wait between reconnect attempts; default 1000. Reconnects never give up. */
  reconnectWaitMs?: number;
  /**
   * Interval of client pings; default 10000. A cut network (no RST) is noticed after two
   * unanswered pings, so this bounds how long the replicator believes a dead link is up.
   */
  pingIntervalMs?: number;
}

export interface BucketOptions {
  bucket: string;
  /** Copies of the bucket in a JetStream cluster: 1, 3 or 5. */
  replicas: number;
  /** Revisions kept per key. */
  history: number;
  /** Age at which the server removes a key; 0 keeps keys until deleted. */
  ttlMs: number;
  /** Time a write or read has to be acknowledged. */
  requestTimeoutMs: number;
}

export interface KvRecord {
  key: string;
  value: Uint8Array;
}

/** Every key with a value, and the bucket revision the read reached. */
export interface KvSnapshot {
  records: KvRecord[];
  /**
   * The highest revision (stream sequence) the read saw, deletes included: every change up to it is
   * in `records`, so a watch from the next revision misses nothing and reads nothing twice. 0 for
   * an empty bucket.
   */
  revision: number;
}

/** One change of the bucket as a watch delivers it, in revision order. */
export interface WatchEntry {
  key: string;
  /** The stream sequence of the change; grows with every write to the bucket. */
  revision: number;
  op: 'put' | 'delete';
  /** The value of a put; empty for a delete. */
  value: Uint8Array;
  /** Wall-clock ms the server stored the change. */
  atMs: number;
  /** Changes the server still has to deliver after this one. */
  backlog: number;
}

export interface WatchHandlers {
  /** The watch is established; entries follow. */
  started?: () => void;
  entry: (entry: WatchEntry) => void;
  /** The watch ended without being stopped (an error, or the server ended it). */
  end: (err?: Error) => void;
}

/** A running watch; stop() ends it and no handler is called after. */
export interface KvWatch {
  stop(): void;
}

export type ConnectionChange = 'down' | 'up';

/**
 * Called once per write: without an error when the server stored it, then with the revision it
 * got when the server said (a fake bucket may not).
 */
export type WriteCallback = (err?: Error, revision?: number) => void;

/**
 * The KV operations the replicator and the loader use; a fake in unit tests. Writes take a
 * callback rather than returning a promise: the replicator keeps thousands in flight and a
 * callback costs no allocation, and a fake can complete a write synchronously, so tests in
 * virtual time see writes settle at the virtual time they happen.
 */
export interface SessionKv {
  /** False between a disconnect and the next reconnect. */
  readonly connected: boolean;
  /** 'down' on a disconnect, 'up' on a reconnect. */
  readonly connection$: Observable<ConnectionChange>;
  /** Stores the value; `done` runs when the server acknowledged it or it failed. Many may be in flight. */
  put(key: string, value: Uint8Array, done: WriteCallback): void;
  /** Removes the key (a purge: no history of it is kept); `done` as for put. */
  delete(key: string, done: WriteCallback): void;
  /** Every key with a value now (deleted keys left out), and the revision the read reached. */
  snapshot(): Promise<KvSnapshot>;
  /**
   * Delivers every change from revision `fromRevision` on (from now on when undefined), in
   * revision order, until stopped. The watch is set up asynchronously; a failure to set it up
   * arrives as handlers.end(err).
   */
  watch(fromRevision: number | undefined, handlers: WatchHandlers): KvWatch;
}

const KV_OPERATION = 'KV-Operation';
const ROLLUP = 'Nats-Rollup';

/** The nats.js connection options of `opts`. */
export function natsConnectionOptions(opts: NatsConnectOptions): ConnectionOptions {
  const auth = [opts.credentialsFile !== undefined, opts.user !== undefined, opts.token !== undefined];
  if (auth.filter(Boolean).length > 1) {
    throw new HaError(
      'EBADCONFIG',
      'nats: give one of credentials_file, user/password or token, not several',
    );
  }
  if ((opts.user === undefined) !== (opts.password === undefined)) {
    throw new HaError('EBADCONFIG', 'nats: user and password go together; give both or neither');
  }
  const options: ConnectionOptions = {
    servers: opts.servers,
    name: opts.name ?? 'rxflow',
    timeout: opts.connectTimeoutMs ?? 5000,
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: opts.reconnectWaitMs ?? 1000,
    pingInterval: opts.pingIntervalMs ?? 10_000,
    maxPingOut: 2,
  };
  if (opts.credentialsFile !== undefined) {
    let creds: Uint8Array;
    try {
      creds = readFileSync(opts.credentialsFile);
    } catch (err) {
      throw new HaError(
        'EBADCONFIG',
        `nats: read credentials_file ${opts.credentialsFile}: ${messageOf(err)}`,
        {
          cause: err,
        },
      );
    }
    options.authenticator = credsAuthenticator(creds);
  }
  if (opts.user !== undefined) {
    options.user = opts.user;
    options.pass = opts.password;
  }
  if (opts.token !== undefined) options.token = opts.token;
  if (opts.tls !== undefined) {
    const t = opts.tls;
    // nats.js hands unknown tls keys to node's tls.connect, which knows servername and
    // rejectUnauthorized.
    const tls: Record<string, unknown> = {};
    if (t.caFile !== undefined) tls.caFile = t.caFile;
    if (t.certFile !== undefined) tls.certFile = t.certFile;
    if (t.keyFile !== undefined) tls.keyFile = t.keyFile;
    if (t.serverName !== undefined) tls.servername = t.serverName;
    if (t.insecureSkipVerify === true) tls.rejectUnauthorized = false;
    options.tls = tls;
  }
  return options;
}

/**
 * Connects to NATS, trying again every `reconnectWaitMs` until it succeeds or `signal` aborts: a
 * node booting while NATS is away waits for it (it cannot load its sessions before), and can still
 * be stopped. Bad credentials or TLS settings fail at once: trying again will not help.
 */
export async function connectNats(
  opts: NatsConnectOptions,
  options: { signal?: AbortSignal; logger?: Logger } = {},
): Promise<NatsConnection> {
  const connectionOptions = natsConnectionOptions(opts);
  // Servers may carry credentials (nats://user:pass@host); messages and logs name them without.
  const servers = opts.servers.map(redactUrls).join(',');
  let logged = false;
  const aborted = (): boolean => options.signal?.aborted === true;
  for (;;) {
    try {
      return await connect(connectionOptions);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'AUTHORIZATION_VIOLATION' || code === 'BAD_AUTHENTICATION' || code === 'TLS') {
        throw new HaError(
          'ECONNECT',
          `nats ${servers}: ${messageOf(err)}; check the credentials and TLS options`,
          {
            cause: err,
          },
        );
      }
      if (options.signal?.aborted === true) {
        throw new HaError('ECONNECT', `nats ${servers}: ${messageOf(err)}; stopped before connecting`, {
          cause: err,
        });
      }
      if (!logged) {
        logged = true;
        options.logger?.warn(
          { servers, err: messageOf(err) },
          'nats: cannot connect; trying again until it answers',
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, opts.reconnectWaitMs ?? 1000);
        options.signal?.addEventListener(
          'abort',
          () => {
            clearTimeout(timer);
            resolve();
          },
          { once: true },
        );
      });
      if (aborted()) {
        throw new HaError('ECONNECT', `nats ${servers}: stopped before connecting`);
      }
    }
  }
}

interface Waiter {
  done: WriteCallback;
  deadline: number;
  key: string;
}

/** A write as a promise, for callers that await one write at a time. */
export function putAsync(kv: SessionKv, key: string, value: Uint8Array): Promise<void> {
  return new Promise<void>((resolve, reject) => kv.put(key, value, (err) => (err ? reject(err) : resolve())));
}

const decoder = new TextDecoder();

/**
 * A JetStream KV bucket of sessions over one NATS connection.
 *
 * Writes are published with a reply subject on one wildcard inbox subscription, and their
 * acknowledgements are matched by a sequence number in the reply subject, with one sweep timer
 * for every deadline. nats.js's `kv.put` makes a request per write (a promise, a timer and a
 * mux entry each) and reached about 17k writes/s here with a thousand in flight; this reaches
 * several times that, so the replicator can keep thousands of writes in flight.
 */
export class NatsSessionKv implements SessionKv {
  private readonly changes = new Subject<ConnectionChange>();
  readonly connection$: Observable<ConnectionChange> = this.changes.asObservable();
  private isConnected = true;
  private readonly inbox = createInbox();
  private readonly ackSub: Subscription;
  private readonly waiting = new Map<number, Waiter>();
  private seq = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly subjectPrefix: string;
  private readonly watches = new Set<KvWatch>();

  private constructor(
    private readonly nc: NatsConnection,
    readonly kv: KV,
    readonly options: BucketOptions,
    private readonly logger: Logger,
    private readonly ownsConnection: boolean,
    /** How long a watch is quiet after a change before it checks nothing was lost at the end. */
    private readonly tailCheckMs: number,
  ) {
    this.subjectPrefix = `$KV.${options.bucket}.`;
    this.ackSub = nc.subscribe(`${this.inbox}.*`, { callback: (err, msg) => this.onAck(err, msg) });
    void this.watchStatus();
  }

  /**
   * Creates the bucket if it does not exist (with `replicas`, `history`, `ttlMs`) or binds to it.
   * An existing bucket keeps its own settings; JetStream does not change them here.
   */
  static async open(
    nc: NatsConnection,
    options: BucketOptions,
    logger: Logger,
    opts: { ownsConnection?: boolean; bindOnly?: boolean; tailCheckMs?: number } = {},
  ): Promise<NatsSessionKv> {
    let kv: KV;
    try {
      kv = await nc.jetstream({ timeout: options.requestTimeoutMs }).views.kv(options.bucket, {
        replicas: options.replicas,
        history: options.history,
        ttl: options.ttlMs,
        timeout: options.requestTimeoutMs,
        bindOnly: opts.bindOnly ?? false,
      });
    } catch (err) {
      throw new HaError(
        'EBUCKET',
        `nats kv bucket ${options.bucket}: ${messageOf(err)}; check that the server runs with JetStream (-js) and the account may create streams`,
        { cause: err },
      );
    }
    return new NatsSessionKv(nc, kv, options, logger, opts.ownsConnection ?? false, opts.tailCheckMs ?? 1000);
  }

  get connected(): boolean {
    return this.isConnected && !this.closed;
  }

  put(key: string, value: Uint8Array, done: WriteCallback): void {
    this.publish(key, value, undefined, done);
  }

  delete(key: string, done: WriteCallback): void {
    const h = headers();
    h.set(KV_OPERATION, 'PURGE');
    h.set(ROLLUP, 'sub');
    this.publish(key, new Uint8Array(0), h, done);
  }

  async snapshot(): Promise<KvSnapshot> {
    const records: KvRecord[] = [];
    let revision = 0;
    const timeoutMs = Math.max(this.options.requestTimeoutMs, 60_000);
    let timer: NodeJS.Timeout | undefined;
    try {
      let initialized!: () => void;
      const done = new Promise<void>((resolve) => (initialized = resolve));
      // initializedFn fires once the watcher delivered every key's last value; what follows are
      // live updates, which the snapshot does not want.
      const iter = await this.kv.watch({ initializedFn: () => initialized() });
      const reading = (async () => {
        for await (const e of iter as AsyncIterable<KvEntry>) {
          // The watch delivers in revision order, first the last value of every key, then changes:
          // everything up to the highest revision seen is in the records.
          if (e.revision > revision) revision = e.revision;
          if (e.operation === 'PUT') records.push({ key: e.key, value: e.value });
          else records.push({ key: e.key, value: DELETED });
        }
      })();
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
      const outcome = await Promise.race([
        done.then(() => 'done' as const),
        late,
        reading.then(() => 'ended' as const),
      ]);
      iter.stop();
      await reading.catch(() => undefined);
      if (outcome === 'late') {
        throw new HaError(
          'EREAD',
          `nats kv bucket ${this.options.bucket}: reading every key took over ${timeoutMs} ms`,
        );
      }
      if (outcome === 'ended' && !this.closed) {
        throw new HaError(
          'EREAD',
          `nats kv bucket ${this.options.bucket}: the watch ended before every key was read`,
        );
      }
    } catch (err) {
      if (err instanceof HaError) throw err;
      throw new HaError('EREAD', `nats kv bucket ${this.options.bucket}: read keys: ${messageOf(err)}`, {
        cause: err,
      });
    } finally {
      clearTimeout(timer);
    }
    // A key can appear twice when it changed during the read; its last entry is its value.
    const last = new Map<string, Uint8Array>();
    for (const r of records) last.set(r.key, r.value);
    const out: KvRecord[] = [];
    for (const [key, value] of last) if (value !== DELETED) out.push({ key, value });
    return { records: out, revision };
  }

  /**
   * A KV watch (an ordered push consumer) that checks the revisions it receives for gaps and reads
   * what is missing from the stream itself. nats-server before 2.9.12 moves every consumer of a
   * stream past the messages not yet delivered when a subject is purged, and a delete here is a
   * purge (a rollup of the key): measured on 2.9.10, a live watch lost about half of the puts and
   * nine deletes in ten written around 50 deletes (nats-io/nats-server#3838). The message after
   * such a gap arrives, so the gap shows; one read ("the next message from this revision on")
   * per message in it, plus one, finds what was lost, and a gap of messages removed by the bucket
   * itself (a key written again before it was read) costs the one read. Once the watch has been
   * quiet for `tailCheckMs` after a change, one such read checks nothing was lost at the end.
   */
  watch(fromRevision: number | undefined, handlers: WatchHandlers): KvWatch {
    const bucket = this.options.bucket;
    let stopped = this.closed;
    let iter: QueuedIterator<KvEntry> | undefined;
    let tailTimer: NodeJS.Timeout | undefined;
    const handle: KvWatch = {
      stop: () => {
        if (stopped) return;
        stopped = true;
        clearTimeout(tailTimer);
        this.watches.delete(handle);
        iter?.stop();
      },
    };
    if (stopped) return handle;
    this.watches.add(handle);
    const fail = (what: string, err: unknown): void => {
      if (stopped) return;
      handle.stop();
      handlers.end(
        new HaError('EWATCH', `nats kv bucket ${bucket}: ${what}: ${messageOf(err)}`, { cause: err }),
      );
    };
    /** The last revision delivered; changes up to it were all delivered. */
    let last = fromRevision === undefined ? undefined : fromRevision - 1;
    const deliver = (e: WatchEntry): void => {
      if (stopped || (last !== undefined && e.revision <= last)) return;
      last = e.revision;
      handlers.entry(e);
    };
    /** Delivers the stored changes after `last` and before revision `before`, read one by one. */
    const fill = async (before: number): Promise<void> => {
      while (!stopped && last !== undefined) {
        const e = await this.nextStored(last + 1);
        if (e === undefined || e.revision >= before) return;
        deliver(e);
      }
    };
    // The consumer loop and the check at the end both deliver; one at a time keeps the order.
    let turn: Promise<unknown> = Promise.resolve();
    const serially = (fn: () => Promise<void>): Promise<void> => {
      const p = turn.then(fn);
      turn = p.catch(() => undefined);
      return p;
    };
    const armTailCheck = (): void => {
      clearTimeout(tailTimer);
      tailTimer = setTimeout(() => {
        serially(() => fill(Infinity)).catch((err: unknown) => fail('read the changes at the end', err));
      }, this.tailCheckMs);
      tailTimer.unref();
    };
    void (async () => {
      try {
        iter = await this.kv.watch(
          fromRevision === undefined
            ? { include: KvWatchInclude.UpdatesOnly }
            : { resumeFromRevision: Math.max(1, fromRevision) },
        );
      } catch (err) {
        fail('watch', err);
        return;
      }
      if (stopped) {
        iter.stop();
        return;
      }
      handlers.started?.();
      try {
        for await (const kvEntry of iter as AsyncIterable<KvEntry>) {
          if (stopped) return;
          const e: WatchEntry = {
            key: kvEntry.key,
            revision: kvEntry.revision,
            op: kvEntry.operation === 'PUT' ? 'put' : 'delete',
            value: kvEntry.value,
            atMs: kvEntry.created.getTime(),
            backlog: kvEntry.delta ?? 0,
          };
          await serially(async () => {
            if (last !== undefined && e.revision > last + 1) await fill(e.revision);
            deliver(e);
          });
          armTailCheck();
        }
      } catch (err) {
        fail('watch ended', err);
        return;
      }
      if (stopped) return;
      handle.stop();
      handlers.end();
    })();
    return handle;
  }

  /** The first change stored at revision `from` or later, or undefined when there is none. */
  private async nextStored(from: number): Promise<WatchEntry | undefined> {
    const reply = await this.nc.request(
      `$JS.API.STREAM.MSG.GET.KV_${this.options.bucket}`,
      JSON.stringify({ seq: from, next_by_subj: `${this.subjectPrefix}>` }),
      { timeout: this.options.requestTimeoutMs },
    );
    const r = JSON.parse(decoder.decode(reply.data)) as {
      message?: { subject: string; seq: number; data?: string; hdrs?: string; time: string };
      error?: { code: number; description?: string };
    };
    if (r.error !== undefined) {
      if (r.error.code === 404) return undefined;
      throw new HaError(
        'EWATCH',
        `read revision ${from}: ${r.error.description ?? 'error'} (${r.error.code})`,
      );
    }
    const m = r.message!;
    const hdrs = m.hdrs === undefined ? '' : Buffer.from(m.hdrs, 'base64').toString('latin1');
    return {
      key: m.subject.slice(this.subjectPrefix.length),
      revision: m.seq,
      op: /^KV-Operation:\s*(DEL|PURGE)\s*$/im.test(hdrs) ? 'delete' : 'put',
      value: m.data === undefined ? new Uint8Array(0) : Buffer.from(m.data, 'base64'),
      atMs: Date.parse(m.time),
      backlog: 0,
    };
  }

  /** Stops the acknowledgement subscription, failing writes still waiting; closes an owned connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.sweepTimer);
    this.failAll('the bucket was closed');
    for (const w of [...this.watches]) w.stop();
    this.ackSub.unsubscribe();
    this.changes.complete();
    if (this.ownsConnection) await this.nc.close();
  }

  private publish(
    key: string,
    data: Uint8Array,
    h: ReturnType<typeof headers> | undefined,
    done: WriteCallback,
  ): void {
    if (this.closed) {
      done(
        new HaError('ECLOSED', `nats kv bucket ${this.options.bucket}: write ${key}: the bucket was closed`),
      );
      return;
    }
    const id = ++this.seq;
    const reply = `${this.inbox}.${id}`;
    try {
      this.nc.publish(this.subjectPrefix + key, data, h === undefined ? { reply } : { reply, headers: h });
    } catch (err) {
      done(
        new HaError('EWRITE', `nats kv bucket ${this.options.bucket}: write ${key}: ${messageOf(err)}`, {
          cause: err,
        }),
      );
      return;
    }
    this.waiting.set(id, { done, deadline: Date.now() + this.options.requestTimeoutMs, key });
    this.armSweep();
  }

  private onAck(err: NatsError | null, msg: Msg): void {
    if (err !== null) {
      this.failAll(messageOf(err));
      return;
    }
    const id = Number(msg.subject.slice(this.inbox.length + 1));
    const w = this.waiting.get(id);
    if (w === undefined) return;
    this.waiting.delete(id);
    const h = msg.headers;
    if (h !== undefined && h.code >= 300) {
      // 503: no stream listens on the subject (the bucket was deleted).
      w.done(
        new HaError(
          'EWRITE',
          `nats kv bucket ${this.options.bucket}: write ${w.key}: ${h.code} ${h.description || 'no responders'}`,
        ),
      );
      return;
    }
    let ack: { error?: { description?: string; code?: number }; seq?: number };
    try {
      ack = JSON.parse(decoder.decode(msg.data)) as typeof ack;
    } catch {
      w.done(
        new HaError(
          'EWRITE',
          `nats kv bucket ${this.options.bucket}: write ${w.key}: unreadable acknowledgement`,
        ),
      );
      return;
    }
    if (ack.error !== undefined) {
      w.done(
        new HaError(
          'EWRITE',
          `nats kv bucket ${this.options.bucket}: write ${w.key}: ${ack.error.description ?? 'rejected'} (${ack.error.code ?? '?'})`,
        ),
      );
      return;
    }
    w.done(undefined, typeof ack.seq === 'number' ? ack.seq : undefined);
  }

  private armSweep(): void {
    if (this.sweepTimer !== undefined || this.closed) return;
    const interval = Math.max(50, Math.floor(this.options.requestTimeoutMs / 4));
    this.sweepTimer = setTimeout(() => {
      this.sweepTimer = undefined;
      this.sweep();
      if (this.waiting.size > 0) this.armSweep();
    }, interval);
    this.sweepTimer.unref();
  }

  /** Fails writes past their deadline. Deadlines grow with the id, so the map is in deadline order. */
  private sweep(): void {
    const now = Date.now();
    for (const [id, w] of this.waiting) {
      if (w.deadline > now) break;
      this.waiting.delete(id);
      w.done(
        new HaError(
          'EWRITE',
          `nats kv bucket ${this.options.bucket}: write ${w.key}: not acknowledged within ${this.options.requestTimeoutMs} ms`,
        ),
      );
    }
  }

  private failAll(why: string): void {
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) {
      w.done(new HaError('EWRITE', `nats kv bucket ${this.options.bucket}: write ${w.key}: ${why}`));
    }
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (this.closed) return;
      if (s.type === Events.Disconnect) {
        if (!this.isConnected) continue;
        this.isConnected = false;
        // A write sent before the cut may or may not have been stored, and its acknowledgement
        // is lost with the connection; failing it now lets the replicator resend it once the
        // connection is back instead of waiting for its timeout. Puts and deletes are idempotent.
        this.failAll('the connection to nats was lost');
        this.logger.warn(
          { server: s.data },
          'nats kv: disconnected; holding session writes until reconnected',
        );
        this.changes.next('down');
      } else if (s.type === Events.Reconnect) {
        this.isConnected = true;
        this.logger.info({ server: s.data }, 'nats kv: reconnected');
        this.changes.next('up');
      }
    }
  }
}

/** Marks a deleted key inside {@link NatsSessionKv.snapshot}. */
const DELETED = new Uint8Array(0);
