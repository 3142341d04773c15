import { existsSync, readFileSync } from 'node:fs';
import type { Cli } from '../kernel/cli-helpers.js';

/** One flow record as the file sink writes it (IPFIX names), the fields these tests read. */
export interface FileRecord {
  sourceIPv4Address?: string;
  destinationIPv4Address?: string;
  sourceTransportPort: number;
  destinationTransportPort: number;
  protocolIdentifier: number;
  packetDeltaCount: number;
  octetDeltaCount: number;
  flowDirection: number;
}

/** The records of a file the file sink wrote: every line parsed, a torn line fails. */
export function readRecords(path: string): FileRecord[] {
  if (!existsSync(path)) return [];
  const text = readFileSync(path, 'utf8');
  if (text === '') return [];
  if (!text.endsWith('\n')) throw new Error(`${path}: the last line is torn: ${text.slice(-200)}`);
  return text
    .slice(0, -1)
    .split('\n')
    .map((line) => JSON.parse(line) as FileRecord);
}

/** Packets of the records of destination port `port`, summed. */
export function packetsTo(records: readonly FileRecord[], port: number): number {
  let n = 0;
  for (const r of records) if (r.destinationTransportPort === port) n += r.packetDeltaCount;
  return n;
}

/** Waits until `condition` holds, failing after `ms` with `what`. */
export async function waitFor(condition: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The process's 'ready' log line has been written. */
export function isReady(cli: Cli): boolean {
  return cli.logs().some((l) => l.msg === 'ready');
}

/** The last log line with message `msg`. */
export function lastLog(cli: Cli, msg: string): Record<string, unknown> | undefined {
  return cli
    .logs()
    .filter((l) => l.msg === msg)
    .at(-1);
}
