import { isIPv6 } from 'node:net';
import { describe, expect, it } from 'vitest';
import { isIPv6Text } from '../../src/net/address.js';
import { EARLIEST_FLOW_MS, flowRecordProblem } from '../../src/records/flow.js';
import { allFieldsRecord, flowRecord, variedFlowRecord } from '../fixtures/records.js';

const NOW = Date.UTC(2026, 0, 1);
const DAY = 86_400_000;

describe('flowRecordProblem on values from outside', () => {
  it('passes records as rxflow writes them, extra fields included', () => {
    const all = { ...allFieldsRecord(), flowStartMilliseconds: NOW - 1000, flowEndMilliseconds: NOW };
    expect(flowRecordProblem(all, NOW)).toBeUndefined();
    for (let i = 0; i < 60; i++) expect(flowRecordProblem(variedFlowRecord(i), NOW)).toBeUndefined();
    const firewall = {
      ...flowRecord({ sourceMacAddress: '', destinationMacAddress: '' }),
      firewallAction: 'block',
      firewallEnforced: false,
      egressInterface: 7,
      reverseOctetTotalCount: 2 ** 40,
      custom: { nested: 'ridealong' },
    };
    expect(flowRecordProblem(firewall, NOW)).toBeUndefined();
    const {
      sourceIPv4Address: _s,
      destinationIPv4Address: _d,
      ...layer2
    } = flowRecord({
      ipVersion: 0,
      sourceTransportPort: 0,
      destinationTransportPort: 0,
      protocolIdentifier: 0,
      ethernetType: 0x0806,
    });
    expect(flowRecordProblem(layer2, NOW)).toBeUndefined();
    expect(flowRecordProblem({ ...layer2, sourceIPv6Address: '::1' }, NOW)).toBe(
      'ipVersion is 0 (a layer-2 flow) but sourceIPv6Address is set',
    );
    expect(
      flowRecordProblem(
        flowRecord({ flowStartMilliseconds: EARLIEST_FLOW_MS, flowEndMilliseconds: NOW + DAY }),
        NOW,
      ),
    ).toBeUndefined();
  });

  it('names the field and shows the value, escaped and cut short', () => {
    const r = (o: Record<string, unknown>): unknown => ({ ...flowRecord(), ...o });
    const v6 = (o: Record<string, unknown>): unknown => {
      const { sourceIPv4Address: _s, destinationIPv4Address: _d, ...rest } = flowRecord({ ipVersion: 6 });
      return { ...rest, sourceIPv6Address: '2001:db8::1', destinationIPv6Address: '::1', ...o };
    };
    const cases: [unknown, string][] = [
      [r({ sourceIPv4Address: 'not-an-ip' }), 'sourceIPv4Address is not an IPv4 address: "not-an-ip"'],
      [
        r({ destinationIPv4Address: '10.0.0.256' }),
        'destinationIPv4Address is not an IPv4 address: "10.0.0.256"',
      ],
      [r({ sourceIPv4Address: '010.0.0.1' }), 'sourceIPv4Address is not an IPv4 address: "010.0.0.1"'],
      [v6({ sourceIPv6Address: '2001:db8::g' }), 'sourceIPv6Address is not an IPv6 address: "2001:db8::g"'],
      [
        v6({ destinationIPv6Address: 'fe80::1%eth0' }),
        'destinationIPv6Address is not an IPv6 address: "fe80::1%eth0"',
      ],
      [r({ exporterIPv4Address: '::1' }), 'exporterIPv4Address is not an IPv4 address: "::1"'],
      [r({ tunnelSourceIPAddress: 'x' }), 'tunnelSourceIPAddress is not an IP address: "x"'],
      [r({ octetDeltaCount: -1 }), 'octetDeltaCount is not an integer from 0 to 2^53-1: -1'],
      [r({ octetDeltaCount: 1e308 }), 'octetDeltaCount is not an integer from 0 to 2^53-1: 1e+308'],
      [
        r({ packetDeltaCount: 2 ** 53 }),
        'packetDeltaCount is not an integer from 0 to 2^53-1: 9007199254740992',
      ],
      [r({ packetDeltaCount: 1.5 }), 'packetDeltaCount is not an integer from 0 to 2^53-1: 1.5'],
      [r({ octetDeltaCount: Infinity }), 'octetDeltaCount is not an integer from 0 to 2^53-1: Infinity'],
      [r({ sourceTransportPort: 65536 }), 'sourceTransportPort is not an integer from 0 to 65535: 65536'],
      [r({ destinationTransportPort: -1 }), 'destinationTransportPort is not an integer from 0 to 65535: -1'],
      [r({ protocolIdentifier: 256 }), 'protocolIdentifier is not an integer from 0 to 255: 256'],
      [r({ icmpTypeIPv4: 300 }), 'icmpTypeIPv4 is not an integer from 0 to 255: 300'],
      [r({ ipDiffServCodePoint: 64 }), 'ipDiffServCodePoint is not an integer from 0 to 63: 64'],
      [
        r({ ingressInterface: 2 ** 32 }),
        'ingressInterface is not an integer from 0 to 4294967295: 4294967296',
      ],
      [
        r({ virtualNetworkIdentifier: 2 ** 24 }),
        'virtualNetworkIdentifier is not an integer from 0 to 16777215: 16777216',
      ],
      [
        r({ flowStartMilliseconds: 1e300 }),
        'flowStartMilliseconds is not a time in milliseconds from 2000-01-01 to a day from now: 1e+300',
      ],
      [
        r({ flowEndMilliseconds: NOW + DAY + 1 }),
        `flowEndMilliseconds is not a time in milliseconds from 2000-01-01 to a day from now: ${NOW + DAY + 1}`,
      ],
      [
        r({ flowStartMilliseconds: EARLIEST_FLOW_MS - 1 }),
        'flowStartMilliseconds is not a time in milliseconds from 2000-01-01 to a day from now: 946684799999',
      ],
      [
        r({ flowStartMilliseconds: 1_700_000_002_000, flowEndMilliseconds: 1_700_000_001_000 }),
        'flowStartMilliseconds is after flowEndMilliseconds',
      ],
      [r({ interfaceName: 'eth\u00000' }), 'interfaceName holds a control character: "eth\\u00000"'],
      [r({ interfaceName: 'eth0\n# HELP' }), 'interfaceName holds a control character: "eth0\\n# HELP"'],
      [r({ interfaceName: 'x'.repeat(257) }), 'interfaceName is longer than 256 characters'],
      [r({ interfaceName: 7 }), 'interfaceName is not a string'],
      [
        r({ sourceMacAddress: '02:00:00:00:00' }),
        'sourceMacAddress is not a MAC address (aa:bb:cc:dd:ee:ff): "02:00:00:00:00"',
      ],
      [r({ encapsulationType: 'gre' }), 'encapsulationType is not "vxlan" or "geneve": "gre"'],
      [r({ flowCookie: 'zz' }), 'flowCookie is not 16 hex digits: "zz"'],
      [r({ duplicate: 'yes' }), 'duplicate is not true or false'],
      [r({ note: 'a\u001b[31mred' }), '"note" holds a control character: "a\\u001b[31mred"'],
      [r({ ipVersion: 5 }), 'ipVersion is not 0, 4 or 6'],
      [r({ 'bad\u0007name': 1 }), 'a field name holds a control character: "bad\\u0007name"'],
      [r({ note: 'y'.repeat(300) }), '"note" is longer than 256 characters'],
      [r({ ratio: -Infinity }), '"ratio" is not a finite number: -Infinity'],
      [
        r({ sourceIPv4Address: 'a'.repeat(100) }),
        `sourceIPv4Address is not an IPv4 address: "${'a'.repeat(39)}...`,
      ],
    ];
    expect(cases.map(([v]) => flowRecordProblem(v, NOW))).toEqual(cases.map(([, why]) => why));
  });
});

