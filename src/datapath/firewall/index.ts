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
export { SessionKeyMemo } from './key-memo.js';
export * from './types.js';
