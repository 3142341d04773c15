import { describe, expect, it } from 'vitest';
import { SessionKeyMemo } from '../../src/datapath/firewall/key-memo.js';
import { SESSION_KEY, decodeSessionKey, encodeSessionKey } from '../../src/datapath/firewall/types.js';

function packed(ports: number[]): Uint8Array {
  const out = new Uint8Array(ports.length * SESSION_KEY.size);
  ports.forEach((p, i) =>
    encodeSessionKey(
      { protocol: 6, srcAddr: '10.0.0.1', srcPort: p, dstAddr: '10.0.0.2', dstPort: 443, vni: 0 },
      out,
      i * SESSION_KEY.size,
    ),
  );
  return out;
}

describe('SessionKeyMemo', () => {
  it('decodes a key only when the previous read did not have it, and forgets keys gone since', () => {
    const memo = new SessionKeyMemo<string>();
    const decoded: number[] = [];
    const derive = (bytes: Uint8Array, offset: number): string => {
      const k = decodeSessionKey(bytes, offset);
      decoded.push(k.srcPort);
      return `${k.srcAddr}:${k.srcPort}`;
    };
    expect(memo.map(packed([1, 2, 3]), 3, derive)).toEqual(['10.0.0.1:1', '10.0.0.1:2', '10.0.0.1:3']);
    expect(decoded).toEqual([1, 2, 3]);
    // An unaligned buffer (a subarray at an odd offset) gives the same keys.
    const shifted = new Uint8Array(3 * SESSION_KEY.size + 1);
    shifted.set(packed([3, 4, 1]), 1);
    expect(memo.map(shifted.subarray(1), 3, derive)).toEqual(['10.0.0.1:3', '10.0.0.1:4', '10.0.0.1:1']);
    expect(decoded).toEqual([1, 2, 3, 4]);
    expect(memo.size).toBe(3);
    // Key 2 was not in the last read: decoded again.
    memo.map(packed([2]), 1, derive);
    expect(decoded).toEqual([1, 2, 3, 4, 2]);
  });
});
