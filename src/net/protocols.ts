/** IP protocol numbers and the short names users write for them (tcp, udp, icmp, icmpv6, sctp). */

const PROTOCOL_NAMES: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6', 132: 'sctp' };
const PROTOCOL_NUMBERS: Record<string, number> = { icmp: 1, tcp: 6, udp: 17, icmpv6: 58, sctp: 132 };

/** 'tcp' for 6; the number for protocols without a short name. */
export function protocolName(n: number): string {
  return PROTOCOL_NAMES[n] ?? String(n);
}

/** 6 for 'tcp' or '6'; undefined for an unknown name or a number out of 0-255. */
export function protocolNumber(text: string): number | undefined {
  const t = text.toLowerCase();
  if (t in PROTOCOL_NUMBERS) return PROTOCOL_NUMBERS[t];
  if (/^\d{1,3}$/.test(t) && Number(t) <= 255) return Number(t);
  return undefined;
}

export const PROTOCOL_CHOICES = Object.keys(PROTOCOL_NUMBERS);
