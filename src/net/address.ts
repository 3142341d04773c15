/**
 * Address text to wire bytes, for encoders that write records into buffers: MAC addresses
 * ("02:00:00:00:00:01") and IPv6 addresses (RFC 4291 text, `::` and a trailing dotted quad
 * included). Each writes in place and says whether the text was well formed, so a hot loop
 * allocates nothing and a bad record is the caller's to count.
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

/** Parses a dotted quad at text[from..to) into out[offset..offset+4); false if malformed. */
function writeDottedQuad(text: string, from: number, to: number, out: Uint8Array, offset: number): boolean {
  let octet = 0;
  let digits = 0;
  let index = 0;
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || index === 3) return false;
      out[offset + index++] = octet;
      octet = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return false;
    } else {
      return false;
    }
  }
  if (index !== 3 || digits === 0) return false;
  out[offset + 3] = octet;
  return true;
}

/**
 * Writes the 16 bytes of IPv6 address `text` at `offset`; false if it is not one. Accepts what
 * inet_ntop and Node print (lower or upper case hex, one `::`, an IPv4 tail like ::ffff:10.0.0.1).
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
        if (group > 6 || !writeDottedQuad(text, start, n, out, offset + group * 2)) return false;
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
