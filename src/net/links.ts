/**
 * The links of a network namespace, and a monitor of their events.
 *
 * Listing uses libc's if_nameindex(), which dumps the links over a NETLINK_ROUTE socket it opens
 * in the calling thread's namespace: one FFI call lists a namespace of 1,000 links in about a
 * millisecond, where `ip -j link show` costs a process and a JSON parse, and sysfs shows only the
 * namespace it was mounted in.
 *
 * Events come from `ip -o monitor link` run inside the namespace (one line per link created,
 * changed, renamed or deleted). Node cannot wait on a raw netlink socket without a thread parked
 * in a blocking read per namespace (libuv polls only the socket kinds it knows), and the child
 * costs nothing while the links are quiet; bench/link-follow.bench.ts measures its latency.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import koffi from 'koffi';
import { libcLibrary } from '../native.js';
import { withNetns } from './netns.js';
import type { Logger } from '../logger.js';
import {
  InterfaceError,
  SETPRIV,
  monitorCommand,
  monitorListening,
  parseMonitorLine,
  trackMonitor,
  untrackMonitor,
} from './interfaces.js';

interface NameIndexLib {
  if_nameindex: () => unknown;
  if_freenameindex: (p: unknown) => void;
}

let lib: NameIndexLib | undefined;

function nameIndexLib(): NameIndexLib {
  if (!lib) {
    const c = libcLibrary();
    lib = {
      if_nameindex: c.func('void *if_nameindex(void)') as NameIndexLib['if_nameindex'],
      if_freenameindex: c.func('void if_freenameindex(void *ptr)') as NameIndexLib['if_freenameindex'],
    };
  }
  return lib;
}

// struct if_nameindex { unsigned int if_index; char *if_name; } on LP64.
const ENTRY_SIZE = 16;

/** ifindex -> name of every link of this thread's network namespace. */
function listHere(): Map<number, string> {
  const l = nameIndexLib();
  const head = l.if_nameindex();
  if (head === null) {
    throw new InterfaceError('ELINKS', `list links: if_nameindex failed (errno ${koffi.errno()})`);
  }
  const out = new Map<number, string>();
  try {
    for (let i = 0; ; i++) {
      const index = koffi.decode(head, i * ENTRY_SIZE, 'uint32') as number;
      if (index === 0) break;
      out.set(index, koffi.decode(head, i * ENTRY_SIZE + 8, 'const char *') as string);
    }
  } finally {
    l.if_freenameindex(head);
  }
  return out;
}

/**
 * ifindex -> name of every link of network namespace `netns` (an `ip netns` name or a path such
 * as /proc/<pid>/ns/net), or of the agent's own when undefined.
 */
export function listLinks(netns?: string): Map<number, string> {
  return withNetns(netns, listHere);
}

export interface LinkMonitorOptions {
  /** The namespace to watch (as for listLinks); the agent's own when undefined. */
  netns?: string;
  /** Called (batched: once per burst of lines read together) when any link changed. */
  onChange: () => void;
  /** Called once, when the monitor listens to the kernel (or could not start). */
  onReady?: (listening: boolean) => void;
  /** The `ip` executable; 'ip' from PATH by default. */
  ipCommand?: string;
  readyTimeoutMs?: number;
  logger?: Logger;
}

/**
 * `ip -o monitor link` in a namespace. Its process sits in that namespace, so it keeps the
 * namespace alive until close(): whoever follows namespaces closes the monitor of one that is
 * no longer in use.
 */
export class LinkMonitor {
  private child: ChildProcess | undefined;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private scheduled = false;
  private readyCalled = false;

  constructor(private readonly options: LinkMonitorOptions) {
    this.start();
  }

  /** The monitor's pid while it runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    const child = this.child;
    this.child = undefined;
    if (!child) return;
    child.stdout?.removeAllListeners('data');
    untrackMonitor(child);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  }

  private ready(listening: boolean): void {
    if (this.readyCalled) return;
    this.readyCalled = true;
    this.options.onReady?.(listening);
  }

  private start(): void {
    const { netns, logger } = this.options;
    const ip = this.options.ipCommand ?? 'ip';
    const [file, args] = monitorCommand(ip);
    const child = withNetns(netns, () =>
      spawn(file, args, { stdio: ['ignore', 'pipe', 'ignore'], detached: file === SETPRIV }),
    );
    this.child = child;
    trackMonitor(child);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      // A burst of events (a veth pair, a namespace torn down) arrives in one or a few chunks:
      // one re-list after the chunk covers them all.
      if (this.scheduled || !chunk.split('\n').some((line) => parseMonitorLine(line) !== undefined)) return;
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        if (!this.closed) this.options.onChange();
      });
    });
    child.on('error', (err) => {
      untrackMonitor(child);
      logger?.warn({ err, netns }, "link monitor could not start; install iproute2 ('ip')");
      this.ready(false);
    });
    child.on('exit', (code, signal) => {
      untrackMonitor(child);
      if (this.closed) return;
      logger?.warn(
        { code, signal, netns },
        'link monitor exited; new links of this namespace are not followed',
      );
      this.ready(false);
    });
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();

    const deadline = Date.now() + (this.options.readyTimeoutMs ?? 5000);
    const poll = (): void => {
      this.timer = undefined;
      if (this.closed || this.child !== child) return;
      // /proc/<pid>/net is the monitor's own namespace.
      if (child.pid !== undefined && monitorListening(child.pid, `/proc/${child.pid}/net/netlink`)) {
        this.ready(true);
      } else if (Date.now() >= deadline) {
        logger?.warn({ netns }, 'link monitor did not start listening in time');
        this.ready(false);
      } else {
        this.timer = setTimeout(poll, 2);
        this.timer.unref();
      }
    };
    poll();
  }
}
