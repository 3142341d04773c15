import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SESSION_KEY, decodeSessionKey, encodeSessionKey } from '../../../src/datapath/firewall/types.js';
import { ClockTranslator } from '../../../src/ha/clock.js';
import {
  FORMAT_VERSION,
  decodeSessionValue,
  decodeSessionValueOrThrow,
  encodeSessionValue,
  fromWire,
  parseSessionKvKey,
  sessionKvKey,
  sessionKvKeyOfBytes,
  toWire,
} from '../../../src/ha/codec.js';
import { HaError } from '../../../src/ha/errors.js';
import type { SessionKey } from '../../../src/ha/session.js';
import { BOOT_WALL_MS, session } from './helpers.js';

const KEY_CHARS = /^[-/_=.a-zA-Z0-9]+$/;

function fixedClock(monoNs: bigint, wallMs: number): ClockTranslator {
  return new ClockTranslator({ monotonicNs: () => monoNs, wallMs: () => wallMs });
}

/** A session key with both addresses drawn from `addr`. */
const tuple = (addr: fc.Arbitrary<string>) =>
  fc.record({
    protocol: fc.integer({ min: 0, max: 255 }),
    srcAddr: addr,
    srcPort: fc.integer({ min: 0, max: 65535 }),
    dstAddr: addr,
    dstPort: fc.integer({ min: 0, max: 65535 }),
    vni: fc.integer({ min: 0, max: 0xffffff }),
  });

describe('session KV keys', () => {
  it('are readable, five tokens, and hold only characters KV keys allow', () => {
    const v4: SessionKey = {
      protocol: 6,
      srcAddr: '10.0.0.1',
      srcPort: 40000,
      dstAddr: '10.0.0.2',
      dstPort: 443,
      vni: 0,
    };
    const v6: SessionKey = {
      protocol: 17,
      srcAddr: 'fd00::1',
      srcPort: 5353,
      dstAddr: '2001:db8::53',
      dstPort: 53,
      vni: 4242,
    };
    const other: SessionKey = {
      protocol: 47,
      srcAddr: '192.0.2.1',
      srcPort: 0,
      dstAddr: '192.0.2.2',
      dstPort: 0,
      vni: 7,
    };
    expect(sessionKvKey(v4)).toBe('s.tcp.10-0-0-1_40000.10-0-0-2_443.0');
    expect(sessionKvKey(v6)).toBe('s.udp.fd00--1_5353.2001-db8--53_53.4242');
    expect(sessionKvKey(other)).toBe('s.47.192-0-2-1_0.192-0-2-2_0.7');
    for (const k of [v4, v6, other]) {
      expect(sessionKvKey(k)).toMatch(KEY_CHARS);
      expect(sessionKvKey(k).split('.')).toHaveLength(5);
      expect(parseSessionKvKey(sessionKvKey(k))).toEqual(k);
    }
  });

  it('round-trip every IPv4 and IPv6 5-tuple plus VNI', () => {
    // Canonical IPv6 text, as the firewall formats it: compressed, lower-case, no embedded IPv4.
    const v6 = fc
      .ipV6()
      .map((a) => new URL(`http://[${a}]`).hostname.slice(1, -1))
      .filter((a) => !a.includes('.'));
    fc.assert(
      fc.property(fc.oneof(tuple(fc.ipV4()), tuple(v6)), (key) => {
        const kv = sessionKvKey(key);
        expect(kv).toMatch(KEY_CHARS);
        expect(parseSessionKvKey(kv)).toEqual(key);
      }),
    );
  });

  it('are the same written from the kernel map bytes as from the decoded key', () => {
    const at = 3;
    fc.assert(
      fc.property(fc.oneof(tuple(fc.ipV4()), tuple(fc.ipV6())), (key) => {
        const bytes = new Uint8Array(at + SESSION_KEY.size);
        encodeSessionKey(key, bytes, at);
        expect(sessionKvKeyOfBytes(bytes, at)).toBe(sessionKvKey(decodeSessionKey(bytes, at)));
      }),
    );
  });

  it('parsing a foreign key names it and the expected shape', () => {
    expect(() => parseSessionKvKey('flows.1')).toThrow(
      new HaError(
        'EKEY',
        'kv key flows.1: not a session key; expected s.<proto>.<src>_<sport>.<dst>_<dport>.<vni>',
      ),
    );
    expect(() => parseSessionKvKey('s.tcp.1-2-3_1.10-0-0-2_443.0')).toThrow(
      /kv key s\.tcp\.1-2-3_1\.10-0-0-2_443\.0: bad address/,
    );
  });
});

