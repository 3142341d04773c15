export { FirewallError, type FirewallErrorCode } from './errors.js';
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
export {
  FirewallPolicyError,
  compilePolicy,
  loadPolicyFile,
  parsePolicy,
  type CompiledPolicy,
  type FirewallPolicy,
  type NetworkDef,
  type PolicyDef,
  type PolicyRule,
} from './policy.js';
export {
  SETTINGS,
  SETTING_NAMES,
  formatSettingValue,
  parseSettingValue,
  resolveSetting,
  settingDefaults,
  type SettingName,
  type SettingSpec,
} from './settings.js';
export { SessionKeyMemo } from './key-memo.js';
export * from './types.js';
