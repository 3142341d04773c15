/**
 * Address text, parsed once for everyone: IPv4 dotted quads to numbers, IPv6 addresses (RFC 4291
 * text, `::` and a trailing dotted quad included) and MAC addresses ("02:00:00:00:00:01") to wire
 * bytes. Each writes in place or returns a number and says whether the text was well formed, so
 * a hot loop allocates nothing and a bad record is the caller's to count. Prefixes (CIDR text) are
 * parsed here too, for firewall policies and session filters; they throw an AddressError.
 */
import { RxflowError } from '../errors.js';

/** An address or prefix that does not parse (code EADDRESS); the message quotes the text. */
export class AddressError extends RxflowError {
  override readonly name = 'AddressError';
}

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const lower = c | 0x20;
  if (lower >= 97 && lower <= 102) return lower - 87;
  return -1;
}

/** Writes the 6 bytes of `text` at `offset`; false (and nothing reliable written) if it is not a MAC. */
export function writeMac(text: string, out: Uint8Array, offset: number): boolean {
  if (text.length !== 17) return false;
  for (let i = 0; i < 6; i++) {
    const at = i * 3;
    if (i > 0 && text.charCodeAt(at - 1) !== 58) return false;
    const hi = hexDigit(text.charCodeAt(at));
    const lo = hexDigit(text.charCodeAt(at + 1));
    if (hi < 0 || lo < 0) return false;
    out[offset + i] = (hi << 4) | lo;
  }
  return true;
}

/**
 * The address as an unsigned 32-bit number if `s` is a canonical dotted quad ("10.0.0.1": four
 * decimal octets, no leading zeros), else -1. Canonical text and number map one to one, so
 * comparing the numbers is comparing the strings.
 */
export function ipv4ToUint32(s: string): number {
  const n = s.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || dots === 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      // A leading zero ("01") would give a second spelling of the same address.
      if (digits > 0 && octet === 0) return -1;
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return -1;
    } else {
      return -1;
    }
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + octet;
}

/** Parses a dotted quad at text[from..) into out[offset..offset+4); false if malformed. */
function writeDottedQuad(text: string, from: number, out: Uint8Array, offset: number): boolean {
  const n = ipv4ToUint32(text.slice(from));
  if (n < 0) return false;
  out[offset] = n >>> 24;
  out[offset + 1] = n >>> 16;
  out[offset + 2] = n >>> 8;
  out[offset + 3] = n;
  return true;
}

/**
 * Writes the 16 bytes of IPv6 address `text` at `offset`; false if it is not one (RFC 4291 2.2:
 * eight groups of 1-4 hex digits, or fewer with one `::`, the last two possibly a dotted quad; no
 * zone). Accepts what inet_ntop and Node print, upper or lower case.
 */
export function writeIPv6(text: string, out: Uint8Array, offset: number): boolean {
  const n = text.length;
  if (n < 2 || n > 45) return false;
  // Groups before `::` are written from the front; those after it are collected, then moved to the back.
  let group = 0; // groups written so far
  let gap = -1; // group index where `::` stands
  let i = 0;
  if (text.charCodeAt(0) === 58) {
    if (text.charCodeAt(1) !== 58) return false;
    gap = 0;
    i = 2;
    if (n === 2) {
      out.fill(0, offset, offset + 16);
      return true;
    }
  }
  while (i < n) {
    if (group === 8) return false;
    let value = 0;
    let digits = 0;
    const start = i;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 58) break;
      if (c === 46) {
        // An IPv4 tail takes the last two groups.
        if (group > 6 || !writeDottedQuad(text, start, out, offset + group * 2)) return false;
        group += 2;
        i = n;
        digits = -1;
        break;
      }
      const d = hexDigit(c);
      if (d < 0 || ++digits > 4) return false;
      value = (value << 4) | d;
      i++;
    }
    if (digits === -1) break;
    if (digits === 0) return false;
    out[offset + group * 2] = value >> 8;
    out[offset + group * 2 + 1] = value & 0xff;
    group++;
    if (i < n) {
      // At a ':'; a second one right after is the `::`.
      i++;
      if (i < n && text.charCodeAt(i) === 58) {
        if (gap >= 0) return false;
        gap = group;
        i++;
      } else if (i === n) {
        return false;
      }
    }
  }
  if (gap < 0) return group === 8;
  if (group === 8) return false;
  const tail = group - gap;
  const zeros = 8 - group;
  out.copyWithin(offset + (gap + zeros) * 2, offset + gap * 2, offset + (gap + tail) * 2);
  out.fill(0, offset + gap * 2, offset + (gap + zeros) * 2);
  return true;
}

