export { FirewallError, type FirewallErrorCode } from '../../config/firewall-errors.js';
export {
  FirewallCollection,
  TUNNEL_MODES,
  firewallPinDir,
  sessionKeyId,
  type FirewallLoadOptions,
  type FirewallStatus,
  type PolicyApplyResult,
  type SessionFilter,
  type SessionListing,
  type SettingValue,
} from './collection.js';
export { compilePolicy, type CompiledPolicy, type MapEntry } from './compile.js';
export {
  SETTINGS,
  SETTING_NAMES,
  formatSettingValue,
  parseSettingValue,
  resolveSetting,
  settingDefaults,
  type SettingName,
  type SettingSpec,
} from '../../config/firewall-settings.js';
export * from './types.js';
