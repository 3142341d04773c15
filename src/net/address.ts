/**
 * Address text, parsed once for everyone: IPv4 dotted quads to numbers, IPv6 addresses (RFC 4291
 * text, `::` and a trailing dotted quad included) and MAC addresses ("02:00:00:00:00:01") to wire
 * bytes. Each writes in place or returns a number and says whether the text was well formed, so
 * a hot loop allocates nothing and a bad record is the caller's to count.
 */

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
