/**
 * Attribute names, values and units of rxflow's metrics, after OpenTelemetry's semantic conventions
 * (the `network.*` registry; UCUM units with `{annotations}` for counts), so a backend's network
 * dashboards read them without a mapping. Written out here rather than imported from
 * @opentelemetry/semantic-conventions: network.io.direction and network.interface.name are still in
 * its unstable "incubating" entry point, which may change in any release.
 */

/** `receive` or `transmit`: the direction of the flow on its interface. */
export const ATTR_NETWORK_IO_DIRECTION = 'network.io.direction';
/** `tcp`, `udp`, ... the protocol above IP (semantic conventions' values; others lower-case by name). */
export const ATTR_NETWORK_TRANSPORT = 'network.transport';
/** The interface the flow was counted on. */
export const ATTR_NETWORK_INTERFACE_NAME = 'network.interface.name';
/** `ipv4` or `ipv6`; absent on layer-2 flows (ipVersion 0). */
export const ATTR_NETWORK_TYPE = 'network.type';

/** flowDirection 0 (ingress) is `receive`, 1 (egress) `transmit`, as in system.network.io. */
export const NETWORK_IO_DIRECTIONS = ['receive', 'transmit'] as const;
/** network.type by ipVersion 4 and 6. */
export const NETWORK_TYPE_IPV4 = 'ipv4';
export const NETWORK_TYPE_IPV6 = 'ipv6';

/**
 * UCUM units: the SDK carries them to OTLP and to the Prometheus `# UNIT` line. Flow records count
 * as `{record}`, not `{flow}`: one flow yields a record per eviction, so their sum is not a number
 * of flows.
 */
export const UNIT = {
  bytes: 'By',
  packets: '{packet}',
  records: '{record}',
  events: '{event}',
  sessions: '{session}',
  changes: '{change}',
  writes: '{write}',
  seconds: 's',
  /** A 0/1 state (connected, ready): UCUM's dimensionless unit. */
  dimensionless: '1',
} as const;
