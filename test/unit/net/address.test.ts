import { isIPv4, isIPv6 } from 'node:net';
import { describe, expect, it } from 'vitest';
import {
  AddressError,
  cidrContains,
  ip16Text,
  ipv4ToUint32,
  parseCidr,
  writeIp16,
  writeMac,
} from '../../../src/net/address.js';

/** The text's 16 bytes as hex, or the version 0 when it is no address. */
function ip16(text: string): string | 0 {
  const out = new Uint8Array(16);
  return writeIp16(text, out, 0) === 0 ? 0 : Buffer.from(out).toString('hex');
}

function cidrError(text: string): string {
  try {
    parseCidr(text);
  } catch (err) {
    expect(err).toBeInstanceOf(AddressError);
    expect((err as AddressError).code).toBe('EADDRESS');
    return (err as AddressError).message;
  }
  throw new Error(`${text} parsed`);
}

// Texts at the edges of what the firewall, the records and the IPFIX encoder accept.
const TEXTS = [
  '0.0.0.0',
  '255.255.255.255',
  '192.0.2.1',
  '192.0.2.01',
  '010.0.0.1',
  '00.0.0.0',
  '256.0.0.1',
  '1.2.3.256',
  '1.2.3',
  '1.2.3.4.5',
  '1..2.3',
  '.1.2.3',
  '1.2.3.',
  ' 1.2.3.4',
  '1.2.3.4 ',
  '+1.2.3.4',
  '1.2.3.-4',
  '1e1.0.0.1',
  '0x1.0.0.1',
  '::',
  '::1',
  '1::',
  '2001:db8::1',
  '2001:DB8:0:0:0:0:0:1',
  '2001:db8:0:0:0:0:0:1:2',
  '2001:db8:::1',
  '2001:db8::1::2',
  '12345::1',
  '::ffff:192.0.2.1',
  '::ffff:192.0.2.01',
  '::ffff:256.0.2.1',
  '64:ff9b::192.0.2.1',
  '1:2:3:4:5:6:1.2.3.4',
  '1:2:3:4:5:6:7:1.2.3.4',
  'fe80::1%eth0',
  ':1::',
  'g::1',
  '',
];

