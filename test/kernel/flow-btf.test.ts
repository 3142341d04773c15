/**
 * Holds src/datapath/flow/types.ts against the compiled bpf/flow.o: every struct size, member
 * offset and member size from the object's BTF, the counter enum, the maps' key and value types,
 * and the #define constants of bpf/flow.h.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import * as flow from '../../src/datapath/flow/types.js';
import * as dns from '../../src/datapath/flow/dns.js';
import * as latency from '../../src/datapath/flow/latency.js';
import * as dnsNames from '../../src/datapath/flow/dns-names.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const hasBpftool = spawnSync('bpftool', ['version']).status === 0;
const skipReason = !hasBpftool && process.env.CI !== 'true' ? 'bpftool not found (run scripts/setup.sh)' : '';

interface BtfMember {
  name: string;
  type_id: number;
  bits_offset: number;
}
interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: BtfMember[];
  values?: { name: string; val: number }[];
  vars?: { type_id: number; offset: number; size: number }[];
}

let types = new Map<number, BtfType>();

function byName(kind: string, name: string): BtfType {
  const found = [...types.values()].filter((t) => t.kind === kind && t.name === name);
  expect(found, `${kind} ${name} in the BTF of bpf/flow.o`).toHaveLength(1);
  return found[0]!;
}

function sizeOf(id: number): number {
  const t = types.get(id)!;
  switch (t.kind) {
    case 'TYPEDEF':
    case 'CONST':
    case 'VOLATILE':
      return sizeOf(t.type_id!);
    case 'ARRAY':
      return t.nr_elems! * sizeOf(t.type_id!);
    case 'PTR':
      return 8;
    default:
      return t.size!;
  }
}

/** The struct a map member (`__type(key, struct x)`, a pointer) names. */
function mapMember(map: string, member: string): BtfType {
  const variable = byName('VAR', map);
  const def = types.get(variable.type_id!)!;
  const m = def.members!.find((x) => x.name === member)!;
  const pointee = types.get(types.get(m.type_id)!.type_id!)!;
  return pointee;
}

describe.skipIf(skipReason !== '')(`flow.h layouts against the BTF of bpf/flow.o ${skipReason}`, () => {
  beforeAll(() => {
    execFileSync('bash', [join(repo, 'bpf/build.sh')], { stdio: ['ignore', 'ignore', 'inherit'] });
    const dump = JSON.parse(
      execFileSync('bpftool', ['btf', 'dump', 'file', join(repo, 'bpf/flow.o'), '-j'], { encoding: 'utf8' }),
    ) as { types: BtfType[] };
    types = new Map(dump.types.map((t) => [t.id, t]));
  });

  it.each(flow.FLOW_LAYOUTS.map((l) => [l.name, l] as const))(
    'struct %s: size, and every member offset and size',
    (name, layout) => {
      const s = byName('STRUCT', name);
      const btf = Object.fromEntries(
        s.members!.map((m) => [m.name, { offset: m.bits_offset / 8, size: sizeOf(m.type_id) }]),
      );
      expect({ size: s.size, fields: btf }).toStrictEqual({
        size: layout.size,
        fields: { ...layout.fields },
      });
    },
  );

  it('enum flow_counter', () => {
    const e = byName('ENUM', 'flow_counter');
    const btf = Object.fromEntries(e.values!.map((v) => [v.name.replace(/^FLOW_CTR_/, ''), v.val]));
    expect(btf).toStrictEqual({ ...flow.FLOW_CTR });
  });

  it('the maps hold the structs the decoders read', () => {
    for (const name of ['flow_map_a', 'flow_map_b']) {
      expect(mapMember(name, 'key').name).toBe('flow_key');
      expect(mapMember(name, 'value').name).toBe('flow_value');
    }
    // Both flow maps and the inner-map template of flow_maps are one definition.
    expect(types.get(byName('VAR', 'flow_map_a').type_id!)!.name).toBe('flow_map_def');
    expect(types.get(byName('VAR', 'flow_map_b').type_id!)!.name).toBe('flow_map_def');
    // __array(values, struct flow_map_def): an array of pointers to the definition.
    const slot = mapMember('flow_maps', 'values');
    expect([slot.kind, types.get(slot.type_id!)!.name]).toStrictEqual(['PTR', 'flow_map_def']);
    expect(mapMember('flow_config', 'value').name).toBe('flow_config');
    expect([mapMember('flow_dns_names', 'key').name, mapMember('flow_dns_names', 'value').name]).toEqual([
      'flow_key',
      'dns_name',
    ]);
    // max_entries is encoded as a pointer to an array of that many elements.
    expect(mapMember('flow_counters', 'max_entries').nr_elems).toBe(flow.FLOW_CTR.MAX);
  });

  it('the flow_value offsets the latency decoder reads', () => {
    const f = flow.FLOW_VALUE.fields;
    expect([latency.V_HANDSHAKE_RTT_US, latency.V_SRTT_MIN_US, latency.V_SRTT_US]).toEqual([
      f.handshake_rtt_us.offset,
      f.srtt_min_us.offset,
      f.srtt_us.offset,
    ]);
    expect([
      dns.V_DNS_LATENCY_US,
      dns.V_DNS_ID,
      dns.V_DNS_RCODE,
      dns.V_DNS_ANSWERED_US,
      latency.FLOW_VALUE_STRIDE_BYTES,
    ]).toEqual([
      f.dns_latency_us.offset,
      f.dns_id.offset,
      f.dns_rcode.offset,
      f.dns_answered_us.offset,
      flow.FLOW_VALUE_STRIDE,
    ]);
  });

  it('the #define constants of bpf/flow.h', () => {
    const header = readFileSync(join(repo, 'bpf/flow.h'), 'utf8');
    const defines = Object.fromEntries(
      [...header.matchAll(/^#define (FLOW_\w+) (\d+)/gm)].map((m) => [m[1]!, Number(m[2])]),
    );
    expect(defines).toStrictEqual({
      FLOW_DIRECTION_INGRESS: flow.FLOW_DIRECTION_INGRESS,
      FLOW_DIRECTION_EGRESS: flow.FLOW_DIRECTION_EGRESS,
      FLOW_TUNNEL_NONE: flow.FLOW_TUNNEL_NONE,
      FLOW_TUNNEL_VXLAN: flow.FLOW_TUNNEL_VXLAN,
      FLOW_TUNNEL_GENEVE: flow.FLOW_TUNNEL_GENEVE,
      FLOW_EVENT_MAP_FULL: flow.FLOW_EVENT_MAP_FULL,
      FLOW_EVENT_MAP_ERROR: flow.FLOW_EVENT_MAP_ERROR,
      FLOW_FEATURE_RTT: latency.FLOW_FEATURE_RTT,
      FLOW_FEATURE_DNS: dns.FLOW_FEATURE_DNS,
      FLOW_FEATURE_DNS_NAME: dnsNames.FLOW_FEATURE_DNS_NAME,
    });
    expect(Number(/^#define DNS_NAME_MAX (\d+)/m.exec(header)![1])).toBe(dnsNames.DNS_NAME_MAX);
  });
});
