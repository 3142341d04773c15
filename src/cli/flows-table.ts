import { protocolName } from '../net/protocols.js';
import type { TopFlow, TopSnapshot } from '../sinks/top.js';
import { formatBitRate, formatBytes, formatCount, formatDuration, renderTable } from './table.js';

/** Protocols whose records carry transport ports. */
const WITH_PORTS = new Set([6, 17, 132]);

function port(flow: TopFlow, value: number): string {
  return WITH_PORTS.has(flow.protocol) ? String(value) : '-';
}

/** The rows of a top table: source, ports, protocol, direction, interface, packets, bytes, rate. */
export function formatTopFlows(flows: readonly TopFlow[]): string[] {
  return renderTable(
    [
      { title: 'SOURCE' },
      { title: 'SPORT', align: 'right' },
      { title: 'DESTINATION' },
      { title: 'DPORT', align: 'right' },
      { title: 'PROTO' },
      { title: 'DIR' },
      { title: 'IFACE' },
      { title: 'PACKETS', align: 'right' },
      { title: 'BYTES', align: 'right' },
      { title: 'RATE', align: 'right' },
    ],
    flows.map((f) => [
      f.source,
      port(f, f.sourcePort),
      f.destination,
      port(f, f.destinationPort),
      protocolName(f.protocol),
      f.direction === 0 ? 'ingress' : 'egress',
      f.interface,
      formatCount(f.packets),
      formatBytes(f.bytes),
      formatBitRate(f.bytesPerSecond),
    ]),
  );
}

/** The heading of a top table: the window and what is in it. */
export function formatTopHeading(id: string, s: TopSnapshot): string {
  return (
    `top flows by bytes (sink ${id}), last ${formatDuration(s.windowMs)}: ` +
    `${formatCount(s.windowFlows)} ${s.windowFlows === 1 ? 'flow' : 'flows'}, ${formatCount(s.windowPackets)} packets, ${formatBytes(s.windowBytes)}`
  );
}
