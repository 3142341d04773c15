/**
 * Firewall policy files: which source networks use which policy, and each policy's rules. A file
 * is read with positions (SourceDocument), so every problem is reported at its file:line:column,
 * into plain values; the datapath (datapath/firewall/compile.ts) turns those into the entries of
 * the fw_networks, fw_rules and fw_policies maps.
 *
 * ```yaml
 * networks:
 *   - cidr: 198.51.100.0/24
 *     policy: clients
 * policies:
 *   clients:
 *     id: 1                  # optional; kept stable, it names the policy in sessions and audit events
 *     default_action: block  # allow | block | redirect; what applies when no rule matches
 *     redirect_interface: eth2
 *     rules:
 *       - destination: 203.0.113.10/32   # a prefix, an address, or any (default)
 *         protocol: tcp                   # tcp, udp, icmp, icmpv6, sctp, a number, or any (default)
 *         port: [80, 443]                 # one port or a list; any (default)
 *         action: allow                   # allow (default), block or redirect
 * ```
 *
 * The most specific rule wins: the longest destination prefix; at equal prefixes, a rule naming
 * the protocol and port beats one naming the protocol, which beats one naming neither.
 */
import { parseCidr, type Cidr } from '../net/address.js';
import { PROTOCOL_CHOICES, protocolNumber } from '../net/protocols.js';
import { SourceDocument, type Path } from './document.js';
import { formatProblem, type ConfigProblem } from './errors.js';
import { FirewallError } from './firewall-errors.js';
import type { Env } from './interpolate.js';
import { readYamlFile } from './read.js';
import { didYouMean } from './suggest.js';

/**
 * A policy file that cannot be read or has problems (code EPOLICY); `problems` lists each with
 * its file:line:column, and is empty when the file could not be read at all.
 */
export class FirewallPolicyError extends FirewallError {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[], options?: { cause?: unknown; message?: string }) {
    super('EPOLICY', options?.message ?? problems.map(formatProblem).join('\n'), options?.cause);
    this.problems = problems;
  }
}

export type FirewallAction = 'allow' | 'block' | 'redirect';

export interface PolicyRule {
  /** 1-based position in the policy's rules: audit events and sessions carry it. */
  ruleId: number;
  /** Undefined: any destination. */
  destination: Cidr | undefined;
  /** 0: any. */
  protocol: number;
  /** Empty: any port. */
  ports: number[];
  action: FirewallAction;
}

export interface PolicyDef {
  name: string;
  id: number;
  defaultAction: FirewallAction;
  redirectInterface: string | undefined;
  rules: PolicyRule[];
}

export interface NetworkDef {
  cidr: Cidr;
  policy: string;
}

export interface FirewallPolicy {
  file: string;
  networks: NetworkDef[];
  policies: PolicyDef[];
}

const ACTION_NAMES: readonly FirewallAction[] = ['allow', 'block', 'redirect'];
const TOP_KEYS = ['networks', 'policies'];
const NETWORK_KEYS = ['cidr', 'policy'];
const POLICY_KEYS = ['id', 'default_action', 'redirect_interface', 'rules'];
const RULE_KEYS = ['destination', 'protocol', 'port', 'action'];
/** Protocols whose rules may name ports (their port fields sit where UDP's do). */
const PORTED = new Set([6, 17, 132]);

function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Reads a policy file; throws FirewallPolicyError listing every problem. */
export async function loadPolicyFile(file: string, env: Env = process.env): Promise<FirewallPolicy> {
  let text: string;
  try {
    // Only a regular file of at most 1 MiB: a fifo or a device would block or never end.
    text = await readYamlFile(file, 'policy');
  } catch (err) {
    throw new FirewallPolicyError([], { cause: err, message: (err as Error).message });
  }
  return parsePolicy(text, file, env);
}