const scratch = new Uint8Array(16);

/** Whether `s` is IPv6 address text, as writeIPv6 reads it: what node:net's isIPv6 accepts, less zones. */
export function isIPv6Text(s: string): boolean {
  return writeIPv6(s, scratch, 0);
}

/**
 * Writes the 16-byte form of address `text` (IPv4 as IPv4-mapped, ::ffff:a.b.c.d) at `offset`;
 * returns the IP version as written, or 0 if the text is not an address (bytes then unreliable).
 */
export function writeIp16(text: string, out: Uint8Array, offset: number): 0 | 4 | 6 {
  const v4 = ipv4ToUint32(text);
  if (v4 >= 0) {
    out.fill(0, offset, offset + 10);
    out[offset + 10] = 0xff;
    out[offset + 11] = 0xff;
    out[offset + 12] = v4 >>> 24;
    out[offset + 13] = v4 >>> 16;
    out[offset + 14] = v4 >>> 8;
    out[offset + 15] = v4;
    return 4;
  }
  return writeIPv6(text, out, offset) ? 6 : 0;
}

/** The message of an AddressError for text that is no address. */
export function notAnAddress(text: string): string {
  return `'${text}' is not an IPv4 or IPv6 address; write e.g. 192.0.2.1 or 2001:db8::1`;
}

/**
 * Text of the 16 bytes at `offset`: IPv4-mapped as a dotted quad, others as RFC 5952 says (lower
 * case, no leading zeros, the first longest run of two or more zero groups as `::`). For parsed
 * configuration; datapath/flow/types.ts has the cached formatter hot paths use.
 */
export function ip16Text(bytes: Uint8Array, offset: number): string {
  let mapped = bytes[offset + 10] === 0xff && bytes[offset + 11] === 0xff;
  for (let i = 0; i < 10 && mapped; i++) mapped = bytes[offset + i] === 0;
  if (mapped) return bytes.subarray(offset + 12, offset + 16).join('.');
  const groups: string[] = [];
  for (let g = 0; g < 8; g++) {
    groups.push(((bytes[offset + 2 * g]! << 8) | bytes[offset + 2 * g + 1]!).toString(16));
  }
  const text = groups.join(':');
  // Each match is a run of zero groups with the colons around it, which '::' replaces.
  let best: RegExpMatchArray | undefined;
  let bestZeros = 1;
  for (const m of text.matchAll(/(?:^|:)0(?::0)+(?::|$)/g)) {
    const zeros = m[0].replaceAll(':', '').length;
    if (zeros > bestZeros) {
      best = m;
      bestZeros = zeros;
    }
  }
  return best === undefined
    ? text
    : `${text.slice(0, best.index)}::${text.slice(best.index! + best[0].length)}`;
}

/** An address prefix: `198.51.100.0/24`, `2001:db8::/32`, or a bare address (a host prefix). */
export interface Cidr {
  /** Canonical network address text. */
  address: string;
  /** Bits of the prefix as written (IPv4: 0-32, IPv6: 0-128). */
  prefix: number;
  version: 4 | 6;
  /** 16-byte network address (IPv4-mapped for IPv4), host bits cleared. */
  bytes: Uint8Array;
  /** Prefix length over the 16 bytes: 96 + prefix for IPv4. */
  bits: number;
}

/**
 * Parses `a.b.c.d/n`, `x::/n` or a bare address (a host prefix); host bits are cleared. The
 * prefix length is 1 to 3 decimal digits, at most 32 (IPv4) or 128; throws AddressError.
 */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const bytes = new Uint8Array(16);
  const version = writeIp16(addr, bytes, 0);
  if (version === 0) throw new AddressError('EADDRESS', notAnAddress(addr));
  const max = version === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) {
      throw new AddressError('EADDRESS', `'${text}': prefix length must be 0 to ${max}`);
    }
    prefix = Number(p);
  }
  const bits = version === 4 ? 96 + prefix : prefix;
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    bytes[i]! &= (0xff << (8 - keep)) & 0xff;
  }
  return { address: ip16Text(bytes, 0), prefix, version, bytes, bits };
}

/** True when the 16 bytes at offset fall in the prefix. */
export function cidrContains(cidr: Cidr, bytes: Uint8Array, offset: number): boolean {
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, cidr.bits - i * 8));
    if (keep === 0) return true;
    const mask = (0xff << (8 - keep)) & 0xff;
    if ((bytes[offset + i]! & mask) !== cidr.bytes[i]) return false;
  }
  return true;
}
