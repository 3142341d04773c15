/**
 * A parsed firewall policy (config/firewall-policy.ts) as the entries of the fw_networks, fw_rules
 * and fw_policies maps.
 */
import { ruleTriples, type FirewallPolicy } from '../../config/firewall-policy.js';
import type { Cidr } from '../../net/address.js';
import { encodeNetworkKey, encodePolicy, encodeRule, encodeRuleKey, encodeU32 } from './types.js';

const ANY: Cidr = { address: '::', prefix: 0, version: 6, bytes: new Uint8Array(16), bits: 0 };

export interface MapEntry {
  key: Uint8Array;
  value: Uint8Array;
}

/** The map entries of a policy, ready to write. */
export interface CompiledPolicy {
  networks: MapEntry[];
  rules: MapEntry[];
  policies: MapEntry[];
  /** Policy id -> name. */
  names: Map<number, string>;
}

/** Map entries of a checked policy; `ifindexOf` resolves redirect interfaces. */
export function compilePolicy(policy: FirewallPolicy, ifindexOf: (ifname: string) => number): CompiledPolicy {
  const ids = new Map(policy.policies.map((p) => [p.name, p.id]));
  const out: CompiledPolicy = { networks: [], rules: [], policies: [], names: new Map() };
  for (const p of policy.policies) {
    const ifindex = p.redirectInterface === undefined ? 0 : ifindexOf(p.redirectInterface);
    out.policies.push({ key: encodeU32(p.id), value: encodePolicy(p.defaultAction, ifindex) });
    out.names.set(p.id, p.name);
    for (const r of p.rules) {
      const dst = r.destination ?? ANY;
      for (const t of ruleTriples(r)) {
        out.rules.push({
          key: encodeRuleKey(p.id, t.protocol, t.port, dst),
          value: encodeRule(r.action, r.ruleId, dst.bits),
        });
      }
    }
  }
  for (const n of policy.networks) {
    out.networks.push({ key: encodeNetworkKey(n.cidr), value: encodeU32(ids.get(n.policy)!) });
  }
  return out;
}
