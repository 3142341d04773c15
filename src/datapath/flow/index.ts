export {
  FlowDatapath,
  type EvictOptions,
  type FlowDatapathOptions,
  type KernelCounters,
} from './datapath.js';
export {
  DROP_LAYOUTS,
  DROP_MAPS_OUTER,
  DROP_MAP_NAMES,
  DROP_PROGRAM,
  DROP_REASON_COUNT,
  DROP_REASON_OTHER,
  DROP_REASON_SLOTS,
  DROP_TRACEPOINT,
  DROP_VALUE,
  DROP_VALUE_STRIDE,
  DropsDatapath,
  attachDrops,
  decodeDropBatch,
  flowKeyHex,
  readDropReasonNames,
  tcpStateName,
  type DropBatch,
  type DropReasonCount,
  type DropsOptions,
  type FlowDrops,
} from './drops.js';
export { FLOW_MAPS_OUTER, FLOW_MAP_NAMES, FlowMaps, setFlowMapMaxEntries } from './maps.js';
export * from './types.js';
export { FLOW_FEATURE_RTT } from './latency.js';
export { DNS_RCODE_NAMES, FLOW_FEATURE_DNS } from './dns.js';
export { DNS_NAME_MAX, DnsNames, FLOW_FEATURE_DNS_NAME, dnsNameText } from './dns-names.js';
