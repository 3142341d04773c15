/**
 * The named settings of the firewall: each is a __u32 at a fixed index (its key) of the
 * fw_settings array map, enum fw_setting in bpf/firewall.h. Settings take effect on the next packet.
 */
import { didYouMean } from './suggest.js';
import { FirewallError } from './firewall-errors.js';

export interface SettingSpec {
  readonly name: string;
  /** Index in fw_settings. */
  readonly key: number;
  readonly description: string;
  readonly default: number;
  /** Names of values (e.g. off/on); the numbers are accepted too. */
  readonly values?: Readonly<Record<string, number>>;
  readonly min: number;
  readonly max: number;
}

const U32_MAX = 0xffffffff;
const ON_OFF = { off: 0, on: 1 } as const;

export const SETTINGS: readonly SettingSpec[] = [
  {
    name: 'enforcement',
    key: 0,
    description: 'on: block verdicts drop packets; off (audit mode): they are reported and the packets pass',
    default: 1,
    values: ON_OFF,
    min: 0,
    max: 1,
  },
  {
    name: 'audit_sampling',
    key: 1,
    description: 'report 1 in N audit events; 0 or 1: every one',
    default: 1,
    min: 0,
    max: U32_MAX,
  },
  {
    name: 'session_idle_timeout_s',
    key: 2,
    description: 'a session idle this long is expired and its next packet judged by the policy; 0: never',
    default: 300,
    min: 0,
    max: U32_MAX,
  },
  {
    name: 'session_closed_timeout_s',
    key: 3,
    description: 'the idle timeout of TCP sessions that saw both FINs or a RST; 0: never',
    default: 10,
    min: 0,
    max: U32_MAX,
  },
  {
    name: 'session_update_interval_ms',
    key: 4,
    description:
      'least time between two update events of one session (state changes are sent at once); 0: none',
    default: 1000,
    min: 0,
    max: U32_MAX,
  },
  {
    name: 'tunnel_mode',
    key: 5,
    description: 'none, or decapsulate vxlan (UDP 4789) or geneve (UDP 6081) and judge the inner packet',
    default: 0,
    values: { none: 0, vxlan: 1, geneve: 2 },
    min: 0,
    max: 2,
  },
  {
    name: 'hairpin',
    key: 6,
    description:
      'on: allowed tunnel packets go back out their interface with outer MACs, addresses and ports swapped',
    default: 0,
    values: ON_OFF,
    min: 0,
    max: 1,
  },
  {
    name: 'default_action',
    key: 7,
    description: 'the verdict for sources in no network of the policy file',
    default: 1,
    values: { allow: 1, block: 2, redirect: 3 },
    min: 1,
    max: 3,
  },
  {
    name: 'audit_allowed',
    key: 8,
    description: 'on: also report the verdicts that opened sessions, not only blocks',
    default: 0,
    values: ON_OFF,
    min: 0,
    max: 1,
  },
  {
    name: 'geneve_option_class',
    key: 9,
    description: 'the GENEVE flow cookie is read from the first option of this class',
    default: 0x0108,
    min: 0,
    max: 0xffff,
  },
  {
    name: 'geneve_cookie_type',
    key: 10,
    description: 'and of this option type (0-255), or any type',
    default: 256,
    values: { any: 256 },
    min: 0,
    max: 256,
  },
];

export type SettingName =
  | 'enforcement'
  | 'audit_sampling'
  | 'session_idle_timeout_s'
  | 'session_closed_timeout_s'
  | 'session_update_interval_ms'
  | 'tunnel_mode'
  | 'hairpin'
  | 'default_action'
  | 'audit_allowed'
  | 'geneve_option_class'
  | 'geneve_cookie_type';

export const SETTING_NAMES = SETTINGS.map((s) => s.name) as SettingName[];

/** The setting named `ref`, or with key `ref` (a number or its decimal text). */
export function resolveSetting(ref: string | number): SettingSpec {
  const text = String(ref).trim();
  if (/^\d+$/.test(text)) {
    const spec = SETTINGS.find((s) => s.key === Number(text));
    if (spec === undefined) {
      throw new FirewallError(
        'ESETTING',
        `setting key ${text}: no such key; keys are ${SETTINGS.map((s) => `${s.key} (${s.name})`).join(', ')}`,
      );
    }
    return spec;
  }
  const spec = SETTINGS.find((s) => s.name === text);
  if (spec === undefined) {
    throw new FirewallError(
      'ESETTING',
      `setting '${text}': no such setting${didYouMean(text, SETTING_NAMES)}; settings are ${SETTING_NAMES.join(', ')}`,
    );
  }
  return spec;
}

function range(spec: SettingSpec): string {
  return spec.max === U32_MAX ? `an integer from ${spec.min}` : `an integer from ${spec.min} to ${spec.max}`;
}

/** The number a value (a name of the setting's values, or an integer) stands for. */
export function parseSettingValue(spec: SettingSpec, value: string | number): number {
  const text = String(value).trim();
  const named = spec.values?.[text.toLowerCase()];
  if (named !== undefined) return named;
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    if (n >= spec.min && n <= spec.max) return n;
  }
  const names = spec.values ? Object.keys(spec.values) : [];
  const take = names.length > 0 ? `${names.join(', ')} (or ${range(spec)})` : range(spec);
  throw new FirewallError(
    'ESETTING',
    `setting ${spec.name}: '${text}' is not a value it takes${didYouMean(text, names)}; give ${take}`,
  );
}

/** The value's name when it has one (on, geneve, ...), else the number. */
export function formatSettingValue(spec: SettingSpec, n: number): string {
  if (spec.values) {
    for (const [name, v] of Object.entries(spec.values)) if (v === n) return name;
  }
  return String(n);
}

export function settingDefaults(): Record<SettingName, number> {
  return Object.fromEntries(SETTINGS.map((s) => [s.name, s.default])) as Record<SettingName, number>;
}

/** The setting `name` names (checked by the type system, so it exists). */
export function settingSpec(name: SettingName): SettingSpec {
  return SETTINGS.find((s) => s.name === name)!;
}

/** A setting and the number it is set to: what the datapath writes. */
export interface SettingAssignment {
  readonly spec: SettingSpec;
  readonly value: number;
}

/** The setting `ref` names set to `value` (a value name or an integer); throws ESETTING. */
export function parseSetting(ref: string | number, value: string | number): SettingAssignment {
  const spec = resolveSetting(ref);
  return { spec, value: parseSettingValue(spec, value) };
}

/** Every name = value parsed, all checked before any is returned, so a bad one changes nothing. */
export function parseSettings(values: Readonly<Record<string, string | number>>): SettingAssignment[] {
  return Object.entries(values).map(([name, value]) => parseSetting(name, value));
}
