/**
 * One node of an HA pair, as a service: opens the kernel firewall by its pins, loads the bucket's
 * sessions into its session map before reporting ready, watches the bucket (a hot standby), serves
 * readiness and status, and replicates the session events it is given (the records of a
 * `firewall_sessions` source of the same firewall). The `nats_sessions` sink is the YAML component
 * on it.
 */
import { Subject } from 'rxjs';
import { FirewallCollection } from '../datapath/firewall/index.js';
import type { StageCounters } from '../ledger.js';
import type { Logger } from '../logger.js';
import type { FlowBatch } from '../records/flow.js';
import { ClockTranslator } from './clock.js';
import { HaError, messageOf } from './errors.js';
import {
  FirewallSessionStore,
  ipLinkTable,
  sessionEventOfRecord,
  type InterfaceTable,
} from './firewall-store.js';
import {
  SessionReplication,
  type NodeReplicationStatus,
  type SessionReplicationOptions,
} from './replication.js';
import type { SessionEvent, SessionEventBatch } from './session.js';

export interface FirewallHaNodeOptions {
  /** bpffs directory of the firewall (firewallPinDir(instance, pinRoot)). */
  pinDir: string;
  /** Network namespace of the firewall's devices, to name interfaces for a peer; unset: this process's. */
  netns?: string | undefined;
  /** Names the node in errors and logs, e.g. "nats_sessions sink". */
  name: string;
  replication: Omit<SessionReplicationOptions, 'logger' | 'counters'>;
  logger: Logger;
  /** Events received, written (sent), folded (merged), and records that are no session event (dropped). */
  counters: StageCounters;
}

export class FirewallHaNode {
  private readonly clock = new ClockTranslator();
  private unknownRecords = 0;
  private closed: Promise<boolean> | undefined;

  private constructor(
    private readonly fw: FirewallCollection,
    private readonly replication: SessionReplication,
    private readonly events: Subject<SessionEventBatch>,
    private readonly interfaces: InterfaceTable,
    private readonly options: FirewallHaNodeOptions,
  ) {}

  /**
   * Opens the firewall and starts its replication (connect, load, watch, ready). Rejects when the
   * firewall is not loaded or replication cannot start; an abort of `signal` while it waits for
   * NATS rejects too.
   */
  static async start(options: FirewallHaNodeOptions): Promise<FirewallHaNode> {
    let fw: FirewallCollection;
    try {
      fw = FirewallCollection.open(options.pinDir);
    } catch (err) {
      throw new HaError('EFIREWALL', `${options.name}: ${messageOf(err)}`, { cause: err });
    }
    const interfaces = ipLinkTable(options.netns === '' ? undefined : options.netns);
    const events = new Subject<SessionEventBatch>();
    try {
      const replication = await SessionReplication.start(new FirewallSessionStore(fw, interfaces), events, {
        ...options.replication,
        logger: options.logger,
        counters: options.counters,
      });
      return new FirewallHaNode(fw, replication, events, interfaces, options);
    } catch (err) {
      fw.close();
      throw err;
    }
  }

  /** Replicates the session events among `batch`; other records are counted as dropped. */
  handle(batch: FlowBatch): void {
    const out: SessionEvent[] = [];
    let unknown = 0;
    for (const rec of batch) {
      const e = sessionEventOfRecord(rec, this.clock, this.interfaces);
      if (e === undefined) unknown++;
      else out.push(e);
    }
    if (unknown > 0) {
      const counters = this.options.counters;
      counters.addReceived(unknown);
      counters.addDropped('parse_failed', unknown);
      if (this.unknownRecords === 0) {
        this.options.logger.warn(
          { records: unknown },
          `${this.options.name}: records that are not firewall session events; its input must be a firewall_sessions source`,
        );
      }
      this.unknownRecords += unknown;
    }
    this.events.next(out);
  }

  /** The replication status, the kernel map compared with the bucket now. */
  status(): Promise<NodeReplicationStatus> {
    return this.replication.liveStatus();
  }

  /** Writes every change held now; resolves once the bucket acknowledged them. */
  flush(): Promise<void> {
    return this.replication.flush();
  }

  /** Not ready, pending changes written (up to the shutdown timeout), disconnected, firewall closed. */
  close(): Promise<boolean> {
    this.closed ??= (async () => {
      try {
        return await this.replication.close();
      } finally {
        this.fw.close();
      }
    })();
    return this.closed;
  }
}
