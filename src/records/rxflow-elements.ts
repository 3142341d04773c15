/**
 * rxflow's own IPFIX information elements: the record fields IANA has no element for, as the
 * ipfix sink writes them and the ipfix source reads them, under a Private Enterprise Number the
 * operator configures (rxflow has none of its own). RFC 7011 3.2: a field specifier with the
 * enterprise bit set, the element id below, and the number.
 *
 * Ids are stable: a new field takes the next id, none is reused. presentElements (1) is a bit set:
 * bit n (value & 2^n) is set when element n carries the record's value, so a reader tells an
 * absent field (written as 0 or an empty string) from a value of 0 (a DNS transaction id, the
 * NOERROR response code). Strings are UTF-8, variable-length (RFC 7011 7).
 */

/** IPFIX's variable length (RFC 7011 section 7): each value comes with its length in front. */
export const VARIABLE_LENGTH = 65_535;

export interface RxflowElement {
  /** The id under the enterprise number (1-32767). */
  id: number;
  /** The FlowRecord field it carries; presentElements for the bit set. */
  name: string;
  /** IPFIX abstract data type (RFC 7012). */
  type: 'unsigned8' | 'unsigned16' | 'unsigned32' | 'string';
  /** The length the sink writes: the type's, or VARIABLE_LENGTH for a string. */
  length: number;
}

const el = (id: number, name: string, type: RxflowElement['type']): RxflowElement => ({
  id,
  name,
  type,
  length: type === 'string' ? VARIABLE_LENGTH : type === 'unsigned32' ? 4 : type === 'unsigned16' ? 2 : 1,
});

export const RXFLOW_PRESENT_ELEMENTS = 1;

/** Every element, by id; the order the sink's templates carry them in. */
export const RXFLOW_ELEMENTS: readonly RxflowElement[] = [
  el(RXFLOW_PRESENT_ELEMENTS, 'presentElements', 'unsigned32'),
  el(2, 'tcpHandshakeRttMicroseconds', 'unsigned32'),
  el(3, 'tcpSmoothedRttMicroseconds', 'unsigned32'),
  el(4, 'tcpSmoothedRttMinMicroseconds', 'unsigned32'),
  el(5, 'dnsLatencyMicroseconds', 'unsigned32'),
  el(6, 'dnsTransactionId', 'unsigned16'),
  el(7, 'dnsResponseCode', 'unsigned8'),
  el(8, 'dropReason', 'string'),
  el(9, 'tcpState', 'string'),
  el(10, 'dnsQueryName', 'string'),
  el(11, 'networkNamespace', 'string'),
];

/** "1 presentElements (unsigned32), 2 ...": the table for option descriptions. */
export function rxflowElementsText(): string {
  return RXFLOW_ELEMENTS.map((e) => `${e.id} ${e.name} (${e.type})`).join(', ');
}