describe('isIPv6Text', () => {
  /** mulberry32, so every run tries the same texts. */
  function prng(seed: number): () => number {
    let t = seed | 0;
    return () => {
      t = (t + 0x6d2b79f5) | 0;
      let x = Math.imul(t ^ (t >>> 15), 1 | t);
      x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
      return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
    };
  }

  it('agrees with node:net isIPv6 (zones aside) on addresses and their mutations', () => {
    const rand = prng(12);
    const pick = (n: number): number => Math.floor(rand() * n);
    const texts: string[] = [
      '::',
      '::1',
      '1::',
      '::ffff:192.0.2.1',
      '1:2:3:4:5:6:7:8',
      '1:2:3:4:5:6:7:8:9',
      ':::',
    ];
    for (let i = 0; i < 3000; i++) {
      const groups = Array.from({ length: 8 }, () => pick(0x10000).toString(16));
      if (rand() < 0.3) groups.splice(6, 2, `${pick(256)}.${pick(256)}.${pick(256)}.${pick(256)}`);
      let text = groups.join(':');
      if (rand() < 0.5) {
        const from = pick(groups.length);
        const to = from + pick(groups.length - from + 1);
        text = `${groups.slice(0, from).join(':')}::${groups.slice(to).join(':')}`;
      }
      texts.push(text);
      // A mutation: a character dropped, doubled or replaced.
      const at = pick(text.length);
      const c = ':.0fgx'[pick(6)]!;
      texts.push(text.slice(0, at) + text.slice(at + 1), text.slice(0, at) + c + text.slice(at));
      texts.push(text.slice(0, at) + c + text.slice(at + 1));
    }
    const disagree = texts.filter((t) => isIPv6Text(t) !== isIPv6(t));
    expect(disagree).toEqual([]);
    expect(texts.filter((t) => isIPv6Text(t)).length).toBeGreaterThan(3000);
    expect(isIPv6Text('fe80::1%eth0')).toBe(false);
  });
});
