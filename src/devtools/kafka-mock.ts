import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { DevtoolError, toolPath } from './tools.js';

/**
 * A Kafka-protocol broker on loopback for tests and the demo: librdkafka's mock cluster, run by
 * the small C program tools/kafka-mock.c in a process of its own. The cluster's threads never
 * share the caller's event loop, a test can kill it, and it exits when its parent dies.
 *
 * ```ts
 * const kafka = await KafkaMockCluster.start();
 * await kafka.createTopic('flows', 1);
 * // kafkajs: new Kafka({ brokers: kafka.brokers })
 * await kafka.stop();
 * ```
 *
 * The mock picks its own ports (librdkafka 2.0.2 has no setting for them); read `bootstrap`.
 * It keeps about 5 MB of records per partition and drops the oldest beyond that (the log start
 * offset moves up), so a test that reads a topic back from the beginning stays under that size.
 */

/** Kafka protocol API keys (the `ApiKey` of a request). */
export const KafkaApiKey = {
  Produce: 0,
  Fetch: 1,
  ListOffsets: 2,
  Metadata: 3,
  OffsetCommit: 8,
  OffsetFetch: 9,
  FindCoordinator: 10,
  JoinGroup: 11,
  Heartbeat: 12,
  SyncGroup: 14,
  ApiVersions: 18,
  InitProducerId: 22,
} as const;

/** Kafka protocol error codes, and librdkafka's `_TRANSPORT`, which makes the mock disconnect. */
export const KafkaErrorCode = {
  TRANSPORT: -195,
  UNKNOWN_TOPIC_OR_PARTITION: 3,
  LEADER_NOT_AVAILABLE: 5,
  NOT_LEADER_OR_FOLLOWER: 6,
  REQUEST_TIMED_OUT: 7,
  NOT_ENOUGH_REPLICAS: 19,
  TOPIC_AUTHORIZATION_FAILED: 29,
} as const;

export interface KafkaMockOptions {
  /** Number of brokers, with ids 1..n; default 1. */
  brokers?: number;
  /** The kafka-mock executable; default dist/tools/kafka-mock. */
  binary?: string;
  /** Variables added to the child's environment. */
  env?: Record<string, string>;
  /** How long to wait for the cluster to report its address; default 10 s. */
  startTimeoutMs?: number;
  /**
   * Run in a process group of its own, so a Ctrl-C at the terminal does not reach it and the
   * caller decides when it stops (the demo drains its Kafka sink first). It still exits with its
   * parent. Default false.
   */
  detached?: boolean;
}

export interface KafkaMockExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

interface Pending {
  command: string;
  resolve: () => void;
  reject: (error: Error) => void;
}

const TOPIC_NAME = /^[A-Za-z0-9._-]{1,249}$/;
const STDERR_TAIL_BYTES = 4096;

