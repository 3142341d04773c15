import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Logger } from '../logger.js';
import type { Netns } from './netns.js';
import { signalProcess } from './system.js';
import { toolPath } from './tools.js';
import { sendTcp } from './traffic.js';

/**
 * Varied, steady traffic between two namespaces for the demo: a few UDP flows of different rates
 * and sizes over IPv4 and IPv6, a rate-limited TCP stream each way of the families (iperf3, when
 * installed), short TCP connections every second or so, and pings. Each program runs in its
 * namespace and is restarted if it exits; every one dies with this process (setpriv
 * --pdeathsig), and anything left runs inside the demo namespaces, which the next demo sweeps.
 */

export interface TrafficEndpoints {
  client: Netns;
  server: Netns;
  serverIPv4: string;
  serverIPv6: string;
}

interface Job {
  label: string;
  ns: Netns;
  file: string;
  args: string[];
}

const SETPRIV = '/usr/bin/setpriv';
/** Counts large enough to never end during a demo; the traffic tool's upper bound. */
const FOREVER_COUNT = '1000000000';
const SINK_TIMEOUT_MS = '3600000';
/** A program that exits within this time of its start counts as failing. */
const QUICK_EXIT_MS = 2000;
/** After this many quick exits in a row a program is given up on. */
const MAX_QUICK_EXITS = 5;

function jobs(e: TrafficEndpoints, iperf3: boolean): Job[] {
  const traffic = toolPath('traffic');
  const udpSink = (port: number, family: 4 | 6): Job => ({
    label: `udp sink :${port}`,
    ns: e.server,
    file: traffic,
    args: [
      'udp-sink',
      '--port',
      String(port),
      '--family',
      String(family),
      '--count',
      FOREVER_COUNT,
      '--timeout-ms',
      SINK_TIMEOUT_MS,
    ],
  });
  const udpFlow = (dst: string, port: number, srcPort: number, size: number, intervalUs: number): Job => ({
    label: `udp ${srcPort} -> ${dst}:${port}`,
    ns: e.client,
    file: traffic,
    args: [
      'udp-send',
      '--dst',
      dst,
      '--port',
      String(port),
      '--src-port',
      String(srcPort),
      '--count',
      FOREVER_COUNT,
      '--size',
      String(size),
      '--interval-us',
      String(intervalUs),
    ],
  });
  const ping = (family: 4 | 6, dst: string, intervalS: string, size: number): Job => ({
    label: `ping -${family} ${dst}`,
    ns: e.client,
    file: 'ping',
    args: [`-${family}`, '-n', '-q', '-i', intervalS, '-s', String(size), dst],
  });
  const list: Job[] = [
    udpSink(9001, 4),
    udpSink(9002, 6),
    udpFlow(e.serverIPv4, 9001, 40001, 1200, 2000),
    udpFlow(e.serverIPv4, 9001, 40002, 512, 5000),
    udpFlow(e.serverIPv4, 9001, 40003, 64, 20000),
    udpFlow(e.serverIPv6, 9002, 40011, 1000, 4000),
    udpFlow(e.serverIPv6, 9002, 40012, 200, 10000),
    ping(4, e.serverIPv4, '0.2', 56),
    ping(6, e.serverIPv6, '0.5', 100),
  ];
  if (iperf3) {
    list.push(
      { label: 'iperf3 server :5201', ns: e.server, file: 'iperf3', args: ['-s', '-p', '5201'] },
      { label: 'iperf3 server :5202', ns: e.server, file: 'iperf3', args: ['-s', '-p', '5202'] },
      {
        label: `iperf3 tcp -> ${e.serverIPv4}:5201`,
        ns: e.client,
        file: 'iperf3',
        args: ['-c', e.serverIPv4, '-p', '5201', '-b', '4M', '-t', '86400'],
      },
      {
        label: `iperf3 tcp <- ${e.serverIPv6}:5202`,
        ns: e.client,
        file: 'iperf3',
        args: ['-6', '-c', e.serverIPv6, '-p', '5202', '-b', '1M', '-R', '-t', '86400'],
      },
    );
  }
  return list;
}