/** Checks policy text; throws FirewallPolicyError listing every problem in file order. */
export function parsePolicy(text: string, file: string, env: Env = process.env): FirewallPolicy {
  const doc = SourceDocument.parse(text, file, env);
  const report = (path: Path, message: string, side: 'key' | 'value' = 'value'): void =>
    doc.report(doc.offset(path, side), path, message);
  const unknownKeys = (value: Record<string, unknown>, path: Path, allowed: readonly string[]): void => {
    for (const k of Object.keys(value)) {
      if (!allowed.includes(k)) {
        report(
          [...path, k],
          `unknown key '${k}'${didYouMean(k, allowed)}; allowed: ${allowed.join(', ')}`,
          'key',
        );
      }
    }
  };
  const out: FirewallPolicy = { file, networks: [], policies: [] };
  const root = doc.value;
  if (root === undefined) throw new FirewallPolicyError(doc.problems());
  if (!isMap(root)) {
    report([], "a policy file is a map with keys 'networks' and 'policies'");
    throw new FirewallPolicyError(doc.problems());
  }
  unknownKeys(root, [], TOP_KEYS);

  // Policies first: networks refer to them by name.
  const policies = root.policies ?? {};
  const usedIds = new Map<number, string>();
  if (!isMap(policies)) {
    report(['policies'], 'policies is a map from policy name to its definition');
  } else {
    const pending: { def: PolicyDef; path: Path }[] = [];
    for (const [name, raw] of Object.entries(policies)) {
      const path: Path = ['policies', name];
      if (!/^[A-Za-z_][A-Za-z0-9_.-]*$/.test(name)) {
        report(
          path,
          `policy name '${name}' must start with a letter or '_' and hold letters, digits, '_', '.', '-'`,
          'key',
        );
      }
      const def: PolicyDef = { name, id: 0, defaultAction: 'block', redirectInterface: undefined, rules: [] };
      const body = raw ?? {};
      if (!isMap(body)) {
        report(path, `policy ${name} is a map with keys ${POLICY_KEYS.join(', ')}`);
        continue;
      }
      unknownKeys(body, path, POLICY_KEYS);
      if (body.id !== undefined) {
        const id = body.id;
        if (typeof id !== 'number' || !Number.isInteger(id) || id < 1 || id > 0xffffffff) {
          report([...path, 'id'], `id must be an integer from 1 to 4294967295, got ${JSON.stringify(id)}`);
        } else if (usedIds.has(id)) {
          report([...path, 'id'], `id ${id} is already the id of policy ${usedIds.get(id)}`);
        } else {
          def.id = id;
          usedIds.set(id, name);
        }
      }
      if (body.default_action !== undefined) {
        const a = parseAction(body.default_action);
        if (a === undefined) {
          report([...path, 'default_action'], actionProblem(body.default_action));
        } else {
          def.defaultAction = a;
        }
      }
      if (body.redirect_interface !== undefined) {
        const ifname = body.redirect_interface;
        if (typeof ifname !== 'string' || !/^[^\s/]{1,15}$/.test(ifname)) {
          report(
            [...path, 'redirect_interface'],
            'redirect_interface is an interface name of 1 to 15 characters',
          );
        } else {
          def.redirectInterface = ifname;
        }
      }
      const rules = body.rules ?? [];
      if (!Array.isArray(rules)) {
        report([...path, 'rules'], 'rules is a list of rules');
      } else {
        const seen = new Map<string, number>();
        rules.forEach((r, i) => {
          const rule = parseRule(r, [...path, 'rules', i], i + 1, report, unknownKeys);
          if (rule === undefined) return;
          for (const k of ruleKeys(rule)) {
            const first = seen.get(k);
            if (first !== undefined) {
              report(
                [...path, 'rules', i],
                `rule ${i + 1} matches the same destination, protocol and port as rule ${first}; merge them`,
              );
              return;
            }
            seen.set(k, i + 1);
          }
          def.rules.push(rule);
        });
      }
      pending.push({ def, path });
    }
    // Policies without an id get the smallest free ones, in file order.
    let next = 1;
    for (const { def } of pending) {
      if (def.id === 0) {
        while (usedIds.has(next)) next++;
        def.id = next;
        usedIds.set(next, def.name);
      }
      out.policies.push(def);
    }
  }

  const networks = root.networks ?? [];
  const names = out.policies.map((p) => p.name);
  if (!Array.isArray(networks)) {
    report(['networks'], 'networks is a list of {cidr, policy}');
  } else {
    const seen = new Map<string, number>();
    networks.forEach((n, i) => {
      const path: Path = ['networks', i];
      if (!isMap(n)) {
        report(path, 'a network is a map with keys cidr and policy');
        return;
      }
      unknownKeys(n, path, NETWORK_KEYS);
      let cidr: Cidr | undefined;
      if (typeof n.cidr !== 'string') {
        report([...path, 'cidr'], 'cidr is required: a prefix like 198.51.100.0/24 or 2001:db8::/32');
      } else {
        try {
          cidr = parseCidr(n.cidr);
        } catch (err) {
          report([...path, 'cidr'], (err as Error).message);
        }
      }
      let policy: string | undefined;
      if (typeof n.policy !== 'string') {
        report(
          [...path, 'policy'],
          `policy is required: one of ${names.join(', ') || '(no policies defined)'}`,
        );
      } else if (!names.includes(n.policy)) {
        report(
          [...path, 'policy'],
          `no policy named '${n.policy}'${didYouMean(n.policy, names)}; policies are ${names.join(', ') || '(none)'}`,
        );
      } else {
        policy = n.policy;
      }
      if (cidr === undefined || policy === undefined) return;
      const k = `${cidr.address}/${cidr.bits}`;
      const first = seen.get(k);
      if (first !== undefined) {
        report(
          [...path, 'cidr'],
          `network ${cidr.address}/${cidr.prefix} is already listed at networks[${first}]`,
        );
        return;
      }
      seen.set(k, i);
      out.networks.push({ cidr, policy });
    });
  }
  const problems = doc.problems();
  if (problems.length > 0) throw new FirewallPolicyError(problems);
  return out;
}

