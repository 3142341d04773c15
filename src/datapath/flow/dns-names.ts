/**
 * DNS query names (FLOW_FEATURE_DNS_NAME, bpf/flow.c dns_name): the response that completes a DNS
 * latency measurement also copies its question's name into flow_dns_names, an LRU map keyed by the
 * response's flow. Every eviction drains that map after the flow map and puts each name on the
 * record of its flow when the name belongs to the answer the record carries (same transaction
 * id). A name whose answer is not in this eviction (it came after the flow maps were swapped, so
 * its flow counts in the next one) waits for the next eviction; older ones are dropped. A record
 * whose name never came (pushed out of the LRU map, or overwritten by a later answer of the same
 * flow before the drain) is counted as missed, one whose question held no name (a malformed or
 * hostile response) as unreadable.
 */
import type { FlowRecord } from '../../records/flow.js';
import { flowKeyHex } from './drops.js';
import { DNS_NAME, FLOW_KEY, type RawMapBatch } from './types.js';
import { viewOf } from '../layout.js';

/** Bit of flow_config.features (bpf/flow.h): with FLOW_FEATURE_DNS, the query names. */
export const FLOW_FEATURE_DNS_NAME = 4;

/** Most octets of a name in wire form (RFC 1035 2.3.4), as bpf/flow.h DNS_NAME_MAX. */
export const DNS_NAME_MAX = 255;

const N_ID = DNS_NAME.fields.id.offset;
const N_LEN = DNS_NAME.fields.len.offset;
const N_NAME = DNS_NAME.fields.name.offset;

const BACKSLASH = 0x5c;
const DOT = 0x2e;

/**
 * The presentation form (RFC 1035 5.1, RFC 4343) of the wire-form name of `len` octets at `off`:
 * labels joined by dots, without the root's trailing dot ('.' for the root itself). Octets outside
 * printable ASCII are written `\DDD`, and a dot or a backslash inside a label is escaped, so the
 * text is one unambiguous token whatever the packet held. Case is kept as it was on the wire.
 * Undefined for what is not a whole name: a label running past `len`, a compression pointer (a
 * question's name never needs one) or a reserved label type, or no terminating zero octet.
 */
export function dnsNameText(bytes: Uint8Array, off: number, len: number): string | undefined {
  const end = off + len;
  let p = off;
  let out = '';
  while (p < end) {
    const n = bytes[p++]!;
    if (n === 0) return out === '' ? '.' : out;
    if (n > 63 || p + n > end) return undefined;
    if (out !== '') out += '.';
    for (let i = 0; i < n; i++) {
      const c = bytes[p + i]!;
      if (c === DOT || c === BACKSLASH) out += '\\' + String.fromCharCode(c);
      else if (c > 0x20 && c < 0x7f) out += String.fromCharCode(c);
      else out += '\\' + String(c).padStart(3, '0');
    }
    p += n;
  }
  return undefined;
}

interface PendingName {
  id: number;
  name: string | undefined;
  /** Evictions this name has waited through. */
  age: number;
}

/** The query names of one flow datapath, paired with the records at each eviction. */
export class DnsNames {
  /** Records that carried an answer and got no name, since the last call of missDelta(). */
  #misses = { missed: 0, unreadable: 0 };
  readonly #pending = new Map<string, PendingName>();

  /**
   * Takes `batch`, a drain of flow_dns_names (`valueBytes` apart), and sets dnsQueryName on the
   * records of the eviction that carry the answer a name belongs to (`indexes[i]` is the entry of
   * records[i] in `keys`, as decodeFlowMapBatch gives them). The names map is drained after the
   * flow map, so every name of an answer in this eviction is in `batch` or was pushed out.
   */
  attach(
    records: readonly FlowRecord[],
    indexes: readonly number[],
    keys: Uint8Array,
    batch: RawMapBatch,
    valueBytes: number,
  ): void {
    const vv = viewOf(batch.values);
    for (const p of this.#pending.values()) p.age++;
    for (let i = 0; i < batch.count; i++) {
      const v = i * valueBytes;
      const len = Math.min(batch.values[v + N_LEN]!, DNS_NAME_MAX);
      this.#pending.set(flowKeyHex(batch.keys, i * FLOW_KEY.size), {
        id: vv.getUint16(v + N_ID, true),
        name: dnsNameText(batch.values, v + N_NAME, len),
        age: 0,
      });
    }
    for (let i = 0; i < records.length; i++) {
      const r = records[i]!;
      if (r.dnsTransactionId === undefined) continue;
      const hex = flowKeyHex(keys, indexes[i]! * FLOW_KEY.size);
      const p = this.#pending.get(hex);
      if (p === undefined || p.id !== r.dnsTransactionId) {
        this.#misses.missed++;
        continue;
      }
      this.#pending.delete(hex);
      if (p.name === undefined) this.#misses.unreadable++;
      else r.dnsQueryName = p.name;
    }
    for (const [hex, p] of this.#pending) if (p.age > 0) this.#pending.delete(hex);
  }

  /**
   * Answers put on records without their query name since the last call: `missed`, whose name
   * the map no longer held, and `unreadable`, whose response's question was not a name.
   */
  missDelta(): { missed: number; unreadable: number } {
    const n = this.#misses;
    this.#misses = { missed: 0, unreadable: 0 };
    return n;
  }
}
