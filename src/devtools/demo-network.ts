import fs from 'node:fs';
import path from 'node:path';
import { Netns, addNetns, addVethPair, deleteVethSync, setUpVethEnds, type VethEnd } from './netns.js';
import {
  deleteLinkSync,
  deleteNetnsSync,
  isAlive,
  killSync,
  linkNames,
  netnsNames,
  netnsPids,
  processesWithEnv,
} from './system.js';
import { DevtoolError } from './tools.js';

/**
 * The network of `rxflow demo`: two namespaces, a client and a server, joined by one veth pair,
 * with IPv4 and IPv6 addresses. Everything is named with the `rxdemo` prefix and the pins live in
 * /sys/fs/bpf/rxflow-demo, so what a killed demo left behind is found and removed by the next one.
 * One demo runs at a time (a pid file guards it), which is what makes that sweep safe.
 */
export const DEMO_NETWORK = {
  prefix: 'rxdemo',
  client: 'rxdemo-cli',
  server: 'rxdemo-srv',
  clientIf: 'rxdemo-c',
  serverIf: 'rxdemo-s',
  clientIPv4: '192.0.2.1/24',
  serverIPv4: '192.0.2.2/24',
  clientIPv6: '2001:db8:d::1/64',
  serverIPv6: '2001:db8:d::2/64',
} as const;

/** The `ebpf_flows` instance of the demo pipeline: its pins are <pin root>/rxflow-demo. */
export const DEMO_INSTANCE = 'demo';

/** Marks the processes a demo starts outside the namespaces (the Kafka mock) with its pid. */
export const DEMO_OWNER_ENV = 'RXFLOW_DEMO_OWNER';

export interface DemoNetwork {
  client: Netns;
  server: Netns;
  /** The client's end (in `client`) and the server's end (in `server`) of the veth. */
  clientEnd: VethEnd;
  serverEnd: VethEnd;
}

export interface SweepResult {
  processes: number[];
  netns: string[];
  links: string[];
  pins: string[];
}

/** The pin directory of the demo under `pinRoot`. */
export function demoPinDir(pinRoot = '/sys/fs/bpf'): string {
  return path.join(pinRoot, `rxflow-${DEMO_INSTANCE}`);
}

/**
 * Removes everything of an earlier demo: processes inside its namespaces (traffic generators), its
 * Kafka mock, the namespaces (and with them the veth), any `rxdemo` link left in the root
 * namespace, and its pins (which also detaches the pinned TC links). Only call it while holding
 * the demo lock: it does not ask whether the owner is alive.
 */
export function sweepDemo(pinRoot = '/sys/fs/bpf'): SweepResult {
  const result: SweepResult = { processes: [], netns: [], links: [], pins: [] };
  const namespaces = netnsNames().filter((n) => n.startsWith(DEMO_NETWORK.prefix));
  for (const ns of namespaces) {
    for (const pid of netnsPids(ns)) {
      killSync(pid, 500);
      result.processes.push(pid);
    }
  }
  for (const pid of processesWithEnv(DEMO_OWNER_ENV, (owner) => Number(owner) !== process.pid)) {
    killSync(pid, 500);
    result.processes.push(pid);
  }
  for (const ns of namespaces) {
    deleteNetnsSync(ns);
    result.netns.push(ns);
  }
  for (const link of linkNames().filter((n) => n.startsWith(DEMO_NETWORK.prefix))) {
    deleteLinkSync(link);
    result.links.push(link);
  }
  const pins = demoPinDir(pinRoot);
  if (fs.existsSync(pins)) {
    fs.rmSync(pins, { recursive: true, force: true });
    result.pins.push(pins);
  }
  return result;
}

/**
 * Creates the demo network: namespaces with `lo` up, the veth pair addressed and up. Offloads stay
 * on (the flow program counts GSO segments as wire packets) and neighbours are resolved by ARP and
 * neighbour discovery as on a real link; IPv6 addresses skip duplicate address detection so they
 * work at once. Rejects (after removing what it made) when any step fails.
 */
export async function createDemoNetwork(): Promise<DemoNetwork> {
  const n = DEMO_NETWORK;
  try {
    await addNetns(n.client);
    await addNetns(n.server);
    const client = new Netns(n.client);
    const server = new Netns(n.server);
    await addVethPair(n.clientIf, { ns: client }, n.serverIf, { ns: server });
    const [clientEnd, serverEnd] = await setUpVethEnds(
      n.clientIf,
      { ns: client, ipv4: n.clientIPv4, ipv6: n.clientIPv6 },
      n.serverIf,
      { ns: server, ipv4: n.serverIPv4, ipv6: n.serverIPv6 },
      { offloads: true },
    );
    return { client, server, clientEnd, serverEnd };
  } catch (err) {
    removeDemoNetwork();
    throw new DevtoolError('EDEMONET', `demo network: ${(err as Error).message}`, { cause: err });
  }
}

/** Deletes the demo's veth and namespaces; what is already gone is not an error. */
export function removeDemoNetwork(): void {
  const n = DEMO_NETWORK;
  deleteVethSync(new Netns(n.client), n.clientIf);
  for (const ns of [n.client, n.server]) {
    for (const pid of netnsPids(ns)) killSync(pid, 500);
    deleteNetnsSync(ns);
  }
}

/**
 * The single-demo guard: a pid file. A file whose process is gone is taken over; a live one is an
 * error naming that process.
 */
export class DemoLock {
  private constructor(readonly file: string) {}

  static acquire(file: string): DemoLock {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o644 });
        return new DemoLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const owner = Number(fs.readFileSync(file, 'utf8').trim());
      if (Number.isSafeInteger(owner) && owner > 0 && owner !== process.pid && isAlive(owner)) {
        throw new DevtoolError(
          'EDEMORUNNING',
          `demo: another demo runs as pid ${owner}; stop it (Ctrl-C in its terminal, or kill ${owner}) first`,
        );
      }
      fs.rmSync(file, { force: true });
    }
    throw new DevtoolError('EDEMOLOCK', `demo: cannot take ${file}; remove it if no demo runs`);
  }

  release(): void {
    try {
      if (Number(fs.readFileSync(this.file, 'utf8').trim()) === process.pid) fs.rmSync(this.file);
    } catch {
      // Already gone.
    }
  }
}
