/**
 * What the firewall sources (firewall_audit, firewall_sessions, firewall_metrics) share: opening a loaded
 * firewall's pinned maps for the life of a subscription, counting what they emit, their instance and
 * pin_root options, and the address fields of a record.
 */
import { Observable, type Subscription } from 'rxjs';
import type { ComponentContext, JsonSchema } from '../component.js';
import { FirewallCollection, firewallPinDir } from '../datapath/firewall/index.js';
import { INSTANCE_PATTERN } from '../datapath/instance.js';
import type { FlowBatch, FlowRecord } from '../records/flow.js';

export interface FirewallSourceConfig {
  instance: string;
  pin_root: string;
}

/** The schema properties of FirewallSourceConfig, which every firewall source takes. */
export const FIREWALL_SOURCE_PROPERTIES: Record<keyof FirewallSourceConfig, JsonSchema> = {
  instance: {
    type: 'string',
    pattern: INSTANCE_PATTERN,
    default: 'default',
    description: "the firewall instance given to 'rxflow firewall load'",
  },
  pin_root: {
    type: 'string',
    default: '/sys/fs/bpf',
    description: 'the bpffs mount the firewall is pinned under',
  },
};

/**
 * Opens the firewall on subscribe, logs `message` with its pin directory, and emits the batches
 * `read(fw)` gives, each counted as received and sent. Unsubscribing closes the firewall.
 */
export function firewallSource(
  config: FirewallSourceConfig,
  context: ComponentContext,
  message: string,
  read: (fw: FirewallCollection) => Observable<FlowBatch>,
): Observable<FlowBatch> {
  return new Observable<FlowBatch>((subscriber) => {
    const fw = FirewallCollection.open(firewallPinDir(config.instance, config.pin_root));
    const counters = context.counters;
    const batches = read(fw);
    context.logger.info({ pin_dir: fw.pinDir }, message);
    const sub: Subscription = batches.subscribe({
      next: (batch) => {
        counters.addReceived(batch.length);
        counters.addSent(batch.length);
        subscriber.next(batch);
      },
      error: (err: unknown) => subscriber.error(err),
      complete: () => subscriber.complete(),
    });
    return () => {
      sub.unsubscribe();
      fw.close();
    };
  });
}

/** Sets the IPv4 or the IPv6 address fields of `rec`: the family of the text form decides. */
export function setAddresses(rec: FlowRecord, srcAddr: string, dstAddr: string, v4: boolean): void {
  if (v4) {
    rec.sourceIPv4Address = srcAddr;
    rec.destinationIPv4Address = dstAddr;
  } else {
    rec.sourceIPv6Address = srcAddr;
    rec.destinationIPv6Address = dstAddr;
  }
}
