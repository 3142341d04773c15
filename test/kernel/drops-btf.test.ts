/**
 * Holds src/datapath/flow/drops.ts against the compiled bpf/drops.o (struct sizes and members from
 * its BTF, the constants of bpf/drops.h) and the drop reason names against what bpftool prints of
 * the running kernel's enum skb_drop_reason.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { checkStructLayout } from '../../src/datapath/btf.js';
import {
  DROP_LAYOUTS,
  DROP_REASON_OTHER,
  DROP_REASON_SLOTS,
  readDropReasonNames,
} from '../../src/datapath/flow/drops.js';
import { buildBpf, repo } from './flow-packets.js';

const object = join(repo, 'bpf', 'drops.o');

describe('bpf/drops.o and the kernel drop reasons', () => {
  beforeAll(() => buildBpf());

  it('has the struct layouts of src/datapath/flow/drops.ts', () => {
    for (const layout of DROP_LAYOUTS) {
      const fields = Object.entries(layout.fields).map(([name, f]) => ({
        name,
        offset: f.offset,
        size: f.size,
      }));
      expect(() => checkStructLayout(object, { name: layout.name, size: layout.size, fields })).not.toThrow();
    }
  });

  it('has the constants of bpf/drops.h', () => {
    const header = readFileSync(join(repo, 'bpf', 'drops.h'), 'utf8');
    expect(/#define DROP_REASON_SLOTS (\d+)/.exec(header)?.[1]).toBe(String(DROP_REASON_SLOTS));
    expect(DROP_REASON_OTHER).toBe(DROP_REASON_SLOTS - 1);
  });

  it('names every reason of the kernel enum as bpftool prints it, without the prefix', () => {
    const c = execFileSync('bpftool', ['btf', 'dump', 'file', '/sys/kernel/btf/vmlinux', 'format', 'c'], {
      maxBuffer: 256 * 1024 * 1024,
    }).toString();
    const body = /enum skb_drop_reason \{([^}]*)\}/.exec(c)![1]!;
    const expected = new Map<number, string>();
    for (const m of body.matchAll(/\b(SKB_\w+) = (\d+),/g)) {
      const [, name, value] = m;
      if (name === 'SKB_DROP_REASON_MAX' || name!.startsWith('SKB_DROP_REASON_SUBSYS_')) continue;
      if (!expected.has(Number(value)))
        expected.set(Number(value), name!.replace(/^SKB_(DROP_REASON_)?/, ''));
    }
    const names = readDropReasonNames();
    expect(names).toEqual(expected);
    expect([...names.values()]).toEqual(
      expect.arrayContaining(['NO_SOCKET', 'NETFILTER_DROP', 'NOT_SPECIFIED']),
    );
    // Every reason fits a slot of drop_reasons below the overflow slot.
    expect(Math.max(...names.keys())).toBeLessThan(DROP_REASON_OTHER);
  });
});