function parseAction(v: unknown): FirewallAction | undefined {
  return typeof v === 'string' && (ACTION_NAMES as readonly string[]).includes(v)
    ? (v as FirewallAction)
    : undefined;
}

function actionProblem(v: unknown): string {
  return `'${String(v)}' is not an action${typeof v === 'string' ? didYouMean(v, ACTION_NAMES) : ''}; give allow, block or redirect`;
}

function parseRule(
  raw: unknown,
  path: Path,
  ruleId: number,
  report: (path: Path, message: string) => void,
  unknownKeys: (value: Record<string, unknown>, path: Path, allowed: readonly string[]) => void,
): PolicyRule | undefined {
  if (!isMap(raw)) {
    report(path, `a rule is a map with keys ${RULE_KEYS.join(', ')}`);
    return undefined;
  }
  unknownKeys(raw, path, RULE_KEYS);
  let ok = true;
  const rule: PolicyRule = { ruleId, destination: undefined, protocol: 0, ports: [], action: 'allow' };
  const dst = raw.destination;
  if (dst !== undefined && dst !== 'any') {
    if (typeof dst !== 'string') {
      report([...path, 'destination'], 'destination is a prefix, an address, or any');
      ok = false;
    } else {
      try {
        rule.destination = parseCidr(dst);
      } catch (err) {
        report([...path, 'destination'], (err as Error).message);
        ok = false;
      }
    }
  }
  const proto = raw.protocol;
  if (proto !== undefined && proto !== 'any') {
    const name =
      typeof proto === 'string' || typeof proto === 'number' ? String(proto) : JSON.stringify(proto);
    const n = protocolNumber(name);
    if (n === undefined || n === 0) {
      report(
        [...path, 'protocol'],
        `'${name}' is not a protocol${didYouMean(name, PROTOCOL_CHOICES)}; give ${PROTOCOL_CHOICES.join(', ')}, a number from 1 to 255, or any`,
      );
      ok = false;
    } else {
      rule.protocol = n;
    }
  }
  const port = raw.port;
  if (port !== undefined && port !== 'any') {
    const list: unknown[] = Array.isArray(port) ? (port as unknown[]) : [port];
    const bad = list.find((p) => typeof p !== 'number' || !Number.isInteger(p) || p < 1 || p > 65535);
    if (list.length === 0 || bad !== undefined) {
      report(
        [...path, 'port'],
        `port is a number from 1 to 65535, a list of them, or any; got ${JSON.stringify(bad ?? port)}`,
      );
      ok = false;
    } else if (rule.protocol !== 0 && !PORTED.has(rule.protocol)) {
      report([...path, 'port'], 'only tcp, udp and sctp rules take ports');
      ok = false;
    } else {
      rule.ports = [...new Set(list as number[])];
    }
  }
  if (raw.action !== undefined) {
    const a = parseAction(raw.action);
    if (a === undefined) {
      report([...path, 'action'], actionProblem(raw.action));
      ok = false;
    } else {
      rule.action = a;
    }
  }
  return ok ? rule : undefined;
}

/**
 * The (protocol, port, prefix) triples a rule is stored as. A port without a protocol stands for
 * tcp and udp: the key holds one protocol.
 */
export function ruleTriples(rule: PolicyRule): { protocol: number; port: number }[] {
  const protos = rule.ports.length > 0 && rule.protocol === 0 ? [6, 17] : [rule.protocol];
  const ports = rule.ports.length > 0 ? rule.ports : [0];
  return protos.flatMap((protocol) => ports.map((port) => ({ protocol, port })));
}

function ruleKeys(rule: PolicyRule): string[] {
  const dst = rule.destination ? `${rule.destination.address}/${rule.destination.bits}` : 'any';
  return ruleTriples(rule).map((t) => `${t.protocol}/${t.port}/${dst}`);
}
