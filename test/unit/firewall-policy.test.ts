import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { compilePolicy } from '../../src/datapath/firewall/index.js';
import { FirewallPolicyError, parsePolicy, type FirewallPolicy } from '../../src/config/firewall-policy.js';
import { decodeU32 } from '../../src/datapath/firewall/types.js';

const EXAMPLE = fileURLToPath(new URL('../../examples/firewall-policy.yaml', import.meta.url));

function problems(text: string): string[] {
  try {
    parsePolicy(text, 'p.yaml', {});
  } catch (err) {
    expect(err).toBeInstanceOf(FirewallPolicyError);
    expect((err as FirewallPolicyError).code).toBe('EPOLICY');
    return (err as FirewallPolicyError).message.split('\n');
  }
  throw new Error('expected problems');
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

describe('firewall policy files', () => {
  it('the example policy parses and compiles', () => {
    const policy = parsePolicy(readFileSync(EXAMPLE, 'utf8'), EXAMPLE, {});
    expect(policy.networks.map((n) => `${n.cidr.address}/${n.cidr.prefix} ${n.policy}`)).toStrictEqual([
      '10.0.0.0/8 internal',
      '0.0.0.0/0 internet',
      '::/0 internet',
    ]);
    expect(policy.policies.map((p) => [p.name, p.id, p.defaultAction, p.rules.length])).toStrictEqual([
      ['internal', 1, 'allow', 1],
      ['internet', 2, 'block', 4],
    ]);
    const compiled = compilePolicy(policy, () => 0);
    // 1 + (2 ports) + (tcp/53 and udp/53) + icmp + tcp/22
    expect(compiled.rules).toHaveLength(7);
    expect(compiled.networks).toHaveLength(3);
    // No redirect_interface: redirects go out of the egress device (ifindex 0 in the policy value).
    expect(hex(compiled.policies[1]!.value)).toBe('0200000000000000');
  });

  it('compiles networks, rules and policies into exact map entries', () => {
    const policy = parsePolicy(
      `
networks:
  - {cidr: 198.51.100.77/24, policy: web}
policies:
  web:
    default_action: block
    rules:
      - {destination: 203.0.113.0/25, protocol: tcp, port: 443}
      - {protocol: udp, action: redirect}
`,
      'p.yaml',
      {},
    );
    const c = compilePolicy(policy, () => 0);
    // Host bits are cleared; the IPv4 /24 is 96 + 24 bits of the IPv4-mapped address.
    expect(c.networks.map((e) => [hex(e.key), decodeU32(e.value)])).toStrictEqual([
      [`${'78000000'}${'00000000000000000000ffff'}c6336400`, 1],
    ]);
    expect(c.rules.map((e) => [hex(e.key), hex(e.value)])).toStrictEqual([
      // prefixlen 64 + 121, policy 1, tcp, pad, port 443 (LE), address
      [
        'b900000001000000' + '0600bb01' + '00000000000000000000ffffcb007100',
        '01000000' + '01000000' + '79000000' + '00000000',
      ],
      // prefixlen 64: any destination; udp, any port
      [
        '4000000001000000' + '11000000' + '00000000000000000000000000000000',
        '03000000' + '02000000' + '00000000' + '00000000',
      ],
    ]);
    expect(c.policies.map((e) => [hex(e.key), hex(e.value)])).toStrictEqual([
      ['01000000', '0200000000000000'],
    ]);
    expect(c.names).toStrictEqual(new Map([[1, 'web']]));
  });

  it('gives policies without an id the smallest free ids in file order', () => {
    const policy = parsePolicy('policies:\n  a: {}\n  b: {id: 1}\n  c: {}\n', 'p.yaml', {});
    expect(policy.policies.map((p) => [p.name, p.id])).toStrictEqual([
      ['a', 2],
      ['b', 1],
      ['c', 3],
    ]);
  });

  it('reports every problem at its line and column, with what to write instead', () => {
    expect(
      problems(`networks:
  - cidr: 10.0.0.0/8
    policy: internl
  - {cidr: 10.0.0.0/8, policy: internal}
  - {cidr: 10.0.0.1/8, policy: internal}
  - {cidr: 300.0.0.0/8, policy: internal, note: x}
policies:
  internal:
    id: 0
    default_action: alow
    redirect_interface: "a b"
    rules:
      - {protocol: tcpp}
      - {protocol: icmp, port: 22}
      - {port: 70000}
      - {destination: 10.0.0.0/40}
      - {protocol: tcp, port: [80, 443]}
      - {protocol: tcp, port: 443, action: block}
      - {action: deny}
    extra: 1
`),
    ).toStrictEqual([
      "p.yaml:3:13: networks[0].policy: no policy named 'internl' (did you mean 'internal'?); policies are internal",
      'p.yaml:5:12: networks[2].cidr: network 10.0.0.0/8 is already listed at networks[1]',
      "p.yaml:6:12: networks[3].cidr: '300.0.0.0' is not an IPv4 or IPv6 address; write e.g. 192.0.2.1 or 2001:db8::1",
      "p.yaml:6:43: networks[3].note: unknown key 'note'; allowed: cidr, policy",
      'p.yaml:9:9: policies.internal.id: id must be an integer from 1 to 4294967295, got 0',
      "p.yaml:10:21: policies.internal.default_action: 'alow' is not an action (did you mean 'allow'?); give allow, block or redirect",
      'p.yaml:11:25: policies.internal.redirect_interface: redirect_interface is an interface name of 1 to 15 characters',
      "p.yaml:13:20: policies.internal.rules[0].protocol: 'tcpp' is not a protocol (did you mean 'tcp'?); give icmp, tcp, udp, icmpv6, sctp, a number from 1 to 255, or any",
      'p.yaml:14:32: policies.internal.rules[1].port: only tcp, udp and sctp rules take ports',
      'p.yaml:15:16: policies.internal.rules[2].port: port is a number from 1 to 65535, a list of them, or any; got 70000',
      "p.yaml:16:23: policies.internal.rules[3].destination: '10.0.0.0/40': prefix length must be 0 to 32",
      'p.yaml:18:9: policies.internal.rules[5]: rule 6 matches the same destination, protocol and port as rule 5; merge them',
      "p.yaml:19:18: policies.internal.rules[6].action: 'deny' is not an action; give allow, block or redirect",
      "p.yaml:20:5: policies.internal.extra: unknown key 'extra'; allowed: id, default_action, redirect_interface, rules",
    ]);
  });

  it('rejects a file that is not a map, and YAML syntax errors, with positions', () => {
    expect(problems('- a\n')).toStrictEqual([
      "p.yaml:1:1: a policy file is a map with keys 'networks' and 'policies'",
    ]);
    expect(problems('networks: [\n')[0]).toMatch(/^p\.yaml:\d+:\d+: yaml: /);
  });

  it('an empty policy is valid: no networks, no policies', () => {
    const policy: FirewallPolicy = parsePolicy('networks: []\npolicies: {}\n', 'p.yaml', {});
    expect(compilePolicy(policy, () => 0)).toStrictEqual({
      networks: [],
      rules: [],
      policies: [],
      names: new Map(),
    });
  });
});
