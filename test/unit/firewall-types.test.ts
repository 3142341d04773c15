import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  AUDIT_EVENT,
  SESSION_EVENT,
  canonicalAddress,
  decodeAuditEvent,
  decodeSession,
  decodeSessionEvent,
  decodeSessionKey,
  encodeSession,
  encodeSessionKey,
  addressBytes,
  parseCidr,
  type FirewallSession,
} from '../../src/datapath/firewall/index.js';
import { FirewallError } from '../../src/config/firewall-errors.js';
import { protocolNumber } from '../../src/net/protocols.js';
import { cidrContains } from '../../src/net/address.js';
import { auditRecord } from '../../src/sources/firewall_audit.js';
import { sessionRecord } from '../../src/sources/firewall_sessions.js';

const SESSION: FirewallSession = {
  protocol: 6,
  srcAddr: '2001:db8::1',
  srcPort: 40000,
  dstAddr: '2001:db8::2',
  dstPort: 443,
  vni: 0x123456,
  createdNs: 1_000_000_000n,
  lastSeenNs: 2_500_000_000n,
  lastEventNs: 2_000_000_000n,
  packetsForward: 10,
  bytesForward: 1000,
  packetsReverse: 8,
  bytesReverse: 9000,
  tunnel: 'geneve',
  cookie: '0102030405060708',
  outerSrcAddr: '10.0.0.1',
  outerDstAddr: '10.0.0.2',
  outerSrcMac: '02:00:00:00:00:01',
  outerDstMac: '02:00:00:00:00:02',
  outerSrcPort: 50000,
  outerDstPort: 6081,
  ingressIfindex: 3,
  redirectIfindex: 0,
  policyId: 7,
  ruleId: 2,
  tcpState: 'established',
  tcpFlags: 0x1a,
  action: 'allow',
  direction: 'ingress',
  origin: 'restored',
  reason: 'rule',
};