class Supervised {
  child: ChildProcess | undefined;
  private quickExits = 0;
  private timer: NodeJS.Timeout | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    private readonly job: Job,
    private readonly stopping: () => boolean,
    private readonly logger: Logger,
  ) {}

  start(): void {
    const { job } = this;
    const startedAt = Date.now();
    // setpriv sets the parent-death signal and execs the program, so it dies with the demo.
    const child = job.ns.spawn(SETPRIV, ['--pdeathsig', 'KILL', '--', job.file, ...job.args], {
      stdio: 'ignore',
      // Out of the terminal's process group: Ctrl-C reaches the demo, which stops the traffic itself.
      detached: true,
    });
    this.child = child;
    this.exited = new Promise<void>((resolve) => {
      child.once('error', (err) => {
        this.logger.warn({ err, job: job.label }, 'demo traffic program did not start');
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.child = undefined;
        resolve();
        if (this.stopping()) return;
        this.quickExits = Date.now() - startedAt < QUICK_EXIT_MS ? this.quickExits + 1 : 0;
        if (this.quickExits >= MAX_QUICK_EXITS) {
          this.logger.warn(
            { job: job.label, code, signal },
            'demo traffic program keeps exiting; giving up on it',
          );
          return;
        }
        this.logger.debug({ job: job.label, code, signal }, 'demo traffic program exited; restarting it');
        this.timer = setTimeout(() => this.start(), 1000);
      });
    });
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    const child = this.child;
    if (child?.pid !== undefined) {
      signalProcess(child.pid, 'SIGTERM');
      const late = setTimeout(() => {
        if (child.pid !== undefined && child.exitCode === null) signalProcess(child.pid, 'SIGKILL');
      }, 2000);
      await this.exited;
      clearTimeout(late);
    }
  }
}

/** The demo's background traffic; `stop()` ends every program. */
export class BackgroundTraffic {
  private stopped = false;
  private readonly programs: Supervised[];
  private connections: Promise<void> = Promise.resolve();
  private wake: (() => void) | undefined;
  /** Short TCP connections made so far. */
  connectionsMade = 0;

  private constructor(
    private readonly endpoints: TrafficEndpoints,
    private readonly logger: Logger,
    iperf3: boolean,
  ) {
    this.programs = jobs(endpoints, iperf3).map((job) => new Supervised(job, () => this.stopped, logger));
  }

  static start(endpoints: TrafficEndpoints, logger: Logger): BackgroundTraffic {
    const iperf3 = ['/usr/bin/iperf3', '/usr/local/bin/iperf3'].some((p) => existsSync(p));
    if (!iperf3) logger.warn('iperf3 is not installed; the demo runs without its TCP streams');
    const traffic = new BackgroundTraffic(endpoints, logger, iperf3);
    for (const p of traffic.programs) p.start();
    traffic.connections = traffic.connectionLoop();
    return traffic;
  }

  /** Pids of the programs running now. */
  get pids(): number[] {
    return this.programs.flatMap((p) => (p.child?.pid === undefined ? [] : [p.child.pid]));
  }

  /** One short TCP connection after another, alternating families, ports and sizes. */
  private async connectionLoop(): Promise<void> {
    const e = this.endpoints;
    for (let i = 0; !this.stopped; i++) {
      const v6 = i % 2 === 1;
      try {
        await sendTcp({
          from: e.client,
          server: e.server,
          to: v6 ? e.serverIPv6 : e.serverIPv4,
          port: 8080 + (i % 3),
          bytes: [20_000, 150_000, 600_000][i % 3]!,
          timeoutMs: 5000,
        });
        this.connectionsMade++;
      } catch (err) {
        if (!this.stopped) this.logger.debug({ err }, 'demo tcp connection failed');
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 1200);
      });
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await Promise.all(this.programs.map((p) => p.stop()));
    await this.connections;
  }
}