describe('session KV values', () => {
  it('carry the format version, the node id, tunnel metadata and last seen as wall-clock ms, no counters', () => {
    const clock = fixedClock(10_000_000_000n, BOOT_WALL_MS + 10_000);
    const s = session(1, 9_500, { ingressIfname: 'eth1' });
    const value = JSON.parse(
      new TextDecoder().decode(encodeSessionValue(toWire(s, clock), 'fw-a')),
    ) as Record<string, unknown>;
    expect(value).toEqual({
      v: FORMAT_VERSION,
      node: 'fw-a',
      session: {
        protocol: 6,
        srcAddr: '10.0.0.1',
        srcPort: 40001,
        dstAddr: '10.1.0.1',
        dstPort: 443,
        vni: 0,
        tunnel: {
          type: 'geneve',
          vni: 4242,
          cookie: '00112233445566ff',
          outerSrcAddr: '192.168.0.1',
          outerDstAddr: '192.168.0.2',
          outerSrcMac: '02:00:00:00:00:01',
          outerDstMac: '02:00:00:00:00:02',
          outerSrcPort: 6081,
          outerDstPort: 6081,
          ingressIfindex: 3,
        },
        verdict: {
          action: 'allow',
          direction: 'ingress',
          policyId: 1,
          ruleId: 2,
          reason: 'rule',
          redirectIfindex: 0,
        },
        tcpState: 'established',
        tcpFlags: 0x12,
        createdMs: BOOT_WALL_MS + 1,
        lastSeenMs: BOOT_WALL_MS + 9_500,
        ingressIfname: 'eth1',
      },
    });
  });

  it('decode rejects what this version cannot read, telling a newer format apart', () => {
    const enc = (x: unknown) => new TextEncoder().encode(JSON.stringify(x));
    const clock = fixedClock(1_000_000_000n, BOOT_WALL_MS + 1000);
    const good = JSON.parse(
      new TextDecoder().decode(encodeSessionValue(toWire(session(1, 500), clock), 'a')),
    ) as {
      session: Record<string, unknown>;
    };
    expect(decodeSessionValue(new TextEncoder().encode('{'))).toEqual({ error: 'not JSON', newer: false });
    expect(decodeSessionValue(enc({ ...good, v: 2 }))).toEqual({
      error: 'format version 2 is newer than 1',
      newer: true,
    });
    expect(decodeSessionValue(enc({ ...good, node: '' }))).toEqual({ error: 'no node id', newer: false });
    expect(decodeSessionValue(enc({ ...good, session: { ...good.session, tcpState: 'open' } }))).toEqual({
      error: 'session.tcpState must be one of none, syn_sent, syn_recv, established, fin_wait, closed',
      newer: false,
    });
    expect(() => decodeSessionValueOrThrow('s.x', enc({ v: 1 }))).toThrow(
      new HaError('EFORMAT', 'kv key s.x: no node id; the value was not written by this rxflow version'),
    );
  });
});

describe('clock translation between nodes', () => {
  it('gives a session the same wall-clock age on a node whose monotonic clock started elsewhere', () => {
    // Node A booted at wall BOOT; node B booted 5000 s later. Both read wall BOOT + 6000 s now.
    const now = BOOT_WALL_MS + 6_000_000;
    const a = fixedClock(6_000_000_000_000n, now);
    const b = fixedClock(1_000_000_000_000n, now);
    const seenOnA = 5_999_000_000_000n; // 1 s ago on A
    const wire = toWire(session(1, 0, { lastSeenNs: seenOnA, createdNs: 5_900_000_000_000n }), a);
    expect(wire.lastSeenMs).toBe(now - 1000);
    const onB = fromWire(wire, b);
    expect(onB.lastSeenNs).toBe(999_000_000_000n); // 1 s ago on B
    expect(onB.createdNs).toBe(900_000_000_000n);
  });

  it('clamps a time ahead of this node to now and one before its boot to 1 ns', () => {
    const b = fixedClock(2_000_000_000n, BOOT_WALL_MS + 2000);
    expect(b.toMonotonicNs(BOOT_WALL_MS + 5000)).toBe(2_000_000_000n);
    expect(b.toMonotonicNs(BOOT_WALL_MS - 60_000)).toBe(1n);
  });
});