export class KafkaMockCluster {
  /** Comma-separated `host:port` of every broker, as librdkafka prints it. */
  readonly bootstrap: string;
  /** Resolves when the process has exited. */
  readonly exited: Promise<KafkaMockExit>;
  private readonly pending: Pending[] = [];
  private exit: KafkaMockExit | undefined;

  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    bootstrap: string,
    lines: AsyncIterator<string>,
    exited: Promise<KafkaMockExit>,
    private readonly stderrTail: () => string,
  ) {
    this.bootstrap = bootstrap;
    this.exited = exited;
    void exited.then((exit) => {
      this.exit = exit;
      const error = this.deadError();
      for (const p of this.pending.splice(0)) {
        p.reject(error);
      }
    });
    void this.readReplies(lines);
  }

  /** Starts a mock cluster and resolves once it accepts connections. */
  static async start(opts: KafkaMockOptions = {}): Promise<KafkaMockCluster> {
    const brokers = opts.brokers ?? 1;
    if (!Number.isInteger(brokers) || brokers < 1 || brokers > 64) {
      throw new DevtoolError(
        'EKAFKAMOCK',
        `kafka mock: brokers must be an integer from 1 to 64, got ${brokers}`,
      );
    }
    const binary = opts.binary ?? toolPath('kafka-mock');
    const child = spawn(binary, ['--brokers', String(brokers)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
      detached: opts.detached ?? false,
    });
    let tail = '';
    // Always drained: a full stderr pipe would block the mock's threads.
    child.stderr.on('data', (chunk: Buffer) => {
      tail = (tail + chunk.toString('utf8')).slice(-STDERR_TAIL_BYTES);
    });
    const exited = new Promise<KafkaMockExit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    const spawnError = new Promise<never>((_, reject) => {
      child.once('error', (error) =>
        reject(
          new DevtoolError('EKAFKAMOCK', `kafka mock: cannot start ${binary}: ${error.message}`, {
            cause: error,
          }),
        ),
      );
    });
    const lines = createInterface({ input: child.stdout, crlfDelay: Infinity })[Symbol.asyncIterator]();
    const timeoutMs = opts.startTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new DevtoolError(
              'EKAFKAMOCK',
              `kafka mock: no address within ${timeoutMs} ms; stderr: ${tail.trim()}`,
            ),
          ),
        timeoutMs,
      );
    });
    try {
      const first = await Promise.race([lines.next(), spawnError, timeout]);
      const line = first.done === true ? undefined : first.value;
      const m = line === undefined ? null : /^ready (\S+)$/.exec(line);
      if (m?.[1] === undefined) {
        await Promise.race([exited, new Promise((r) => setTimeout(r, 200))]);
        throw new DevtoolError(
          'EKAFKAMOCK',
          `kafka mock: did not start (${line === undefined ? 'exited' : `printed '${line}'`}); stderr: ${tail.trim() || 'empty'}`,
        );
      }
      return new KafkaMockCluster(child, m[1], lines, exited, () => tail);
    } catch (error) {
      child.kill('SIGKILL');
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** `host:port` of every broker. */
  get brokers(): string[] {
    return this.bootstrap.split(',');
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Creates a topic (the mock has no CreateTopics API; clients may also auto-create). */
  createTopic(name: string, partitions = 1, replicationFactor = 1): Promise<void> {
    if (!TOPIC_NAME.test(name)) {
      return Promise.reject(
        new DevtoolError('EKAFKAMOCK', `kafka mock: topic name '${name}': use 1 to 249 of [A-Za-z0-9._-]`),
      );
    }
    return this.command(`topic ${name} ${partitions} ${replicationFactor}`);
  }

  /** Disconnects a broker (-1: all) and refuses its connections until {@link brokerUp}. */
  brokerDown(brokerId: number): Promise<void> {
    return this.command(`down ${brokerId}`);
  }

  brokerUp(brokerId: number): Promise<void> {
    return this.command(`up ${brokerId}`);
  }

  /** The next `count` requests with `apiKey` (see {@link KafkaApiKey}) fail with `errorCode`. */
  pushRequestErrors(apiKey: number, count: number, errorCode: number): Promise<void> {
    return this.command(`error ${apiKey} ${count} ${errorCode}`);
  }

  clearRequestErrors(apiKey: number): Promise<void> {
    return this.command(`clear ${apiKey}`);
  }

  /** Delays every response of a broker (-1: all) by `ms`. */
  setRtt(brokerId: number, ms: number): Promise<void> {
    return this.command(`rtt ${brokerId} ${ms}`);
  }

  /** Asks the cluster to shut down, then kills it if it has not exited within `timeoutMs`. */
  async stop(timeoutMs = 5000): Promise<void> {
    if (this.exit !== undefined) {
      return;
    }
    this.command('quit').catch(() => undefined);
    this.child.stdin.end();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), timeoutMs)));
    const outcome = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (outcome === 'late') {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }

  /** Kills the process at once (for cleanup handlers, which cannot wait). */
  kill(): void {
    if (this.exit === undefined) {
      this.child.kill('SIGKILL');
    }
  }

  private command(line: string): Promise<void> {
    if (this.exit !== undefined) {
      return Promise.reject(this.deadError());
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ command: line, resolve, reject });
      this.child.stdin.write(`${line}\n`);
    });
  }

  private async readReplies(lines: AsyncIterator<string>): Promise<void> {
    for (;;) {
      const next = await lines.next();
      if (next.done === true) {
        return;
      }
      const p = this.pending.shift();
      if (p === undefined) {
        continue;
      }
      if (next.value === 'ok') {
        p.resolve();
      } else {
        const why = next.value.replace(/^error /, '');
        p.reject(new DevtoolError('EKAFKAMOCK', `kafka mock: ${p.command}: ${why}`));
      }
    }
  }

  private deadError(): DevtoolError {
    const how = this.exit?.signal ?? `code ${this.exit?.code ?? '?'}`;
    const tail = this.stderrTail().trim();
    return new DevtoolError('EKAFKAMOCK', `kafka mock: exited (${how})${tail ? `; stderr: ${tail}` : ''}`);
  }
}
