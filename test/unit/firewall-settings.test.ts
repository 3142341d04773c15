import { describe, expect, it } from 'vitest';
import { FirewallError } from '../../src/config/firewall-errors.js';
import {
  formatSettingValue,
  parseSettingValue,
  resolveSetting,
  settingDefaults,
  SETTINGS,
} from '../../src/config/firewall-settings.js';

function message(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FirewallError);
    expect((err as FirewallError).code).toBe('ESETTING');
    return (err as Error).message;
  }
  throw new Error('expected an error');
}

describe('firewall settings', () => {
  it('resolve by name and by key to the same setting, for every setting', () => {
    for (const s of SETTINGS) {
      expect(resolveSetting(s.name)).toBe(s);
      expect(resolveSetting(s.key)).toBe(s);
      expect(resolveSetting(String(s.key))).toBe(s);
    }
    expect(SETTINGS.map((s) => s.key)).toStrictEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });

  it('values round-trip through their names and numbers', () => {
    const tunnel = resolveSetting('tunnel_mode');
    expect(['none', 'vxlan', 'geneve'].map((v) => parseSettingValue(tunnel, v))).toStrictEqual([0, 1, 2]);
    expect([0, 1, 2].map((n) => formatSettingValue(tunnel, n))).toStrictEqual(['none', 'vxlan', 'geneve']);
    expect(parseSettingValue(tunnel, '2')).toBe(2);
    expect(parseSettingValue(resolveSetting('enforcement'), 'OFF')).toBe(0);
    expect(parseSettingValue(resolveSetting('session_idle_timeout_s'), 4294967295)).toBe(4294967295);
    expect(formatSettingValue(resolveSetting('session_idle_timeout_s'), 300)).toBe('300');
    expect(parseSettingValue(resolveSetting('geneve_cookie_type'), 'any')).toBe(256);
    expect(settingDefaults()).toMatchObject({
      enforcement: 1,
      tunnel_mode: 0,
      default_action: 1,
      geneve_option_class: 0x0108,
    });
  });

  it('bad names, keys and values say what to give', () => {
    expect(message(() => resolveSetting('hairpn'))).toBe(
      "setting 'hairpn': no such setting (did you mean 'hairpin'?); settings are enforcement, audit_sampling, session_idle_timeout_s, session_closed_timeout_s, session_update_interval_ms, tunnel_mode, hairpin, default_action, audit_allowed, geneve_option_class, geneve_cookie_type",
    );
    expect(message(() => resolveSetting(16))).toMatch(
      /^setting key 16: no such key; keys are 0 \(enforcement\), 1 \(audit_sampling\),/,
    );
    expect(message(() => parseSettingValue(resolveSetting('default_action'), 'drop'))).toBe(
      "setting default_action: 'drop' is not a value it takes; give allow, block, redirect (or an integer from 1 to 3)",
    );
    expect(message(() => parseSettingValue(resolveSetting('default_action'), 0))).toBe(
      "setting default_action: '0' is not a value it takes; give allow, block, redirect (or an integer from 1 to 3)",
    );
    expect(message(() => parseSettingValue(resolveSetting('geneve_option_class'), '65536'))).toBe(
      "setting geneve_option_class: '65536' is not a value it takes; give an integer from 0 to 65535",
    );
    expect(message(() => parseSettingValue(resolveSetting('audit_sampling'), '1.5'))).toBe(
      "setting audit_sampling: '1.5' is not a value it takes; give an integer from 0",
    );
    expect(message(() => parseSettingValue(resolveSetting('audit_sampling'), '4294967296'))).toBe(
      "setting audit_sampling: '4294967296' is not a value it takes; give an integer from 0",
    );
  });
});
