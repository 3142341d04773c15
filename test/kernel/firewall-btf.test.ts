/**
 * Holds src/datapath/firewall/types.ts and settings.ts against the compiled bpf/firewall.o: every
 * struct (through the datapath's BTF check), the enums, and the maps' key and value types. Reading
 * BTF needs no privilege.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkStructLayout } from '../../src/datapath/index.js';
import { SETTINGS } from '../../src/config/firewall-settings.js';
import * as fw from '../../src/datapath/firewall/index.js';
import { repo } from './flow-packets.js';

const object = join(repo, 'bpf', 'firewall.o');
const hasBpftool = spawnSync('bpftool', ['version']).status === 0;
const skipReason =
  !hasBpftool && process.env.CI !== 'true' ? '(skipped: bpftool not found; run scripts/setup.sh)' : '';

interface BtfType {
  id: number;
  kind: string;
  name: string;
  type_id?: number;
  nr_elems?: number;
  members?: { name: string; type_id: number }[];
  values?: { name: string; val: number }[];
}

let types = new Map<number, BtfType>();

function byName(kind: string, name: string): BtfType {
  const found = [...types.values()].filter((t) => t.kind === kind && t.name === name);
  expect(found, `${kind} ${name} in the BTF of bpf/firewall.o`).toHaveLength(1);
  return found[0]!;
}

function enumValues(name: string, prefix: string): Record<string, number> {
  return Object.fromEntries(
    byName('ENUM', name).values!.map((v) => [v.name.replace(prefix, '').toLowerCase(), v.val]),
  );
}

/** The type a map member (`__type(key, x)` or `__uint(max_entries, n)`) points at. */
function mapMember(map: string, member: string): BtfType {
  const def = types.get(byName('VAR', map).type_id!)!;
  const m = def.members!.find((x) => x.name === member)!;
  return types.get(types.get(m.type_id)!.type_id!)!;
}

describe.skipIf(skipReason !== '')(`firewall.h against the BTF of bpf/firewall.o ${skipReason}`, () => {
  beforeAll(() => {
    execFileSync('bash', [join(repo, 'bpf/build.sh')], { stdio: ['ignore', 'ignore', 'inherit'] });
    const dump = JSON.parse(
      execFileSync('bpftool', ['btf', 'dump', 'file', object, '-j'], { encoding: 'utf8' }),
    ) as {
      types: BtfType[];
    };
    types = new Map(dump.types.map((t) => [t.id, t]));
  });

  it.each(fw.FIREWALL_LAYOUTS.map((l) => [l.name, l] as const))(
    'struct %s: size and every member',
    (_name, layout) => {
      expect(() =>
        checkStructLayout(object, {
          name: layout.name,
          size: layout.size,
          fields: Object.entries(layout.fields).map(([name, f]) => ({
            name,
            offset: f.offset,
            size: f.size,
          })),
        }),
      ).not.toThrow();
    },
  );

  it('a layout that differs is reported field by field', () => {
    expect(() =>
      checkStructLayout(object, {
        name: 'fw_session_key',
        size: 44,
        fields: Object.entries({ ...fw.SESSION_KEY.fields, vni: { offset: 34, size: 4 } }).map(
          ([name, f]) => ({
            name,
            ...f,
          }),
        ),
      }),
    ).toThrow(/field vni at offset 32 size 4 in the object, offset 34 size 4 in TypeScript/);
  });

  it('enum fw_counter and enum fw_setting match the counter and setting tables', () => {
    const counters = enumValues('fw_counter', 'FW_CTR_');
    expect(counters).toStrictEqual({ ...fw.FW_CTR, max: fw.FW_CTR_MAX });
    const settings = enumValues('fw_setting', 'FW_SET_');
    expect(settings).toStrictEqual({
      ...Object.fromEntries(SETTINGS.map((s) => [s.name, s.key])),
      max: 16,
    });
  });

  it('the enums of verdicts, reasons, tunnels, TCP states, origins and events', () => {
    const names = (list: readonly (string | undefined)[]) =>
      Object.fromEntries(list.flatMap((n, i) => (n === undefined ? [] : [[n, i]])));
    expect(enumValues('fw_action', 'FW_ACTION_')).toStrictEqual(names(fw.ACTIONS));
    expect(enumValues('fw_reason', 'FW_REASON_')).toStrictEqual(names(fw.REASONS));
    expect(enumValues('fw_tunnel', 'FW_TUNNEL_')).toStrictEqual(names(fw.TUNNELS));
    expect(enumValues('fw_tcp_state', 'FW_TCP_')).toStrictEqual(names(fw.TCP_STATES));
    expect(enumValues('fw_origin', 'FW_ORIGIN_')).toStrictEqual(names(fw.ORIGINS));
    expect(enumValues('fw_direction', 'FW_DIR_')).toStrictEqual(names(fw.DIRECTIONS));
    expect(enumValues('fw_session_event_type', 'FW_SESSION_')).toStrictEqual(names(fw.SESSION_EVENT_KINDS));
  });

  it('the maps hold the structs the encoders write', () => {
    expect(mapMember('fw_sessions', 'key').name).toBe('fw_session_key');
    expect(mapMember('fw_sessions', 'value').name).toBe('fw_session');
    expect(mapMember('fw_networks', 'key').name).toBe('fw_network_key');
    expect(mapMember('fw_rules', 'key').name).toBe('fw_rule_key');
    expect(mapMember('fw_rules', 'value').name).toBe('fw_rule');
    expect(mapMember('fw_policies', 'value').name).toBe('fw_policy');
    expect(mapMember('fw_config', 'value').name).toBe('fw_config');
    expect(mapMember('fw_counters', 'max_entries').nr_elems).toBe(fw.FW_CTR_MAX);
    expect(mapMember('fw_settings', 'max_entries').nr_elems).toBe(16);
  });
});