describe('firewall types', () => {
  it('addresses: IPv4 mapped, IPv6 compressed, embedded IPv4 tails', () => {
    expect(Buffer.from(addressBytes('192.0.2.1')).toString('hex')).toBe('00000000000000000000ffffc0000201');
    expect(canonicalAddress('2001:DB8:0:0:0:0:0:1')).toBe('2001:db8::1');
    expect(canonicalAddress('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(canonicalAddress('64:ff9b::192.0.2.1')).toBe('64:ff9b::c000:201');
    expect(() => addressBytes('fe80::1%eth0')).toThrow(FirewallError);
    expect(() => addressBytes('1.2.3')).toThrow(
      "'1.2.3' is not an IPv4 or IPv6 address; write e.g. 192.0.2.1 or 2001:db8::1",
    );
  });

  it('prefixes clear host bits and contain exactly their addresses', () => {
    const c = parseCidr('198.51.100.77/25');
    expect([c.address, c.prefix, c.bits, c.version]).toStrictEqual(['198.51.100.0', 25, 121, 4]);
    expect(cidrContains(c, addressBytes('198.51.100.127'), 0)).toBe(true);
    expect(cidrContains(c, addressBytes('198.51.100.128'), 0)).toBe(false);
    expect(cidrContains(parseCidr('0.0.0.0/0'), addressBytes('2001:db8::1'), 0)).toBe(false);
    expect(cidrContains(parseCidr('::/0'), addressBytes('192.0.2.1'), 0)).toBe(true);
    expect(parseCidr('2001:db8::1').bits).toBe(128);
    expect(() => parseCidr('2001:db8::/129')).toThrow("'2001:db8::/129': prefix length must be 0 to 128");
  });

  it('protocol names and numbers', () => {
    expect(['tcp', 'UDP', 'icmpv6', '47', '256', 'gre'].map(protocolNumber)).toStrictEqual([
      6,
      17,
      58,
      47,
      undefined,
      undefined,
    ]);
  });

  it('a session round-trips through its key and value bytes', () => {
    const key = encodeSessionKey(SESSION);
    const value = encodeSession(SESSION);
    expect(decodeSession(decodeSessionKey(key), value)).toStrictEqual(SESSION);
    fc.assert(
      fc.property(
        fc.ipV4(),
        fc.ipV4(),
        fc.integer({ min: 0, max: 65535 }),
        fc.integer({ min: 0, max: 65535 }),
        fc.integer({ min: 0, max: 0xffffff }),
        fc.bigInt({ min: 0n, max: (1n << 63n) - 1n }),
        fc.constantFrom<'allow' | 'redirect' | 'block'>('allow', 'redirect', 'block'),
        (src, dst, sp, dp, vni, seen, action) => {
          const s = {
            ...SESSION,
            action,
            srcAddr: src,
            dstAddr: dst,
            srcPort: sp,
            dstPort: dp,
            vni,
            lastSeenNs: seen,
          };
          expect(decodeSession(decodeSessionKey(encodeSessionKey(s)), encodeSession(s))).toStrictEqual(s);
        },
      ),
    );
  });

  it('a session written with only its key and last seen gets what the kernel would write', () => {
    const v = encodeSession({
      protocol: 17,
      srcAddr: '192.0.2.1',
      srcPort: 1,
      dstAddr: '192.0.2.2',
      dstPort: 2,
      vni: 0,
      lastSeenNs: 5n,
    });
    const s = decodeSession(
      decodeSessionKey(
        encodeSessionKey({
          protocol: 17,
          srcAddr: '192.0.2.1',
          srcPort: 1,
          dstAddr: '192.0.2.2',
          dstPort: 2,
          vni: 0,
        }),
      ),
      v,
    );
    expect(s).toMatchObject({
      createdNs: 5n,
      lastSeenNs: 5n,
      tunnel: 'none',
      tcpState: 'none',
      action: 'allow',
      origin: 'restored',
      outerSrcAddr: '',
      cookie: '0000000000000000',
    });
    expect(() =>
      encodeSessionKey({ protocol: 6, srcAddr: '192.0.2.1', srcPort: 1, dstAddr: '::1', dstPort: 2, vni: 0 }),
    ).toThrow('session 192.0.2.1 -> ::1: both addresses must be IPv4 or both IPv6');
  });

  it('session events and their records', () => {
    const buf = new Uint8Array(SESSION_EVENT.size + 8);
    const view = new DataView(buf.buffer);
    view.setUint32(8, 3, true);
    buf.set(encodeSessionKey(SESSION), 8 + SESSION_EVENT.fields.key.offset);
    buf.set(encodeSession(SESSION), 8 + SESSION_EVENT.fields.value.offset);
    const e = decodeSessionEvent(view, 8, SESSION_EVENT.size);
    expect(e).toStrictEqual({ kind: 'deleted', session: SESSION });
    expect(() => decodeSessionEvent(view, 8, 40)).toThrow(
      /record of 40 bytes is shorter than struct fw_session_event \(184\)/,
    );
    view.setUint32(8, 9, true);
    expect(() => decodeSessionEvent(view, 8, SESSION_EVENT.size)).toThrow(
      /decode session event type: unknown value 9/,
    );
    expect(sessionRecord('deleted', SESSION, 1000)).toStrictEqual({
      ipVersion: 6,
      sourceIPv6Address: '2001:db8::1',
      destinationIPv6Address: '2001:db8::2',
      sourceTransportPort: 40000,
      destinationTransportPort: 443,
      protocolIdentifier: 6,
      octetDeltaCount: 1000,
      packetDeltaCount: 10,
      packetTotalCount: 10,
      octetTotalCount: 1000,
      reversePacketTotalCount: 8,
      reverseOctetTotalCount: 9000,
      flowStartMilliseconds: 2000,
      flowEndMilliseconds: 3500,
      flowEndReason: 1,
      tcpControlBits: 0x1a,
      ipDiffServCodePoint: 0,
      ingressInterface: 3,
      flowDirection: 0,
      sourceMacAddress: '02:00:00:00:00:01',
      destinationMacAddress: '02:00:00:00:00:02',
      ethernetType: 0x86dd,
      encapsulationType: 'geneve',
      virtualNetworkIdentifier: 0x123456,
      tunnelSourceIPAddress: '10.0.0.1',
      tunnelDestinationIPAddress: '10.0.0.2',
      tunnelSourceTransportPort: 50000,
      tunnelDestinationTransportPort: 6081,
      flowCookie: '0102030405060708',
      firewallSessionEvent: 'deleted',
      firewallAction: 'allow',
      firewallReason: 'rule',
      firewallPolicyId: 7,
      firewallRuleId: 2,
      firewallSessionOrigin: 'restored',
      tcpState: 'established',
    });
  });

  it('audit events and their records', () => {
    const buf = new Uint8Array(AUDIT_EVENT.size);
    const v = new DataView(buf.buffer);
    const f = AUDIT_EVENT.fields;
    v.setBigUint64(f.time_ns.offset, 7_000_000n, true);
    buf.set(addressBytes('192.0.2.1'), f.src_ip.offset);
    buf.set(addressBytes('192.0.2.2'), f.dst_ip.offset);
    v.setUint32(f.vni.offset, 42, true);
    v.setUint32(f.ifindex.offset, 4, true);
    v.setUint32(f.policy_id.offset, 3, true);
    v.setUint32(f.packet_len.offset, 98, true);
    v.setUint16(f.src_port.offset, 1234, true);
    v.setUint16(f.dst_port.offset, 80, true);
    buf[f.protocol.offset] = 6;
    buf[f.action.offset] = 2;
    buf[f.reason.offset] = 2;
    buf[f.direction.offset] = 1;
    buf[f.tunnel_type.offset] = 1;
    buf[f.enforced.offset] = 0;
    const e = decodeAuditEvent(v, 0, AUDIT_EVENT.size);
    expect(e).toStrictEqual({
      timeNs: 7_000_000n,
      protocol: 6,
      srcAddr: '192.0.2.1',
      srcPort: 1234,
      dstAddr: '192.0.2.2',
      dstPort: 80,
      vni: 42,
      ifindex: 4,
      policyId: 3,
      ruleId: 0,
      packetLength: 98,
      action: 'block',
      reason: 'policy_default',
      direction: 'egress',
      tunnel: 'vxlan',
      enforced: false,
    });
    expect(auditRecord(e, 100)).toMatchObject({
      sourceIPv4Address: '192.0.2.1',
      flowStartMilliseconds: 107,
      flowDirection: 1,
      octetDeltaCount: 98,
      packetDeltaCount: 1,
      encapsulationType: 'vxlan',
      virtualNetworkIdentifier: 42,
      firewallAction: 'block',
      firewallEnforced: false,
    });
  });
});