describe('addresses', () => {
  it('reads exactly the texts node:net calls addresses (zones excepted), IPv4 as IPv4-mapped', () => {
    for (const text of TEXTS) {
      const expected = isIPv4(text) ? 4 : isIPv6(text) && !text.includes('%') ? 6 : 0;
      expect(writeIp16(text, new Uint8Array(16), 0), text).toBe(expected);
      expect(ipv4ToUint32(text) >= 0, text).toBe(isIPv4(text));
    }
    expect(ip16('192.0.2.1')).toBe('00000000000000000000ffffc0000201');
    expect(ip16('2001:DB8::1')).toBe('20010db8000000000000000000000001');
    expect(ip16('64:ff9b::192.0.2.1')).toBe('0064ff9b0000000000000000c0000201');
    // Leading zeros would give a second spelling of one address; out-of-range octets are no octets.
    expect([
      ip16('192.0.2.01'),
      ip16('010.0.0.1'),
      ip16('256.0.0.1'),
      ip16('::ffff:1.2.3.256'),
    ]).toStrictEqual([0, 0, 0, 0]);
  });

  it('writes IPv6 as RFC 5952 text and IPv4-mapped as a dotted quad', () => {
    const text = (s: string): string => {
      const out = new Uint8Array(16);
      writeIp16(s, out, 0);
      return ip16Text(out, 0);
    };
    expect(text('2001:DB8:0:0:0:0:0:1')).toBe('2001:db8::1');
    expect(text('0:0:0:0:0:0:0:0')).toBe('::');
    expect(text('0:0:0:0:0:0:0:1')).toBe('::1');
    expect(text('1:0:0:0:0:0:0:0')).toBe('1::');
    // One zero group stays; of two equal runs the first becomes '::'; the longer run wins.
    expect(text('2001:db8:0:1:1:1:1:1')).toBe('2001:db8:0:1:1:1:1:1');
    expect(text('1:0:0:2:0:0:3:4')).toBe('1::2:0:0:3:4');
    expect(text('1:0:0:2:0:0:0:3')).toBe('1:0:0:2::3');
    expect(text('10:0:0:0:100:0:0:1')).toBe('10::100:0:0:1');
    expect(text('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(text('64:ff9b::192.0.2.1')).toBe('64:ff9b::c000:201');
    expect(text('192.0.2.1')).toBe('192.0.2.1');
  });

  it('reads MAC addresses of six two-digit hex groups and nothing else', () => {
    const out = new Uint8Array(6);
    expect(writeMac('02:00:0A:ff:10:01', out, 0)).toBe(true);
    expect(Buffer.from(out).toString('hex')).toBe('02000aff1001');
    for (const bad of [
      '02:00:00:00:00',
      '02:00:00:00:00:01:02',
      '2:00:00:00:00:01',
      '02-00-00-00-00-01',
      '02:00:00:00:00:0g',
      '02:00:00:00:00:001',
      ' 02:00:00:00:00:01',
    ]) {
      expect(writeMac(bad, out, 0), bad).toBe(false);
    }
  });
});

describe('parseCidr', () => {
  it('clears host bits and gives the canonical network address', () => {
    const c = parseCidr('198.51.100.77/25');
    expect([c.address, c.prefix, c.bits, c.version]).toStrictEqual(['198.51.100.0', 25, 121, 4]);
    expect(Buffer.from(c.bytes).toString('hex')).toBe('00000000000000000000ffffc6336400');
    const v6 = parseCidr('2001:DB8:1:2::ff/33');
    expect([v6.address, v6.prefix, v6.bits, v6.version]).toStrictEqual(['2001:db8::', 33, 33, 6]);
    expect([parseCidr('0.0.0.0/0').bits, parseCidr('::/0').bits]).toStrictEqual([96, 0]);
  });

  it('takes a bare address as a host prefix', () => {
    expect(parseCidr('192.0.2.1')).toMatchObject({ address: '192.0.2.1', prefix: 32, bits: 128 });
    expect(parseCidr('2001:db8::1')).toMatchObject({ address: '2001:db8::1', prefix: 128, bits: 128 });
  });

  it('takes prefix lengths of one to three decimal digits within the family', () => {
    expect(parseCidr('192.0.2.0/032').prefix).toBe(32);
    expect(parseCidr('192.0.2.0/00').prefix).toBe(0);
    expect(cidrError('192.0.2.0/33')).toBe("'192.0.2.0/33': prefix length must be 0 to 32");
    expect(cidrError('2001:db8::/129')).toBe("'2001:db8::/129': prefix length must be 0 to 128");
    for (const p of ['', '-1', '+8', '0032', '8 ', '0x8', '1e1', '8/8']) {
      expect(cidrError(`10.0.0.0/${p}`), p).toBe(`'10.0.0.0/${p}': prefix length must be 0 to 32`);
    }
  });

  it('names the address part when it is no address', () => {
    for (const [text, address] of [
      ['10.0.0.256/8', '10.0.0.256'],
      ['010.0.0.0/8', '010.0.0.0'],
      ['fe80::%eth0/64', 'fe80::%eth0'],
      ['/8', ''],
    ]) {
      expect(cidrError(text!)).toBe(
        `'${address}' is not an IPv4 or IPv6 address; write e.g. 192.0.2.1 or 2001:db8::1`,
      );
    }
  });

  it('holds the addresses inside the prefix and no others', () => {
    const c = parseCidr('198.51.100.77/25');
    const at = (text: string): Uint8Array => {
      const out = new Uint8Array(16);
      writeIp16(text, out, 0);
      return out;
    };
    expect(cidrContains(c, at('198.51.100.127'), 0)).toBe(true);
    expect(cidrContains(c, at('198.51.100.128'), 0)).toBe(false);
    expect(cidrContains(parseCidr('0.0.0.0/0'), at('2001:db8::1'), 0)).toBe(false);
    expect(cidrContains(parseCidr('::/0'), at('192.0.2.1'), 0)).toBe(true);
  });
});
